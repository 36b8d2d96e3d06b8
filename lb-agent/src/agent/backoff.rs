//! Spacing of retried syncs. A failed sync is offered again at once (the
//! Kubernetes source wakes the loop, manifests on the next tick); a
//! failure that persists (a map write the kernel keeps refusing) would
//! then read back every map in a tight loop. Waits that double from
//! [`FIRST`] up to [`MAX`] bound that to a few reads a minute, and a
//! success resets them.

use std::time::Duration;

use tokio::time::Instant;

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Backoff {
    /// No sync before this (`None`: sync at will).
    until: Option<Instant>,
    /// The wait after the next failure.
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            until: None,
            delay: FIRST,
        }
    }
}

impl Backoff {
    /// Records a sync's outcome at `now`.
    pub fn record(&mut self, ok: bool, now: Instant) {
        if ok {
            *self = Backoff::default();
        } else {
            self.until = Some(now + self.delay);
            self.delay = (self.delay * 2).min(MAX);
        }
    }

    /// A sync must wait.
    pub fn waiting(&self) -> bool {
        self.until.is_some()
    }

    /// Resolves when the wait is over (never, if there is none), and ends
    /// it, so the loop does not wake for it again.
    pub async fn over(&mut self) {
        match self.until {
            Some(until) => {
                tokio::time::sleep_until(until).await;
                self.until = None;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_bound_and_a_success_resets_them() {
        let mut backoff = Backoff::default();
        assert!(!backoff.waiting());
        let now = Instant::now();
        let waits: Vec<u128> = (0..12)
            .map(|_| {
                backoff.record(false, now);
                (backoff.until.expect("waiting") - now).as_millis()
            })
            .collect();
        assert_eq!(waits[..5], [100, 200, 400, 800, 1600]);
        assert_eq!(waits[9..], [30_000, 30_000, 30_000]);
        backoff.record(true, now);
        assert!(!backoff.waiting());
        backoff.record(false, now);
        assert_eq!(backoff.until, Some(now + FIRST));
    }

    #[tokio::test]
    async fn the_wait_ends_once_and_then_never_wakes_again() {
        let mut backoff = Backoff::default();
        backoff.record(false, Instant::now());
        backoff.over().await;
        assert!(!backoff.waiting());
        let again = tokio::time::timeout(Duration::from_millis(50), backoff.over()).await;
        assert!(again.is_err(), "no wait pending, nothing to wake for");
    }
}
