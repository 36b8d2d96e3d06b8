//! The agent's run loop: load the datapath with its maps pinned (adopting
//! what a previous agent left), attach it to pod interfaces as they come and
//! go, keep the maps equal to what the Services and EndpointSlices ask for
//! (from the API server or manifests), and report health and metrics.

mod apply;
mod backoff;
pub mod health_check_ports;
mod interfaces;
#[cfg(test)]
mod kube_requests;
mod kube_source;
mod manifest_source;
pub mod node_addresses;
mod owned;
pub mod privileges;
pub mod telemetry;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::ebpf::{
    self, Attacher, BpfDataplane, DatapathMonitor, PodHook, TcAttachArg, XdpModeArg,
};
use apply::{Applier, Pending};
use backoff::Backoff;
use health_check_ports::HealthCheckPorts;
use interfaces::InterfaceMatcher;
use kube_source::{KubeSource, NodeInfo};
use lb_common::MapId;
use lb_core::conntrack::CtTimeouts;
use lb_core::model::{Desired, DesiredFrontend, Frontend};
pub use lb_core::net_config::NetConfig;
use lb_core::reconcile::Reconciler;
use manifest_source::ManifestSource;
use owned::{write_failed, Owned};
use telemetry::Telemetry;

/// How often datapath counters, conntrack and map occupancy are refreshed
/// for /metrics.
const MONITOR_PERIOD: Duration = Duration::from_secs(5);

/// Where Services and EndpointSlices come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A directory of YAML manifests (no cluster needed).
    Manifests(PathBuf),
    /// The Kubernetes API: in-cluster config, or this kubeconfig file.
    Kube { kubeconfig: Option<PathBuf> },
}

pub use lb_common::MapSizes;

/// What the agent needs to run (the binary maps its flags onto this).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: SourceConfig,
    /// This node's name (its Node object is watched).
    pub node_name: String,
    /// This node's zone when its Node object does not name one.
    pub zone: Option<String>,
    /// Glob patterns of the node-side pod interfaces to attach to.
    pub pod_interfaces: Vec<String>,
    /// Glob patterns of the node's uplinks (traffic from outside the node:
    /// NodePort, externalIPs, load-balancer IPs). Empty: none.
    pub node_interfaces: Vec<String>,
    /// Source ports for SNATed flows (inclusive), outside the node's
    /// ephemeral port range.
    pub snat_ports: (u16, u16),
    /// The cluster's NodePort range, for reporting NodePorts outside it.
    pub nodeport_range: (u16, u16),
    /// Where the maps and links are pinned.
    pub bpffs: PathBuf,
    pub xdp_mode: XdpModeArg,
    /// Where the pod-side DNAT runs (TC ingress by default).
    pub pod_hook: PodHook,
    /// How TC programs are attached (tcx links or netlink filters).
    pub tc_attach: TcAttachArg,
    /// Detach and remove all pins on a clean exit. Otherwise the datapath
    /// keeps serving and a restarted agent adopts it.
    pub unpin_on_exit: bool,
    /// How often interfaces (and manifests) are checked for changes.
    pub poll_interval: Duration,
    pub net: NetConfig,
    pub map_sizes: MapSizes,
    /// /healthz and /livez (None: not served).
    pub healthz_bind: Option<SocketAddr>,
    /// /metrics (None: not served).
    pub metrics_bind: Option<SocketAddr>,
    /// /healthz fails when a change waits longer than this to be programmed.
    pub healthz_timeout: Duration,
    /// How long conntrack entries may stay idle.
    pub ct_timeouts: CtTimeouts,
    /// How often expired conntrack entries are removed.
    pub ct_gc_interval: Duration,
    /// How often the maps are read back in full and every difference from
    /// the wanted state repaired (entries changed or deleted behind the
    /// agent's back); between, syncs trust what they wrote.
    pub resync_interval: Duration,
    /// The cgroup v2 directory whose sockets (in the agent's network
    /// namespace) are balanced at `connect()`; None: not done.
    pub cgroup: Option<PathBuf>,
}

enum Source {
    Manifests(ManifestSource),
    Kube(KubeSource),
}

