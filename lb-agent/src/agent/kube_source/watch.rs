//! The watch tasks: each follows one kind and hands its changes to the run
//! loop, which applies them to the desired-state index.
//!
//! A re-list (at start, and after the API server answers 410 Gone) arrives
//! as `Init`, one `InitApply` per object, then `InitDone`, handed on as
//! [`Update::ListStart`], one [`Update::Listed`] per object and
//! [`Update::ListDone`]. The run loop applies listed objects as they come
//! (the whole list is never held in memory: at 100k Services it was most
//! of the agent's peak) and deletes the objects missing from a list only
//! at its end, once the list is known to be complete, so the maps never
//! see an emptied cluster in between.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex,
};
use std::time::Instant;

use futures::StreamExt as _;
use kube::runtime::{reflector, watcher, WatchStreamExt as _};
use kube::{Api, Resource};
use tokio::{sync::mpsc::UnboundedSender, sync::Notify, task::JoinHandle};
use tracing::warn;

/// What the watch tasks tell the run loop, besides the changes themselves.
#[derive(Default)]
pub(super) struct Signals {
    /// When the oldest change not yet handed out was seen (`None`: none).
    pub pending_since: Mutex<Option<Instant>>,
    /// Wakes the run loop; a wake-up sent while it is busy is kept.
    pub wake: Notify,
    /// Per watch: its first list is complete.
    pub listed: [AtomicBool; 3],
    /// Watch failures since the last look (for metrics).
    pub failures: AtomicU64,
}

impl Signals {
    pub fn changed_at(&self, at: Instant) {
        let mut pending = self.pending_since.lock().expect("not poisoned");
        if pending.is_none_or(|p| at < p) {
            *pending = Some(at);
        }
        drop(pending);
        self.wake.notify_one();
    }
}

/// A change to the objects of one kind.
pub(super) enum Update<K> {
    Apply(K),
    Delete(K),
    /// A (re-)list begins (again, if one broke off).
    ListStart,
    /// One object of the list in progress.
    Listed(K),
    /// The list is complete: objects it did not name are gone.
    ListDone,
}

/// Follows `api` in a background task, sending each change through `tx`
/// (wrapped by `wrap`) before marking it pending, so the run loop never
/// takes a pending mark without its change.
pub(super) fn watch_objects<K, C>(
    api: Api<K>,
    signals: Arc<Signals>,
    listed: usize,
    tx: UnboundedSender<C>,
    wrap: fn(Update<K>) -> C,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned,
    K: 'static,
    C: Send + 'static,
{
    let kind = K::kind(&()).into_owned();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        // When the list in progress started (a list that broke off and
        // restarts keeps its start).
        let mut listing: Option<Instant> = None;
        while let Some(event) = stream.next().await {
            let (update, seen) = match event {
                Ok(watcher::Event::Init) => {
                    let since = *listing.get_or_insert_with(Instant::now);
                    (Update::ListStart, since)
                }
                Ok(watcher::Event::InitApply(object)) => match listing {
                    Some(since) => (Update::Listed(object), since),
                    None => {
                        warn!(kind = %kind, "object listed outside a list; ignored");
                        continue;
                    }
                },
                Ok(watcher::Event::InitDone) => {
                    let since = listing.take().unwrap_or_else(Instant::now);
                    (Update::ListDone, since)
                }
                Ok(watcher::Event::Apply(object)) => (Update::Apply(object), Instant::now()),
                Ok(watcher::Event::Delete(object)) => (Update::Delete(object), Instant::now()),
                // The backoff retries; the index keeps the last good state.
                Err(e) => {
                    signals.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(kind = %kind, "watch failed, retrying with backoff: {e}");
                    continue;
                }
            };
            let done = matches!(update, Update::ListDone);
            if tx.send(wrap(update)).is_err() {
                return; // the source is gone
            }
            if done {
                signals.listed[listed].store(true, Ordering::Release);
            }
            // Listed objects too: the run loop drains them as they come.
            signals.changed_at(seen);
        }
    })
}

/// A reflector over `api`, whose store is read when needed: nothing to
/// hand to the run loop, which is only woken when the first list is in.
/// `trim` drops what the store need not keep of each object.
pub(super) fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    signals: Arc<Signals>,
    listed: usize,
) -> (reflector::Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync,
    K: serde::de::DeserializeOwned + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    signals.listed[listed].store(true, Ordering::Release);
                    signals.wake.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    signals.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(kind = %kind, "watch failed, retrying with backoff: {e}");
                }
            }
        }
    });
    (reader, task)
}
