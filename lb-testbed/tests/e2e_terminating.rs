//! Endpoint conditions end to end, the way a cluster changes them: the agent
//! watches the in-process API server (`testbed::apiserver`), and the test
//! walks EndpointSlices through what the EndpointSlice controller writes
//! while pods shut down: `ready: false, serving: true, terminating: true`
//! while a terminating pod still passes its readiness probe, `serving:
//! false` once it stops, and finally no endpoint at all. What a client must
//! see (KEP-1669, kube-proxy's behaviour): a terminating pod keeps its
//! established connections and gets no new ones while another pod is
//! ready; when every endpoint is terminating, the serving ones take new
//! connections rather than the Service refusing them. Needs root and a
//! bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
use lb_testbed::{
    client::{Client, RequestError, DEFAULT_TIMEOUT},
    kube_bed::{web_objects, KubeBed, LINES_PORT},
    privileged::require_privileged,
    stream::{self, ConnectionStream, StreamSnapshot},
    topology::{ClusterIpTopology, Pod},
    wait_until, WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP,
};

/// How long the agent gets to bring a slice change to traffic.
const CONVERGE: Duration = Duration::from_secs(5);
/// Long-lived connections exchange every 50 ms; a window of a second must
/// see at least this many good exchanges per connection.
const MIN_OK: u64 = 5;
/// New connections per check. A pod that should get none but still had a
/// third of them would go unnoticed with probability (2/3)^150 < 1e-26.
const NEW: usize = 150;

/// Endpoint conditions, as the EndpointSlice controller sets them.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Deleted, in its grace period, still passing its readiness probe:
    /// `ready: false, serving: true, terminating: true`.
    ServingTerminating,
    /// Deleted and no longer ready: `ready: false, serving: false,
    /// terminating: true`.
    Terminating,
}