impl Source {
    async fn start(cfg: &AgentConfig) -> anyhow::Result<Self> {
        Ok(match &cfg.source {
            SourceConfig::Manifests(dir) => Source::Manifests(ManifestSource::new(
                dir.clone(),
                cfg.node_name.clone(),
                cfg.zone.clone(),
            )),
            SourceConfig::Kube { kubeconfig } => Source::Kube(KubeSource::start(
                kube_client(kubeconfig.as_deref()).await?,
                &cfg.node_name,
                cfg.zone.clone(),
            )),
        })
    }

    /// Resolves when the source has news (never for manifests, which are
    /// polled on the tick).
    async fn changed(&self) {
        match self {
            Source::Kube(k) => k.changed().await,
            Source::Manifests(_) => std::future::pending().await,
        }
    }

    fn take_pending(&mut self) -> Option<Pending<'_>> {
        match self {
            Source::Manifests(m) => m.take_pending(),
            Source::Kube(k) => k.take_pending(),
        }
    }

    fn done(&mut self, ok: bool, seen: Instant) {
        match self {
            Source::Manifests(m) => m.done(ok),
            Source::Kube(k) => k.done(ok, seen),
        }
    }

    /// Makes the next `take_pending` hand out the current state even if
    /// nothing changed.
    fn offer_again(&mut self) {
        match self {
            Source::Manifests(m) => m.offer_again(),
            Source::Kube(k) => k.offer_again(Instant::now()),
        }
    }
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no --manifests and no usable in-cluster config or kubeconfig")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// The dataplane pieces the loop drives.
struct Datapath {
    ebpf: aya::Ebpf,
    dataplane: BpfDataplane,
    monitor: DatapathMonitor,
    attacher: Attacher,
    /// Frontend -> Service name, for lbctl.
    svc_names: ebpf::SvcNameMap,
    /// The node's own sockets' programs (None: `--cgroup ""`).
    sock: Option<ebpf::sock_lb::SockBalancer>,
    /// The uplinks' programs, with the interfaces they go on.
    uplinks: Option<(InterfaceMatcher, Attacher)>,
    /// The SNAT address and ports.
    config: Owned<ebpf::ConfigMap>,
    /// This node's NodePort addresses and its peers'.
    node_addrs: Owned<ebpf::NodeAddrMap>,
    filter: ebpf::FilterMap,
    /// The backends conntrack entries named at the last walk (their bits
    /// stay in the filter while their flows live).
    ct_backends: std::collections::BTreeSet<(u32, u16, u8)>,
    /// The other Nodes' addresses as last listed (written with the next
    /// uplink sync).
    peers_listed: std::collections::BTreeSet<std::net::Ipv4Addr>,
    /// Health check node ports the last sync asked for, until served.
    health_checks_wanted: Option<HealthCheckWanted>,
    /// What the health check servers serve.
    health_checks_served: HealthCheckWanted,
    /// NodePort frontends outside `--nodeport-range` already reported.
    reported_out_of_range: std::collections::BTreeSet<lb_core::model::Frontend>,
    nodeport_range: (u16, u16),
    /// Conntrack entries found by the last walk (between walks, the count
    /// is read without one).
    ct_entries: Option<u64>,
}

/// healthCheckNodePort -> (namespace, name, local endpoints).
type HealthCheckWanted = std::collections::BTreeMap<u16, (String, String, usize)>;

