//! The agent with only the capabilities docs/security.md lists, end to
//! end: started under `setpriv` (every other capability dropped from all
//! sets) in a namespace topology, it serves `examples/web.yaml`'s
//! ClusterIP, keeps its pins root-only, and lets a read-only map fd read
//! but not write. Without any one of those capabilities it exits non-zero
//! naming it. Needs root, a bpffs and setpriv (util-linux);
//! LB_SKIP_PRIVILEGED=1 skips.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData, MapError};
use lb_agent::agent::privileges::{memlock_charged, needed, Capability};
use lb_common::{MapId, ServiceKey, ServiceValue};
use lb_testbed::{
    agent::AgentProcess,
    client::{Client, RequestResult, DEFAULT_TIMEOUT},
    privileged::require_privileged,
    scratch::ScratchDir,
    servers::Servers,
    topology::ClusterIpTopology,
    wait_until,
    web_bed::WEB_YAML,
    WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP,
};
use lbctl::read_only;

const REQUESTS: usize = 50;

/// The capabilities the agent needs on this kernel, which this test must
/// be able to grant.
fn capabilities() -> Vec<Capability> {
    let caps = needed(memlock_charged());
    let bounding = cap_set(std::process::id(), "CapBnd");
    for cap in &caps {
        assert!(
            bounding & 1 << cap.bit != 0,
            "this test's bounding set lacks {}, so it cannot run the agent with it",
            cap.name
        );
    }
    caps
}

/// `setpriv` arguments that leave the agent (run as uid 0) exactly `caps`:
/// for root, exec grants the bounding set, so that is what limits it.
fn setpriv(caps: &[Capability]) -> Vec<String> {
    let list: String = (caps.iter())
        .map(|cap| format!(",+{}", cap.name.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
        "--".into(),
    ]
}

fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |set, cap| set | 1 << cap.bit)
}

/// A capability set of a running process (`CapEff`, `CapBnd`, ...).
fn cap_set(pid: u32, which: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{which}:")))
        .unwrap();
    u64::from_str_radix(line.trim(), 16).unwrap()
}

fn start(topo: &ClusterIpTopology, manifests: &Path, caps: &[Capability]) -> AgentProcess {
    let launcher = setpriv(caps);
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    AgentProcess::start_launched(
        &launcher,
        lb_testbed::bins::agent(),
        topo.node(),
        manifests,
        &topo.pod_interfaces(),
        &[],
    )
    .unwrap()
}

/// The pin directory and every directory under it are 0700, every pin
/// (a file) 0600 at most.
fn assert_root_only(dir: &Path) {
    let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            assert_root_only(&path);
        } else {
            assert_eq!(mode & !0o600, 0, "{} is mode {mode:o}", path.display());
        }
    }
}

fn answered(replies: &[RequestResult]) -> usize {
    replies.iter().filter(|r| r.is_ok()).count()
}

/// The kernel refused a write through a read-only fd.
fn assert_refused(result: Result<(), MapError>) {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EPERM) => {}
        other => panic!("a write through a read-only fd gave {other:?}"),
    }
}

#[test]
fn agent_with_only_the_capabilities_it_needs_serves_clusterip() {
    if !require_privileged("agent_with_only_the_capabilities_it_needs_serves_clusterip") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let manifests = ScratchDir::new().unwrap();
    fs::write(manifests.path().join("web.yaml"), WEB_YAML).unwrap();
    let caps = capabilities();
    let mut agent = start(&topo, manifests.path(), &caps);
    let client = Client::new(topo.client());
    agent
        .wait_ready(Duration::from_secs(15), || {
            client
                .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
                .is_ok_and(|r| r.is_ok())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));

    // It really runs with those capabilities and no other.
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(cap_set(agent.pid(), set), mask(&caps), "{set}");
    }
    let tcp = client
        .tcp_requests(WEB_VIP, WEB_TCP_PORT, REQUESTS, DEFAULT_TIMEOUT)
        .unwrap();
    let udp = client
        .udp_requests(WEB_VIP, WEB_UDP_PORT, REQUESTS, DEFAULT_TIMEOUT)
        .unwrap();
    assert_eq!((answered(&tcp), answered(&udp)), (REQUESTS, REQUESTS));

    assert_root_only(agent.pin_dir());

    // What lbctl opens can read but not write.
    let fd = read_only::open_map(&agent.pin_dir().join(MapId::Services.name())).unwrap();
    let mut services: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::from_map_data(MapData::from_fd(fd).unwrap()).unwrap()).unwrap();
    let keys: Vec<ServiceKey> = services.keys().map(Result::unwrap).collect();
    assert_eq!(keys.len(), 8, "web.yaml: 2 masters and 3 slots each");
    let value = services.get(&keys[0], 0).unwrap();
    assert_refused(services.insert(keys[0], value, 0));
    assert_refused(services.remove(&keys[0]));
    assert_eq!(services.keys().count(), 8, "nothing was removed");
    agent.stop().unwrap();
}

#[test]
fn agent_without_a_needed_capability_exits_naming_it() {
    if !require_privileged("agent_without_a_needed_capability_exits_naming_it") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    let manifests = ScratchDir::new().unwrap();
    fs::write(manifests.path().join("web.yaml"), WEB_YAML).unwrap();
    let all = capabilities();
    for dropped in &all {
        let caps: Vec<Capability> = all.iter().copied().filter(|c| c != dropped).collect();
        let mut agent = start(&topo, manifests.path(), &caps);
        let exited = wait_until(Instant::now() + Duration::from_secs(15), || {
            agent.exited().is_some()
        });
        let log = agent.log();
        assert!(
            exited,
            "without {} the agent kept running:\n{log}",
            dropped.name
        );
        let status = agent.exited().unwrap();
        assert!(
            !status.success(),
            "without {}: {status}\n{log}",
            dropped.name
        );
        let named = format!("lb-agent lacks {} (", dropped.name);
        assert!(
            log.contains(&named),
            "without {}, no {named:?} in:\n{log}",
            dropped.name
        );
    }
}
