//! Endpoint churn soak (issue 9): the agent watches the fake API server
//! while the EndpointSlices of 100 Services change every 100 ms (each
//! slice cycling through the subsets of the three pods, never empty), and
//! a client pod opens a new connection to one Service after another. Every
//! request must be answered (every pod keeps running: any endpoint the
//! datapath picks is live), the agent's resident memory must stay flat
//! after warm-up, and conntrack and affinity occupancy must stay bounded.
//! `cargo xtask soak` runs 10 minutes; tests/e2e_soak.rs one.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::bench::sync::probe::metric;
use crate::client::{request, Transport};
use crate::kube_bed::{web_objects, KubeBed};
use crate::servers::TCP_PORT;

pub struct Params {
    pub duration: Duration,
    pub services: u8,
    /// Every slice is rewritten this often.
    pub change_every: Duration,
    /// A new connection this often, to the Services in turn.
    pub request_every: Duration,
}

impl Params {
    pub fn new(duration: Duration) -> Params {
        Params {
            duration,
            services: 100,
            change_every: Duration::from_millis(100),
            request_every: Duration::from_millis(20),
        }
    }
}

/// Conntrack: closed connections go after 2 s, swept every 5 s, so the
/// bound below is tight; affinity entries are swept with them.
const AGENT_ARGS: &[&str] = &[
    "--ct-tcp-closing-timeout-secs",
    "2",
    "--ct-gc-interval-secs",
    "5",
];
/// Every tenth Service has ClientIP affinity, with this timeout.
const AFFINITY_TIMEOUT_S: u32 = 10;
/// The part of the run before memory is taken as warmed up.
const WARM_UP_SHARE: f64 = 0.2;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const POD_IPS: [&str; 3] = ["10.244.1.2", "10.244.2.2", "10.244.3.2"];
/// The agent's default metrics address, in the node namespace.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249);

#[derive(Debug)]
pub struct Report {
    pub params_services: u8,
    pub elapsed: Duration,
    pub slice_updates: u64,
    /// The agent's syncs (map writes) meanwhile.
    pub syncs: u64,
    pub requests: u64,
    /// The first few failures, and how many.
    pub failures: Vec<String>,
    pub failed: u64,
    /// Resident memory (VmRSS, KiB) at the end of warm-up and at the end,
    /// each the median of its last samples, and the peak.
    pub rss_warm_kib: u64,
    pub rss_end_kib: u64,
    pub rss_peak_kib: u64,
    /// Most conntrack and affinity entries seen, and the bound for each.
    pub ct_max: usize,
    pub ct_bound: usize,
    pub affinity_max: usize,
    pub affinity_bound: usize,
}

impl Report {
    pub fn rss_growth(&self) -> f64 {
        self.rss_end_kib as f64 / self.rss_warm_kib.max(1) as f64 - 1.0
    }

    /// Every figure within its goal.
    pub fn passed(&self) -> bool {
        self.failed == 0
            && self.syncs > 0
            && self.rss_growth() < 0.05
            && self.ct_max <= self.ct_bound
            && self.affinity_max <= self.affinity_bound
    }
}

