//! Per-frontend counters (`lbctl stats --services`): packets and bytes
//! that reached each frontend and were forwarded, and those dropped or
//! refused. Two per-CPU slots per rev-NAT id: `2 * id` and `2 * id + 1`.
//! And per-backend counters (`lbctl stats --backends`): packets and bytes
//! forwarded to each backend.

use lb_common::RevNatId;

use crate::maps::{BACKEND_STATS, SVC_STATS};

/// Counts a packet that reached the frontend, in the refused slot when it
/// was dropped or answered with a rejection.
#[inline(always)]
pub fn count(rev_nat_id: RevNatId, bytes: u64, refused: bool) {
    let slot = rev_nat_id.wrapping_mul(2) + refused as u32;
    if let Some(c) = SVC_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Counts a packet forwarded to backend `id`. A backend without an entry
/// (removed a moment ago) is not counted: the agent owns the entries.
#[inline(always)]
pub fn count_backend(id: u32, bytes: u64) {
    if let Some(c) = BACKEND_STATS.get_ptr_mut(&id) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
