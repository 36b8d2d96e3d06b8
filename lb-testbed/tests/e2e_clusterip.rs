//! End to end: a client pod reaches the backends of `examples/web.yaml`'s
//! ClusterIP Service through the agent, in a namespace topology that mimics
//! a node (see `lb_testbed`). Needs root and a bpffs; set
//! LB_SKIP_PRIVILEGED=1 to skip.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use lb_testbed::agent::AgentProcess;
use lb_testbed::client::{Client, DEFAULT_TIMEOUT};
use lb_testbed::privileged::require_privileged;
use lb_testbed::scratch::{copy_manifests, ScratchDir};
use lb_testbed::servers::{Servers, TCP_PORT, UDP_PORT};
use lb_testbed::tally::Tally;
use lb_testbed::topology::ClusterIpTopology;
use lb_testbed::{WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP};
use serde::Deserialize as _;
use serde_yaml::Value;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
const REQUESTS: usize = 300;
/// The backend the test removes from the EndpointSlice, `pod-3`.
const REMOVED_IP: &str = "10.244.3.2";
const REMOVED_POD: &str = "pod-3";

/// Without the agent: the client reaches a pod directly, routed through the
/// node's conntrack INVALID drop rule, and the ClusterIP does not answer.
/// Checks the topology, the servers and the client, and gives the numbers a
/// load balancer is compared with.
#[test]
fn baseline_without_nat() {
    if !require_privileged("baseline_without_nat") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let client = Client::new(topo.client());
    let pod = &topo.backends()[0];

    let start = Instant::now();
    let tcp = client
        .tcp_requests(pod.ip, TCP_PORT, REQUESTS, DEFAULT_TIMEOUT)
        .unwrap();
    let tcp_time = start.elapsed();
    let start = Instant::now();
    let udp = client
        .udp_requests(pod.ip, UDP_PORT, REQUESTS, DEFAULT_TIMEOUT)
        .unwrap();
    let udp_time = start.elapsed();

    let names = [pod.name.as_str()];
    let tcp = Tally::new((pod.ip, TCP_PORT).into(), topo.client().ip, names, &tcp);
    let udp = Tally::new((pod.ip, UDP_PORT).into(), topo.client().ip, names, &udp);
    println!(
        "{}  in {tcp_time:?}\n{}  in {udp_time:?}",
        tcp.render("TCP"),
        udp.render("UDP")
    );
    for tally in [&tcp, &udp] {
        assert!(tally.problems().is_empty(), "{:?}", tally.problems());
        assert_eq!(tally.count(&pod.name), REQUESTS);
    }

    // Every pod is reachable, and nothing answers for the VIP yet.
    for pod in topo.backends() {
        let reply = client
            .tcp_request(pod.ip, TCP_PORT, DEFAULT_TIMEOUT)
            .unwrap();
        assert_eq!(reply.map(|r| r.backend).as_deref(), Ok(pod.name.as_str()));
    }
    let vip = client
        .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
        .unwrap();
    assert!(vip.is_err(), "{WEB_VIP} answered without an agent: {vip:?}");
}

