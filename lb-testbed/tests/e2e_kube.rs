//! End to end with the agent watching an API server: the in-process
//! list/watch server (`testbed::apiserver`) runs in the node namespace, the
//! agent reaches it through a kubeconfig, and Services and EndpointSlices
//! created, updated and deleted through it change real traffic. Needs root
//! and a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::time::{Duration, Instant};

use lb_core::manifest;
use lb_testbed::{
    agent::AgentProcess,
    apiserver::FakeApiServer,
    client::{Client, DEFAULT_TIMEOUT},
    privileged::require_privileged,
    scratch::ScratchDir,
    servers::Servers,
    topology::ClusterIpTopology,
    wait_until, WEB_TCP_PORT, WEB_VIP,
};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

#[test]
fn services_and_slices_from_the_api_drive_traffic() {
    if !require_privileged("services_and_slices_from_the_api_drive_traffic") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let api = FakeApiServer::start_in(topo.node()).unwrap();
    let scratch = ScratchDir::new().unwrap();
    let kubeconfig = scratch.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();

    // The cluster holds examples/web.yaml's objects.
    let loaded = manifest::load_dir(EXAMPLES.as_ref());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    for s in &loaded.services {
        api.apply_service(s.object.clone());
    }
    for s in &loaded.slices {
        api.apply_slice(s.object.clone());
    }

    let source = [std::ffi::OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
    let mut agent = AgentProcess::start_with_source(
        lb_testbed::bins::agent(),
        topo.node(),
        &source,
        &topo.pod_interfaces(),
        &[],
    )
    .unwrap();
    let client = Client::new(topo.client());
    let answers = || {
        matches!(
            client.tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT),
            Ok(Ok(_))
        )
    };
    let ready = agent.wait_ready(Duration::from_secs(20), answers).unwrap();
    println!("ready after {ready:?}");

    // Every backend answers.
    let results = client
        .tcp_requests(WEB_VIP, WEB_TCP_PORT, 150, DEFAULT_TIMEOUT)
        .unwrap();
    let mut seen: Vec<String> = results
        .iter()
        .map(|r| r.as_ref().expect("request answered").backend.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["pod-1", "pod-2", "pod-3"], "{}", agent.log());

    // Update: the slice shrinks to pod-1 only; within 2 s nothing else answers.
    let mut slice = loaded.slices[0].object.clone();
    slice.endpoints.retain(|e| e.addresses == ["10.244.1.2"]);
    api.apply_slice(slice);
    let changed = Instant::now();
    let only_pod1 = || {
        client
            .tcp_requests(WEB_VIP, WEB_TCP_PORT, 20, DEFAULT_TIMEOUT)
            .map(|rs| {
                rs.iter()
                    .all(|r| matches!(r, Ok(rep) if rep.backend == "pod-1"))
            })
            .unwrap_or(false)
    };
    assert!(
        wait_until(changed + Duration::from_secs(2), only_pod1),
        "slice update not applied in 2 s\n{}",
        agent.log()
    );
    println!("slice update applied within {:?}", changed.elapsed());

    // Delete: the Service goes, the ClusterIP stops answering.
    api.delete_service("default", "web");
    let deleted = Instant::now();
    assert!(
        wait_until(deleted + Duration::from_secs(2), || !answers()),
        "Service deletion not applied in 2 s\n{}",
        agent.log()
    );
    println!("Service deletion applied within {:?}", deleted.elapsed());
    agent.stop().unwrap();
}
