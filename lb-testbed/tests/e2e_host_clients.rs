//! Clients in the node's own network namespace (node daemons, hostNetwork
//! pods: upstream's "node-Service" checks and every verifyUp from a
//! hostNetwork pod): their packets cross no pod interface, so the agent
//! balances their sockets at connect() / sendmsg() instead, and they see
//! the frontend as their peer. Needs root, a bpffs and cgroup v2;
//! LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use lb_testbed::{
    client::{RequestError, RequestResult, Transport, DEFAULT_TIMEOUT},
    node_client::node_requests,
    privileged::require_privileged,
    web_bed::{WebBed, WEB_YAML},
    WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP,
};

const TESTBED: &str = env!("CARGO_BIN_EXE_lb-testbed");
/// A Service without endpoints.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const EMPTY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec:\n  clusterIP: 10.96.0.11\n  ports: [{name: http, port: 80, protocol: TCP}]\n";
const REQUESTS: usize = 30;

fn backends(results: &[RequestResult], frontend: SocketAddr) -> BTreeSet<String> {
    results
        .iter()
        .map(|r| {
            let reply = r
                .as_ref()
                .unwrap_or_else(|e| panic!("request to {frontend}: {e}"));
            assert_eq!(reply.reply_from, frontend, "the peer the node process sees");
            reply.backend.clone()
        })
        .collect()
}

#[test]
fn node_processes_reach_services_and_see_the_frontend() {
    if !require_privileged("node_processes_reach_services_and_see_the_frontend") {
        return;
    }
    let bed = WebBed::start(
        lb_testbed::bins::agent(),
        &[("web.yaml", WEB_YAML), ("empty.yaml", EMPTY)],
        &[],
    )
    .unwrap();
    let (agent, node) = (&bed.agent, bed.topo.node());
    let requests = |transport, to: SocketAddr, n| {
        node_requests(
            TESTBED.as_ref(),
            agent,
            node,
            transport,
            to,
            n,
            DEFAULT_TIMEOUT,
        )
        .unwrap()
    };

    let tcp = SocketAddr::from((WEB_VIP, WEB_TCP_PORT));
    let by = backends(&requests(Transport::Tcp, tcp, REQUESTS), tcp);
    println!("node process, TCP {tcp}: answered by {by:?}");
    assert!(by.len() > 1, "{REQUESTS} connections all to {by:?}");

    let udp = SocketAddr::from((WEB_VIP, WEB_UDP_PORT));
    let by = backends(&requests(Transport::Udp, udp, REQUESTS), udp);
    println!("node process, UDP {udp}: answered by {by:?}");
    assert!(by.len() > 1, "{REQUESTS} datagrams all to {by:?}");

    // No endpoints: refused at connect(), well before any timeout.
    let empty = SocketAddr::from((EMPTY_VIP, 80));
    let start = Instant::now();
    let refused = requests(Transport::Tcp, empty, 1);
    let took = start.elapsed();
    println!("node process, TCP {empty} without endpoints: {refused:?} after {took:?}");
    assert_eq!(refused, [Err(RequestError::Refused)]);
    // The probe process's own start-up is most of it.
    assert!(took < Duration::from_millis(500), "refused after {took:?}");
}