/// Runs until SIGINT or SIGTERM.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let overlaps = cfg.net.overlaps();
    if !overlaps.is_empty() {
        for o in &overlaps {
            error!("{o}");
        }
        bail!("refusing to start: {}", overlaps[0]);
    }
    let matcher = InterfaceMatcher::new(&cfg.pod_interfaces)?;
    if let Err(e) = privileges::raise_memlock() {
        warn!("cannot raise RLIMIT_MEMLOCK ({e}; needs CAP_SYS_RESOURCE): this kernel charges BPF maps to it, loading may fail");
    }
    let mut dp = load_datapath(&cfg)?;
    let telemetry = Telemetry::new(cfg.healthz_timeout);
    let _servers = start_servers(&cfg, &telemetry).await?;
    let mut source = Source::start(&cfg).await?;
    let mut reconciler = Reconciler::with_capacity(dp.dataplane.capacity());
    let mut applier = Applier::default();
    info!(
        mode = "ebpf",
        pod_hook = ?cfg.pod_hook,
        tc_attach = ?cfg.tc_attach.resolve(),
        node = %cfg.node_name,
        source = ?cfg.source,
        bpffs = %cfg.bpffs.display(),
        pod_interfaces = ?cfg.pod_interfaces,
        net = %cfg.net,
        "lb-agent starting (kube-proxy replacement; DNAT at the pod hook, reverse NAT at TC egress)"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut tick = interval(cfg.poll_interval);
    let mut monitor_tick = interval(MONITOR_PERIOD);
    let mut ct_gc_tick = interval(cfg.ct_gc_interval);
    ct_gc_tick.reset(); // nothing has expired at start
    let mut resync_tick = interval(cfg.resync_interval);
    resync_tick.reset(); // the first sync reads the maps anyway
    let mut node: Option<NodeInfo> = None;
    let healthy = telemetry.clone();
    let mut health_check_ports = HealthCheckPorts::new(Vec::new(), move || healthy.healthy());
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match matcher.present() {
                    Ok(present) => dp.attacher.sync(&mut dp.ebpf, &present),
                    Err(e) => warn!("listing interfaces: {e}"),
                }
                if let Source::Kube(k) = &source {
                    dp.peers_listed = k.peer_addresses();
                }
                sync_uplinks(&mut dp, &cfg, &telemetry);
            }
            _ = source.changed() => {}
            _ = backoff.over() => {}
            _ = monitor_tick.tick() => {
                monitor(&mut dp, &reconciler, &telemetry);
                repair_detached(&mut dp, &cfg, &telemetry);
                if let Source::Kube(k) = &source {
                    for _ in 0..k.take_watch_failures() {
                        telemetry.error("watch");
                    }
                    check_node(k, &cfg.net, &mut node, &telemetry);
                }
            }
            _ = ct_gc_tick.tick() => {
                collect_conntrack_garbage(&mut dp, &cfg.ct_timeouts);
                rebuild_filter(&mut dp, &reconciler, &telemetry);
            }
            _ = resync_tick.tick() => {
                // The maps are read back and the current state programmed
                // below (for Kubernetes, once the first lists are in).
                reconciler.forget_maps();
                source.offer_again();
            }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
        }
        let pending = if backoff.waiting() {
            None
        } else {
            source.take_pending()
        };
        if let Some(pending) = pending {
            let seen = pending.seen;
            let ok = sync(pending, &mut applier, &mut reconciler, &mut dp, &telemetry);
            backoff.record(ok, tokio::time::Instant::now());
            source.done(ok, seen);
        }
        if let Some(wanted) = dp.health_checks_wanted.take() {
            let errors = health_check_ports.sync(wanted.clone()).await;
            for e in &errors {
                telemetry.error("health_check_port");
                warn!("{e:#}");
            }
            if errors.is_empty() {
                dp.health_checks_served = wanted;
            }
        }
    }

    drop(source);
    if cfg.unpin_on_exit {
        dp.attacher.detach_all();
        if let Some(sock) = dp.sock.take() {
            sock.detach();
        }
        if let Some((_, uplinks)) = &mut dp.uplinks {
            uplinks.detach_all();
        }
        drop(dp);
        unpin_maps(&cfg.bpffs);
        info!("detached and unpinned; bye");
    } else {
        info!(
            "the datapath stays attached with its pinned maps (a restarted agent adopts them); bye"
        );
    }
    Ok(())
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

