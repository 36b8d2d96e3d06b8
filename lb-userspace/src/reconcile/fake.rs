//! An in-memory [`Dataplane`] for tests, here and in other modules.

use super::{Dataplane, DataplaneError, MapOp, MapState};

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
        if !self.state.apply(op) {
            return Err(fail("no such entry"));
        }
        self.applied.push(op.clone());
        Ok(())
    }
}
