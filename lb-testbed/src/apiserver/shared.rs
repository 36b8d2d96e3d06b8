//! What the HTTP handlers and the test-facing handle share: the store, the
//! fault-injection switches and the request log.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::store::Store;
use super::RecordedRequest;

pub(crate) struct Shared {
    pub store: Store,
    requests: Mutex<Vec<RecordedRequest>>,
    unavailable: AtomicBool,
    /// Bumped to abort every open watch; each stream wakes on the change.
    watch_aborts: watch::Sender<u64>,
    active_watches: AtomicUsize,
    bookmark_interval_ms: AtomicU64,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            store: Store::new(),
            requests: Mutex::new(Vec::new()),
            unavailable: AtomicBool::new(false),
            watch_aborts: watch::Sender::new(0),
            active_watches: AtomicUsize::new(0),
            bookmark_interval_ms: AtomicU64::new(1000),
        }
    }

    pub fn record(&self, request: RecordedRequest) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.push(request);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.clone()
    }

    pub fn is_unavailable(&self) -> bool {
        self.unavailable.load(Ordering::SeqCst)
    }

    /// Going down also ends the open watches: a server that is down streams
    /// nothing.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
        if unavailable {
            self.abort_watches();
        }
    }

    pub fn abort_watches(&self) {
        self.watch_aborts.send_modify(|generation| *generation += 1);
    }

    /// Changes when the open watches must abort.
    pub fn watch_aborts(&self) -> watch::Receiver<u64> {
        self.watch_aborts.subscribe()
    }

    /// Counts a watch as open until the returned guard drops.
    pub fn watch_opened(self: &Arc<Self>) -> OpenWatch {
        self.active_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(self.clone())
    }

    pub fn active_watches(&self) -> usize {
        self.active_watches.load(Ordering::SeqCst)
    }

    pub fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(self.bookmark_interval_ms.load(Ordering::Relaxed))
    }

    /// Rounded to whole milliseconds, at least one (a timer needs a period)
    /// and at most a day (deadline arithmetic must not overflow).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let ms = ms.clamp(1, 24 * 3600 * 1000);
        self.bookmark_interval_ms.store(ms, Ordering::Relaxed);
    }
}

/// An open watch, see [`Shared::watch_opened`].
pub(crate) struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.active_watches.fetch_sub(1, Ordering::SeqCst);
    }
}
