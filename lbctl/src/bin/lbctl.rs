//! `lbctl`: shows what the load balancer's pinned BPF maps hold, decoded.
//! The work is in the `lbctl` library; this maps arguments onto it.

use std::{
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use lb_core::net_config::{parse_cidr, NetConfig};
use lbctl::{
    backend_stats, backends, conntrack, dump, explain, list_maps, read_snapshot, services, stats,
    Format, MapId, Report,
};

/// Inspect the maps of the eBPF/XDP Service load balancer.
///
/// Exit status: 0 when all is well, 1 when the maps are inconsistent (or a
/// map is missing), 2 on errors.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Directory where lb-agent pins its maps.
    #[arg(long, global = true, env = "LBCTL_BPFFS", default_value = lbctl::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Print a JSON document instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The pinned maps themselves.
    #[command(subcommand)]
    Map(MapCommand),
    /// Our programs: where each is attached (interface, hook, XDP mode),
    /// its kernel ids, and its run count and time.
    #[command(subcommand)]
    Prog(ProgCommand),
    /// Frontends (VIP:port/proto) and their backend slots.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Backends (pod address:port).
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Connection tracking.
    #[command(subcommand)]
    Ct(CtCommand),
    /// sessionAffinity ClientIP memory.
    #[command(subcommand)]
    Affinity(AffinityCommand),
    /// What the datapath does with a flow: which frontend matches, which
    /// backend it gets and why (conntrack, affinity, or the flow hash,
    /// computed as the kernel does), and the exact rewrite.
    Explain {
        /// Client address, with its source port to name the exact backend.
        #[arg(value_name = "SRC_IP[:PORT]")]
        src: conntrack::HostPort,
        /// Destination (a ClusterIP, node address, external or LB IP).
        #[arg(value_name = "DST_IP:PORT")]
        dst: SocketAddrV4,
        #[arg(value_enum, default_value = "tcp")]
        proto: ProtoArg,
        /// Where the packet enters: from a pod's veth or an uplink.
        #[arg(long, value_enum, default_value = "pod")]
        via: explain::Via,
    },
    /// The Service troubleshooting checklist for NAMESPACE/NAME, with a
    /// pass/fail line and a hint for each check.
    Diagnose {
        /// `namespace/name`.
        service: String,
        #[command(flatten)]
        ranges: Ranges,
        /// The agent's health endpoint (kube-proxy's port).
        #[arg(long, default_value = "127.0.0.1:10256")]
        healthz: std::net::SocketAddr,
    },
    /// The static checks over a directory of manifests, before applying it.
    Lint {
        dir: PathBuf,
        #[command(flatten)]
        ranges: Ranges,
    },
    /// Packets and bytes per verdict reason, summed over CPUs.
    Stats {
        /// Hide reasons that counted no packet.
        #[arg(long)]
        nonzero: bool,
        /// Per frontend instead: packets and bytes that reached it, and how
        /// many were dropped or refused.
        #[arg(long, conflicts_with = "watch")]
        services: bool,
        /// Per backend instead: packets and bytes forwarded to it, with the
        /// Services that use it.
        #[arg(long, conflicts_with_all = ["watch", "services"])]
        backends: bool,
        /// Refresh every this many seconds, with packet rates, like top
        /// (JSON: one document per refresh). Stop with Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
}

/// The cluster's address plan, as given to the agent.
#[derive(clap::Args)]
struct Ranges {
    /// The Service range (kube-apiserver --service-cluster-ip-range).
    #[arg(long, value_parser = |s: &str| parse_cidr("service-cidr", s))]
    service_cidr: Vec<ipnet::IpNet>,
    /// The Pod range (kube-controller-manager --cluster-cidr).
    #[arg(long, value_parser = |s: &str| parse_cidr("cluster-cidr", s))]
    cluster_cidr: Vec<ipnet::IpNet>,
    /// kube-apiserver --service-node-port-range.
    #[arg(long, default_value = "30000-32767", value_parser = port_range)]
    nodeport_range: (u16, u16),
}

impl Ranges {
    fn net(&self) -> NetConfig {
        NetConfig {
            service_cidrs: self.service_cidr.clone(),
            cluster_cidrs: self.cluster_cidr.clone(),
            nodeport_addresses: Vec::new(),
        }
    }
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
    let parse = |p: &str| p.parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    Ok((parse(a)?, parse(b)?))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CtState {
    Open,
    Closing,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(Subcommand)]
enum MapCommand {
    /// Kernel id, type, sizes and entry count of each map.
    List,
    /// Every entry of one map, decoded.
    Dump {
        /// The map's pin name (`lbctl map list` shows them all).
        #[arg(value_parser = map_name())]
        name: MapId,
    },
}

#[derive(Subcommand)]
enum ProgCommand {
    /// Every link the agent pinned and the program behind it.
    List,
}

#[derive(Subcommand)]
enum AffinityCommand {
    /// Per frontend and client: the backend new flows go to, and for how
    /// much longer.
    List,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// One row per backend slot; flags the slots the datapath cannot use.
    List,
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Each backend with the frontend slots that name it.
    List,
}

#[derive(Subcommand)]
enum CtCommand {
    /// List the tracked flows.
    List {
        /// Only flows to this frontend (VIP:PORT).
        #[arg(long)]
        service: Option<SocketAddrV4>,
        /// Only flows to this backend (IP or IP:PORT).
        #[arg(long)]
        backend: Option<conntrack::HostPort>,
        /// Only flows of this client.
        #[arg(long)]
        client: Option<Ipv4Addr>,
        /// Only TCP flows closing (a FIN or RST seen) or open.
        #[arg(long, value_enum)]
        state: Option<CtState>,
        /// Only flows at least this many seconds old.
        #[arg(long, default_value_t = 0.0)]
        min_age: f64,
        /// Only flows idle at least this many seconds.
        #[arg(long, default_value_t = 0.0)]
        min_idle: f64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_findings) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command; returns the number of findings.
fn run(cli: Cli) -> anyhow::Result<usize> {
    let format = if cli.json {
        Format::Json
    } else {
        Format::Table
    };
    let dir = &cli.bpffs;
    match cli.command {
        Command::Map(MapCommand::List) => print(&list_maps(dir)?, format),
        Command::Map(MapCommand::Dump { name }) => {
            print(&dump::dump(&read_snapshot(dir, &[name])?, name), format)
        }
        Command::Affinity(AffinityCommand::List) => print(
            &lbctl::affinity::affinity_list(&read_snapshot(dir, lbctl::affinity::READS)?),
            format,
        ),
        Command::Prog(ProgCommand::List) => print(&lbctl::progs::prog_list(dir), format),
        Command::Service(ServiceCommand::List) => print(
            &services::service_list(&read_snapshot(dir, services::READS)?),
            format,
        ),
        Command::Backend(BackendCommand::List) => print(
            &backends::backend_list(&read_snapshot(dir, backends::READS)?),
            format,
        ),
        Command::Diagnose {
            service,
            ranges,
            healthz,
        } => {
            let ctx = lbctl::diagnose::Context {
                net: ranges.net(),
                nodeport_range: ranges.nodeport_range,
                healthz: Some(healthz),
            };
            let snap = read_snapshot(dir, lbctl::diagnose::READS)?;
            let progs = lbctl::progs::prog_list(dir);
            print(
                &lbctl::diagnose::diagnose(&snap, &progs, &service, &ctx),
                format,
            )
        }
        Command::Lint { dir, ranges } => print(
            &lbctl::lint::lint(&dir, &ranges.net(), ranges.nodeport_range),
            format,
        ),
        Command::Explain {
            src,
            dst,
            proto,
            via,
        } => {
            let flow = explain::Flow {
                src: src.ip,
                sport: src.port,
                dst,
                proto: match proto {
                    ProtoArg::Tcp => lb_common::IPPROTO_TCP,
                    ProtoArg::Udp => lb_common::IPPROTO_UDP,
                },
                via,
            };
            print(
                &explain::explain(&read_snapshot(dir, explain::READS)?, &flow),
                format,
            )
        }
        Command::Ct(CtCommand::List {
            service,
            backend,
            client,
            state,
            min_age,
            min_idle,
        }) => {
            let filter = conntrack::CtFilter {
                service,
                backend,
                client,
                closing: state.map(|s| matches!(s, CtState::Closing)),
                min_age_ns: (min_age * 1e9) as u64,
                min_idle_ns: (min_idle * 1e9) as u64,
            };
            print(
                &conntrack::ct_list(&read_snapshot(dir, conntrack::READS)?, &filter),
                format,
            )
        }
        Command::Stats { backends: true, .. } => print(
            &backend_stats::backend_stats(&read_snapshot(dir, backend_stats::READS)?),
            format,
        ),
        Command::Stats { services: true, .. } => print(
            &stats::service_stats(&read_snapshot(dir, stats::SERVICE_READS)?),
            format,
        ),
        Command::Stats {
            nonzero,
            watch: None,
            ..
        } => print(
            &stats::stats(&read_snapshot(dir, stats::READS)?, nonzero),
            format,
        ),
        Command::Stats {
            nonzero,
            watch: Some(secs),
            count,
            ..
        } => {
            let period = std::time::Duration::from_secs_f64(secs.max(0.1));
            let mut before = stats::stats(&read_snapshot(dir, stats::READS)?, false);
            let mut at = std::time::Instant::now();
            for _ in 0..count.unwrap_or(u64::MAX) {
                std::thread::sleep(period);
                let now = stats::stats(&read_snapshot(dir, stats::READS)?, false);
                let elapsed = at.elapsed().as_secs_f64();
                at = std::time::Instant::now();
                let mut shown = stats::with_rates(now, &before, elapsed);
                before = stats::stats(&read_snapshot(dir, stats::READS)?, false);
                if nonzero {
                    shown.reasons.retain(|r| r.packets > 0);
                }
                if format == Format::Table {
                    // Clear the terminal and home the cursor, as top does.
                    print!("\x1b[2J\x1b[H");
                }
                print(&shown, format)?;
            }
            Ok(0)
        }
    }
}

fn print(report: &impl Report, format: Format) -> anyhow::Result<usize> {
    match io::stdout()
        .lock()
        .write_all(lbctl::render(report, format).as_bytes())
    {
        // `lbctl ct list | head` is fine: the reader has what it wanted.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(report.findings()),
    }
}

/// Accepts the registry's map names, and lists them in `--help`.
fn map_name() -> impl clap::builder::TypedValueParser<Value = MapId> {
    use clap::builder::TypedValueParser as _;
    let names = MapId::ALL.iter().map(|map| map.name());
    clap::builder::PossibleValuesParser::new(names)
        .map(|name| MapId::from_name(&name).expect("a possible value is a map name"))
}