/// (a) and (b): a pod turns serving-and-terminating while the others stay
/// ready. Its established connections keep working (exchanges every 50 ms,
/// none may fail, and they keep coming from that pod), and no new
/// connection reaches it, on either TCP port.
///
/// Upstream: kube-proxy leaves established connections to a terminating
/// endpoint alone (only UDP conntrack entries are flushed), which is what
/// "no connectivity disruption during rolling update with
/// externalTrafficPolicy=Cluster/Local" (test/e2e/network/loadbalancer.go)
/// relies on; new connections go to ready endpoints only whenever there is
/// one ("Networking Granular Checks: should update endpoints: http": after a
/// pod is deleted, only the remaining endpoints answer).
#[test]
fn terminating_endpoint_keeps_its_connections_and_gets_no_new_ones() {
    if !require_privileged("terminating_endpoint_keeps_its_connections_and_gets_no_new_ones") {
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
    let client = bed.topo.client();

    // 12 long-lived connections; the pod of the first one will terminate.
    let conns =
        ConnectionStream::open(client, WEB_VIP, LINES_PORT, 12, Duration::from_millis(50)).unwrap();
    let leaving = conns.snapshot().connections[0].backend.clone();
    let leaving_ip = pod_named(&bed.topo, &leaving).ip.to_string();
    let on_leaving = conns
        .snapshot()
        .connections
        .iter()
        .filter(|c| c.backend == leaving)
        .count();
    println!("12 long-lived connections, {on_leaving} to {leaving}, which will terminate");
    std::thread::sleep(Duration::from_millis(500));
    let before = conns.snapshot();
    assert_window(&before, MIN_OK, "before the change");

    bed.api.apply_slice(with_states(
        &slice,
        &[(leaving_ip.as_str(), State::ServingTerminating)],
    ));
    let changed = Instant::now();
    let applied = wait_until(changed + CONVERGE, || {
        avoids(client, WEB_TCP_PORT, &leaving, 20)
    });
    assert!(
        applied,
        "new connections still reached {leaving} {CONVERGE:?} after it turned terminating\n{}",
        bed.agent.log()
    );
    println!(
        "{leaving} serving and terminating: no new connections to it after {:?}",
        changed.elapsed()
    );
    let applied_at = conns.snapshot();

    // (b) Not one new connection, on either port, reaches it.
    for port in [WEB_TCP_PORT, LINES_PORT] {
        let seen = answered_by(client, port, NEW);
        println!("{NEW} new connections to port {port}: {seen:?}");
        let others: Vec<&str> = bed
            .topo
            .backends()
            .iter()
            .map(|p| p.name.as_str())
            .filter(|&p| p != leaving)
            .collect();
        assert_eq!(
            seen.keys().map(String::as_str).collect::<Vec<_>>(),
            others,
            "port {port}: new connections must all be answered, by the ready pods only"
        );
    }

    // (a) The established connections, the terminating pod's included,
    // never failed, and still exchange.
    std::thread::sleep(Duration::from_secs(1));
    let end = conns.snapshot();
    let when = "after the pod turned terminating";
    assert_window(&end.since(&before), 0, when);
    assert_window(&end.since(&applied_at), MIN_OK, when);
    let kept: u64 = end
        .since(&before)
        .connections
        .iter()
        .filter(|c| c.backend == leaving)
        .map(|c| c.ok)
        .sum();
    println!(
        "{on_leaving} established connections to terminating {leaving}: {kept} exchanges since, none failed"
    );
    assert!(
        bed.agent.exited().is_none(),
        "the agent exited\n{}",
        bed.agent.log()
    );
}

/// (c) and (d): a scale-down in steps. With pod-1 ready and pods 2 and 3
/// serving-and-terminating, only pod-1 gets new connections. When pod-1
/// turns terminating too, new connections still succeed (TCP and UDP),
/// spread over all three serving-and-terminating pods, instead of being
/// refused: kube-proxy's fallback. When pod-3 leaves the slice, it gets no
/// new connection. When the rest stop serving, the Service refuses.
///
/// Upstream: "should fallback to terminating endpoints when there are no
/// ready endpoints with internalTrafficPolicy=Cluster" (the sole pod
/// terminates with a long grace period; clients keep reaching the
/// ClusterIP); "should not connect to terminating and unready endpoints
/// when PublishNotReadyAddresses is false" (once unready, connections
/// fail); "Networking Granular Checks: should update endpoints: http"
/// (a removed endpoint never answers again).
#[test]
fn serving_terminating_endpoints_take_new_connections_when_none_is_ready() {
    if !require_privileged("serving_terminating_endpoints_take_new_connections_when_none_is_ready")
    {
        return;
    }
    let (web, slice) = web_objects();
    // Generic XDP here, native in the other test: the refusal at the end
    // works in both modes (see docs/datapath.md).
    let bed = KubeBed::start(
        lb_testbed::bins::agent(),
        &[web],
        std::slice::from_ref(&slice),
        &["--xdp-mode", "generic"],
    )
    .unwrap();
    let client = bed.topo.client();
    let [pod1, pod2, pod3] = ["10.244.1.2", "10.244.2.2", "10.244.3.2"];
    use State::*;

    // pod-1 ready, pods 2 and 3 serving-and-terminating: pod-1 only.
    bed.api.apply_slice(with_states(
        &slice,
        &[(pod2, ServingTerminating), (pod3, ServingTerminating)],
    ));
    let changed = Instant::now();
    assert!(
        wait_until(changed + CONVERGE, || only(
            client,
            WEB_TCP_PORT,
            "pod-1",
            20
        )),
        "pods 2 and 3 still got new connections {CONVERGE:?} after turning terminating\n{}",
        bed.agent.log()
    );
    let seen = answered_by(client, WEB_TCP_PORT, NEW);
    println!("pod-1 ready, pods 2-3 serving and terminating: {seen:?}");
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["pod-1"], "{seen:?}");

    // (c) pod-1 terminating too: none is ready, all three serve.
    bed.api.apply_slice(with_states(
        &slice,
        &[
            (pod1, ServingTerminating),
            (pod2, ServingTerminating),
            (pod3, ServingTerminating),
        ],
    ));
    let changed = Instant::now();
    assert!(
        wait_until(changed + CONVERGE, || !only(
            client,
            WEB_TCP_PORT,
            "pod-1",
            20
        )),
        "only pod-1 answered {CONVERGE:?} after every endpoint turned serving-and-terminating\n{}",
        bed.agent.log()
    );
    println!(
        "every endpoint serving and terminating: the fallback took them after {:?}",
        changed.elapsed()
    );
    for proto in ["TCP", "UDP"] {
        let seen = new_flows(client, proto);
        println!("no ready endpoint, {NEW} new {proto} flows: {seen:?}");
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["pod-1", "pod-2", "pod-3"],
            "{proto}: with only serving-and-terminating endpoints, every request must be answered, by all of them"
        );
    }

    // (d) pod-3 leaves the slice (its pod is gone): never chosen again.
    bed.api.apply_slice(with_states(
        &shrunk(&slice, &[pod1, pod2]),
        &[(pod1, ServingTerminating), (pod2, ServingTerminating)],
    ));
    let changed = Instant::now();
    assert!(
        wait_until(changed + CONVERGE, || avoids(
            client,
            WEB_TCP_PORT,
            "pod-3",
            20
        )),
        "pod-3 still got new connections {CONVERGE:?} after leaving the slice\n{}",
        bed.agent.log()
    );
    println!(
        "pod-3 removed from the slice: no new connections to it after {:?}",
        changed.elapsed()
    );
    for proto in ["TCP", "UDP"] {
        let seen = new_flows(client, proto);
        println!("pod-3 removed, {NEW} new {proto} flows: {seen:?}");
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["pod-1", "pod-2"],
            "{proto}: after pod-3 left the slice, every request must be answered by pods 1 and 2"
        );
    }

    // The last two stop serving: nothing may take new connections, and the
    // Service refuses them at once rather than letting them time out.
    bed.api.apply_slice(with_states(
        &shrunk(&slice, &[pod1, pod2]),
        &[(pod1, Terminating), (pod2, Terminating)],
    ));
    let changed = Instant::now();
    let c = Client::new(client);
    let refused = || {
        matches!(
            c.tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT),
            Ok(Err(RequestError::Refused))
        )
    };
    assert!(
        wait_until(changed + CONVERGE, refused),
        "not refused {CONVERGE:?} after the last endpoints stopped serving\n{}",
        bed.agent.log()
    );
    println!(
        "no serving endpoint left: refused after {:?}",
        changed.elapsed()
    );
    let results = c
        .tcp_requests(WEB_VIP, WEB_TCP_PORT, 20, DEFAULT_TIMEOUT)
        .unwrap();
    assert!(
        results.iter().all(|r| r == &Err(RequestError::Refused)),
        "{results:?}"
    );
}

