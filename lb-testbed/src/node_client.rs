//! Requests from a process of the node itself (a node daemon, a
//! hostNetwork pod): `lb-testbed probe` run in the node's namespace and in
//! the cgroup the agent balances sockets of. Its packets cross no pod
//! interface, so only the agent's socket-level programs can balance them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::agent::AgentProcess;
use super::client::{parse_result, RequestResult, Transport};
use super::netns::NetNs;

/// `n` requests to `to`, one after the other, each from a fresh socket.
pub fn node_requests(
    testbed: &Path,
    agent: &AgentProcess,
    node: &NetNs,
    transport: Transport,
    to: SocketAddr,
    n: usize,
    timeout: Duration,
) -> Result<Vec<RequestResult>> {
    let transport = match transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
        Transport::UdpConnected => "udp-connected",
    };
    let out = agent
        .node_process(node, testbed)?
        .args(["probe", transport, &to.to_string()])
        .args(["--count", &n.to_string()])
        .args(["--timeout-ms", &timeout.as_millis().to_string()])
        .output()
        .context("running lb-testbed probe")?;
    if !out.status.success() {
        bail!(
            "lb-testbed probe failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let results: Vec<RequestResult> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(parse_result)
        .collect();
    if results.len() != n {
        bail!(
            "lb-testbed probe printed {} results, not {n}",
            results.len()
        );
    }
    Ok(results)
}
