//! The agent repairs what is broken behind its back, as kube-proxy
//! recreates deleted rules (upstream "should recreate iptables rules if
//! deleted", within ~2 min): a pod interface's DNAT program (TC ingress)
//! and the socket programs detached (`bpftool link detach`) are attached again within one
//! monitor period (5 s). Needs root, a bpffs and cgroup v2;
//! LB_SKIP_PRIVILEGED=1 skips.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lb_testbed::{
    client::{Transport, DEFAULT_TIMEOUT},
    links::detach_pinned,
    node_client::node_requests,
    privileged::require_privileged,
    wait_until,
    web_bed::{WebBed, WEB_YAML},
    WEB_TCP_PORT, WEB_VIP,
};

const TESTBED: &str = env!("CARGO_BIN_EXE_lb-testbed");
/// One monitor period (5 s) and an interface sync, with slack.
const REPAIRED_WITHIN: Duration = Duration::from_secs(8);

#[test]
fn detached_programs_are_attached_again() {
    if !require_privileged("detached_programs_are_attached_again") {
        return;
    }
    let bed = WebBed::start(lb_testbed::bins::agent(), &[("web.yaml", WEB_YAML)], &[]).unwrap();
    let client = bed.client();
    let answers = || {
        client
            .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
            .is_ok_and(|r| r.is_ok())
    };
    let host_if = &bed.topo.client().host_if;
    let links = bed.agent.pin_dir().join("links");
    let dir: PathBuf = std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!("-{host_if}")))
        .expect("the client interface's pins");
    // The DNAT program: TC ingress, the default pod hook.
    let dnat = dir.join("tc-ingress");
    assert!(dnat.exists(), "its TC ingress pin");

    detach_pinned(&dnat).unwrap();
    let detached = Instant::now();
    assert!(
        !answers(),
        "the ClusterIP still answered without the DNAT program"
    );
    assert!(
        wait_until(detached + REPAIRED_WITHIN, answers),
        "not repaired within {REPAIRED_WITHIN:?}\n{}",
        bed.agent.log()
    );
    println!(
        "DNAT program attached again within {:?}",
        detached.elapsed()
    );

    // The socket programs: a node process reaches the ClusterIP again.
    let node = bed.topo.node();
    let to = SocketAddr::from((WEB_VIP, WEB_TCP_PORT));
    let node_answers = || {
        node_requests(
            TESTBED.as_ref(),
            &bed.agent,
            node,
            Transport::Tcp,
            to,
            1,
            DEFAULT_TIMEOUT,
        )
        .is_ok_and(|r| r[0].is_ok())
    };
    assert!(node_answers());
    let connect4 = bed
        .agent
        .pin_dir()
        .join("sock-links")
        .join("lb_sock_connect4");
    detach_pinned(&connect4).unwrap();
    let detached = Instant::now();
    assert!(
        !node_answers(),
        "a node process still reached the ClusterIP"
    );
    assert!(
        wait_until(detached + REPAIRED_WITHIN, node_answers),
        "socket programs not repaired within {REPAIRED_WITHIN:?}\n{}",
        bed.agent.log()
    );
    println!(
        "socket programs attached again within {:?}",
        detached.elapsed()
    );
}
