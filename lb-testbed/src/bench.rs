//! Benchmarks reported by `cargo xtask bench` (never timed tests).

pub mod anchors;
pub mod datapath;
pub mod dataplanes;
pub mod frontends;
mod iperf;
pub mod nodeport;
mod nscmd;
pub mod plot;
pub mod programming;
pub mod stats;
pub mod sync;
pub mod traffic;
