//! Benchmarks reported by `cargo xtask bench` (never timed tests).

pub mod anchors;
pub mod datapath;
pub mod frontends;
pub mod stats;
pub mod sync;
pub mod traffic;
