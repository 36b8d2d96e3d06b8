//! What the last complete sync programmed, indexed so that the next sync
//! finds the changed frontends with one ordered walk and knows, for each
//! backend they drop, whether another frontend still uses it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::Backend;

use super::entries::{backend, FrontendIds};
use super::ids::Ids;
use super::{MapOp, MapState};
use crate::model::{Desired, DesiredFrontend, Frontend};

/// Backend ids by backend, with the number of slots using each, so that a
/// backend is deleted exactly when its last slot goes.
///
/// The whole entry is the key, flags included: an endpoint that moves to or
/// from this node is another backend, with a new id. An id thus never
/// changes meaning (conntrack entries carry it), and frontends that
/// disagree on a backend's locality each get the backend they asked for.
#[derive(Debug)]
pub(super) struct BackendRefs(HashMap<Backend, BackendRef>);

#[derive(Debug)]
struct BackendRef {
    id: u32,
    uses: u32,
}

impl BackendRefs {
    /// The ids of the backends in `maps`, not used yet. Of a backend stored
    /// twice (by hand, or by a crashed agent) the lowest id is kept.
    pub(super) fn adopt(maps: &MapState) -> Self {
        let mut refs = HashMap::with_capacity(maps.backends.len());
        for (&id, backend) in maps.backends.iter().rev() {
            refs.insert(*backend, BackendRef { id, uses: 0 });
        }
        BackendRefs(refs)
    }

    /// The backend's id, a new one if it has none; counts one more use.
    pub(super) fn acquire(&mut self, backend: &Backend, ids: &mut Ids) -> u32 {
        let entry = self.0.entry(*backend).or_insert_with(|| BackendRef {
            id: ids.backend(),
            uses: 0,
        });
        entry.uses += 1;
        entry.id
    }

    /// Counts one use less. An unused backend is forgotten: should it come
    /// back, it gets a new id, as it would from a full target (its entry is
    /// deleted meanwhile).
    pub(super) fn release(&mut self, backend: &Backend) {
        if let Some(entry) = self.0.get_mut(backend) {
            entry.uses -= 1;
            if entry.uses == 0 {
                self.0.remove(backend);
            }
        }
    }

    /// Whether a frontend uses the backend: a backend goes with its last
    /// use, and [`Self::forget_unused`] drops the adopted ones none took.
    pub(super) fn is_used(&self, backend: &Backend) -> bool {
        self.0.contains_key(backend)
    }

    /// Forgets the adopted backends no frontend uses (their entries go).
    pub(super) fn forget_unused(&mut self) {
        self.0.retain(|_, entry| entry.uses > 0);
    }
}

/// What the maps hold after the last complete sync, and the ids behind it.
#[derive(Debug)]
pub(super) struct Programmed {
    pub maps: MapState,
    /// Every frontend in `maps`, with its ids.
    pub frontends: BTreeMap<Frontend, FrontendIds>,
    /// Every backend in `maps`.
    pub backends: BackendRefs,
}

/// A frontend whose entries must change, and what it should serve now
/// (`None`: it goes).
pub(super) type Change<'d> = (Frontend, Option<&'d DesiredFrontend>);

impl Programmed {
    /// The frontends of `desired` that are new or serve other backends or
    /// flags or ranges now, and the programmed ones `desired` lacks, in
    /// frontend order.
    /// Both maps are sorted, so one merge walk finds them.
    pub(super) fn changes<'d>(&self, desired: &'d Desired) -> Vec<Change<'d>> {
        let mut programmed = self.frontends.iter().peekable();
        let mut wanted = desired.frontends.iter().peekable();
        let mut changes = Vec::new();
        loop {
            let step = match (programmed.peek(), wanted.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((old, _)), Some((new, _))) => old.cmp(new),
            };
            match step {
                Ordering::Less => {
                    if let Some((frontend, _)) = programmed.next() {
                        changes.push((*frontend, None));
                    }
                }
                Ordering::Greater => {
                    if let Some((frontend, new)) = wanted.next() {
                        changes.push((*frontend, Some(new)));
                    }
                }
                Ordering::Equal => {
                    if let (Some((_, old)), Some((frontend, new))) =
                        (programmed.next(), wanted.next())
                    {
                        if !old.serves(new) {
                            changes.push((*frontend, Some(new)));
                        }
                    }
                }
            }
        }
        changes
    }

    /// [`Self::changes`] when only `touched` frontends can have changed.
    pub(super) fn changes_among<'d>(
        &self,
        desired: &'d Desired,
        touched: &BTreeSet<Frontend>,
    ) -> Vec<Change<'d>> {
        touched
            .iter()
            .filter_map(|frontend| {
                let wanted = desired.frontends.get(frontend);
                match (self.frontends.get(frontend), wanted) {
                    (Some(old), Some(new)) if old.serves(new) => None,
                    (None, None) => None,
                    _ => Some((*frontend, wanted)),
                }
            })
            .collect()
    }

    /// Adds the frontend's programmed entries to `entries` and takes back
    /// the uses of its backends (which new entries may have taken again).
    pub(super) fn release(&mut self, frontend: &Frontend, entries: &mut MapState) {
        let Some(old) = self.frontends.get(frontend) else {
            return;
        };
        old.write(frontend, entries);
        for &(addr, _) in &old.backends {
            self.backends.release(&backend(frontend, addr));
        }
    }

    /// Takes in a sync whose `ops` were all applied: the new entries, and
    /// the new ids of its changed frontends (`None`: gone).
    pub(super) fn commit(
        &mut self,
        frontends: Vec<(Frontend, Option<FrontendIds>)>,
        ops: &[MapOp],
    ) {
        for op in ops {
            let found = self.maps.apply(op);
            debug_assert!(found, "{op}: planned against entries not known");
        }
        for (frontend, ids) in frontends {
            match ids {
                Some(ids) => self.frontends.insert(frontend, ids),
                None => self.frontends.remove(&frontend),
            };
        }
    }
}
