//! sessionAffinity ClientIP end to end: every new connection from one client
//! reaches the same pod, and switching affinity off spreads new connections
//! again. Needs root and a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lb_userspace::testbed::{
    agent::AgentProcess,
    client::{Client, DEFAULT_TIMEOUT},
    privileged::require_privileged,
    scratch::ScratchDir,
    servers::Servers,
    topology::ClusterIpTopology,
    wait_until, WEB_TCP_PORT, WEB_VIP,
};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const WEB: &str = include_str!("../../examples/web.yaml");

/// examples/web.yaml with `spec` extended by `extra` (YAML lines).
fn write_web(dir: &Path, extra: &str) {
    let yaml = WEB.replacen(
        "  type: ClusterIP\n",
        &format!("  type: ClusterIP\n{extra}"),
        1,
    );
    assert_ne!(yaml, WEB, "examples/web.yaml changed shape");
    std::fs::write(dir.join("web.yaml"), yaml).unwrap();
}

fn answered_by(client: &Client, n: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for r in client
        .tcp_requests(WEB_VIP, WEB_TCP_PORT, n, DEFAULT_TIMEOUT)
        .unwrap()
    {
        *by.entry(r.expect("answered").backend).or_default() += 1;
    }
    by
}

#[test]
fn client_ip_affinity_pins_new_connections_until_switched_off() {
    if !require_privileged("client_ip_affinity_pins_new_connections_until_switched_off") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let scratch = ScratchDir::new().unwrap();
    write_web(
        scratch.path(),
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n",
    );
    let mut agent = AgentProcess::start(
        AGENT.as_ref(),
        topo.node(),
        scratch.path(),
        &topo.pod_interfaces(),
        &[],
    )
    .unwrap();
    let client = Client::new(topo.client());
    agent
        .wait_ready(Duration::from_secs(15), || {
            client
                .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
                .is_ok_and(|r| r.is_ok())
        })
        .unwrap();
    let sticky = answered_by(&client, 60);
    println!("with ClientIP affinity: {sticky:?}");
    assert_eq!(
        sticky.len(),
        1,
        "60 new connections from one client: {sticky:?}"
    );

    // Affinity off: new connections spread over the pods again.
    write_web(scratch.path(), "  sessionAffinity: None\n");
    let switched = Instant::now();
    let spread = wait_until(switched + Duration::from_secs(5), || {
        answered_by(&client, 30).len() > 1
    });
    assert!(
        spread,
        "still pinned 5 s after affinity was switched off\n{}",
        agent.log()
    );
    println!("spread again within {:?}", switched.elapsed());
    agent.stop().unwrap();
}
