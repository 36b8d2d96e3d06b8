//! Backend and rev-NAT id allocation.

use ipnet::Ipv4Net;
use lb_common::RevNatId;

use super::MapState;

/// Hands out ids for new backends and frontends. Lives as long as the agent
/// (inside the `Reconciler`), so that freed ids come back late or never.
#[derive(Debug)]
pub(super) struct Ids {
    /// Next new backend id. It only grows, so an id is never reused while
    /// the agent runs and a stale conntrack entry cannot reach a new pod.
    next_backend: u32,
    /// Where the search for a free rev-NAT id starts; it moves on (wrapping)
    /// so a just-freed id, which old conntrack entries may still carry, is
    /// handed out again as late as possible. `None` until the maps were
    /// first read, then it starts after the highest id found there.
    next_rev_nat: Option<RevNatId>,
}

impl Ids {
    pub(super) fn new() -> Self {
        Ids {
            next_backend: 1,
            next_rev_nat: None,
        }
    }

    /// After a restart the allocators know nothing of the ids in the maps:
    /// new backend ids go above all of them, and the rev-NAT search starts
    /// after the highest (once; later it just moves on).
    pub(super) fn skip_ids_in_use(&mut self, current: &MapState) {
        let max_backend = current.backends.keys().next_back().copied().unwrap_or(0);
        self.next_backend = self.next_backend.max(max_backend.saturating_add(1));
        let max_rev_nat = current.revnat.keys().next_back().copied().unwrap_or(0);
        self.next_rev_nat.get_or_insert(max_rev_nat.wrapping_add(1));
    }

    pub(super) fn backend(&mut self) -> u32 {
        let id = self.next_backend;
        // 4 billion backend changes in one agent's life would take centuries.
        self.next_backend = id.checked_add(1).expect("backend ids exhausted");
        id
    }

    /// A rev-NAT id neither in the maps (`current`) nor already handed out
    /// for `target`, searching from the cursor (never 0, which the datapath
    /// reads as "none"). Nor one that source ranges in the maps name
    /// without a rev-NAT entry (left by hand): they go only after the new
    /// frontend's master is written, and would admit their clients to it
    /// meanwhile.
    pub(super) fn rev_nat(&mut self, current: &MapState, target: &MapState) -> Option<RevNatId> {
        let start = self.next_rev_nat.unwrap_or(1);
        let free = (0..=RevNatId::MAX)
            .map(|offset| start.wrapping_add(offset))
            .find(|&id| {
                id != 0
                    && !current.revnat.contains_key(&id)
                    && !target.revnat.contains_key(&id)
                    && !has_source_ranges(current, id)
            })?;
        self.next_rev_nat = Some(free.wrapping_add(1));
        Some(free)
    }
}

fn has_source_ranges(maps: &MapState, id: RevNatId) -> bool {
    let first = (id, Ipv4Net::default());
    (maps.source_ranges.range(first..))
        .next()
        .is_some_and(|&(of, _)| of == id)
}