/// `slice` with the endpoints at the given addresses set to the given
/// states; the others keep theirs.
fn with_states(slice: &EndpointSlice, states: &[(&str, State)]) -> EndpointSlice {
    let mut copy = slice.clone();
    for endpoint in &mut copy.endpoints {
        let Some(&(_, state)) = states
            .iter()
            .find(|(ip, _)| endpoint.addresses.iter().any(|a| a == ip))
        else {
            continue;
        };
        let (ready, serving, terminating) = match state {
            State::ServingTerminating => (false, true, true),
            State::Terminating => (false, false, true),
        };
        endpoint.conditions = Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        });
    }
    copy
}

/// `slice` with only the endpoints at `ips`.
fn shrunk(slice: &EndpointSlice, ips: &[&str]) -> EndpointSlice {
    let mut copy = slice.clone();
    copy.endpoints
        .retain(|e| e.addresses.iter().all(|a| ips.contains(&a.as_str())));
    copy
}

fn pod_named<'a>(topo: &'a ClusterIpTopology, name: &str) -> &'a Pod {
    topo.backends()
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

/// How many of `n` new TCP connections to `port` of `web` each pod
/// answered; failures are counted under their error. Works against either
/// TCP server (one-shot or line-echo).
fn answered_by(client: &Pod, port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for outcome in stream::requests(client, WEB_VIP, port, n).unwrap() {
        let key = outcome.result.unwrap_or_else(|e| format!("error: {e}"));
        *by.entry(key).or_default() += 1;
    }
    by
}

/// The same for [`NEW`] new flows to `web`'s TCP (`http`) or UDP (`dns`)
/// port; UDP requests each from a new socket, with a short timeout (answers
/// take milliseconds; a failing datapath should not take minutes).
fn new_flows(client: &Pod, proto: &str) -> BTreeMap<String, usize> {
    if proto == "TCP" {
        return answered_by(client, WEB_TCP_PORT, NEW);
    }
    let mut by = BTreeMap::new();
    for result in Client::new(client)
        .udp_requests(WEB_VIP, WEB_UDP_PORT, NEW, Duration::from_millis(300))
        .unwrap()
    {
        let key = result.map_or_else(|e| format!("error: {e}"), |r| r.backend);
        *by.entry(key).or_default() += 1;
    }
    by
}

/// Whether `n` new connections to `port` are all answered by `backend`.
fn only(client: &Pod, port: u16, backend: &str, n: usize) -> bool {
    let seen = answered_by(client, port, n);
    seen.len() == 1 && seen.contains_key(backend)
}

/// Whether `n` new connections to `port` are all answered, none by
/// `backend`.
fn avoids(client: &Pod, port: u16, backend: &str, n: usize) -> bool {
    let seen = answered_by(client, port, n);
    !seen.contains_key(backend) && seen.keys().all(|k| !k.starts_with("error"))
}

/// Fails on failed exchanges in the window, or connections with fewer than
/// `min_ok` good ones (a stall is a failure too).
fn assert_window(window: &StreamSnapshot, min_ok: u64, when: &str) {
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
    assert!(
        problems.is_empty(),
        "{}\n{}",
        problems.join("\n"),
        window.summary()
    );
}
