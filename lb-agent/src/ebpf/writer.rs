//! What the agent's small maps have in common: each has one writer that
//! makes it hold a whole wanted state (the agent's `Owned` decides when
//! to write, and logs, counts and retries a failure).

use std::fmt;

pub trait MapWriter {
    /// What the map holds, as the agent wants it.
    type State: PartialEq + fmt::Debug;
    /// The map, for logs and errors.
    const MAP: lb_common::MapId;
    /// Makes the map hold `state`.
    fn write(&mut self, state: &Self::State) -> anyhow::Result<()>;
}
