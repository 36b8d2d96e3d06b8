//! lb-agent: keeps the XDP load balancer's maps in sync with Kubernetes
//! Services and EndpointSlices, in place of kube-proxy.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use ipnet::IpNet;
use lb_agent::{
    agent::{self, privileges, AgentConfig, MapSizes, NetConfig, SourceConfig},
    ebpf::{PodHook, TcAttachArg, XdpModeArg},
};
use lb_core::{conntrack::CtTimeouts, net_config::parse_cidr};

/// eBPF/XDP Kubernetes Service load balancer agent (kube-proxy replacement).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory of Service and EndpointSlice (discovery.k8s.io/v1) YAML
    /// manifests to serve instead of a cluster's; edits are picked up
    /// within a second.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig to reach the API server with. Without it (and without
    /// --manifests): $KUBECONFIG, ~/.kube/config, or the in-cluster
    /// service account, in that order.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name: its Node object is watched. Default: $NODE_NAME
    /// (the DaemonSet sets it from spec.nodeName), else the hostname.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// This node's zone, for topology hints (trafficDistribution
    /// PreferClose / PreferSameZone, topology-mode Auto). With Kubernetes
    /// the Node's `topology.kubernetes.io/zone` label takes precedence;
    /// this is the zone when there is none (and with --manifests).
    #[arg(long, env = "NODE_ZONE")]
    zone: Option<String>,
    /// Node-side pod interfaces to attach to: comma-separated names or glob
    /// patterns (e.g. `veth*,cali*`). New matching interfaces are attached
    /// as they appear.
    #[arg(long, value_delimiter = ',', required_unless_present = "cleanup")]
    pod_interfaces: Vec<String>,
    /// The node's uplinks: comma-separated names or glob patterns (e.g.
    /// `eth0,bond*`). Traffic from outside the node to NodePorts,
    /// externalIPs and load-balancer IPs is balanced there. Empty: none.
    #[arg(long, value_delimiter = ',')]
    node_interfaces: Vec<String>,
    /// Source ports of flows SNATed to the node (from outside the node to a
    /// backend on another node), `FIRST-LAST`. Keep it outside the node's
    /// ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by
    /// default).
    #[arg(long, default_value = "61000-65535", value_parser = port_range("snat-ports"))]
    snat_ports: (u16, u16),
    /// The cluster's NodePort range (kube-apiserver
    /// --service-node-port-range), `FIRST-LAST`. NodePorts outside it are
    /// still served, and reported once each: the API server should not
    /// have allocated them, so the two disagree.
    #[arg(long, default_value = "30000-32767", value_parser = port_range("nodeport-range"))]
    nodeport_range: (u16, u16),
    /// bpffs directory where the maps and program links are pinned. Agents
    /// with different directories run side by side.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,
    /// XDP attach mode (uplinks, and pod interfaces with --pod-hook xdp).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// Where pod traffic to Services is translated: `tc` (TC ingress of
    /// the node-side veth) or `xdp` (XDP there, which turns TSO off on the
    /// pod's eth0 and costs pods most of their TCP throughput).
    #[arg(long, value_enum, default_value_t = PodHook::Tc)]
    pod_hook: PodHook,
    /// How TC programs are attached: `tcx` links (kernel >= 6.6),
    /// `netlink` (clsact qdisc + cls_bpf filters, any kernel), or `auto`
    /// (tcx where the kernel has it). Interfaces a previous agent attached
    /// keep their mode.
    #[arg(long, value_enum, env = "LB_TC_ATTACH", default_value_t = TcAttachArg::Auto)]
    tc_attach: TcAttachArg,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Pod network CIDR(s), comma-separated. Checked not to overlap the
    /// Service and node ranges.
    #[arg(long, value_delimiter = ',', value_parser = cidr("cluster-cidr"))]
    cluster_cidr: Vec<IpNet>,
    /// Service ClusterIP range(s), comma-separated (the API server's
    /// --service-cluster-ip-range).
    #[arg(long, value_delimiter = ',', value_parser = cidr("service-cidr"))]
    service_cidr: Vec<IpNet>,
    /// Node address ranges NodePorts answer on, comma-separated. Default:
    /// all of the node's addresses.
    #[arg(long, value_delimiter = ',', value_parser = cidr("nodeport-addresses"))]
    nodeport_addresses: Vec<IpNet>,
    /// Address of the health server (/healthz, /livez); empty to disable.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind: String,
    /// Address of the metrics server (/metrics); empty to disable.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind: String,
    /// /healthz fails when a change waits longer than this many seconds to
    /// be programmed.
    #[arg(long, default_value_t = 60)]
    healthz_timeout_secs: u64,
    /// Seconds an open TCP connection's conntrack entries may stay idle
    /// (kube-proxy: --conntrack-tcp-timeout-established).
    #[arg(long, default_value_t = CtTimeouts::default().tcp.as_secs())]
    ct_tcp_timeout_secs: u64,
    /// Seconds a TCP connection's entries stay after a FIN or RST (kube-proxy:
    /// --conntrack-tcp-timeout-close-wait).
    #[arg(long, default_value_t = CtTimeouts::default().tcp_closing.as_secs())]
    ct_tcp_closing_timeout_secs: u64,
    /// Seconds a UDP flow's entries may stay idle (kube-proxy:
    /// --conntrack-udp-timeout).
    #[arg(long, default_value_t = CtTimeouts::default().udp.as_secs())]
    ct_udp_timeout_secs: u64,
    /// Seconds between walks of the conntrack map that remove expired
    /// entries. An expired entry is also replaced when its map is full
    /// (LRU), so this bounds the entry count, not correctness.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    ct_gc_interval_secs: u64,
    /// Seconds between full read-backs of the maps, which repair entries
    /// changed or deleted behind the agent's back (kube-proxy:
    /// --iptables-sync-period; upstream's e2e expects a repair within 2
    /// minutes). Changes from the API are applied at once, whatever this
    /// is.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..))]
    resync_interval_secs: u64,
    /// cgroup v2 directory whose sockets in the agent's network namespace
    /// (node processes, hostNetwork pods) are balanced at connect() and
    /// sendmsg(): their packets cross no pod interface. `auto`: the root of
    /// the cgroup2 mount, which covers them all; an empty value turns this
    /// off.
    #[arg(long, default_value = "auto")]
    cgroup: String,
    /// Size of the service map: frontends x (1 + backends each).
    #[arg(long, default_value_t = MapSizes::default().services)]
    services_map_max: u32,
    /// Size of the backend map.
    #[arg(long, default_value_t = MapSizes::default().backends)]
    backends_map_max: u32,
    /// Size of the rev-NAT map: one entry per frontend (Service IP and port).
    #[arg(long, default_value_t = MapSizes::default().revnat)]
    revnat_map_max: u32,
    /// Size of the conntrack map (LRU): two entries per connection.
    #[arg(long, default_value_t = MapSizes::default().conntrack)]
    ct_map_max: u32,
    /// Remove the pinned maps and links on exit, detaching the datapath (by
    /// default it stays attached and serving, and a restarted agent adopts
    /// it).
    #[arg(long)]
    unpin_on_exit: bool,
    /// Detach and remove everything pinned under --bpffs, then exit (to
    /// uninstall, or before rolling back to kube-proxy).
    #[arg(long)]
    cleanup: bool,
}

