//! `lb-testbed`: runs the load balancer in a throwaway namespace topology.
//!
//! `lb-testbed demo` is the first thing to try: it builds a node with three
//! backend pods and a client pod, starts the agent on the node, sends TCP and
//! UDP requests to the `web` Service of `examples/web.yaml`, shows where they
//! went, and what `lbctl` sees.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use lb_testbed::agent::AgentProcess;
use lb_testbed::bench::{datapath, nodeport, programming, sync, traffic};
use lb_testbed::client::{format_result, request, Client, Transport, DEFAULT_TIMEOUT};
use lb_testbed::conformance;
use lb_testbed::scratch::{copy_manifests, ScratchDir};
use lb_testbed::servers::{Servers, TCP_PORT, UDP_PORT};
use lb_testbed::tally::Tally;
use lb_testbed::topology::ClusterIpTopology;
use lb_testbed::{privileged, WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The backends `examples/web.yaml` lists: 10.244.1.2 to 10.244.3.2.
const BACKENDS: usize = 3;
const REQUESTS: usize = 300;
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longer lbctl outputs (the conntrack table) are cut to this many lines.
const LBCTL_LINES: usize = 20;

#[derive(Parser)]
#[command(about = "Runs the load balancer in throwaway network namespaces (needs root)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the agent balancing examples/web.yaml's Service between three pods.
    Demo {
        /// The agent binary [default: lb-agent next to this program].
        #[arg(long)]
        agent: Option<PathBuf>,
        /// The lbctl binary [default: lbctl next to this program].
        #[arg(long)]
        lbctl: Option<PathBuf>,
        /// Directory with the Service and EndpointSlice manifests, e.g. examples/.
        #[arg(long)]
        manifests: PathBuf,
        /// Passed to the agent's --xdp-mode (auto, native or generic).
        #[arg(long)]
        xdp_mode: Option<String>,
    },
    /// Measure the datapath's cost per packet (BPF_PROG_TEST_RUN, next to
    /// anchor programs), real connection rates (direct vs ClusterIP) and the
    /// control plane at scale (initial sync, change-to-map latency), and
    /// write a markdown report.
    Bench {
        /// Where to write the report (also printed). It holds the benchmarks
        /// that ran, only.
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
        /// The agent binary [default: lb-agent next to this program].
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Repetitions per BPF_PROG_TEST_RUN timing.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Timed runs per figure (median, min and max are reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Other Services (10 backends each) installed during the datapath runs.
        #[arg(long, default_value_t = 1000)]
        services: u32,
        /// Datapath: table sizes (other Services x 10 backends) the main
        /// cases are measured at again (the flag without a value: none).
        #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "10,1000,10000,100000")]
        datapath_scales: Vec<u32>,
        /// Traffic: numbers of other Services installed (10 endpoints
        /// each), one topology each.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        traffic_scales: Vec<usize>,
        /// Traffic: sequential connections per mode and run.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Traffic: seconds per iperf3 run.
        #[arg(long, default_value_t = 2)]
        iperf_secs: u32,
        /// NodePort: datagrams per stream.
        #[arg(long, default_value_t = 2_000_000)]
        nodeport_packets: u64,
        /// NodePort: other Services installed (10 endpoints each).
        #[arg(long, default_value_t = 1000)]
        nodeport_services: usize,
        /// Run only these benchmarks (comma-separated) [default: all].
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<BenchKind>,
        /// Leave out the control-plane benchmark (the slowest).
        #[arg(long)]
        skip_sync: bool,
        /// Control plane: numbers of Services (10 endpoints each) to sync,
        /// one agent run each.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        sync_scales: Vec<usize>,
        /// Control plane: endpoint changes timed per scale.
        #[arg(long, default_value_t = 100)]
        sync_changes: usize,
        /// Programming cost: numbers of Services (10 endpoints each) the
        /// kube-proxy rule sets are loaded and changed at; ours comes from
        /// the control-plane run at the same scales.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        programming_scales: Vec<usize>,
        /// Programming cost: a rule load still running after this many
        /// seconds is killed (and reported so).
        #[arg(long, default_value_t = 90)]
        programming_deadline_secs: u64,
    },
    /// Run the upstream Service e2e scenarios on namespace clusters and
    /// write the table (see lb_testbed::conformance).
    Conformance {
        /// Where to write the markdown table.
        #[arg(long, default_value = "docs/conformance.md")]
        out: PathBuf,
        /// Also run the slow scenarios (upstream's long timeouts kept).
        #[arg(long)]
        all: bool,
        /// Run only these scenarios (comma-separated ids).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The agent binary [default: lb-agent next to this program].
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Differential fuzzing of the datapath: seeded random and mutated
    /// frames through the four packet programs (BPF_PROG_TEST_RUN), each
    /// held to the properties of `lb_testbed::fuzz`. Exits 1 on any
    /// violation, printing the first ones.
    Fuzz {
        /// How many frames.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// The random seed (the same seed replays the same run).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Endpoint churn soak: 100 Services' EndpointSlices rewritten every
    /// 100 ms through the fake API server while a client connects to them;
    /// exits 1 if a request failed, the agent's memory grew more than 5%
    /// after warm-up, or conntrack or affinity occupancy left its bound.
    Soak {
        /// How long.
        #[arg(long, default_value_t = 600)]
        duration_secs: u64,
        /// The agent binary [default: lb-agent next to this program].
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Send requests to the testbed's echo servers from this process's own
    /// namespace, one result line each (tests run it as a node process).
    Probe {
        transport: Transport,
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

/// The benchmarks `lb-testbed bench` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchKind {
    /// Datapath cost per packet.
    Datapath,
    /// Connections, latency and throughput through namespaces, ours vs
    /// kube-proxy's rule sets.
    Traffic,
    /// NodePort forwarding rate from outside the cluster.
    Nodeport,
    /// Control plane at scale.
    Sync,
    /// Endpoint change to dataplane updated, ours vs kube-proxy's rule loads.
    Programming,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Demo {
            agent,
            lbctl,
            manifests,
            xdp_mode,
        } => (|| {
            let agent = sibling_or(agent, "lb-agent")?;
            let lbctl = sibling_or(lbctl, "lbctl")?;
            demo(&agent, &lbctl, &manifests, xdp_mode.as_deref())
        })(),
        Cmd::Conformance {
            out,
            all,
            only,
            agent,
        } => (|| {
            let bins = conformance::Binaries {
                agent: sibling_or(agent, "lb-agent")?,
                testbed: std::env::current_exe().context("finding this program's path")?,
            };
            run_conformance(&bins, &out, all, &only)
        })(),
        Cmd::Soak {
            duration_secs,
            agent,
        } => (|| {
            let agent = sibling_or(agent, "lb-agent")?;
            let params = lb_testbed::soak::Params::new(Duration::from_secs(duration_secs));
            let report = lb_testbed::soak::run(&agent, &params)?;
            print!("{report}");
            anyhow::ensure!(report.passed(), "the soak missed a goal (above)");
            Ok(())
        })(),
        Cmd::Fuzz { packets, seed } => (|| {
            let report = lb_testbed::fuzz::run(packets, seed)?;
            print!("{report}");
            anyhow::ensure!(report.clean(), "the datapath broke a property (above)");
            Ok(())
        })(),
        Cmd::Probe {
            transport,
            to,
            count,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            for _ in 0..count {
                println!("{}", format_result(&request(transport, to, timeout)));
            }
            Ok(())
        }
        Cmd::Bench {
            out,
            agent,
            repeat,
            runs,
            services,
            datapath_scales,
            traffic_scales,
            connections,
            iperf_secs,
            only,
            skip_sync,
            sync_scales,
            sync_changes,
            programming_scales,
            programming_deadline_secs,
            nodeport_packets,
            nodeport_services,
        } => (|| {
            let agent = sibling_or(agent, "lb-agent")?;
            let wanted = |kind| {
                (only.is_empty() || only.contains(&kind)) && !(skip_sync && kind == BenchKind::Sync)
            };
            let datapath = wanted(BenchKind::Datapath).then_some((
                datapath::Params {
                    repeat,
                    runs,
                    services,
                    new_flows: 20_000,
                },
                datapath_scales,
            ));
            let sync = wanted(BenchKind::Sync).then_some(sync::Params {
                scales: sync_scales,
                changes: sync_changes,
            });
            let traffic = wanted(BenchKind::Traffic).then_some(traffic::Params {
                scales: traffic_scales,
                runs,
                connections,
                iperf_secs,
            });
            let programming = wanted(BenchKind::Programming).then_some(programming::Params {
                scales: programming_scales,
                changes: runs,
                deadline: Duration::from_secs(programming_deadline_secs),
            });
            let nodeport = wanted(BenchKind::Nodeport).then_some(nodeport::Params {
                packets: nodeport_packets,
                runs,
                services: nodeport_services,
            });
            bench(
                &out,
                &agent,
                Plan {
                    datapath,
                    traffic,
                    nodeport,
                    sync,
                    programming,
                },
            )
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nlb-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenarios one after the other, prints each result, writes the
/// table to `out`; fails if any scenario failed.
fn run_conformance(
    bins: &conformance::Binaries,
    out: &Path,
    all: bool,
    only: &[String],
) -> Result<()> {
    privileged::check().map_err(|e| anyhow::anyhow!(e))?;
    let cases: Vec<_> = conformance::catalogue()
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|o| o == c.id))
        .filter(|c| all || !only.is_empty() || c.speed == conformance::Speed::Fast)
        .collect();
    let mut ran = Vec::new();
    for case in &cases {
        eprintln!("==> {} ({})", case.id, case.upstream);
        let r = conformance::run(case, bins);
        match &r.result {
            Ok(o) => eprintln!("    pass in {:.1} s: {}", r.took.as_secs_f64(), o.figure),
            Err(e) => eprintln!("    FAIL in {:.1} s: {e}", r.took.as_secs_f64()),
        }
        ran.push(r);
    }
    let skipped_slow = conformance::catalogue()
        .iter()
        .filter(|c| !all && only.is_empty() && c.speed == conformance::Speed::Slow)
        .count();
    let header = format!(
        "Generated by `cargo xtask conformance{}` on {} ({}). {}",
        if all { " --all" } else { "" },
        uname("-r"),
        uname("-m"),
        if skipped_slow > 0 {
            format!("{skipped_slow} slow scenarios were not run (`--all` runs them).")
        } else {
            String::new()
        }
    );
    let report = conformance::report(&ran, &conformance::not_run(), &header);
    std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("report written to {}", out.display());
    let failed: Vec<&str> = ran
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.id)
        .collect();
    if !failed.is_empty() {
        bail!("{} scenario(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

fn uname(flag: &str) -> String {
    Command::new("uname")
        .arg(flag)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `explicit`, or the binary `name` installed next to this one (cargo puts
/// all of the workspace's binaries in one directory).
fn sibling_or(explicit: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let me = std::env::current_exe().context("finding this program's path")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found; build it (cargo build) or pass --{}",
            path.display(),
            name.trim_start_matches("lb-")
        );
    }
    Ok(path)
}

/// The benchmarks to run: those with parameters.
struct Plan {
    datapath: Option<(datapath::Params, Vec<u32>)>,
    traffic: Option<traffic::Params>,
    nodeport: Option<nodeport::Params>,
    sync: Option<sync::Params>,
    programming: Option<programming::Params>,
}

/// Runs the planned benchmarks and writes the report: its sections in the
/// issue's order, plots next to it (docs/benchmarks.md -> docs/benchmarks/).
fn bench(out: &Path, agent: &Path, plan: Plan) -> Result<()> {
    if plan.datapath.is_none()
        && plan.traffic.is_none()
        && plan.nodeport.is_none()
        && plan.sync.is_none()
        && plan.programming.is_none()
    {
        bail!("nothing to run: --only and --skip-sync left no benchmark");
    }
    privileged::check().map_err(|why| {
        anyhow::anyhow!("the benchmarks need root and a bpffs at /sys/fs/bpf: {why}")
    })?;
    let started = Instant::now();
    let load_before = load_average();
    let stem = out
        .file_stem()
        .context("the report needs a file name")?
        .to_string_lossy()
        .into_owned();
    let plot_dir = out.with_file_name(&stem);
    std::fs::create_dir_all(&plot_dir)
        .with_context(|| format!("creating {}", plot_dir.display()))?;
    // Minutes of waiting at 100k Services: Ctrl-C must still clean up.
    catch_interrupts()?;
    let mut sections = Vec::new();
    let mut add = |title: &'static str, body: String| {
        println!("{body}");
        sections.push((title, body));
    };
    if let Some((params, scales)) = plan.datapath {
        println!(
            "Datapath cost per packet ({} x {} BPF_PROG_TEST_RUN repetitions per case)…",
            params.runs, params.repeat
        );
        let cases = datapath::run(&params)?;
        let mut body = datapath::report(&params, &cases);
        if !scales.is_empty() {
            let swept = datapath::run_sweep(&params, &scales)?;
            datapath::sweep::plot(&swept, &plot_dir).context("plotting the datapath sweep")?;
            body.push('\n');
            body.push_str(&datapath::sweep::report(&params, &swept, &stem));
        }
        add("Datapath cost per packet", body);
    }
    check_interrupted()?;
    if let Some(params) = plan.traffic {
        println!("Traffic in namespaces: no NAT, ours, kube-proxy iptables and nftables…");
        let result = traffic::run(agent, &params)?;
        traffic::plots(&result, &plot_dir).context("plotting the traffic figures")?;
        add("Real traffic", traffic::report(&result, &stem));
    }
    check_interrupted()?;
    if let Some(params) = plan.nodeport {
        println!("NodePort forwarding rate from outside the cluster…");
        let result = nodeport::run(agent, &params)?;
        nodeport::plots(&result, &plot_dir).context("plotting the NodePort figures")?;
        add("NodePort forwarding rate", nodeport::report(&result, &stem));
    }
    check_interrupted()?;
    // The control plane runs before the programming cost, which shows its
    // change-to-map figures, but is reported last, as section 5.
    let synced = match plan.sync {
        Some(params) => {
            println!("Control plane at scale (initial sync, change-to-map latency)…");
            Some(sync::run(agent, &params, &interrupted)?)
        }
        None => None,
    };
    check_interrupted()?;
    if let Some(params) = plan.programming {
        println!("Programming cost: kube-proxy's rule loads at scale…");
        let result = programming::run(&params)?;
        programming::plots(&result, synced.as_ref(), &plot_dir)
            .context("plotting the programming cost")?;
        add(
            "Programming cost",
            programming::report(&result, synced.as_ref(), &stem),
        );
    }
    if let Some(result) = &synced {
        add("Control plane at scale", sync::report(result));
    }
    let mut report = format!(
        "# Benchmarks\n\nGenerated by `cargo xtask bench` ({}) in {:.0} min. Every figure is compared with an anchor measured in the same run. \
         The machine is shared: its 1-minute load average was {} at the start and {} at the end of the run.\n",
        machine(),
        started.elapsed().as_secs_f64() / 60.0,
        load_before,
        load_average(),
    );
    for (title, body) in &sections {
        report.push_str(&format!("\n## {title}\n\n{body}"));
    }
    std::fs::write(out, report).with_context(|| format!("writing {}", out.display()))?;
    println!("Report written to {}", out.display());
    Ok(())
}

/// The 1-minute load average, as /proc/loadavg prints it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Kernel, CPU and core count, for the report's header.
fn machine() -> String {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .unwrap_or(0);
    format!("kernel {kernel}, {cpu}, {cores} cores")
}

fn demo(agent_bin: &Path, lbctl: &Path, manifests: &Path, xdp_mode: Option<&str>) -> Result<()> {
    privileged::check()
        .map_err(|why| anyhow::anyhow!("the demo needs root and a bpffs at /sys/fs/bpf: {why}"))?;
    catch_interrupts()?;
    // The agent reads a copy, so nothing the demo does touches the originals.
    let scratch = ScratchDir::new()?;
    let copied = copy_manifests(manifests, scratch.path())?;

    println!("Building a node with {BACKENDS} backend pods and a client pod, each in its own network namespace…");
    let topo = ClusterIpTopology::create(BACKENDS).context("building the topology")?;
    println!(
        "  node    netns {}: routes between the pods, conntrack drops INVALID packets",
        topo.node().name()
    );
    for pod in topo.backends().iter().chain([topo.client()]) {
        println!(
            "  {:<7} netns {}: eth0 {}, node side {}",
            pod.name,
            pod.ns.name(),
            pod.ip,
            pod.host_if
        );
    }
    let _servers = Servers::start(topo.backends()).context("starting the pod servers")?;
    println!("Each backend pod answers on TCP {TCP_PORT} and UDP {UDP_PORT} with its name and the client address it saw.");
    check_interrupted()?;

    let mut extra_args = Vec::new();
    if let Some(mode) = xdp_mode {
        extra_args.extend(["--xdp-mode", mode]);
    }
    let mut agent = AgentProcess::start(
        agent_bin,
        topo.node(),
        scratch.path(),
        &topo.pod_interfaces(),
        &extra_args,
    )?;
    println!(
        "\nStarted {} on the node with {copied} manifest file(s) from {}, pins in {}.",
        agent_bin.display(),
        manifests.display(),
        agent.pin_dir().display()
    );
    let client = Client::new(topo.client());
    let answers = || {
        matches!(
            client.tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT),
            Ok(Ok(_))
        )
    };
    let ready = agent.wait_ready(READY_TIMEOUT, || interrupted() || answers());
    check_interrupted()?;
    match ready {
        Ok(took) => println!(
            "{WEB_VIP}:{WEB_TCP_PORT} answers after {} ms.",
            took.as_millis()
        ),
        Err(e) => {
            print_log(&agent);
            return Err(e.context(format!(
                "waiting for {WEB_VIP}:{WEB_TCP_PORT} to answer (does {} hold examples/web.yaml?)",
                manifests.display()
            )));
        }
    }

    let client_ip = topo.client().ip;
    println!("\nSending {REQUESTS} TCP connections and {REQUESTS} UDP datagrams from the client pod ({client_ip})…\n");
    let names: Vec<&str> = topo
        .backends()
        .iter()
        .map(|pod| pod.name.as_str())
        .collect();
    let mut problems = Vec::new();
    for (proto, port) in [("TCP", WEB_TCP_PORT), ("UDP", WEB_UDP_PORT)] {
        let started = Instant::now();
        let results = if proto == "TCP" {
            client.tcp_requests(WEB_VIP, port, REQUESTS, DEFAULT_TIMEOUT)?
        } else {
            client.udp_requests(WEB_VIP, port, REQUESTS, DEFAULT_TIMEOUT)?
        };
        let took = started.elapsed();
        let tally = Tally::new(
            (WEB_VIP, port).into(),
            client_ip,
            names.iter().copied(),
            &results,
        );
        println!("{}  ({} ms)\n", tally.render(proto), took.as_millis());
        problems.extend(
            tally
                .problems()
                .into_iter()
                .map(|p| format!("{proto}: {p}")),
        );
        check_interrupted()?;
    }

    let pins = agent.pin_dir().to_owned();
    for args in [&["service", "list"][..], &["ct", "list"], &["stats"]] {
        run_lbctl(lbctl, &pins, args);
    }

    println!("Tearing down…");
    match agent.stop() {
        Ok(status) if status.success() => println!("  agent stopped cleanly"),
        Ok(status) => println!("  agent stopped: {status}"),
        Err(e) => println!("  stopping the agent: {e:#}"),
    }
    if !problems.is_empty() {
        print_log(&agent);
        bail!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    println!(
        "\nAll {} requests were answered, by every backend, with the client's address preserved.",
        2 * REQUESTS
    );
    Ok(())
}

/// Shows `lbctl --bpffs <pins> <args>`. lbctl failing does not fail the demo:
/// the traffic is what the demo checks.
fn run_lbctl(lbctl: &Path, pins: &Path, args: &[&str]) {
    println!("$ lbctl --bpffs {} {}", pins.display(), args.join(" "));
    match Command::new(lbctl)
        .arg("--bpffs")
        .arg(pins)
        .args(args)
        .output()
    {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            for line in stdout.lines().take(LBCTL_LINES) {
                println!("  {line}");
            }
            let more = stdout.lines().count().saturating_sub(LBCTL_LINES);
            if more > 0 {
                println!("  … {more} more lines");
            }
            if !out.status.success() {
                println!(
                    "  (lbctl failed, {}: {})",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Err(e) => println!("  (cannot run {}: {e})", lbctl.display()),
    }
    println!();
}

fn print_log(agent: &AgentProcess) {
    eprintln!(
        "---- lb-agent log ----\n{}---- end of lb-agent log ----",
        agent.log()
    );
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C would kill us before the Drop guards delete the namespaces: turn
/// it into a flag the demo checks between steps. (The agent, in our process
/// group, gets the Ctrl-C too and exits, which also ends any wait for it.)
fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("catching {signal}"))?;
    }
    Ok(())
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}
