//! Control-plane benchmark: initial sync and change-to-map latency at scale.
//!
//! Per scale N, in a fresh network namespace with only loopback: the
//! in-process fake API server is filled with N Services x 10 endpoints
//! (see [`cluster`]), the real agent binary is started against it with maps
//! sized for N and no pod interface to attach to, and we measure
//!
//! - time to ready: from spawning the agent to its first 200 on /healthz
//!   (its first full sync), or, for an agent without /healthz, to its first
//!   `synced:` log line;
//! - its peak RSS (VmHWM) at that point and after the changes below;
//! - change-to-map latency: single endpoint changes written to the API
//!   server, timed until the new address is in the pinned maps.
//!
//! The fake API server's own costs (filling it, and one full LIST as the
//! agent's reflectors do it) are measured separately, so that the agent's
//! figures can be read against them.

mod api_list;
pub(super) mod cluster;
mod latency;
pub(crate) mod probe;
mod programmed;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

use self::cluster::{cluster_ip, initial_endpoints, ENDPOINTS_PER_SERVICE, SERVICE_PORT};
use self::probe::AgentHelp;
use self::programmed::PinnedMaps;
use super::stats::{percentile, Spread};
use crate::{
    agent::AgentProcess, apiserver::FakeApiServer, netns::NetNs, scratch::ScratchDir, unique_tag,
    wait_until,
};

/// A glob no interface matches: the benchmark measures the control plane,
/// there are no pods to attach to.
const NO_INTERFACES: &str = "lbbench-none*";
/// Where the agent serves /healthz and metrics, on the namespace's loopback.
const HEALTHZ: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10256);
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249);
/// Spare map entries on top of the exact need (a changed endpoint's new
/// backend is written before the old one is deleted).
const MAP_SLACK: usize = 1024;
/// How long the first sync may take; generous, since 100k Services through
/// the fake API server take a while and a failing agent is noticed sooner
/// (it exits or logs a failed sync).
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// What to measure.
#[derive(Clone, Debug)]
pub struct Params {
    /// Numbers of Services, each with 10 endpoints, one run per number.
    pub scales: Vec<usize>,
    /// Endpoint changes timed per scale (0: none).
    pub changes: usize,
}

/// How the agent's readiness was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadySignal {
    /// The first 200 on /healthz.
    Healthz,
    /// The first `synced:` log line (agents without /healthz).
    SyncLog,
}

/// The figures of one scale.
#[derive(Clone, Debug)]
pub struct ScaleResult {
    pub services: usize,
    /// Loading Services and slices into the fake API server.
    pub fill: Duration,
    /// One client listing everything from the fake API server.
    pub list: Duration,
    /// Agent spawn to ready.
    pub ready: Duration,
    /// The agent's own time in syncs (diffing and writing the maps) up to
    /// ready, from its metrics; `None` for an agent without them.
    pub agent_sync: Option<Duration>,
    pub peak_rss_ready_kib: u64,
    pub peak_rss_end_kib: u64,
    /// Change-to-map latencies in ms; empty when no changes were asked for.
    pub change_ms: Vec<f64>,
}

pub struct SyncResult {
    pub scales: Vec<ScaleResult>,
    pub signal: ReadySignal,
    /// Whether the agent took map-size flags (else its fixed sizes applied).
    pub sized_maps: bool,
    /// Endpoint changes timed per scale.
    pub changes: usize,
}

/// Runs every scale of `p` in turn. `stop` is polled during the long waits
/// and ends the run with an error when it returns true.
pub fn run(agent_bin: &Path, p: &Params, stop: &dyn Fn() -> bool) -> Result<SyncResult> {
    for &n in &p.scales {
        ensure!(
            (1..=cluster::MAX_SERVICES).contains(&n),
            "a scale of {n} Services: the benchmark runs 1 to {} (its ClusterIP range)",
            cluster::MAX_SERVICES
        );
    }
    let help = AgentHelp::of(agent_bin)?;
    let bench = Bench {
        agent_bin,
        signal: if help.has("--healthz-bind") {
            ReadySignal::Healthz
        } else {
            ReadySignal::SyncLog
        },
        help,
        changes: p.changes,
        stop,
    };
    let mut scales = Vec::new();
    for &n in &p.scales {
        println!("  {n} Services x {ENDPOINTS_PER_SERVICE} endpoints…");
        let result = bench
            .measure_scale(n)
            .with_context(|| format!("at {n} Services"))?;
        println!(
            "    fill {:.1} s, LIST {:.1} s, ready {:.1} s, peak RSS {:.0} MiB",
            result.fill.as_secs_f64(),
            result.list.as_secs_f64(),
            result.ready.as_secs_f64(),
            mib(result.peak_rss_ready_kib),
        );
        if !result.change_ms.is_empty() {
            let median = Spread::of(&result.change_ms).median;
            println!("    change-to-map median {median:.0} ms");
        }
        scales.push(result);
    }
    Ok(SyncResult {
        scales,
        signal: bench.signal,
        sized_maps: bench.help.has("--services-map-max"),
        changes: p.changes,
    })
}