pub fn run(agent: &Path, params: &Params) -> Result<Report> {
    let (web, web_slice) = web_objects();
    let n = params.services;
    let mut services = vec![web];
    services.extend((1..=n).map(service));
    let mut slices = vec![web_slice];
    slices.extend((1..=n).map(|i| slice(i, 0)));
    let bed = KubeBed::start(agent, &services, &slices, AGENT_ARGS)?;
    let pid = bed.agent.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, every) = (Arc::clone(&stop), params.request_every);
        bed.topo
            .client()
            .ns
            .enter_thread(move || client_loop(&stop, n, every))?
    };
    let start = Instant::now();
    let (mut rss, mut ct_max, mut affinity_max) = (Vec::new(), 0, 0);
    let (mut tick, mut next_sample, mut slice_updates) = (0u64, start, 0);
    while start.elapsed() < params.duration {
        tick += 1;
        for i in 1..=n {
            bed.api.apply_slice(slice(i, tick + u64::from(i)));
            slice_updates += 1;
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            rss.push((start.elapsed(), vm_rss_kib(pid)?));
            let (ct, affinity) = occupancy(bed.agent.pin_dir())?;
            (ct_max, affinity_max) = (ct_max.max(ct), affinity_max.max(affinity));
        }
        let due = start + params.change_every.mul_f64(tick as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    let (requests, failed, failures) = client.join();
    let elapsed = start.elapsed();
    // Proof that the churn reached the maps: the agent's syncs.
    let syncs = metric(bed.topo.node(), METRICS, "lb_sync_duration_seconds_count")
        .ok_or_else(|| anyhow!("no lb_sync_duration_seconds_count in the agent's /metrics"))?;

    let warm_until = params.duration.mul_f64(WARM_UP_SHARE);
    let median_of_last = |until: Duration| {
        let mut last: Vec<u64> = (rss.iter().filter(|(at, _)| *at <= until))
            .rev()
            .take(5)
            .map(|&(_, kib)| kib)
            .collect();
        last.sort_unstable();
        last.get(last.len() / 2).copied().unwrap_or(0)
    };
    // Two entries per connection, kept while open and for the closing
    // timeout, then up to one sweep interval more (and the same again
    // for slack).
    let per_second = 1.0 / params.request_every.as_secs_f64();
    let ct_bound = (2.0 * per_second * (2.0 + 5.0) * 2.0) as usize;
    Ok(Report {
        params_services: n,
        elapsed,
        slice_updates,
        syncs: syncs as u64,
        requests,
        failures,
        failed,
        rss_warm_kib: median_of_last(warm_until),
        rss_end_kib: median_of_last(elapsed),
        rss_peak_kib: rss.iter().map(|&(_, kib)| kib).max().unwrap_or(0),
        ct_max,
        ct_bound,
        affinity_max,
        // One client, one entry per Service with affinity.
        affinity_bound: usize::from(n).div_ceil(10),
    })
}

/// New connections to the soak Services in turn until `stop`: (requests,
/// failed, the first failures).
fn client_loop(stop: &AtomicBool, n: u8, every: Duration) -> (u64, u64, Vec<String>) {
    let (mut requests, mut failed, mut failures) = (0, 0, Vec::new());
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let to = SocketAddr::from((vip((requests % u64::from(n)) as u8 + 1), 80));
        requests += 1;
        if let Err(e) = request(Transport::Tcp, to, Duration::from_secs(1)) {
            failed += 1;
            if failures.len() < 5 {
                failures.push(format!("{:.1} s: {to}: {e}", start.elapsed().as_secs_f64()));
            }
        }
        let due = start + every.mul_f64(requests as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    (requests, failed, failures)
}

fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 100, i)
}

/// Soak Service `i`: port 80 to the pods' TCP echo servers; every tenth
/// with ClientIP affinity.
fn service(i: u8) -> Service {
    let affinity = if i.is_multiple_of(10) {
        format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {AFFINITY_TIMEOUT_S}}}}}\n"
        )
    } else {
        String::new()
    };
    let yaml = format!(
        "metadata: {{name: soak-{i}, namespace: default}}
spec:
  clusterIP: {vip}
{affinity}  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: {TCP_PORT}}}
",
        vip = vip(i)
    );
    serde_yaml::from_str(&yaml).expect("a valid Service")
}

/// Soak Service `i`'s slice at step `step`: one of the seven non-empty
/// subsets of the three pods.
fn slice(i: u8, step: u64) -> EndpointSlice {
    let subset = (step % 7 + 1) as usize;
    let endpoints: String = (POD_IPS.iter().enumerate())
        .filter(|(bit, _)| subset & (1 << bit) != 0)
        .map(|(_, ip)| {
            format!("- {{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: node-a}}\n")
        })
        .collect();
    let yaml = format!(
        "metadata:
  name: soak-{i}-1
  namespace: default
  labels: {{kubernetes.io/service-name: soak-{i}}}
addressType: IPv4
ports:
- {{name: http, port: {TCP_PORT}, protocol: TCP}}
endpoints:
{endpoints}"
    );
    serde_yaml::from_str(&yaml).expect("a valid EndpointSlice")
}

/// The agent's resident memory, from /proc.
fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the agent's (pid {pid}) status"))?;
    let line = (status.lines().find(|l| l.starts_with("VmRSS:")))
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("unreadable {line:?}"))
}

/// Conntrack and affinity entries in the pinned maps.
fn occupancy(pin_dir: &Path) -> Result<(usize, usize)> {
    let maps = lbctl::list_maps(pin_dir)?;
    let entries = |name: &str| {
        (maps.maps.iter())
            .find(|m| m.name == name)
            .and_then(|m| m.entries)
            .ok_or_else(|| anyhow!("{name}: entries unreadable"))
    };
    Ok((
        entries(lb_common::MapId::Conntrack.name())?,
        entries(lb_common::MapId::Affinity.name())?,
    ))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:.0} s: {} slice updates ({} Services every 100 ms) in {} agent syncs, {} requests, {} failed",
            self.elapsed.as_secs_f64(),
            self.slice_updates,
            self.params_services,
            self.syncs,
            self.requests,
            self.failed
        )?;
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        writeln!(
            f,
            "agent RSS: {} KiB after warm-up, {} KiB at the end ({:+.1}%), peak {} KiB",
            self.rss_warm_kib,
            self.rss_end_kib,
            100.0 * self.rss_growth(),
            self.rss_peak_kib
        )?;
        writeln!(
            f,
            "conntrack entries: at most {} (bound {}); affinity entries: at most {} (bound {})",
            self.ct_max, self.ct_bound, self.affinity_max, self.affinity_bound
        )
    }
}
