//! Desired state from a directory of manifests, re-read when it changes.

use std::{path::PathBuf, time::Instant};

use tracing::warn;

use super::apply::Pending;
use lb_core::manifest;
use lb_core::model::{ConfigError, DesiredIndex};

pub struct ManifestSource {
    dir: PathBuf,
    /// Fingerprint of the last successfully applied contents.
    applied: Option<u64>,
    /// Fingerprint of the contents handed out by the last `take_pending`.
    offered: Option<u64>,
    /// The objects of the last read; replacing them tells which Services
    /// changed, for the log.
    index: DesiredIndex,
    /// Files that could not be read, from the last read.
    load_errors: Vec<ConfigError>,
}

impl ManifestSource {
    /// Reads `dir` for the node named `node_name` (its endpoints are local)
    /// in `zone` (the endpoints zone hints give it).
    pub fn new(dir: PathBuf, node_name: String, zone: Option<String>) -> Self {
        let mut index = DesiredIndex::new(Some(node_name));
        index.set_zone(zone);
        Self {
            dir,
            applied: None,
            offered: None,
            index,
            load_errors: Vec::new(),
        }
    }

    /// The desired state if the files changed since the last successful
    /// sync (or the last one failed).
    pub fn take_pending(&mut self) -> Option<Pending<'_>> {
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
        let slices = loaded.slices.iter();
        self.index
            .replace_slices(slices.map(|s| (&s.object, Some(s.source.as_path()))));
        let services = loaded.services.iter();
        self.index
            .replace_services(services.map(|s| (&s.object, Some(s.source.as_path()))));
        self.load_errors = loaded.errors;
        self.offered = Some(fingerprint);
        Some(Pending {
            state: &self.index,
            load_errors: &self.load_errors,
            seen,
        })
    }

    /// Reports how programming the last pending state went.
    pub fn done(&mut self, ok: bool) {
        if ok {
            self.applied = self.offered;
            self.index.clear_changed();
        }
    }

    /// Makes the next `take_pending` read the files and hand out their
    /// state even if they did not change (a periodic resync).
    pub fn offer_again(&mut self) {
        self.applied = None;
    }
}