/// What stays the same across scales.
struct Bench<'a> {
    agent_bin: &'a Path,
    help: AgentHelp,
    signal: ReadySignal,
    changes: usize,
    stop: &'a dyn Fn() -> bool,
}

/// The figures taken on the running agent.
struct AgentFigures {
    ready: Duration,
    agent_sync: Option<Duration>,
    peak_rss_ready_kib: u64,
    peak_rss_end_kib: u64,
    change_ms: Vec<f64>,
}

impl Bench<'_> {
    fn measure_scale(&self, n: usize) -> Result<ScaleResult> {
        // Dropped in reverse: the agent first, then the server, then the namespace.
        let ns = NetNs::create(unique_tag())?;
        ns.ip(["link", "set", "lo", "up"])?;
        let api = FakeApiServer::start_in(&ns)?;
        let scratch = ScratchDir::new()?;
        let kubeconfig = scratch.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let fill = cluster::fill(&api, n, self.stop).context("filling the fake API server")?;
        let list =
            api_list::time_full_list(&ns, &kubeconfig, n).context("listing the fake API server")?;

        let source = [OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
        let args = agent_args(&self.help, n);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let spawned = Instant::now();
        let mut agent =
            AgentProcess::start_with_source(self.agent_bin, &ns, &source, NO_INTERFACES, &args)?;
        let measured = self.measure_agent(&mut agent, &ns, &api, spawned, n);
        if measured.is_err() {
            print_log_tail(&agent);
        }
        let figures = measured?;
        agent.stop().context("stopping the agent")?;
        Ok(ScaleResult {
            services: n,
            fill,
            list,
            ready: figures.ready,
            agent_sync: figures.agent_sync,
            peak_rss_ready_kib: figures.peak_rss_ready_kib,
            peak_rss_end_kib: figures.peak_rss_end_kib,
            change_ms: figures.change_ms,
        })
    }

    fn measure_agent(
        &self,
        agent: &mut AgentProcess,
        ns: &NetNs,
        api: &FakeApiServer,
        spawned: Instant,
        n: usize,
    ) -> Result<AgentFigures> {
        let ready = self.wait_ready(agent, ns, spawned)?;
        let agent_sync = self
            .help
            .has("--metrics-bind")
            .then(|| probe::metric(ns, METRICS, "lb_sync_duration_seconds_sum"))
            .flatten()
            .map(Duration::from_secs_f64);
        let pid = agent.pid();
        let peak_rss_ready_kib = probe::peak_rss_kib(pid)?;
        let maps = PinnedMaps::open(agent.pin_dir())?;
        // Ready must mean programmed: the last Service is complete in the maps.
        let last = n - 1;
        let programmed: BTreeSet<_> = maps
            .backend_addrs(cluster_ip(last), SERVICE_PORT)?
            .into_iter()
            .collect();
        ensure!(
            programmed == initial_endpoints(last).into_iter().collect(),
            "ready, but {}:{SERVICE_PORT} has backends {programmed:?}",
            cluster_ip(last)
        );
        let change_ms = latency::measure(api, &maps, n, self.changes, &mut || {
            if (self.stop)() {
                bail!("interrupted");
            }
            if let Some(status) = agent.exited() {
                bail!("the agent exited ({status})");
            }
            Ok(())
        })?;
        Ok(AgentFigures {
            ready,
            agent_sync,
            peak_rss_ready_kib,
            peak_rss_end_kib: probe::peak_rss_kib(pid)?,
            change_ms,
        })
    }

    /// Waits for the agent's first full sync; returns the time since
    /// `spawned`. Gives up early when the agent exits or logs that it cannot
    /// write the maps (e.g. they are too small for the scale).
    fn wait_ready(
        &self,
        agent: &mut AgentProcess,
        ns: &NetNs,
        spawned: Instant,
    ) -> Result<Duration> {
        let mut outcome: Option<Result<Duration>> = None;
        wait_until(spawned + READY_TIMEOUT, || {
            let log = agent.log();
            let failed = log.lines().find(|l| l.contains("sync failed"));
            outcome = if (self.stop)() {
                Some(Err(anyhow!("interrupted")))
            } else if let Some(status) = agent.exited() {
                Some(Err(anyhow!("the agent exited ({status})")))
            } else if let Some(line) = failed {
                Some(Err(anyhow!("the agent cannot program the maps: {line}")))
            } else if match self.signal {
                ReadySignal::Healthz => probe::healthz_ok(ns, HEALTHZ),
                ReadySignal::SyncLog => log.contains("synced:"),
            } {
                Some(Ok(spawned.elapsed()))
            } else {
                None
            };
            outcome.is_some()
        });
        outcome.unwrap_or_else(|| bail!("the agent was not ready after {READY_TIMEOUT:?}"))
    }
}

