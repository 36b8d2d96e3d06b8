//! The kernel side as userspace sees it: the embedded object, loading it
//! with its maps pinned, attaching the programs to interfaces, and the
//! `Dataplane` implementation over the pinned maps.

mod attach;
mod backend_stats;
mod batch;
mod config;
mod dataplane;
pub mod filter;
mod monitor;
mod node_addrs;
mod object;
mod private_dir;
pub mod probe;
pub mod sock_lb;
mod svc_names;
mod writer;

pub use attach::{
    detach_pinned, Attacher, PodHook, Role, TcAttachArg, TcMode, XdpModeArg, NODE_INTERFACES,
    POD_INTERFACES, POD_INTERFACES_XDP, TC_NL_HANDLE, TC_NL_PRIORITY,
};
pub use config::ConfigMap;
pub use dataplane::BpfDataplane;
pub use filter::FilterMap;
pub use monitor::{DatapathMonitor, ReasonTotals};
pub use node_addrs::{NodeAddrMap, NodeAddresses};
pub use object::{load, EBPF_OBJECT};
pub use svc_names::SvcNameMap;
pub use writer::MapWriter;
