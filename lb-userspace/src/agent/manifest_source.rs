//! Desired state from a directory of manifests, re-read when it changes.

use std::path::PathBuf;

use tracing::{error, info, warn};

use crate::{
    manifest,
    reconcile::{Dataplane, Reconciler},
};

pub struct ManifestSource {
    dir: PathBuf,
    /// Fingerprint of the last successfully applied contents.
    applied: Option<u64>,
}

impl ManifestSource {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, applied: None }
    }

    /// Re-reads the directory if its files changed since the last
    /// successful sync, and writes the differences to the maps. A failed
    /// sync is retried on the next call.
    pub fn sync_if_changed(&mut self, reconciler: &mut Reconciler, dp: &mut dyn Dataplane) {
        let fingerprint = match manifest::fingerprint_dir(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                if self.applied.is_some() {
                    warn!(dir = %self.dir.display(), "cannot read manifests ({e}); keeping the current state");
                    self.applied = None;
                }
                return;
            }
        };
        if self.applied == Some(fingerprint) {
            return;
        }
        let loaded = manifest::load_dir(&self.dir);
        let desired = loaded.desired_state();
        // Bad objects are reported, once per change, and left out; every
        // other Service is still programmed.
        for e in loaded.errors.iter().chain(&desired.errors) {
            error!("{e}");
        }
        match reconciler.sync(&desired, dp) {
            Ok(report) => {
                info!(
                    frontends = desired.frontends.len(),
                    errors = loaded.errors.len() + desired.errors.len(),
                    "synced: {report}"
                );
                for (fe, d) in &desired.frontends {
                    tracing::debug!(service = %d.service, frontend = ?fe, backends = d.backends.len(), "programmed");
                }
                self.applied = Some(fingerprint);
            }
            Err(e) => error!("sync failed, will retry: {e}"),
        }
    }
}
