//! Desired state from a directory of manifests, re-read when it changes.

use std::{path::PathBuf, time::Instant};

use tracing::warn;

use super::apply::Pending;
use crate::manifest;

pub struct ManifestSource {
    dir: PathBuf,
    /// Fingerprint of the last successfully applied contents.
    applied: Option<u64>,
    /// Fingerprint of the contents handed out by the last `take_pending`.
    offered: Option<u64>,
}

impl ManifestSource {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            applied: None,
            offered: None,
        }
    }

    /// The desired state if the files changed since the last successful
    /// sync (or the last one failed).
    pub fn take_pending(&mut self) -> Option<Pending> {
        let fingerprint = match manifest::fingerprint_dir(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                if self.applied.is_some() {
                    warn!(dir = %self.dir.display(), "cannot read manifests ({e}); keeping the current state");
                    self.applied = None;
                }
                return None;
            }
        };
        if self.applied == Some(fingerprint) {
            return None;
        }
        let seen = Instant::now();
        let loaded = manifest::load_dir(&self.dir);
        self.offered = Some(fingerprint);
        Some(Pending {
            desired: loaded.desired_state(),
            load_errors: loaded.errors,
            seen,
        })
    }

    /// Reports how programming the last pending state went.
    pub fn done(&mut self, ok: bool) {
        if ok {
            self.applied = self.offered;
        }
    }
}
