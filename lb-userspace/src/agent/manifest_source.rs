//! Desired state from a directory of manifests, re-read when it changes.

use std::{path::PathBuf, time::Instant};

use tracing::warn;

use super::apply::Applier;
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
    pub fn sync(
        &mut self,
        applier: &mut Applier,
        reconciler: &mut Reconciler,
        dp: &mut dyn Dataplane,
    ) {
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
        let seen = Instant::now();
        let loaded = manifest::load_dir(&self.dir);
        let desired = loaded.desired_state();
        if applier.apply(&desired, &loaded.errors, seen, reconciler, dp) {
            self.applied = Some(fingerprint);
        }
    }
}