fn cidr(flag: &'static str) -> impl Fn(&str) -> Result<IpNet, String> + Clone {
    move |s| parse_cidr(flag, s)
}

fn port_range(flag: &'static str) -> impl Fn(&str) -> Result<(u16, u16), String> + Clone {
    move |s| {
        let bad = || format!("--{flag}: {s:?} is not a port range FIRST-LAST (e.g. 61000-65535)");
        let (first, last) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok((first, last))
    }
}

fn bind(flag: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("--{flag}: {value:?} is not an IP:port"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log_level)?)
        .with_writer(std::io::stderr)
        .init();
    if args.cleanup {
        agent::cleanup(&args.bpffs)?;
        tracing::info!(bpffs = %args.bpffs.display(), "cleaned up: datapath detached, pins removed");
        return Ok(());
    }
    let node_name = match args.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("no --node-name or NODE_NAME, and no hostname")?
            .to_string_lossy()
            .into_owned(),
    };
    agent::run(AgentConfig {
        source: match args.manifests {
            Some(dir) => SourceConfig::Manifests(dir),
            None => SourceConfig::Kube {
                kubeconfig: args.kubeconfig,
            },
        },
        node_name,
        zone: args.zone,
        pod_interfaces: args.pod_interfaces,
        node_interfaces: args.node_interfaces,
        snat_ports: args.snat_ports,
        nodeport_range: args.nodeport_range,
        bpffs: args.bpffs,
        xdp_mode: args.xdp_mode,
        pod_hook: args.pod_hook,
        tc_attach: args.tc_attach,
        unpin_on_exit: args.unpin_on_exit,
        poll_interval: Duration::from_millis(250),
        net: NetConfig {
            cluster_cidrs: args.cluster_cidr,
            service_cidrs: args.service_cidr,
            nodeport_addresses: args.nodeport_addresses,
        },
        map_sizes: MapSizes {
            services: args.services_map_max,
            backends: args.backends_map_max,
            revnat: args.revnat_map_max,
            conntrack: args.ct_map_max,
        },
        healthz_bind: bind("healthz-bind", &args.healthz_bind)?,
        metrics_bind: bind("metrics-bind", &args.metrics_bind)?,
        healthz_timeout: Duration::from_secs(args.healthz_timeout_secs),
        ct_timeouts: CtTimeouts {
            tcp: Duration::from_secs(args.ct_tcp_timeout_secs),
            tcp_closing: Duration::from_secs(args.ct_tcp_closing_timeout_secs),
            udp: Duration::from_secs(args.ct_udp_timeout_secs),
        },
        ct_gc_interval: Duration::from_secs(args.ct_gc_interval_secs),
        resync_interval: Duration::from_secs(args.resync_interval_secs),
        cgroup: match args.cgroup.as_str() {
            "" => None,
            "auto" => {
                Some(lb_agent::ebpf::sock_lb::cgroup2_mount().context(
                    "--cgroup auto (pass a cgroup v2 directory, or \"\" to turn it off)",
                )?)
            }
            path => Some(PathBuf::from(path)),
        },
    })
    .await
    .map_err(name_missing_capability)
}