/// Map sizes for `n` Services and a loopback health endpoint, for the flags
/// this agent has.
pub(super) fn agent_args(help: &AgentHelp, n: usize) -> Vec<String> {
    let wanted = [
        (
            "--services-map-max",
            (n * (1 + ENDPOINTS_PER_SERVICE) + MAP_SLACK).to_string(),
        ),
        (
            "--backends-map-max",
            (n * ENDPOINTS_PER_SERVICE + MAP_SLACK).to_string(),
        ),
        ("--revnat-map-max", (n + MAP_SLACK).to_string()),
        ("--healthz-bind", HEALTHZ.to_string()),
        ("--metrics-bind", METRICS.to_string()),
    ];
    wanted
        .into_iter()
        .filter(|(flag, _)| help.has(flag))
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
}

fn print_log_tail(agent: &AgentProcess) {
    const LINES: usize = 40;
    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    eprintln!(
        "---- lb-agent log (last {LINES} lines) ----\n{}\n---- end of lb-agent log ----",
        lines[lines.len().saturating_sub(LINES)..].join("\n")
    );
}

/// A markdown section body: what was measured, then one row per scale.
pub fn report(r: &SyncResult) -> String {
    let mut out = String::new();
    let ready = match r.signal {
        ReadySignal::Healthz => "spawn to the first 200 on /healthz (polled every 50 ms)",
        ReadySignal::SyncLog => {
            "spawn to the first `synced:` log line (this agent has no /healthz; polled every 50 ms)"
        }
    };
    let maps = if r.sized_maps {
        "maps sized for the scale"
    } else {
        "the agent's fixed map sizes (it has no map-size flags)"
    };
    let _ = writeln!(
        out,
        "N ClusterIP Services (one TCP port each) x {ENDPOINTS_PER_SERVICE} ready endpoints \
         (one EndpointSlice per Service, every pod IP distinct) in the in-process fake API server; \
         the agent runs in a network namespace with no pod interface, {maps}. \
         Fill: loading the 2N objects into the fake server. LIST: one kube-rs client listing \
         all of them ({} per page, as the agent's reflectors do) with nothing else running, \
         the fake server's share of the sync. Ready: {ready}. Agent sync: \
         the agent's own time diffing and writing the maps up to ready \
         (`lb_sync_duration_seconds_sum` from its /metrics). Peak RSS: the agent's VmHWM. \
         Change-to-map: one endpoint of a random Service moved to a new address through the API, \
         after a random 0–{} ms pause, timed until the address is in the pinned maps \
         (point lookups every {} ms); {} changes per scale, nearest-rank p99.\n",
        api_list::PAGE_SIZE,
        latency::MAX_PAUSE.as_millis(),
        latency::POLL.as_millis(),
        r.changes,
    );
    let _ = writeln!(
        out,
        "| Services x {ENDPOINTS_PER_SERVICE} endpoints | fill fake API | LIST (fake API) | time to ready | \
         agent sync | agent peak RSS at ready | agent peak RSS after changes | change-to-map median | p99 | max |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &r.scales {
        let latency = if s.change_ms.is_empty() {
            "– | – | –".to_owned()
        } else {
            let spread = Spread::of(&s.change_ms);
            format!(
                "{:.0} ms | {:.0} ms | {:.0} ms",
                spread.median,
                percentile(&s.change_ms, 99.0),
                spread.max
            )
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {:.1} s | {:.1} s | {} | {:.0} MiB | {:.0} MiB | {latency} |",
            s.services,
            s.fill.as_secs_f64(),
            s.list.as_secs_f64(),
            s.ready.as_secs_f64(),
            s.agent_sync
                .map_or("–".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            mib(s.peak_rss_ready_kib),
            mib(s.peak_rss_end_kib),
        );
    }
    out
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
