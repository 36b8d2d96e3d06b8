//! The pure core of the load balancer: from Kubernetes objects to the map
//! entries the kernel programs read, with no kernel, BPF toolchain or
//! network in sight, so that all of it is tested with plain `cargo test`.
//!
//! * [`manifest`]: YAML files -> Services and EndpointSlices.
//! * [`model`]: objects -> the frontends this node serves (kube-proxy's
//!   semantics), one object change at a time.
//! * [`reconcile`]: desired frontends -> map entries -> the writes that
//!   make the maps equal, behind the [`reconcile::Dataplane`] trait (a fake
//!   in memory for tests; `lb-agent`'s over the pinned maps).
//! * [`net_config`]: the cluster's ranges (`--cluster-cidr` and friends).
//! * [`conntrack`]: when a conntrack entry has expired.
//! * [`pins`]: where the agent pins its program links, which lbctl reads.

pub mod conntrack;
pub mod manifest;
pub mod model;
pub mod net_config;
pub mod pins;
pub mod reconcile;
