//! The agent that keeps the load balancer's maps in sync with Kubernetes
//! Services and EndpointSlices, and the library behind `lbctl`.

pub mod agent;
pub mod bench;
pub mod conformance;
pub mod ebpf;
pub mod fuzz;
pub mod lbctl;
pub mod manifest;
pub mod model;
pub mod packets;
pub mod reconcile;
pub mod soak;
pub mod testbed;
