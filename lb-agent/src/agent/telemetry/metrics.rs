//! The agent's Prometheus metrics (prefix `lb_`), named and bucketed after
//! kube-proxy's where it has a counterpart.

use std::{
    collections::BTreeMap,
    sync::{atomic::AtomicU64, Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
        MetricType,
    },
    registry::{Registry, Unit},
};

/// One label whose value is known at compile time.
type StaticLabel = [(&'static str, &'static str); 1];
/// One label whose value comes from the caller.
type Label = [(&'static str, String); 1];
type U64Gauge = Gauge<u64, AtomicU64>;

/// A sync takes from ~100µs (nothing changed) to seconds (a large cluster's
/// first sync).
const SYNC_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// From a change being seen to its maps being written: milliseconds when
/// pushed by a watch, up to the poll interval for manifests, up to a minute
/// when syncs fail and are retried.
const PROGRAMMING_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

pub struct Metrics {
    registry: Registry,
    syncs: Family<StaticLabel, Counter>,
    sync_duration: Histogram,
    programming_duration: Histogram,
    services: U64Gauge,
    frontends: U64Gauge,
    backends: U64Gauge,
    services_left_out: U64Gauge,
    frontends_left_out: U64Gauge,
    conntrack_entries: U64Gauge,
    map_entries: Family<Label, U64Gauge>,
    map_max_entries: Family<Label, U64Gauge>,
    errors: Family<Label, Counter>,
    datapath: Arc<DatapathCounters>,
    last_sync: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::with_prefix("lb"),
            syncs: Family::default(),
            sync_duration: Histogram::new(SYNC_BUCKETS),
            programming_duration: Histogram::new(PROGRAMMING_BUCKETS),
            services: U64Gauge::default(),
            frontends: U64Gauge::default(),
            backends: U64Gauge::default(),
            services_left_out: U64Gauge::default(),
            frontends_left_out: U64Gauge::default(),
            conntrack_entries: U64Gauge::default(),
            map_entries: Family::default(),
            map_max_entries: Family::default(),
            errors: Family::default(),
            datapath: Arc::default(),
            last_sync: Gauge::default(),
        };
        // Both results exist from the start, so that a rate of errors is 0
        // (not absent) until the first one.
        for result in ["success", "error"] {
            let _ = m.syncs.get_or_create(&[("result", result)]);
        }
        m.register()
    }

    /// Registration clones the metrics' shared handles into the registry.
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "sync",
            "Syncs of the maps to the desired state, by result",
            self.syncs.clone(),
        );
        r.register_with_unit(
            "sync_duration",
            "How long a sync of the maps took",
            Unit::Seconds,
            self.sync_duration.clone(),
        );
        r.register_with_unit(
            "network_programming_duration",
            "From a Service or EndpointSlice change being seen to the maps being written",
            Unit::Seconds,
            self.programming_duration.clone(),
        );
        r.register(
            "services_programmed",
            "Services programmed into the maps",
            self.services.clone(),
        );
        r.register(
            "frontends_programmed",
            "Frontends (ClusterIP, port, protocol) in the maps",
            self.frontends.clone(),
        );
        r.register(
            "backends_programmed",
            "Backends in the maps",
            self.backends.clone(),
        );
        r.register(
            "services_left_out",
            "Services with a frontend not programmed, or serving fewer backends, because a map is full",
            self.services_left_out.clone(),
        );
        r.register(
            "frontends_left_out",
            "Frontends not programmed, or serving fewer backends, because a map is full",
            self.frontends_left_out.clone(),
        );
        r.register(
            "conntrack_entries",
            "Flows in the conntrack map",
            self.conntrack_entries.clone(),
        );
        r.register(
            "map_entries",
            "Entries in each BPF map",
            self.map_entries.clone(),
        );
        r.register(
            "map_max_entries",
            "Capacity of each BPF map",
            self.map_max_entries.clone(),
        );
        r.register("errors", "Errors, by kind", self.errors.clone());
        r.register_with_unit(
            "last_sync_timestamp",
            "When the maps were last synced successfully (Unix time)",
            Unit::Seconds,
            self.last_sync.clone(),
        );
        r.register_collector(Box::new(Arc::clone(&self.datapath)));
        self
    }

    pub fn sync_done(
        &self,
        duration: Duration,
        ok: bool,
        programmed_change: Option<Instant>,
        now: SystemTime,
    ) {
        let result = if ok { "success" } else { "error" };
        self.syncs.get_or_create(&[("result", result)]).inc();
        self.sync_duration.observe(duration.as_secs_f64());
        if ok {
            if let Some(seen) = programmed_change {
                self.programming_duration
                    .observe(seen.elapsed().as_secs_f64());
            }
            let unix = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            self.last_sync.set(unix.as_secs_f64());
        }
    }

    pub fn set_programmed(&self, services: u64, frontends: u64, backends: u64) {
        self.services.set(services);
        self.frontends.set(frontends);
        self.backends.set(backends);
    }

    pub fn set_left_out(&self, services: u64, frontends: u64) {
        self.services_left_out.set(services);
        self.frontends_left_out.set(frontends);
    }

    pub fn set_map_occupancy(&self, map: &str, entries: u64, max_entries: u64) {
        let label = [("map", map.to_owned())];
        self.map_entries.get_or_create(&label).set(entries);
        self.map_max_entries.get_or_create(&label).set(max_entries);
    }

    pub fn set_conntrack_entries(&self, entries: u64) {
        self.conntrack_entries.set(entries);
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&[("kind", kind.to_owned())])
            .inc();
    }

    pub fn set_datapath_counters(&self, reason: &str, packets: u64, bytes: u64) {
        self.datapath.set(reason, packets, bytes);
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)
            .expect("encoding into a String cannot fail");
        text
    }
}

/// The datapath's per-reason packet and byte counts. The kernel owns these
/// counters, so they are exposed as they were last read (as constant
/// counters on each scrape) rather than re-counted here: the value is the
/// kernel's, and a reset (maps recreated) shows as the counter reset that
/// Prometheus expects.
#[derive(Debug, Default)]
struct DatapathCounters {
    /// Reason -> (packets, bytes); sorted so scrapes list reasons in order.
    totals: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl DatapathCounters {
    fn set(&self, reason: &str, packets: u64, bytes: u64) {
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        match totals.get_mut(reason) {
            Some(v) => *v = (packets, bytes),
            None => {
                totals.insert(reason.to_owned(), (packets, bytes));
            }
        }
    }
}

impl Collector for DatapathCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        if totals.is_empty() {
            return Ok(());
        }
        encode_counters(
            &mut encoder,
            "datapath_packets",
            "Packets the datapath handled, by reason (read from the kernel).",
            totals
                .iter()
                .map(|(reason, &(packets, _))| (reason, packets)),
        )?;
        encode_counters(
            &mut encoder,
            "datapath_bytes",
            "Bytes the datapath handled, by reason (read from the kernel).",
            totals.iter().map(|(reason, &(_, bytes))| (reason, bytes)),
        )
    }
}

/// One counter family labelled by `reason`.
fn encode_counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (&'a String, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (reason, value) in values {
        let label = [("reason", reason.as_str())];
        ConstCounter::new(value).encode(family.encode_family(&label)?)?;
    }
    Ok(())
}
