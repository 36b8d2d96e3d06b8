//! Benchmarks reported by `cargo xtask bench` (never timed tests).

pub mod datapath;
pub mod stats;
pub mod sync;
pub mod traffic;
