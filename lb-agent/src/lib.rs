//! The agent that keeps the load balancer's maps in sync with Kubernetes
//! Services and EndpointSlices (`agent`), and the kernel side as it sees
//! it (`ebpf`: the embedded object, loading, attaching, the map writers).
//! The pure work (model, reconcile) is in `lb-core`.

pub mod agent;
pub mod ebpf;