fn load_datapath(cfg: &AgentConfig) -> anyhow::Result<Datapath> {
    ebpf::probe::kernel_floor().map_err(|e| anyhow::anyhow!(e))?;
    let sizes = cfg.map_sizes;
    let mut ebpf = ebpf::load(&cfg.bpffs, &sizes)?;
    let dataplane = BpfDataplane::from_ebpf(&mut ebpf)?;
    let monitor = DatapathMonitor::from_ebpf(&mut ebpf)?;
    let capacity = dataplane.capacity();
    for map in [MapId::Services, MapId::Backends, MapId::RevNat] {
        let (size, wanted) = (capacity.of(map), map.max_entries(&sizes) as usize);
        if size != wanted {
            warn!(
                map = map.name(),
                size,
                wanted,
                "pinned map keeps its size; remove the pins (lb-agent --cleanup) to resize"
            );
        }
    }
    let attacher = Attacher::new(
        &mut ebpf,
        cfg.pod_hook.role(),
        cfg.xdp_mode,
        cfg.tc_attach,
        &cfg.bpffs,
    )?;
    let uplinks = if cfg.node_interfaces.is_empty() {
        None
    } else {
        let matcher = InterfaceMatcher::new(&cfg.node_interfaces)?;
        let attacher = Attacher::new(
            &mut ebpf,
            ebpf::NODE_INTERFACES,
            cfg.xdp_mode,
            cfg.tc_attach,
            &cfg.bpffs,
        )?;
        Some((matcher, attacher))
    };
    let sock = match &cfg.cgroup {
        Some(cgroup) => {
            let sock = ebpf::sock_lb::SockBalancer::attach(&mut ebpf, cgroup, &cfg.bpffs)?;
            info!(cgroup = %cgroup.display(), "balancing the node's own sockets at connect()");
            Some(sock)
        }
        None => {
            ebpf::sock_lb::disable(Some(&mut ebpf), &cfg.bpffs)?;
            None
        }
    };
    let node_addrs = Owned::new(ebpf::NodeAddrMap::from_ebpf(&mut ebpf)?);
    let config = Owned::new(ebpf::ConfigMap::from_ebpf(&mut ebpf)?);
    let filter = ebpf::FilterMap::from_ebpf(&mut ebpf)?;
    let svc_names = ebpf::SvcNameMap::from_ebpf(&mut ebpf)?;
    Ok(Datapath {
        svc_names,
        health_checks_wanted: None,
        health_checks_served: Default::default(),
        reported_out_of_range: Default::default(),
        nodeport_range: cfg.nodeport_range,
        ct_entries: None,
        node_addrs,
        filter,
        ct_backends: Default::default(),
        peers_listed: Default::default(),
        uplinks,
        config,
        ebpf,
        dataplane,
        monitor,
        attacher,
        sock,
    })
}

async fn start_servers(
    cfg: &AgentConfig,
    telemetry: &Telemetry,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut servers = Vec::new();
    if let Some(bind) = cfg.healthz_bind {
        servers.push(telemetry::serve_health(bind, telemetry.clone()).await?);
        info!(%bind, "serving /healthz and /livez");
    }
    if let Some(bind) = cfg.metrics_bind {
        servers.push(telemetry::serve_metrics(bind, telemetry.clone()).await?);
        info!(%bind, "serving /metrics");
    }
    Ok(servers)
}

/// Programs one desired state and records the outcome. Returns success.
fn sync(
    pending: Pending<'_>,
    applier: &mut Applier,
    reconciler: &mut Reconciler,
    dp: &mut Datapath,
    telemetry: &Telemetry,
) -> bool {
    let seen = pending.seen;
    telemetry.change_seen(seen);
    let desired = pending.state.desired();
    for _ in pending.load_errors.iter().chain(&desired.errors) {
        telemetry.error("config");
    }
    let started = Instant::now();
    let partial = reconciler.is_partial();
    let touched = pending.state.touched_frontends();
    // Bits first: a frontend is never in the Service map without its bit.
    // A partial sync writes touched frontends only.
    let covered = match partial {
        true => dp.filter.cover_some(desired, touched),
        false => dp.filter.cover(desired),
    };
    if let Err(e) = covered {
        write_failed(telemetry, MapId::Filter, &e);
        return false;
    }
    let result = applier.apply(pending, reconciler, &mut dp.dataplane);
    let ok = result.is_ok();
    match &result {
        // Names (for lbctl) of what the sync touched; all after a full one.
        Ok(report) if partial => name_touched(dp, reconciler, desired, touched, report, telemetry),
        Ok(_) => name_frontends(dp, reconciler, desired, telemetry),
        Err(_) => telemetry.error("map_write"),
    }
    if ok && !dp.filter.valid() {
        rebuild_filter(dp, reconciler, telemetry);
    }
    let left_out = reconciler.left_out();
    let services: std::collections::BTreeSet<_> = left_out.iter().map(|l| &l.service).collect();
    telemetry.set_left_out(services.len() as u64, left_out.len() as u64);
    telemetry.sync_done(started, started.elapsed(), ok, ok.then_some(seen));
    report_nodeports_out_of_range(desired, dp);
    let wanted: HealthCheckWanted = desired
        .health_checks
        .iter()
        .map(|(port, hc)| {
            let s = &hc.service;
            (
                *port,
                (s.namespace.clone(), s.name.clone(), hc.local_endpoints),
            )
        })
        .collect();
    if wanted != dp.health_checks_served {
        dp.health_checks_wanted = Some(wanted);
    }
    // Counts the index and the reconciler keep: counting distinct
    // Services and backends over 100k frontends would cost more than the
    // sync of a small change.
    if let Some(maps) = ok.then(|| reconciler.programmed()).flatten() {
        let (services_out, frontends_out) = apply::not_programmed(pending.state, left_out);
        telemetry.set_programmed(
            pending
                .state
                .serving_services()
                .saturating_sub(services_out) as u64,
            desired.frontends.len().saturating_sub(frontends_out) as u64,
            maps.backends.len() as u64,
        );
    }
    ok
}

