//! End to end, with faults: the agent watches the in-process API server
//! (`testbed::apiserver`) as in `e2e_kube.rs`, and then the API server goes
//! down, forgets its history, or the agent is killed with SIGKILL. What a
//! kube-proxy replacement must guarantee through all of it: traffic that
//! worked keeps working, and the cluster's changes reach traffic once the
//! fault is over. Needs root and a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_testbed::{
    apiserver::RecordedRequest,
    client::{Client, DEFAULT_TIMEOUT},
    kube_bed::{web_objects, KubeBed, LINES_PORT},
    privileged::require_privileged,
    stream::{self, describe_failures, ConnectionStream, Outcome, RequestStream, StreamSnapshot},
    topology::Pod,
    wait_until, WEB_TCP_PORT, WEB_VIP,
};

const POD1_IP: &str = "10.244.1.2";
const POD2_IP: &str = "10.244.2.2";
const POD3_IP: &str = "10.244.3.2";
/// Long-lived connections exchange every 50 ms; a window of half a second
/// or more must see at least this many good exchanges per connection to
/// count as one with traffic.
const MIN_OK: u64 = 5;

/// API server down: the agent keeps the maps it has (traffic is served
/// exactly as before), does not exit, and once the API server is back its
/// watches resume (with kube-rs's backoff) and a change made meanwhile
/// reaches traffic.
#[test]
fn api_server_down_keeps_the_dataplane_then_converges() {
    if !require_privileged("api_server_down_keeps_the_dataplane_then_converges") {
        return;
    }
    let (web, slice) = web_objects();
    let mut bed = KubeBed::start(
        lb_testbed::bins::agent(),
        &[web],
        std::slice::from_ref(&slice),
        &[],
    )
    .unwrap();
    let client = Client::new(bed.topo.client());

    // Every request now gets 503, and the open watches are dropped.
    bed.api.set_unavailable(true);
    let down = Instant::now();
    let seen_before_down = bed.api.requests().len();

    // For 3 s every request is answered: nothing was flushed.
    let stream = RequestStream::start(
        bed.topo.client(),
        WEB_VIP,
        WEB_TCP_PORT,
        Duration::from_millis(30),
    )
    .unwrap();
    thread::sleep(Duration::from_secs(3));
    let outcomes = stream.stop();
    assert_all_answered(&outcomes, 80, down, "with the API server down");
    println!(
        "API server down: {} requests in {:?}, all answered",
        outcomes.len(),
        down.elapsed()
    );

    // Meanwhile the cluster changes: the slice shrinks to pod-1. The agent
    // cannot know, so a second later the other pods still answer (else the
    // API server was not really down and this test proves nothing).
    bed.api.apply_slice(shrunk(&slice, &[POD1_IP]));
    thread::sleep(Duration::from_secs(1));
    let seen = backends(&client, WEB_VIP, WEB_TCP_PORT, 30);
    assert_ne!(
        seen,
        BTreeSet::from(["pod-1".to_owned()]),
        "the slice change reached traffic while the API server was down"
    );
    assert!(
        bed.agent.exited().is_none(),
        "the agent exited while the API server was down\n{}",
        bed.agent.log()
    );
    let refused = bed.api.requests().len() - seen_before_down;
    println!(
        "the agent tried {refused} requests while the API server was down ({:?})",
        down.elapsed()
    );

    bed.api.set_unavailable(false);
    let up = Instant::now();
    let converged = wait_until(up + Duration::from_secs(30), || {
        only(bed.topo.client(), WEB_VIP, WEB_TCP_PORT, "pod-1")
    });
    assert!(
        converged,
        "the change made while the API server was down did not reach traffic within 30 s of it coming back\n{}",
        bed.agent.log()
    );
    println!(
        "API server back: the change reached traffic after {:?}",
        up.elapsed()
    );
    assert!(
        bed.agent.exited().is_none(),
        "the agent exited\n{}",
        bed.agent.log()
    );
}

