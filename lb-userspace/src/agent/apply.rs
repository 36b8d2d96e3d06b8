//! Writes one desired state to the maps, and reports what it could not
//! program, each problem once rather than on every change.

use std::{collections::BTreeSet, time::Instant};

use tracing::{debug, error, info};

use crate::{
    model::{ConfigError, Desired},
    reconcile::{Dataplane, Reconciler},
};

/// Remembers which configuration problems were already logged.
#[derive(Default)]
pub struct Applier {
    reported: BTreeSet<String>,
}

impl Applier {
    /// Programs `desired` (plus `load_errors` found before it was built).
    /// `seen` is when the change that led here was noticed. Returns false
    /// when the maps could not be written (the caller retries).
    pub fn apply(
        &mut self,
        desired: &Desired,
        load_errors: &[ConfigError],
        seen: Instant,
        reconciler: &mut Reconciler,
        dp: &mut dyn Dataplane,
    ) -> bool {
        let now: BTreeSet<String> = load_errors
            .iter()
            .chain(&desired.errors)
            .map(|e| e.to_string())
            .collect();
        for e in now.difference(&self.reported) {
            error!("{e}");
        }
        self.reported = now;
        match reconciler.sync(desired, dp) {
            Ok(report) => {
                if report.total() > 0 {
                    info!(
                        frontends = desired.frontends.len(),
                        problems = self.reported.len(),
                        latency_ms = seen.elapsed().as_secs_f64() * 1e3,
                        "synced: {report}"
                    );
                    for (fe, d) in &desired.frontends {
                        debug!(service = %d.service, frontend = %fe, backends = d.backends.len(), "programmed");
                    }
                }
                true
            }
            Err(e) => {
                error!("sync failed, will retry: {e}");
                false
            }
        }
    }
}
