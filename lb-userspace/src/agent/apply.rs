//! Writes one desired state to the maps, and reports what it could not
//! program, each problem once rather than on every change.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use tracing::{debug, error, info, warn};

use crate::{
    model::{ConfigError, Desired, ObjectRef},
    reconcile::{Dataplane, DataplaneError, Reconciler, SyncReport},
};

/// A desired state waiting to be programmed.
pub struct Pending {
    pub desired: Desired,
    /// Problems found before `desired` was built (unreadable manifests).
    pub load_errors: Vec<ConfigError>,
    /// When the oldest change that led here was noticed.
    pub seen: Instant,
}

/// Above this many changed Services in one sync, each is logged at debug
/// level only (an initial sync of 100k Services would flood the log).
const SERVICES_LOGGED_PER_SYNC: usize = 100;

/// Remembers which problems were already logged, and what was programmed
/// (to log the Services a sync changed).
#[derive(Default)]
pub struct Applier {
    reported: BTreeSet<String>,
    reported_ipv6: BTreeSet<ObjectRef>,
    programmed: Desired,
}

impl Applier {
    /// Programs `pending.desired`. On error the maps are consistent (see
    /// `Reconciler::sync`) and the caller retries.
    pub fn apply(
        &mut self,
        pending: Pending,
        reconciler: &mut Reconciler,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        self.report_problems(&pending);
        let desired = pending.desired;
        match reconciler.sync(&desired, dp) {
            Ok(report) => {
                if report.total() > 0 {
                    info!(
                        frontends = desired.frontends.len(),
                        problems = self.reported.len(),
                        latency_ms = pending.seen.elapsed().as_secs_f64() * 1e3,
                        "synced: {report}"
                    );
                }
                log_changed_services(&self.programmed, &desired);
                self.programmed = desired;
                Ok(report)
            }
            Err(e) => {
                error!("sync failed, will retry: {e}");
                Err(e)
            }
        }
    }

    /// Logs configuration problems and IPv6 skips that are new since the
    /// last call; a problem that persists is not repeated on every change.
    fn report_problems(&mut self, pending: &Pending) {
        let now: BTreeSet<String> = pending
            .load_errors
            .iter()
            .chain(&pending.desired.errors)
            .map(|e| e.to_string())
            .collect();
        for e in now.difference(&self.reported) {
            error!("{e}");
        }
        self.reported = now;
        let ipv6 = &pending.desired.ipv6_skipped;
        for service in ipv6.difference(&self.reported_ipv6) {
            warn!(service = %service, "IPv6 cluster IP not programmed: IPv6 is not yet supported (the IPv4 family of a dual-stack Service is)");
        }
        self.reported_ipv6 = ipv6.clone();
    }

    /// What the last successful sync programmed.
    pub fn programmed(&self) -> &Desired {
        &self.programmed
    }
}

/// Logs each Service whose frontends or backends changed, as kube-proxy
/// logs the Service ports it adds, updates and removes.
fn log_changed_services(before: &Desired, after: &Desired) {
    let changed: BTreeSet<&ObjectRef> = before
        .frontends
        .iter()
        .filter(|(fe, w)| after.frontends.get(*fe) != Some(*w))
        .chain(
            after
                .frontends
                .iter()
                .filter(|(fe, w)| before.frontends.get(*fe) != Some(*w)),
        )
        .map(|(_, w)| &w.service)
        .collect();
    if changed.is_empty() {
        return;
    }
    let mut now: BTreeMap<&ObjectRef, Vec<String>> = BTreeMap::new();
    for (fe, wanted) in &after.frontends {
        if changed.contains(&wanted.service) {
            now.entry(&wanted.service)
                .or_default()
                .push(format!("{fe} -> {} backends", wanted.backends.len()));
        }
    }
    let quiet = changed.len() > SERVICES_LOGGED_PER_SYNC;
    if quiet {
        info!(
            services = changed.len(),
            "Services changed (listed at debug level)"
        );
    }
    for service in changed {
        match now.get(service) {
            Some(frontends) if quiet => {
                debug!(service = %service, ?frontends, "Service programmed")
            }
            Some(frontends) => info!(service = %service, ?frontends, "Service programmed"),
            None if quiet => debug!(service = %service, "Service removed"),
            None => info!(service = %service, "Service removed"),
        }
    }
}
