//! What the maps should hold: in full, from the maps as read back, or just
//! the part that changes since the last complete sync.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{RevNatId, ServiceKey};

use super::entries::{service_key, FrontendIds};
use super::index::{BackendRefs, Change, Programmed};
use super::{MapState, Reconciler};
use crate::model::{Desired, DesiredFrontend, Frontend};

/// The entries an incremental sync touches, before and after.
#[derive(Debug, Default)]
pub(super) struct Delta {
    /// The changed frontends' entries and those of the backends and
    /// rev-NAT targets they use, as the maps hold them now.
    pub current: MapState,
    /// The same entries as they should be: planning `current -> target`
    /// writes what a full target would, and nothing else.
    pub target: MapState,
    /// The changed frontends' new ids (`None`: not programmed any more).
    pub frontends: Vec<(Frontend, Option<FrontendIds>)>,
}

impl Reconciler {
    /// Computes the target MapState for `desired`, reusing ids already in
    /// `current`, so that a restart or a resync does not renumber anything.
    pub fn target_state(&mut self, desired: &Desired, current: &MapState) -> MapState {
        self.full_target(desired, current).maps
    }

    /// All of `desired` programmed, with the ids of identical entries in
    /// `current` (the maps as read back).
    pub(super) fn full_target(&mut self, desired: &Desired, current: &MapState) -> Programmed {
        self.ids.skip_ids_in_use(current);
        let mut backends = BackendRefs::adopt(current);
        let mut rev_nats = AdoptedRevNats::new(current);
        let mut maps = MapState::default();
        let mut frontends = BTreeMap::new();
        for (frontend, wanted) in &desired.frontends {
            let Some(rev_nat_id) = rev_nats
                .take(frontend)
                .or_else(|| self.new_rev_nat(frontend, current, &maps))
            else {
                continue;
            };
            let ids =
                FrontendIds::assign(frontend, wanted, rev_nat_id, &mut backends, &mut self.ids);
            ids.write(frontend, &mut maps);
            frontends.insert(*frontend, ids);
        }
        backends.forget_unused();
        Programmed {
            maps,
            frontends,
            backends,
        }
    }

    /// The entries that change (`changes`, from [`Programmed::changes`]),
    /// given what the last complete sync programmed: the changed
    /// frontends, the backends they start or stop using (counted in
    /// `known.backends`) and their rev-NAT targets. Ids come out as a full
    /// target would give them.
    pub(super) fn delta(&mut self, changes: &[Change<'_>], known: &mut Programmed) -> Delta {
        let mut delta = Delta::default();
        // New ids first, old uses released after: a backend moving between
        // two changed frontends keeps its id.
        for &(frontend, wanted) in changes {
            let ids =
                wanted.and_then(|wanted| self.reassign(&frontend, wanted, known, &delta.target));
            if let Some(ids) = &ids {
                ids.write(&frontend, &mut delta.target);
            }
            delta.frontends.push((frontend, ids));
        }
        for (frontend, _) in changes {
            known.release(frontend, &mut delta.current);
        }
        // Of the backends the old entries used, those still used stay.
        for (id, backend) in &delta.current.backends {
            if known.backends.is_used(backend) {
                delta.target.backends.insert(*id, *backend);
            }
        }
        // Backends the new entries share with unchanged frontends exist.
        for id in delta.target.backends.keys() {
            if let Some(backend) = known.maps.backends.get(id) {
                delta.current.backends.insert(*id, *backend);
            }
        }
        delta
    }

    /// Ids for a new or changed frontend: a changed one keeps its rev-NAT id.
    fn reassign(
        &mut self,
        frontend: &Frontend,
        wanted: &DesiredFrontend,
        known: &mut Programmed,
        target: &MapState,
    ) -> Option<FrontendIds> {
        let rev_nat_id = match known.frontends.get(frontend) {
            Some(old) => old.rev_nat_id,
            None => self.new_rev_nat(frontend, &known.maps, target)?,
        };
        let ids = FrontendIds::assign(
            frontend,
            wanted,
            rev_nat_id,
            &mut known.backends,
            &mut self.ids,
        );
        Some(ids)
    }

    /// A rev-NAT id for a frontend that has none; `None` (logged) when all
    /// are taken.
    fn new_rev_nat(
        &mut self,
        frontend: &Frontend,
        current: &MapState,
        target: &MapState,
    ) -> Option<RevNatId> {
        let id = self.ids.rev_nat(current, target);
        if id.is_none() {
            tracing::error!(%frontend, "no free rev-NAT id; frontend not programmed");
        }
        id
    }
}

/// Rev-NAT ids the maps read back give frontends, so that they keep them.
struct AdoptedRevNats {
    /// Master key -> its rev-NAT id, where that id still holds this frontend.
    by_master: BTreeMap<ServiceKey, RevNatId>,
    /// Ids already handed to a frontend.
    taken: BTreeSet<RevNatId>,
}

impl AdoptedRevNats {
    fn new(current: &MapState) -> Self {
        let by_master = current
            .services
            .iter()
            .filter(|(key, value)| {
                key.slot == 0
                    && current
                        .revnat
                        .get(&value.rev_nat_id)
                        .is_some_and(|r| r.addr_be == key.vip_be && r.port_be == key.port_be)
            })
            .map(|(key, value)| (*key, value.rev_nat_id))
            .collect();
        AdoptedRevNats {
            by_master,
            taken: BTreeSet::new(),
        }
    }

    /// The frontend's current rev-NAT id, unless another frontend (TCP and
    /// UDP on one port have equal rev-NAT entries) already took it.
    fn take(&mut self, frontend: &Frontend) -> Option<RevNatId> {
        let id = *self.by_master.get(&service_key(frontend, 0))?;
        self.taken.insert(id).then_some(id)
    }
}