#[test]
fn clusterip_balances_and_follows_endpoint_removal() {
    if !require_privileged("clusterip_balances_and_follows_endpoint_removal") {
        return;
    }
    let test_start = Instant::now();
    // The agent reads a copy, which the test edits later.
    let scratch = ScratchDir::new().unwrap();
    let manifests = scratch.path().join("manifests");
    fs::create_dir(&manifests).unwrap();
    copy_manifests(Path::new(EXAMPLES), &manifests).unwrap();

    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let client = Client::new(topo.client());
    let mut agent = AgentProcess::start(
        Path::new(lb_testbed::bins::agent()),
        topo.node(),
        &manifests,
        &topo.pod_interfaces(),
        &["--log-level", "debug"],
    )
    .unwrap();
    let ready = agent
        .wait_ready(Duration::from_secs(15), || {
            matches!(
                client.tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT),
                Ok(Ok(_))
            )
        })
        .unwrap();
    println!("agent ready after {ready:?}");

    let names: Vec<&str> = topo
        .backends()
        .iter()
        .map(|pod| pod.name.as_str())
        .collect();
    let client_ip = topo.client().ip;
    let tcp = client
        .tcp_requests(WEB_VIP, WEB_TCP_PORT, REQUESTS, DEFAULT_TIMEOUT)
        .unwrap();
    let tcp = Tally::new(
        (WEB_VIP, WEB_TCP_PORT).into(),
        client_ip,
        names.iter().copied(),
        &tcp,
    );
    let udp = client
        .udp_requests(WEB_VIP, WEB_UDP_PORT, REQUESTS, DEFAULT_TIMEOUT)
        .unwrap();
    let udp = Tally::new(
        (WEB_VIP, WEB_UDP_PORT).into(),
        client_ip,
        names.iter().copied(),
        &udp,
    );
    println!("{}\n{}", tcp.render("TCP"), udp.render("UDP"));
    for (proto, tally) in [("TCP", &tcp), ("UDP", &udp)] {
        // Covers: all answered, source preserved, UDP answers from the VIP.
        assert!(
            tally.problems().is_empty(),
            "{proto}: {:?}",
            tally.problems()
        );
        for name in &names {
            assert!(
                tally.share(name) >= 0.2,
                "{proto}: {name} got only {} of {REQUESTS}",
                tally.count(name)
            );
        }
    }

    remove_endpoint(&manifests, scratch.path(), REMOVED_IP);
    let removed_at = Instant::now();
    let converged =
        avoids_backend_after(&client, REMOVED_POD, removed_at, Duration::from_secs(2), 50);
    let converged = converged.unwrap_or_else(|hits| {
        panic!("{REMOVED_POD} still chosen 2 s after its endpoint was removed; answers since: {hits:?}")
    });
    println!("{REMOVED_POD} no longer chosen {converged:?} after its endpoint was removed");

    let after = client
        .tcp_requests(WEB_VIP, WEB_TCP_PORT, 100, DEFAULT_TIMEOUT)
        .unwrap();
    let after = Tally::new(
        (WEB_VIP, WEB_TCP_PORT).into(),
        client_ip,
        names.iter().copied(),
        &after,
    );
    println!("{}", after.render("TCP after the removal"));
    assert!(after.problems().is_empty(), "{:?}", after.problems());
    assert_eq!(after.count(REMOVED_POD), 0);
    println!("whole test took {:?}", test_start.elapsed());
}

/// Drops the endpoint with address `ip` from the EndpointSlices in
/// `manifests`, replacing each changed file atomically (written in `staging`,
/// then renamed) so the agent never reads half a file.
fn remove_endpoint(manifests: &Path, staging: &Path, ip: &str) {
    let mut removed = 0;
    for entry in fs::read_dir(manifests).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        let docs: Result<Vec<Value>, _> = serde_yaml::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect();
        let mut docs = docs.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let before = removed;
        for doc in &mut docs {
            if doc["kind"].as_str() != Some("EndpointSlice") {
                continue;
            }
            if let Some(endpoints) = doc.get_mut("endpoints").and_then(Value::as_sequence_mut) {
                let n = endpoints.len();
                endpoints.retain(|ep| {
                    !ep["addresses"]
                        .as_sequence()
                        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(ip)))
                });
                removed += n - endpoints.len();
            }
        }
        if removed > before {
            // Null documents are the empty ones around `---`: not worth keeping.
            let docs: Vec<String> = docs
                .iter()
                .filter(|d| !d.is_null())
                .map(|d| serde_yaml::to_string(d).unwrap())
                .collect();
            let staged = staging.join(path.file_name().unwrap());
            fs::write(&staged, docs.join("---\n")).unwrap();
            fs::rename(&staged, &path).unwrap();
        }
    }
    assert_eq!(
        removed,
        1,
        "expected one endpoint with address {ip} in {}",
        manifests.display()
    );
}

/// Opens new connections to the VIP until `streak` in a row succeed without
/// reaching `gone`. Returns how long after `since` the first of them was
/// opened, or, if no such run began within `limit`, which backends (or
/// errors) answered meanwhile.
fn avoids_backend_after(
    client: &Client,
    gone: &str,
    since: Instant,
    limit: Duration,
    streak: usize,
) -> Result<Duration, BTreeMap<String, usize>> {
    let mut answers = BTreeMap::new();
    let mut run: Option<(Duration, usize)> = None;
    loop {
        let opened = since.elapsed();
        if run.is_none() && opened > limit {
            return Err(answers);
        }
        let answer = client
            .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
            .unwrap();
        let label = answer
            .as_ref()
            .map_or_else(|e| e.to_string(), |reply| reply.backend.clone());
        *answers.entry(label).or_default() += 1;
        run = match (answer, run) {
            (Ok(reply), Some((first, n))) if reply.backend != gone => Some((first, n + 1)),
            (Ok(reply), None) if reply.backend != gone => Some((opened, 1)),
            _ => None,
        };
        if let Some((first, n)) = run {
            if n == streak {
                return Ok(first);
            }
        }
    }
}