/// Reports, once each, NodePorts outside `--nodeport-range`: served anyway
/// (the Service asks for them), but the API server and this agent disagree
/// on the range, which an operator should fix.
fn report_nodeports_out_of_range(desired: &lb_core::model::Desired, dp: &mut Datapath) {
    let outside = nodeports_outside(desired, dp.nodeport_range);
    for fe in outside.difference(&dp.reported_out_of_range) {
        let service = &desired.frontends[fe].service;
        warn!(service = %service, node_port = fe.port, range = ?dp.nodeport_range, "NodePort outside --nodeport-range; served anyway");
    }
    dp.reported_out_of_range = outside;
}

/// The NodePort frontends of `desired` outside `(first, last)`. NodePorts
/// sort first (their address is 0.0.0.0): the walk stops at the first
/// other frontend, whatever the cluster's size.
fn nodeports_outside(
    desired: &Desired,
    (first, last): (u16, u16),
) -> std::collections::BTreeSet<Frontend> {
    desired
        .frontends
        .keys()
        .take_while(|fe| fe.vip == lb_core::model::NODE_PORT_VIP)
        .filter(|fe| !(first..=last).contains(&fe.port))
        .copied()
        .collect()
}

/// Rewrites the filter from what the Service and backend maps hold and
/// the backends conntrack named at its last walk, dropping the bits of
/// what is gone (and making it valid after the first sync).
fn rebuild_filter(dp: &mut Datapath, reconciler: &Reconciler, telemetry: &Telemetry) {
    let Some(state) = reconciler.programmed() else {
        return;
    };
    // Before the first rewrite, the flows a previous agent left (to
    // backends that may have left their Service since) are read too.
    if !dp.filter.valid() {
        dp.ct_backends = dp.monitor.tracked_backends();
    }
    if let Err(e) = dp
        .filter
        .rebuild(&state.services, &state.backends, &dp.ct_backends)
    {
        write_failed(telemetry, MapId::Filter, &e);
    }
}

/// Attaches to the uplinks present and keeps the datapath's config (the
/// SNAT source: the first uplink address) in line with their addresses.
fn sync_uplinks(dp: &mut Datapath, cfg: &AgentConfig, telemetry: &Telemetry) {
    let Some((matcher, attacher)) = &mut dp.uplinks else {
        return;
    };
    let present = match matcher.present() {
        Ok(p) => p,
        Err(e) => {
            warn!("listing interfaces: {e}");
            return;
        }
    };
    attacher.sync(&mut dp.ebpf, &present);
    let names = present.keys().map(String::as_str).collect();
    let addresses = match node_addresses::of_interfaces(&names) {
        Ok(a) => a,
        Err(e) => {
            warn!("listing the uplinks' addresses: {e}");
            return;
        }
    };
    let wanted = ebpf::NodeAddresses {
        nodeport: node_addresses::nodeport_addresses(&addresses, &cfg.net.nodeport_addresses),
        peers: dp.peers_listed.clone(),
    };
    dp.node_addrs.sync(wanted, telemetry);
    let config = lb_common::NodeConfig {
        snat_addr_be: node_addresses::snat_address(&addresses)
            .map(|a| u32::from_ne_bytes(a.octets()))
            .unwrap_or(0),
        snat_port_first: cfg.snat_ports.0,
        snat_port_last: cfg.snat_ports.1,
    };
    dp.config.sync(config, telemetry);
}

