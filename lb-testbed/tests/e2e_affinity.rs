//! sessionAffinity ClientIP end to end: every new connection from one client
//! reaches the same pod, and switching affinity off spreads new connections
//! again. Needs root and a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lb_testbed::{
    agent::AgentProcess,
    client::{Client, DEFAULT_TIMEOUT},
    privileged::require_privileged,
    scratch::ScratchDir,
    servers::Servers,
    topology::ClusterIpTopology,
    wait_until, WEB_TCP_PORT, WEB_VIP,
};

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
        lb_testbed::bins::agent(),
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

/// The smallest timeout the API allows (`sessionAffinityConfig.clientIP.
/// timeoutSeconds` is 1..=86400), so that the test waits least.
const AFFINITY_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle time per round of the expiry check: the timeout and a margin.
const IDLE: Duration = Duration::from_millis(1500);
/// Rounds of "idle, then a new connection". With 3 pods a fresh pick lands
/// on the pinned pod with probability 1/3, so all 9 rounds do by chance
/// with probability (1/3)^9 = 5.1e-5: the odds of a false failure.
const EXPIRY_ROUNDS: usize = 9;

/// sessionAffinity ClientIP with a 1 s timeout: new connections made more
/// often than the timeout stay on one pod (for longer than the timeout:
/// each new connection restarts the clock, as kube-proxy's `recent` match
/// does), and once the client was idle for longer than the timeout, its
/// next connection is balanced afresh and pins the client again.
///
/// Upstream: "should have session affinity timeout work for service with
/// type clusterIP" (test/e2e/network/service.go): timeoutSeconds 125, 15
/// identical answers in a row, then up to 10 requests 130 s apart must
/// eventually reach another backend. Scaled down to a 1 s timeout, with
/// the number of rounds chosen for the odds above.
#[test]
fn client_ip_affinity_expires_after_the_idle_timeout() {
    if !require_privileged("client_ip_affinity_expires_after_the_idle_timeout") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let scratch = ScratchDir::new().unwrap();
    write_web(
        scratch.path(),
        &format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {}}}}}\n",
            AFFINITY_TIMEOUT.as_secs()
        ),
    );
    let mut agent = AgentProcess::start(
        lb_testbed::bins::agent(),
        topo.node(),
        scratch.path(),
        &topo.pod_interfaces(),
        &[],
    )
    .unwrap();
    let client = Client::new(topo.client());
    let one = || -> String {
        client
            .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
            .unwrap()
            .expect("answered")
            .backend
    };
    agent
        .wait_ready(Duration::from_secs(15), || {
            client
                .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
                .is_ok_and(|r| r.is_ok())
        })
        .unwrap();

    // Connections 200 ms apart for 3 timeouts: all on one pod.
    let start = Instant::now();
    let mut last = Instant::now();
    let mut sticky = BTreeMap::<String, usize>::new();
    while start.elapsed() < 3 * AFFINITY_TIMEOUT {
        let gap = last.elapsed();
        last = Instant::now();
        assert!(
            gap < AFFINITY_TIMEOUT * 4 / 5,
            "the test could not connect often enough ({gap:?} between connections)"
        );
        *sticky.entry(one()).or_default() += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "connections every 200 ms for {:?} (timeout {AFFINITY_TIMEOUT:?}): {sticky:?}",
        start.elapsed()
    );
    assert_eq!(
        sticky.len(),
        1,
        "new connections more often than the affinity timeout changed pods: {sticky:?}"
    );
    let mut pinned = sticky.into_keys().next().unwrap();

    // Idle past the timeout, then: a new pick, which sticks again.
    let mut moved = 0;
    let mut rounds = Vec::new();
    for _ in 0..EXPIRY_ROUNDS {
        std::thread::sleep(IDLE);
        let fresh = one();
        let again = [one(), one()];
        assert!(
            again.iter().all(|b| *b == fresh),
            "after {fresh} was picked afresh, the next connections went to {again:?}"
        );
        moved += usize::from(fresh != pinned);
        rounds.push(format!("{pinned} -> {fresh}"));
        pinned = fresh;
    }
    println!("after {IDLE:?} idle, {EXPIRY_ROUNDS} rounds: {rounds:?}; {moved} changed pods");
    assert!(
        moved > 0,
        "in {EXPIRY_ROUNDS} rounds, a new connection after {IDLE:?} idle (timeout {AFFINITY_TIMEOUT:?}) always went to the pod of the one before: {rounds:?}\n{}",
        agent.log()
    );
    agent.stop().unwrap();
}