/// 410 Gone: the watches break, the cluster changes, and the API server
/// compacts its history, so the watchers cannot resume (410 Gone) and must
/// re-list. The re-list must bring the maps to the new state (a deletion
/// that happened in the gap included: only a re-list can see it) without
/// ever emptying them on the way: a new connection every 10 ms to a Service
/// nobody touches must never fail.
#[test]
fn relist_after_410_converges_without_flushing() {
    if !require_privileged("relist_after_410_converges_without_flushing") {
        return;
    }
    const OLD_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
    const NEW_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
    let (web, slice) = web_objects();
    let old = service_like(&web, "old", OLD_VIP);
    let old_slice = slice_like(&slice, "old-1", "old", &[POD2_IP]);
    let mut bed = KubeBed::start(
        lb_testbed::bins::agent(),
        &[web.clone(), old],
        &[slice.clone(), old_slice],
        &[],
    )
    .unwrap();
    let client = Client::new(bed.topo.client());
    assert!(
        wait_until(Instant::now() + Duration::from_secs(5), || {
            only(bed.topo.client(), OLD_VIP, WEB_TCP_PORT, "pod-2")
        }),
        "the Service old never answered\n{}",
        bed.agent.log()
    );

    let start = Instant::now();
    let stream = RequestStream::start(
        bed.topo.client(),
        WEB_VIP,
        WEB_TCP_PORT,
        Duration::from_millis(10),
    )
    .unwrap();
    thread::sleep(Duration::from_millis(300));

    // The changes and the compaction must land while no watch is open, so
    // that the watchers resume from a version the compaction forgets. A
    // dropped watch alone does not ensure that: kube-rs takes the broken
    // stream for its end and re-watches at once. An unavailable API server
    // drops the watches and refuses the re-watches until it is back.
    bed.api.set_unavailable(true);
    assert!(
        wait_until(Instant::now() + Duration::from_secs(2), || bed
            .api
            .active_watches()
            == 0),
        "{} watches still open 2 s after the API server became unavailable",
        bed.api.active_watches()
    );
    bed.api.delete_service("default", "old");
    bed.api.delete_slice("default", "old-1");
    let compacted_at = bed.api.requests().len();
    bed.api.compact_history();
    bed.api.set_unavailable(false);
    let changed = Instant::now();
    bed.api.apply_service(service_like(&web, "new", NEW_VIP));
    bed.api
        .apply_slice(slice_like(&slice, "new-1", "new", &[POD3_IP]));

    let converged = wait_until(changed + Duration::from_secs(20), || {
        only(bed.topo.client(), NEW_VIP, WEB_TCP_PORT, "pod-3")
            && matches!(
                client.tcp_request(OLD_VIP, WEB_TCP_PORT, Duration::from_millis(300)),
                Ok(Err(_))
            )
    });
    let took = changed.elapsed();
    // Some more traffic after the re-list, then the verdict on all of it.
    thread::sleep(Duration::from_millis(500));
    let outcomes = stream.stop();
    let after_410 = &bed.api.requests()[compacted_at..];
    println!(
        "after the compaction the agent sent: {}",
        after_410
            .iter()
            .map(describe_request)
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        converged,
        "after the 410 the agent did not converge in 20 s (old must be gone, new must answer from pod-3)\n{}",
        bed.agent.log()
    );
    println!("re-list after 410: both changes reached traffic after {took:?}");
    for resource in ["services", "endpointslices"] {
        assert!(
            after_410
                .iter()
                .any(|r| !r.is_watch() && r.path.ends_with(resource)),
            "no LIST of {resource} after the history was compacted: the 410 re-list did not happen"
        );
    }
    assert_all_answered(
        &outcomes,
        (start.elapsed().as_millis() / 10 / 3) as usize,
        start,
        "during the 410 re-list",
    );
    println!(
        "{} requests over {:?}, all answered",
        outcomes.len(),
        start.elapsed()
    );
    assert!(
        bed.agent.exited().is_none(),
        "the agent exited\n{}",
        bed.agent.log()
    );
}