/// Removes the conntrack entries idle longer than their timeout (a walk of
/// the whole map, so not on every monitor tick).
fn collect_conntrack_garbage(dp: &mut Datapath, timeouts: &CtTimeouts) {
    let gc = dp
        .monitor
        .collect_garbage(lb_core::conntrack::now_ns(), timeouts);
    if gc.removed > 0 {
        tracing::debug!(
            seen = gc.seen,
            removed = gc.removed,
            "conntrack entries expired"
        );
    }
    dp.ct_entries = Some(gc.seen - gc.removed);
    dp.ct_backends = gc.tracked;
}

/// Re-attaches what was detached behind our back: interfaces' programs at
/// the next interface sync, the socket programs here.
fn repair_detached(dp: &mut Datapath, cfg: &AgentConfig, telemetry: &Telemetry) {
    let mut repaired = dp.attacher.drop_severed();
    if let Some((_, uplinks)) = &mut dp.uplinks {
        repaired += uplinks.drop_severed();
    }
    if let (Some(sock), Some(cgroup)) = (&dp.sock, &cfg.cgroup) {
        if sock.severed() {
            warn!("the socket programs were detached behind our back; attaching again");
            match ebpf::sock_lb::SockBalancer::attach(&mut dp.ebpf, cgroup, &cfg.bpffs) {
                Ok(again) => dp.sock = Some(again),
                Err(e) => warn!("re-attaching the socket programs: {e:#}"),
            }
            repaired += 1;
        }
    }
    for _ in 0..repaired {
        telemetry.error("detached");
    }
}

/// Makes the frontend -> Service name map (for lbctl) equal to what is
/// programmed: every master entry's rev-NAT id gets the name of the
/// Service whose frontend it is.
fn name_frontends(
    dp: &mut Datapath,
    reconciler: &Reconciler,
    desired: &Desired,
    telemetry: &Telemetry,
) {
    let Some(maps) = reconciler.programmed() else {
        return;
    };
    let wanted = maps
        .services
        .iter()
        .filter(|(key, _)| key.slot == 0)
        .filter_map(|(key, master)| {
            let wanted = desired.frontends.get(&frontend_of(key))?;
            Some((master.rev_nat_id, service_name(wanted)))
        })
        .collect();
    if let Err(e) = dp.svc_names.sync(wanted) {
        write_failed(telemetry, MapId::SvcNames, &e);
    }
}

/// [`name_frontends`] after a partial sync: the names of the frontends it
/// touched, and the names of rev-NAT ids it deleted removed.
fn name_touched(
    dp: &mut Datapath,
    reconciler: &Reconciler,
    desired: &Desired,
    touched: &std::collections::BTreeSet<Frontend>,
    report: &lb_core::reconcile::SyncReport,
    telemetry: &Telemetry,
) {
    let Some(maps) = reconciler.programmed() else {
        return;
    };
    let named = touched
        .iter()
        .filter_map(|f| {
            let master = maps.services.get(&lb_core::reconcile::master_key(f))?;
            Some((master.rev_nat_id, service_name(desired.frontends.get(f)?)))
        })
        .collect();
    let prune = report.deleted_revnat > 0;
    if let Err(e) = dp
        .svc_names
        .update(named, prune, |id| maps.revnat.contains_key(&id))
    {
        write_failed(telemetry, MapId::SvcNames, &e);
    }
}

/// `namespace/name[:port]`, as lbctl shows a frontend's Service.
fn service_name(wanted: &DesiredFrontend) -> String {
    match &wanted.port_name {
        Some(port) if !port.is_empty() => format!("{}:{port}", wanted.service),
        _ => wanted.service.to_string(),
    }
}

/// The frontend of a master entry's key.
fn frontend_of(key: &lb_common::ServiceKey) -> Frontend {
    Frontend {
        vip: std::net::Ipv4Addr::from(key.vip_be.to_ne_bytes()),
        port: u16::from_be(key.port_be),
        proto: match key.proto {
            lb_common::IPPROTO_UDP => lb_core::model::Proto::Udp,
            _ => lb_core::model::Proto::Tcp,
        },
    }
}

