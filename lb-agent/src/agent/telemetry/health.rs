//! The health rule and the JSON that /healthz and /livez answer with.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// What health needs to know: whether a sync ever succeeded, and how long
/// the oldest change not yet in the maps has waited.
pub struct Health {
    timeout: Duration,
    /// Wall-clock time of the last successful sync; None before the first.
    last_synced: Option<SystemTime>,
    /// When the oldest change not yet programmed was seen.
    oldest_pending: Option<Instant>,
    /// When the newest one was seen: tells whether a sync that started at
    /// some instant covered all of them.
    newest_pending: Option<Instant>,
}

/// Health at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status {
    NeverSynced,
    Healthy,
    /// A change has waited `waited` (at least the timeout) to be programmed.
    Late {
        waited: Duration,
    },
}

impl Status {
    pub fn is_healthy(self) -> bool {
        self == Status::Healthy
    }
}

/// Everything an answer to a probe shows, taken under one lock.
pub struct Report {
    pub status: Status,
    timeout: Duration,
    last_synced: Option<SystemTime>,
    now: SystemTime,
}

impl Health {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            last_synced: None,
            oldest_pending: None,
            newest_pending: None,
        }
    }

    pub fn change_seen(&mut self, at: Instant) {
        self.oldest_pending = Some(self.oldest_pending.map_or(at, |o| o.min(at)));
        self.newest_pending = Some(self.newest_pending.map_or(at, |n| n.max(at)));
    }

    /// A sync that started at `started` succeeded at wall-clock time `at`.
    pub fn synced(&mut self, started: Instant, at: SystemTime) {
        self.last_synced = Some(at);
        match (self.oldest_pending, self.newest_pending) {
            (Some(oldest), Some(newest)) if newest > started => {
                // Some change came while the sync ran and may have missed it.
                // Which pending changes came after `started` is not kept (that
                // would take a list); counting the wait from `started`
                // overstates it by at most the sync's duration, never hides it.
                if oldest <= started {
                    self.oldest_pending = Some(started);
                }
            }
            _ => {
                self.oldest_pending = None;
                self.newest_pending = None;
            }
        }
    }

    pub fn status(&self, now: Instant) -> Status {
        if self.last_synced.is_none() {
            return Status::NeverSynced;
        }
        match self.oldest_pending {
            Some(seen) if now.saturating_duration_since(seen) >= self.timeout => Status::Late {
                waited: now.saturating_duration_since(seen),
            },
            _ => Status::Healthy,
        }
    }

    pub fn report(&self, now: Instant, wall_now: SystemTime) -> Report {
        Report {
            status: self.status(now),
            timeout: self.timeout,
            last_synced: self.last_synced,
            now: wall_now,
        }
    }
}

