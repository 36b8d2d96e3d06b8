//! Per-CPU verdict counters (no atomics needed: each CPU owns its slot).

use crate::maps::STATS;

#[inline(always)]
pub fn count(reason: u32, bytes: u64) {
    if let Some(c) = STATS.get_ptr_mut(reason) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