/// Refreshes the datapath figures behind /metrics.
fn monitor(dp: &mut Datapath, reconciler: &Reconciler, telemetry: &Telemetry) {
    match dp.monitor.stats() {
        Ok(totals) => {
            for t in totals {
                telemetry.set_datapath_counters(t.reason, t.packets, t.bytes);
            }
        }
        Err(e) => warn!("reading datapath counters: {e:#}"),
    }
    let ct = dp
        .ct_entries
        .take()
        .unwrap_or_else(|| dp.monitor.conntrack_entries());
    telemetry.set_conntrack_entries(ct);
    telemetry.set_map_occupancy(
        MapId::Conntrack.name(),
        ct,
        dp.monitor.conntrack_max().into(),
    );
    if let Some(state) = reconciler.programmed() {
        let capacity = dp.dataplane.capacity();
        let counts = [
            (MapId::Services, state.services.len()),
            (MapId::Backends, state.backends.len()),
            (MapId::RevNat, state.revnat.len()),
        ];
        for (map, n) in counts {
            telemetry.set_map_occupancy(map.name(), n as u64, capacity.of(map) as u64);
        }
    }
}

/// Logs this node's addresses when they change, and reports any that falls
/// inside the Service or Pod range. A new zone is offered to the index
/// (topology hints select other endpoints).
fn check_node(k: &KubeSource, net: &NetConfig, last: &mut Option<NodeInfo>, telemetry: &Telemetry) {
    let now = k.node();
    if now == *last {
        return;
    }
    if now.as_ref().map(|n| &n.zone) != last.as_ref().map(|n| &n.zone) {
        k.offer_again(Instant::now());
    }
    if let Some(n) = &now {
        info!(node = %n.name, addresses = ?n.addresses, zone = ?n.zone, "this node");
        for problem in net.node_address_overlaps(&n.name, &n.addresses) {
            error!("{problem}");
            telemetry.error("config");
        }
    }
    *last = now;
}

/// Removes our pinned maps and, if then empty, the pin directory.
pub fn unpin_maps(dir: &std::path::Path) {
    for map in MapId::ALL {
        let _ = std::fs::remove_file(dir.join(map.name()));
    }
    let _ = std::fs::remove_dir(dir);
}

/// `lb-agent --cleanup`: detaches everything a previous agent left pinned
/// under `dir` (links first, so no program runs on half-removed maps) and
/// removes the maps, as `kube-proxy --cleanup` removes its rules.
pub fn cleanup(dir: &std::path::Path) -> anyhow::Result<()> {
    for role in [ebpf::POD_INTERFACES, ebpf::NODE_INTERFACES] {
        let links = dir.join(role.links_subdir);
        ebpf::detach_pinned(&links)
            .with_context(|| format!("removing the pinned links in {}", links.display()))?;
    }
    ebpf::sock_lb::disable(None, dir)?;
    unpin_maps(dir);
    if dir.exists() {
        bail!(
            "{} is not empty after removing our pins; left as is",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_core::model::{DesiredFrontend, ObjectRef, Proto, NODE_PORT_VIP};

    use super::*;

    #[test]
    fn nodeports_outside_the_range_are_found_among_other_frontends() {
        let mut desired = Desired::default();
        let frontend = |vip, port| Frontend {
            vip,
            port,
            proto: Proto::Tcp,
        };
        for fe in [
            frontend(NODE_PORT_VIP, 30080),
            frontend(NODE_PORT_VIP, 8080),
            frontend(NODE_PORT_VIP, 40000),
            frontend("10.96.0.10".parse().unwrap(), 80),
            frontend("10.96.0.11".parse().unwrap(), 30),
        ] {
            let wanted = DesiredFrontend {
                service: ObjectRef {
                    namespace: "default".into(),
                    name: "web".into(),
                },
                port_name: None,
                backends: Default::default(),
                internal_backends: Default::default(),
                external: true,
                local_only: false,
                source_ranges: Vec::new(),
                affinity_timeout_s: 0,
            };
            desired.frontends.insert(fe, wanted);
        }
        let outside = nodeports_outside(&desired, (30000, 32767));
        let ports: Vec<u16> = outside.iter().map(|fe| fe.port).collect();
        assert_eq!(ports, [8080, 40000]);
    }
}