impl Report {
    /// kube-proxy's body: `lastUpdated`, `currentTime` and, for /healthz,
    /// `nodeEligible`; plus a `message` saying why when unhealthy.
    ///
    /// As in kube-proxy, a healthy answer gives the current time as
    /// `lastUpdated` (clients written against older releases read a recent
    /// `lastUpdated` as healthy); the last sync's own time is a metric.
    /// Node eligibility (deletion, autoscaler taint) is not watched yet, so
    /// the node counts as eligible, as kube-proxy's does until it sees its
    /// Node.
    pub fn json(&self, with_node_eligible: bool) -> Value {
        let now = rfc3339(self.now);
        let (last_updated, message) = match self.status {
            Status::Healthy => (Some(now.clone()), None),
            Status::NeverSynced => (None, Some("no sync has succeeded yet".to_owned())),
            Status::Late { waited } => (
                self.last_synced.map(rfc3339),
                Some(format!(
                    "a change seen {:.1}s ago is not in the maps yet (limit {:.1}s)",
                    waited.as_secs_f64(),
                    self.timeout.as_secs_f64()
                )),
            ),
        };
        let mut body = json!({ "lastUpdated": last_updated, "currentTime": now });
        if with_node_eligible {
            body["nodeEligible"] = json!(true);
        }
        if let Some(message) = message {
            body["message"] = json!(message);
        }
        body
    }
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2024-02-29T12:34:56.789Z`
/// (times before 1970 show as 1970).
pub fn rfc3339(t: SystemTime) -> String {
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// Year, month and day of the `days`th day after 1970-01-01 in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`,
/// for days after the epoch only).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01 so that leap days end each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn synced_health(base: Instant) -> Health {
        let mut h = Health::new(TIMEOUT);
        h.synced(base, SystemTime::now());
        h
    }

    #[test]
    fn never_synced_until_a_sync_succeeds() {
        let base = Instant::now();
        let mut h = Health::new(TIMEOUT);
        assert_eq!(h.status(base), Status::NeverSynced);
        h.change_seen(base);
        assert_eq!(h.status(at(base, 10_000)), Status::NeverSynced);
        h.synced(at(base, 1), SystemTime::now());
        assert_eq!(h.status(at(base, 10_000)), Status::Healthy);
    }

    #[test]
    fn late_from_the_oldest_pending_change() {
        let base = Instant::now();
        let mut h = synced_health(base);
        h.change_seen(at(base, 1000));
        h.change_seen(at(base, 500));
        h.change_seen(at(base, 1500));
        assert_eq!(h.status(at(base, 2499)), Status::Healthy);
        assert_eq!(h.status(at(base, 2500)), Status::Late { waited: TIMEOUT });
    }

    #[test]
    fn a_sync_clears_the_changes_it_started_after() {
        let base = Instant::now();
        let mut h = synced_health(base);
        h.change_seen(at(base, 100));
        h.change_seen(at(base, 200));
        h.synced(at(base, 200), SystemTime::now());
        assert_eq!(h.status(at(base, 60_000)), Status::Healthy);
    }

    #[test]
    fn a_change_seen_during_a_sync_counts_from_the_sync_start() {
        let base = Instant::now();
        let mut h = synced_health(base);
        h.change_seen(at(base, 100));
        h.change_seen(at(base, 300));
        h.synced(at(base, 200), SystemTime::now());
        assert_eq!(h.status(at(base, 2199)), Status::Healthy);
        assert!(!h.status(at(base, 2200)).is_healthy());
    }

    #[test]
    fn a_sync_started_before_every_pending_change_keeps_them() {
        let base = Instant::now();
        let mut h = synced_health(base);
        h.change_seen(at(base, 300));
        h.synced(at(base, 200), SystemTime::now());
        assert_eq!(h.status(at(base, 2299)), Status::Healthy);
        assert!(!h.status(at(base, 2300)).is_healthy());
    }

    #[test]
    fn healthy_body_is_kube_proxys() {
        let now = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        let report = synced_health(Instant::now()).report(Instant::now(), now);
        assert_eq!(
            report.json(true),
            json!({
                "lastUpdated": "2024-02-29T12:34:56.789Z",
                "currentTime": "2024-02-29T12:34:56.789Z",
                "nodeEligible": true,
            })
        );
        assert_eq!(
            report.json(false),
            json!({
                "lastUpdated": "2024-02-29T12:34:56.789Z",
                "currentTime": "2024-02-29T12:34:56.789Z",
            })
        );
    }

    #[test]
    fn unhealthy_bodies_say_why() {
        let base = Instant::now();
        let never = Health::new(TIMEOUT).report(base, UNIX_EPOCH).json(false);
        assert_eq!(never["lastUpdated"], Value::Null);
        assert_eq!(never["message"], "no sync has succeeded yet");

        let mut h = Health::new(TIMEOUT);
        h.synced(base, UNIX_EPOCH + Duration::from_secs(951_782_400));
        h.change_seen(at(base, 1));
        let late = h.report(at(base, 3001), UNIX_EPOCH).json(true);
        assert_eq!(late["lastUpdated"], "2000-02-29T00:00:00.000Z");
        assert_eq!(
            late["message"],
            "a change seen 3.0s ago is not in the maps yet (limit 2.0s)"
        );
        assert_eq!(late["nodeEligible"], true);
    }

    #[test]
    fn rfc3339_in_utc() {
        let secs = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(secs(951_782_400)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(secs(4_102_444_799)), "2099-12-31T23:59:59.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