/// `kill -9` of the agent, then a restart on the same pin directory: the
/// pinned maps and programs keep serving while no agent runs (established
/// connections and new ones), the new agent adopts them without a gap, and
/// it still applies changes afterwards. Established connections to
/// endpoints removed from the slice keep working, as with kube-proxy (whose
/// conntrack entries outlive the endpoint's iptables rules).
#[test]
fn kill9_restart_keeps_established_connections() {
    if !require_privileged("kill9_restart_keeps_established_connections") {
        return;
    }
    let (web, slice) = web_objects();
    let mut bed = KubeBed::start(
        lb_testbed::bins::agent(),
        &[web],
        std::slice::from_ref(&slice),
        &[],
    )
    .unwrap();
    let client_pod = bed.topo.client();
    let client = Client::new(client_pod);

    let conns = open_connections(client_pod);
    thread::sleep(Duration::from_millis(500));
    let before = conns.snapshot();
    assert_window(&before, MIN_OK, "before kill -9");

    // kill -9: nothing detached, nothing unpinned.
    bed.agent.kill9().unwrap();
    let killed = Instant::now();
    let fresh = RequestStream::start(
        client_pod,
        WEB_VIP,
        WEB_TCP_PORT,
        Duration::from_millis(100),
    )
    .unwrap();
    thread::sleep(Duration::from_millis(1500));
    let fresh = fresh.stop();
    let dead = conns.snapshot();
    let mut problems = window_problems(&dead.since(&before), MIN_OK, "after kill -9");
    if fresh.iter().any(|o| o.result.is_err()) {
        problems.push(format!(
            "after kill -9, new connections to {WEB_VIP}:{WEB_TCP_PORT}: {}",
            describe_failures(&fresh, killed)
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "no agent for {:?}: {} exchanges on established connections and {} new connections, none failed",
        killed.elapsed(),
        dead.since(&before).ok(),
        fresh.len()
    );

    // Restart on the same pin directory. It is up once it has listed both
    // resources; then give it a little longer to adopt and sync.
    let restarted_at = bed.api.requests().len();
    let restarted = Instant::now();
    bed.agent.restart(bed.topo.node()).unwrap();
    let listed = wait_until(restarted + Duration::from_secs(10), || {
        let requests = bed.api.requests();
        ["services", "endpointslices"].iter().all(|resource| {
            requests[restarted_at..]
                .iter()
                .any(|r| !r.is_watch() && r.path.ends_with(resource))
        })
    });
    assert!(
        listed,
        "the restarted agent did not list Services and EndpointSlices in 10 s\n{}",
        bed.agent.log()
    );
    println!(
        "restarted agent listed the cluster after {:?}",
        restarted.elapsed()
    );
    thread::sleep(Duration::from_secs(1));
    assert!(
        bed.agent.exited().is_none(),
        "the restarted agent exited\n{}",
        bed.agent.log()
    );
    // It took over the pinned links rather than detaching and attaching
    // anew (which would leave a gap without programs).
    let log = bed.agent.log();
    let restarted_log = log.split("lb-agent restarted").nth(1).unwrap_or_default();
    assert!(
        restarted_log.contains("adopted the attached programs")
            && !restarted_log.contains("attaching anew"),
        "the restarted agent did not adopt the attached programs\n{log}"
    );
    let adopted = conns.snapshot();
    assert_window(&adopted.since(&dead), MIN_OK, "across the restart");
    let fresh = client
        .tcp_requests(WEB_VIP, WEB_TCP_PORT, 10, DEFAULT_TIMEOUT)
        .unwrap();
    assert!(
        fresh.iter().all(|r| r.is_ok()),
        "after the restart, new connections failed: {fresh:?}"
    );

    // The restarted agent applies changes, and established connections to
    // the endpoints it removes keep working.
    shrink_to_pod1_keeping_connections(&mut bed, &conns, &slice, adopted, "the restarted agent");
}

/// Without any fault: an endpoint leaving the slice gets no new connections,
/// but its established connections keep working, as with kube-proxy (whose
/// conntrack entries outlive the endpoint's iptables rules; it only flushes
/// UDP entries). A terminating pod drains its connections this way. Kept
/// apart from the kill -9 test so that each says what broke.
#[test]
fn removed_endpoint_keeps_its_established_connections() {
    if !require_privileged("removed_endpoint_keeps_its_established_connections") {
        return;
    }
    let (web, slice) = web_objects();
    let mut bed = KubeBed::start(
        lb_testbed::bins::agent(),
        &[web],
        std::slice::from_ref(&slice),
        &[],
    )
    .unwrap();
    let conns = open_connections(bed.topo.client());
    thread::sleep(Duration::from_millis(500));
    let before = conns.snapshot();
    assert_window(&before, MIN_OK, "before the change");
    shrink_to_pod1_keeping_connections(&mut bed, &conns, &slice, before, "the agent");
}

/// Opens 12 long-lived connections through `web`'s line port; at least one
/// must reach a pod other than pod-1 (all 12 on pod-1 has odds of 1 in
/// 500 000), since the tests then remove those pods from the slice.
fn open_connections(client: &Pod) -> ConnectionStream {
    let conns =
        ConnectionStream::open(client, WEB_VIP, LINES_PORT, 12, Duration::from_millis(50)).unwrap();
    let on: Vec<String> = conns
        .snapshot()
        .connections
        .iter()
        .map(|c| c.backend.clone())
        .collect();
    println!("12 long-lived connections, to {on:?}");
    assert!(
        on.iter().any(|b| b != "pod-1"),
        "all 12 connections went to pod-1"
    );
    conns
}

/// Shrinks `slice` to pod-1; new connections (both ports) must reach only
/// pod-1 within 5 s, and the established connections, pod-2's and pod-3's
/// included, must not fail from `since` on and keep exchanging for a second
/// after the change.
fn shrink_to_pod1_keeping_connections(
    bed: &mut KubeBed,
    conns: &ConnectionStream,
    slice: &EndpointSlice,
    since: StreamSnapshot,
    agent: &str,
) {
    bed.api.apply_slice(shrunk(slice, &[POD1_IP]));
    let changed = Instant::now();
    let applied = wait_until(changed + Duration::from_secs(5), || {
        only(bed.topo.client(), WEB_VIP, WEB_TCP_PORT, "pod-1")
            && only(bed.topo.client(), WEB_VIP, LINES_PORT, "pod-1")
    });
    assert!(
        applied,
        "{agent} did not apply a slice change in 5 s\n{}",
        bed.agent.log()
    );
    println!(
        "{agent} applied a slice change within {:?}",
        changed.elapsed()
    );
    let applied_at = conns.snapshot();
    thread::sleep(Duration::from_secs(1));
    let end = conns.snapshot();
    let when = "after the slice shrank to pod-1 (established connections to removed endpoints must keep working, as with kube-proxy)";
    let mut problems = window_problems(&end.since(&since), 0, when);
    if problems.is_empty() {
        problems = window_problems(&end.since(&applied_at), MIN_OK, when);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        bed.agent.exited().is_none(),
        "the agent exited\n{}",
        bed.agent.log()
    );
}

/// `service` under another name and ClusterIP.
fn service_like(service: &Service, name: &str, cluster_ip: Ipv4Addr) -> Service {
    let mut copy = service.clone();
    copy.metadata.name = Some(name.into());
    let spec = copy.spec.as_mut().expect("a Service has a spec");
    spec.cluster_ip = Some(cluster_ip.to_string());
    spec.cluster_ips = Some(vec![cluster_ip.to_string()]);
    copy
}

/// `slice` renamed, for Service `service`, with only the endpoints at `ips`.
fn slice_like(slice: &EndpointSlice, name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    let mut copy = shrunk(slice, ips);
    copy.metadata.name = Some(name.into());
    copy.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("kubernetes.io/service-name".into(), service.into());
    copy
}

/// `slice` with only the endpoints at `ips`.
fn shrunk(slice: &EndpointSlice, ips: &[&str]) -> EndpointSlice {
    let mut copy = slice.clone();
    copy.endpoints
        .retain(|e| e.addresses.iter().all(|a| ips.contains(&a.as_str())));
    copy
}

/// Whether 20 new connections from `client` to `ip:port` are all answered
/// by `backend`.
fn only(client: &Pod, ip: Ipv4Addr, port: u16, backend: &str) -> bool {
    stream::requests(client, ip, port, 20)
        .is_ok_and(|rs| rs.iter().all(|r| r.result.as_deref() == Ok(backend)))
}

/// The pods that answered `n` new connections to `ip:port`.
fn backends(client: &Client, ip: Ipv4Addr, port: u16, n: usize) -> BTreeSet<String> {
    client
        .tcp_requests(ip, port, n, DEFAULT_TIMEOUT)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.ok().map(|r| r.backend))
        .collect()
}

/// Fails unless every request was answered and there were at least `min`.
fn assert_all_answered(outcomes: &[Outcome], min: usize, origin: Instant, when: &str) {
    assert!(
        outcomes.iter().all(|o| o.result.is_ok()),
        "{when}: {}",
        describe_failures(outcomes, origin)
    );
    assert!(
        outcomes.len() >= min,
        "{when}: only {} requests were made, expected at least {min}",
        outcomes.len()
    );
}

/// What went wrong on the established connections over a window: failed
/// exchanges, or connections with fewer than `min_ok` good ones (a stall
/// is a failure too, and a window with no traffic proves nothing).
fn window_problems(window: &StreamSnapshot, min_ok: u64, when: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if window.failed() > 0 {
        problems.push(format!(
            "{when}: {} of {} exchanges on established connections failed",
            window.failed(),
            window.failed() + window.ok()
        ));
    }
    let stalled = window.stalled(min_ok).len();
    if stalled > 0 {
        problems.push(format!(
            "{when}: {stalled} established connections had fewer than {min_ok} answered exchanges"
        ));
    }
    if !problems.is_empty() {
        problems.push(window.summary());
    }
    problems
}

fn assert_window(window: &StreamSnapshot, min_ok: u64, when: &str) {
    let problems = window_problems(window, min_ok, when);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `LIST services`, `WATCH endpointslices rv=12`, ...
fn describe_request(r: &RecordedRequest) -> String {
    let resource = r.path.rsplit('/').next().unwrap_or_default();
    match (r.is_watch(), r.param("resourceVersion")) {
        (true, Some(rv)) => format!("WATCH {resource} rv={rv}"),
        (true, None) => format!("WATCH {resource}"),
        (false, _) => format!("LIST {resource}"),
    }
}
