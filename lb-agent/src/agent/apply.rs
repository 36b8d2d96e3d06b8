//! Writes one desired state to the maps, and reports what it could not
//! program, each problem once rather than on every change.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use tracing::{debug, error, info, warn};

use lb_core::{
    model::{ConfigError, DesiredIndex, ObjectRef},
    reconcile::{Dataplane, DataplaneError, LeftOut, Reconciler, SyncReport},
};

/// A desired state waiting to be programmed, lent by its source (a copy
/// of 100k frontends would cost more than the change it carries).
#[derive(Clone, Copy)]
pub struct Pending<'a> {
    /// The desired state, and the Services that changed since the last
    /// successful sync.
    pub state: &'a DesiredIndex,
    /// Problems found before `state` was built (unreadable manifests).
    pub load_errors: &'a [ConfigError],
    /// When the oldest change that led here was noticed.
    pub seen: Instant,
}

/// Above this many changed Services in one sync, each is logged at debug
/// level only (an initial sync of 100k Services would flood the log).
const SERVICES_LOGGED_PER_SYNC: usize = 100;

/// Remembers which problems were already logged.
#[derive(Default)]
pub struct Applier {
    reported: BTreeSet<String>,
    reported_ipv6: BTreeSet<ObjectRef>,
    /// Frontends left out for lack of map room, as last reported.
    reported_left_out: BTreeSet<String>,
}

impl Applier {
    /// Programs `pending.state`. On error the maps are consistent (see
    /// `Reconciler::sync`) and the caller retries.
    pub fn apply(
        &mut self,
        pending: Pending<'_>,
        reconciler: &mut Reconciler,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        self.report_problems(&pending);
        let desired = pending.state.desired();
        let touched = pending.state.touched_frontends();
        match reconciler.sync_partial(desired, touched, dp) {
            Ok(report) => {
                self.report_left_out(reconciler.left_out());
                if report.total() > 0 {
                    info!(
                        frontends = desired.frontends.len(),
                        problems = self.reported.len(),
                        latency_ms = pending.seen.elapsed().as_secs_f64() * 1e3,
                        "synced: {report}"
                    );
                }
                log_changed_services(pending.state);
                Ok(report)
            }
            Err(e) => {
                error!("sync failed, will retry: {e}");
                Err(e)
            }
        }
    }

    /// Logs each frontend newly left out (or cut to fewer backends) for
    /// lack of map room, and each that got its room back.
    fn report_left_out(&mut self, left_out: &[LeftOut]) {
        let now: BTreeSet<String> = left_out.iter().map(LeftOut::to_string).collect();
        for e in now.difference(&self.reported_left_out) {
            error!("{e}");
        }
        let back = self.reported_left_out.difference(&now).count();
        if back > 0 {
            info!(
                frontends = back,
                "frontends left out for lack of map room are programmed now"
            );
        }
        self.reported_left_out = now;
    }

    /// Logs configuration problems and IPv6 skips that are new since the
    /// last call; a problem that persists is not repeated on every change.
    fn report_problems(&mut self, pending: &Pending<'_>) {
        let desired = pending.state.desired();
        let now: BTreeSet<String> = pending
            .load_errors
            .iter()
            .chain(&desired.errors)
            .map(|e| e.to_string())
            .collect();
        for e in now.difference(&self.reported) {
            error!("{e}");
        }
        self.reported = now;
        let ipv6 = &desired.ipv6_skipped;
        if *ipv6 == self.reported_ipv6 {
            return;
        }
        for service in ipv6.difference(&self.reported_ipv6) {
            warn!(service = %service, "IPv6 cluster IP not programmed: IPv6 is not yet supported (the IPv4 family of a dual-stack Service is)");
        }
        self.reported_ipv6 = ipv6.clone();
    }
}

/// How many Services and frontends of `state` are not programmed at all
/// because of `left_out` (one keeping fewer backends is programmed).
pub fn not_programmed(state: &DesiredIndex, left_out: &[LeftOut]) -> (usize, usize) {
    let mut per_service: BTreeMap<&ObjectRef, usize> = BTreeMap::new();
    for left in left_out.iter().filter(|l| l.kept_backends.is_none()) {
        *per_service.entry(&left.service).or_default() += 1;
    }
    let services = (per_service.iter())
        .filter(|&(service, &n)| state.frontends_of(service).count() == n)
        .count();
    (services, per_service.values().sum())
}

/// Logs each Service whose frontends or backends changed, as kube-proxy
/// logs the Service ports it adds, updates and removes.
fn log_changed_services(state: &DesiredIndex) {
    let changed = state.changed_services();
    if changed.is_empty() {
        return;
    }
    let quiet = changed.len() > SERVICES_LOGGED_PER_SYNC;
    if quiet {
        info!(
            services = changed.len(),
            "Services changed (listed at debug level)"
        );
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
    }
    for service in changed {
        let frontends: Vec<String> = state
            .frontends_of(service)
            .map(|(fe, wanted)| format!("{fe} -> {} backends", wanted.backends.len()))
            .collect();
        match frontends.is_empty() {
            false if quiet => debug!(service = %service, ?frontends, "Service programmed"),
            false => info!(service = %service, ?frontends, "Service programmed"),
            true if quiet => debug!(service = %service, "Service removed"),
            true => info!(service = %service, "Service removed"),
        }
    }
}
