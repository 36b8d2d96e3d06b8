//! The test harness of the lb agent: throwaway network-namespace
//! topologies that look like a Kubernetes node with a routed CNI, a fake
//! API server, clients and servers, and what runs on them: the end-to-end
//! suites (`tests/`), `lb-testbed demo`, the benchmarks (`bench`), the
//! upstream conformance scenarios (`conformance`), datapath fuzzing
//! (`fuzz`, with the BPF_PROG_TEST_RUN `fixture`) and the soak.
//!
//! Safety rule every piece here follows: traffic only flows between
//! namespaces this module creates, over veth pairs created directly inside
//! them. The root namespace never holds one of our links or routes, so no
//! packet can reach the machine's real interfaces. Everything is torn down by
//! `Drop` guards, also when a test panics.
//!
//! Typical use (as root):
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use lb_testbed::client::{Client, DEFAULT_TIMEOUT};
//! use lb_testbed::servers::{Servers, TCP_PORT};
//! use lb_testbed::topology::ClusterIpTopology;
//!
//! let topo = ClusterIpTopology::create(3)?; // node, pod-1..pod-3, client
//! let _servers = Servers::start(topo.backends())?;
//! let pod = &topo.backends()[0];
//! let replies = Client::new(topo.client()).tcp_requests(pod.ip, TCP_PORT, 10, DEFAULT_TIMEOUT)?;
//! assert!(replies.iter().all(|r| r.as_ref().is_ok_and(|r| r.backend == "pod-1")));
//! # Ok(()) }
//! ```

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod bins;
pub mod bulk;
pub mod cgroup;
pub mod client;
pub mod conformance;
pub mod fixture;
pub mod flood;
pub mod fuzz;
pub mod http_get;
pub mod kube_bed;
pub mod lbctl_run;
pub mod links;
pub mod multinode;
pub mod netns;
pub mod node_client;
mod ns_command;
pub mod packets;
pub mod port_servers;
pub mod privileged;
pub mod scratch;
pub mod servers;
pub mod soak;
pub mod stream;
pub mod tally;
pub mod topology;
pub mod web_bed;

/// The ClusterIP of the `web` Service in `examples/web.yaml`.
pub const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Its TCP frontend port (target port [`servers::TCP_PORT`]).
pub const WEB_TCP_PORT: u16 = 80;
/// Its UDP frontend port (target port [`servers::UDP_PORT`]).
pub const WEB_UDP_PORT: u16 = 53;

/// A short name no other testbed object uses, on this machine or in this
/// process: `lbt<pid>-<n>`. The pid separates concurrent test binaries, the
/// counter separates the tests running in parallel inside one of them.
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "lbt{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Calls `poll` until it returns true or `deadline` passes; returns whether it
/// succeeded. `poll` runs at least once, even if the deadline already passed.
pub fn wait_until(deadline: Instant, mut poll: impl FnMut() -> bool) -> bool {
    loop {
        if poll() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
