//! Verdicts and their per-CPU counters (no atomics needed: each CPU owns
//! its slot).
//!
//! A program's verdict is a [`Reason`]: what it counts under, and, through
//! [`Reason::action`], what happens to the packet. The steps of a program
//! return [`Step`]s, so `?` ends a program early with its verdict.

pub use lb_common::stats::{Action, Reason};

use crate::maps::STATS;

/// `Ok` goes on to the next step; `Err(reason)` is the packet's verdict,
/// reached early (whichever its action: pass, drop or send back).
pub type Step<T> = Result<T, Reason>;

/// The verdict of a program body whose last step gives it as `Ok`.
#[inline(always)]
pub fn verdict(step: Step<Reason>) -> Reason {
    match step {
        Ok(reason) | Err(reason) => reason,
    }
}

#[inline(always)]
pub fn count(reason: Reason, bytes: u64) {
    if let Some(c) = STATS.get_ptr_mut(reason.index()) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