/// Heads an error caused by a refused call with the capability the agent
/// most likely lacks.
fn name_missing_capability(error: anyhow::Error) -> anyhow::Error {
    let needed = privileges::needed(privileges::memlock_charged());
    let missing = match privileges::effective() {
        Ok(effective) => privileges::missing(effective, &needed),
        Err(e) => {
            tracing::warn!("reading the capabilities: {e}");
            Vec::new()
        }
    };
    match privileges::explain(&error, &missing) {
        Some(hint) => error.context(hint),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSet;

    /// The flags deploy/daemonset.yaml passes are ones this binary accepts,
    /// with a consistent address plan: a DaemonSet that crash-loops on an
    /// unknown flag would take Service traffic down on every node.
    #[test]
    fn the_daemonset_args_parse() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml");
        let ds: DaemonSet = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let pod = ds.spec.unwrap().template.spec.unwrap();
        let container = pod
            .containers
            .iter()
            .find(|c| c.name == "lb-agent")
            .unwrap();
        let args = container.args.clone().unwrap();
        let parsed = Args::try_parse_from(std::iter::once("lb-agent".to_string()).chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        let net = NetConfig {
            cluster_cidrs: parsed.cluster_cidr,
            service_cidrs: parsed.service_cidr,
            nodeport_addresses: parsed.nodeport_addresses,
        };
        assert!(!net.cluster_cidrs.is_empty() && !net.service_cidrs.is_empty());
        assert_eq!(net.overlaps(), vec![]);
        assert!(bind("healthz-bind", &parsed.healthz_bind)
            .unwrap()
            .is_some());
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        let err = Args::try_parse_from([
            "lb-agent",
            "--pod-interfaces=veth*",
            "--service-cidr=10.96.0.0/40",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--service-cidr"), "{err}");
        let err = Args::try_parse_from(["lb-agent", "--pod-interfaces=veth*", "--snat-ports=9-3"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--snat-ports"), "{err}");
        let ok = Args::try_parse_from([
            "lb-agent",
            "--pod-interfaces=veth*",
            "--snat-ports=61000-61999",
        ])
        .unwrap();
        assert_eq!(ok.snat_ports, (61000, 61999));
        let err = bind("metrics-bind", "localhost").unwrap_err().to_string();
        assert!(err.contains("--metrics-bind"), "{err}");
    }
}
