//! WATCH: a chunked response carrying one JSON event per line. It replays
//! the kept changes after the requested resourceVersion, then streams new
//! ones, with periodic BOOKMARKs when the client allows them, and ends
//! cleanly after `timeoutSeconds`. A version the history no longer covers
//! gets what the API server sends: an ERROR event with a 410 Expired Status,
//! then the end of the stream, which tells the client to relist.

use std::collections::VecDeque;
use std::future;
use std::io;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::{self, Instant, Interval, MissedTickBehavior};

use super::params::{WatchQuery, WatchStart};
use super::resource::Resource;
use super::selectors::ObjectFilter;
use super::shared::{OpenWatch, Shared};
use super::status::ApiError;
use super::store::{Change, Snapshot};

/// Starts streaming the watch `query` asks for.
pub(crate) fn respond(
    shared: &Arc<Shared>,
    resource: Resource,
    filter: ObjectFilter,
    query: WatchQuery,
) -> Result<Response, ApiError> {
    let store = &shared.store;
    let current = store.current_rv();
    if query.resource_version > current {
        return Err(ApiError::too_large(query.resource_version, current));
    }
    // Subscribed before the store is read, so no change can slip between
    // that read and the first wait.
    let changes = store.subscribe();
    let aborts = shared.watch_aborts();

    let mut pending = VecDeque::new();
    let cursor = match query.start {
        WatchStart::After(rv) => rv,
        WatchStart::Now { initial_events } => {
            let Snapshot { rv, objects } = store.latest(resource);
            if initial_events {
                let selected = objects.iter().filter(|(_, o)| filter.matches(o));
                pending.extend(selected.map(|(_, o)| event_line("ADDED", o)));
            }
            if query.announce_initial_end {
                pending.push_back(bookmark_line(resource, rv, true));
            }
            rv
        }
    };
    let bookmarks = query.bookmarks.then(|| {
        let period = shared.bookmark_interval();
        let mut bookmarks = time::interval_at(Instant::now() + period, period);
        bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        bookmarks
    });
    let stream = WatchStream {
        shared: shared.clone(),
        resource,
        filter,
        cursor,
        pending,
        ending: false,
        changes,
        aborts,
        bookmarks,
        deadline: Instant::now() + query.timeout,
        _open: shared.watch_opened(),
    };
    Ok(([(CONTENT_TYPE, "application/json")], stream.into_body()).into_response())
}

/// The state of one watch response.
struct WatchStream {
    shared: Arc<Shared>,
    resource: Resource,
    filter: ObjectFilter,
    /// Every change up to this version has been queued or filtered out;
    /// bookmarks carry it.
    cursor: u64,
    /// Lines ready to send.
    pending: VecDeque<Bytes>,
    /// No more lines after `pending`.
    ending: bool,
    changes: watch::Receiver<u64>,
    aborts: watch::Receiver<u64>,
    bookmarks: Option<Interval>,
    deadline: Instant,
    _open: OpenWatch,
}

/// Why a waiting watch woke up.
enum Wake {
    Abort,
    Deadline,
    Changed,
    Bookmark,
}

impl WatchStream {
    fn into_body(self) -> Body {
        Body::from_stream(futures::stream::unfold(self, |mut stream| async move {
            let chunk = stream.next_chunk().await?;
            Some((chunk, stream))
        }))
    }

    /// The next line, `None` at the end, or an error when the watch is
    /// aborted: hyper then drops the connection without the final chunk,
    /// which a client sees as an abrupt end.
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            // Checked before sending anything so a backlog cannot delay it.
            if self.aborts.has_changed().unwrap_or(true) {
                self.aborts.borrow_and_update();
                return self.abort();
            }
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(line));
            }
            if self.ending {
                return None;
            }
            self.catch_up();
            if !self.pending.is_empty() || self.ending {
                continue;
            }
            match self.wait().await {
                Wake::Abort => return self.abort(),
                Wake::Changed => {}
                Wake::Deadline => self.ending = true,
                Wake::Bookmark => {
                    let line = bookmark_line(self.resource, self.cursor, false);
                    self.pending.push_back(line);
                }
            }
        }
    }

    /// Ends the stream with an error.
    fn abort(&mut self) -> Option<io::Result<Bytes>> {
        self.pending.clear();
        self.ending = true;
        Some(Err(io::Error::other("watch aborted by fault injection")))
    }

    /// Queues the changes after the cursor, or the 410 if they are gone.
    fn catch_up(&mut self) {
        // Marked seen before reading: a change after the read wakes `wait`.
        self.changes.borrow_and_update();
        match self.shared.store.changes_after(self.resource, self.cursor) {
            Ok((changes, rv)) => {
                for change in &changes {
                    if let Some(kind) = event_type(change, &self.filter) {
                        self.pending.push_back(event_line(kind, &change.object));
                    }
                }
                self.cursor = rv;
            }
            Err(expired) => {
                let status = ApiError::expired(&expired).status();
                self.pending.push_back(event_line("ERROR", &status));
                self.ending = true;
            }
        }
    }

    async fn wait(&mut self) -> Wake {
        let WatchStream {
            changes,
            aborts,
            bookmarks,
            deadline,
            ..
        } = self;
        let bookmark = async {
            match bookmarks {
                Some(bookmarks) => bookmarks.tick().await,
                None => future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = aborts.changed() => Wake::Abort,
            _ = time::sleep_until(*deadline) => Wake::Deadline,
            _ = changes.changed() => Wake::Changed,
            _ = bookmark => Wake::Bookmark,
        }
    }
}

/// What a watcher with `filter` sees of `change`. As in the API server's
/// watch cache, an update that moves an object into or out of the
/// selection is an ADDED or a DELETED for that watcher.
fn event_type(change: &Change, filter: &ObjectFilter) -> Option<&'static str> {
    let before = change
        .previous
        .as_deref()
        .is_some_and(|o| filter.matches(o));
    let after = filter.matches(&change.object);
    match (before, after) {
        (true, true) if change.deleted => Some("DELETED"),
        (true, true) => Some("MODIFIED"),
        (false, true) => Some("ADDED"),
        (true, false) => Some("DELETED"),
        (false, false) => None,
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    line.into()
}

/// A BOOKMARK: the client has seen everything up to `rv`. The annotated
/// one closes the initial events of a `sendInitialEvents` watch.
fn bookmark_line(resource: Resource, rv: u64, initial_events_end: bool) -> Bytes {
    let info = resource.info();
    let mut object = json!({
        "kind": info.kind,
        "apiVersion": info.api_version,
        "metadata": { "resourceVersion": rv.to_string() },
    });
    if initial_events_end {
        object["metadata"]["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line("BOOKMARK", &object)
}
