//! An in-memory [`Dataplane`] for tests, here and in other modules.

use lb_common;
use lb_common::MapId;

use super::{Capacity, Dataplane, DataplaneError, MapOp, MapState};

/// In-memory Dataplane for tests; records every op applied.
///
/// Stricter than a kernel map in one way: deleting a missing entry is an
/// error, so a plan that deletes what is not there fails loudly.
#[derive(Debug, Clone, Default)]
pub struct FakeDataplane {
    pub state: MapState,
    /// Ops applied successfully, in order.
    pub applied: Vec<MapOp>,
    /// While set to `Some(n)`, the write that would become `applied[n]`
    /// fails (and changes nothing), to test syncs that break off.
    pub fail_at: Option<usize>,
    /// How many times the whole state was read.
    pub reads: std::cell::Cell<usize>,
    /// Map sizes: a write of a new entry into a full map fails, as the
    /// kernel's does (E2BIG). `None`: unbounded.
    pub capacity: Option<Capacity>,
}

impl FakeDataplane {
    /// A dataplane whose maps hold `state`.
    pub fn new(state: MapState) -> Self {
        FakeDataplane {
            state,
            ..Self::default()
        }
    }
}

impl Dataplane for FakeDataplane {
    fn read_state(&self) -> Result<MapState, DataplaneError> {
        self.reads.set(self.reads.get() + 1);
        Ok(self.state.clone())
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        let fail = |message: &str| DataplaneError {
            op: op.to_string(),
            message: message.into(),
        };
        if self.fail_at == Some(self.applied.len()) {
            return Err(fail("injected failure"));
        }
        if let Some(full) = self.capacity.and_then(|c| full_map(&self.state, op, c)) {
            return Err(fail(&format!("map {full} is full")));
        }
        if !self.state.apply(op) {
            return Err(fail("no such entry"));
        }
        self.applied.push(op.clone());
        Ok(())
    }
}

/// The map `op` would add an entry to beyond `capacity`, if any.
fn full_map(state: &MapState, op: &MapOp, capacity: Capacity) -> Option<&'static str> {
    let (adds, held, size, name) = match op {
        MapOp::UpsertBackend(id, _) => (
            !state.backends.contains_key(id),
            state.backends.len(),
            capacity.backends,
            MapId::Backends.name(),
        ),
        MapOp::UpsertRevNat(id, _) => (
            !state.revnat.contains_key(id),
            state.revnat.len(),
            capacity.revnat,
            MapId::RevNat.name(),
        ),
        MapOp::UpsertService(key, _) => (
            !state.services.contains_key(key),
            state.services.len(),
            capacity.services,
            MapId::Services.name(),
        ),
        MapOp::UpsertSourceRange(id, net) => (
            !state.source_ranges.contains(&(*id, *net)),
            state.source_ranges.len(),
            capacity.source_ranges,
            MapId::SourceRanges.name(),
        ),
        _ => return None,
    };
    (adds && held >= size).then_some(name)
}
