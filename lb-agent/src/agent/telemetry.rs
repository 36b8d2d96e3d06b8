//! Health (/healthz, /livez) and Prometheus metrics (/metrics) of the agent.
//!
//! Health follows kube-proxy: the agent is healthy while every change it has
//! seen reaches the maps within `healthz_timeout`, so a node whose agent is
//! stuck (API watch fine, map writes failing) is taken out of load balancers
//! and restarted by its liveness probe. Unlike kube-proxy it is not healthy
//! before its first successful sync: until then the maps may be empty or
//! left over from an earlier run.

mod health;
mod http;
mod metrics;

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

pub use http::{serve_health, serve_metrics};

/// Shared by the run loop and the HTTP servers; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    health: Mutex<health::Health>,
    metrics: metrics::Metrics,
}

impl Telemetry {
    pub fn new(healthz_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                health: Mutex::new(health::Health::new(healthz_timeout)),
                metrics: metrics::Metrics::new(),
            }),
        }
    }

    /// A watched object (or manifest) changed at `at`; marks an update
    /// pending (health) until a sync that started after it succeeds.
    pub fn change_seen(&self, at: Instant) {
        self.health().change_seen(at);
    }

    /// A sync ran for `duration`. `programmed_change`: when `ok` and it
    /// programmed a change, the Instant at which that change was seen
    /// (observed as programming latency). On success, pending changes seen
    /// at or before `started` are cleared and the first-sync flag is set.
    pub fn sync_done(
        &self,
        started: Instant,
        duration: Duration,
        ok: bool,
        programmed_change: Option<Instant>,
    ) {
        let now = SystemTime::now();
        self.inner
            .metrics
            .sync_done(duration, ok, programmed_change, now);
        if ok {
            self.health().synced(started, now);
        }
    }

    pub fn set_programmed(&self, services: u64, frontends: u64, backends: u64) {
        self.inner
            .metrics
            .set_programmed(services, frontends, backends);
    }

    /// What the last sync could not program for lack of map room.
    pub fn set_left_out(&self, services: u64, frontends: u64) {
        self.inner.metrics.set_left_out(services, frontends);
    }

    pub fn set_map_occupancy(&self, map: &str, entries: u64, max_entries: u64) {
        self.inner
            .metrics
            .set_map_occupancy(map, entries, max_entries);
    }

    pub fn set_conntrack_entries(&self, entries: u64) {
        self.inner.metrics.set_conntrack_entries(entries);
    }

    /// Counts one error of `kind` (a short word such as "config",
    /// "map_write", "watch", "attach").
    pub fn error(&self, kind: &str) {
        self.inner.metrics.error(kind);
    }

    /// Totals per stats reason, as read from the kernel (monotonic).
    pub fn set_datapath_counters(&self, reason: &str, packets: u64, bytes: u64) {
        self.inner
            .metrics
            .set_datapath_counters(reason, packets, bytes);
    }

    /// The same rule as /healthz and /livez.
    pub fn healthy(&self) -> bool {
        self.health().status(Instant::now()).is_healthy()
    }

    /// The /metrics body, in the Prometheus text format 0.0.4 (what
    /// kube-proxy serves, and what every scraper reads).
    pub fn encode_metrics(&self) -> String {
        self.inner.metrics.encode()
    }

    fn health_report(&self) -> health::Report {
        self.health().report(Instant::now(), SystemTime::now())
    }

    /// Health holds plain values updated in one step each, so the state
    /// left by a thread that panicked while holding the lock is still
    /// consistent and serving goes on.
    fn health(&self) -> MutexGuard<'_, health::Health> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::thread::sleep;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(50);
    const LATE: Duration = Duration::from_millis(80);

    fn sync(t: &Telemetry, ok: bool) {
        t.sync_done(Instant::now(), Duration::from_millis(1), ok, None);
    }

    #[test]
    fn unhealthy_until_the_first_successful_sync() {
        let t = Telemetry::new(TIMEOUT);
        assert!(!t.healthy());
        sync(&t, false);
        assert!(!t.healthy(), "a failed sync is not a first sync");
        sync(&t, true);
        assert!(t.healthy());
    }

    #[test]
    fn a_change_left_unprogrammed_past_the_timeout_is_unhealthy() {
        let t = Telemetry::new(TIMEOUT);
        sync(&t, true);
        t.change_seen(Instant::now());
        assert!(t.healthy(), "pending, but not late yet");
        sleep(LATE);
        assert!(!t.healthy());
        sync(&t, false);
        assert!(!t.healthy(), "a failed sync leaves the change pending");
        sync(&t, true);
        assert!(t.healthy());
    }

    #[test]
    fn a_change_seen_while_a_sync_ran_stays_pending() {
        let t = Telemetry::new(TIMEOUT);
        sync(&t, true);
        let started = Instant::now();
        t.change_seen(Instant::now());
        t.sync_done(started, Duration::from_millis(1), true, None);
        sleep(LATE);
        assert!(!t.healthy());
    }

    #[test]
    fn clones_share_state() {
        let t = Telemetry::new(TIMEOUT);
        sync(&t.clone(), true);
        assert!(t.healthy());
    }

    /// The sample lines (not HELP/TYPE) of `text` starting with `prefix`.
    fn samples<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
            .collect()
    }

    #[test]
    fn metrics_have_their_types_and_values() {
        let t = Telemetry::new(TIMEOUT);
        let seen = Instant::now();
        t.change_seen(seen);
        t.sync_done(seen, Duration::from_micros(300), true, Some(seen));
        t.sync_done(seen, Duration::from_millis(2), false, None);
        t.set_programmed(2, 3, 5);
        t.set_conntrack_entries(7);
        t.set_map_occupancy("lb_backends", 5, 65536);
        t.set_map_occupancy("lb_conntrack", 7, 262144);
        t.set_left_out(1, 2);
        t.error("map_write");
        t.error("map_write");
        t.error("config");
        t.set_datapath_counters("dnat", 10, 1000);
        t.set_datapath_counters("pass_not_service", 3, 180);
        let text = t.encode_metrics();

        for (family, kind) in [
            ("lb_sync_total", "counter"),
            ("lb_sync_duration_seconds", "histogram"),
            ("lb_network_programming_duration_seconds", "histogram"),
            ("lb_services_programmed", "gauge"),
            ("lb_frontends_programmed", "gauge"),
            ("lb_backends_programmed", "gauge"),
            ("lb_services_left_out", "gauge"),
            ("lb_frontends_left_out", "gauge"),
            ("lb_conntrack_entries", "gauge"),
            ("lb_map_entries", "gauge"),
            ("lb_map_max_entries", "gauge"),
            ("lb_errors_total", "counter"),
            ("lb_datapath_packets_total", "counter"),
            ("lb_datapath_bytes_total", "counter"),
            ("lb_last_sync_timestamp_seconds", "gauge"),
        ] {
            let line = format!("# TYPE {family} {kind}\n");
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
        let expect =
            |line: &str| assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        expect(r#"lb_sync_total{result="success"} 1"#);
        expect(r#"lb_sync_total{result="error"} 1"#);
        expect("lb_sync_duration_seconds_count 2");
        expect(r#"lb_sync_duration_seconds_bucket{le="0.0001"} 0"#);
        expect(r#"lb_sync_duration_seconds_bucket{le="0.0005"} 1"#);
        expect(r#"lb_sync_duration_seconds_bucket{le="+Inf"} 2"#);
        expect("lb_network_programming_duration_seconds_count 1");
        expect("lb_services_programmed 2");
        expect("lb_frontends_programmed 3");
        expect("lb_backends_programmed 5");
        expect("lb_conntrack_entries 7");
        expect("lb_services_left_out 1");
        expect("lb_frontends_left_out 2");
        expect(r#"lb_map_entries{map="lb_backends"} 5"#);
        expect(r#"lb_map_max_entries{map="lb_conntrack"} 262144"#);
        expect(r#"lb_errors_total{kind="map_write"} 2"#);
        expect(r#"lb_errors_total{kind="config"} 1"#);
        expect(r#"lb_datapath_packets_total{reason="dnat"} 10"#);
        expect(r#"lb_datapath_bytes_total{reason="pass_not_service"} 180"#);
        let stamp = samples(&text, "lb_last_sync_timestamp_seconds ");
        let secs: f64 = stamp[0].rsplit(' ').next().unwrap().parse().unwrap();
        assert!(secs > 1.6e9, "{stamp:?}");
    }

    #[test]
    fn datapath_counters_expose_the_kernel_totals() {
        let t = Telemetry::new(TIMEOUT);
        t.set_datapath_counters("dnat", 10, 1000);
        t.set_datapath_counters("dnat", 25, 2500);
        let text = t.encode_metrics();
        assert_eq!(
            samples(&text, "lb_datapath_packets_total"),
            [r#"lb_datapath_packets_total{reason="dnat"} 25"#]
        );
        assert_eq!(
            samples(&text, "lb_datapath_bytes_total"),
            [r#"lb_datapath_bytes_total{reason="dnat"} 2500"#]
        );
    }

    #[test]
    fn families_without_values_are_left_out_but_sync_results_start_at_zero() {
        let text = Telemetry::new(TIMEOUT).encode_metrics();
        assert!(
            text.contains("lb_sync_total{result=\"success\"} 0"),
            "{text}"
        );
        assert!(text.contains("lb_sync_total{result=\"error\"} 0"), "{text}");
        for absent in [
            "lb_errors_total",
            "lb_map_entries",
            "lb_datapath_packets_total",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }
}
