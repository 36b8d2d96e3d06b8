//! The object store, modelled on etcd as the API server sees it: one global
//! resourceVersion counter that every change bumps, and a bounded history of
//! changes that watches replay from and that older list snapshots are
//! rebuilt from. Asking for a version the history no longer covers is an
//! [`Expired`] error, the 410 Gone clients must recover from by relisting.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::resource::{ObjectKey, Resource};

/// How many changes are kept. Far more than a test makes, so only
/// [`Store::compact`] makes versions expire in practice.
const HISTORY_LIMIT: usize = 10_000;

/// One create, update or delete.
#[derive(Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub key: ObjectKey,
    /// The object after the change; for a delete, its last state stamped
    /// with the delete's resourceVersion, as in a DELETED watch event.
    pub object: Arc<Value>,
    /// The object before the change; `None` for a create.
    pub previous: Option<Arc<Value>>,
    pub deleted: bool,
}

/// The objects of one resource at one version, sorted by key.
pub(crate) struct Snapshot {
    pub rv: u64,
    pub objects: Vec<(ObjectKey, Arc<Value>)>,
}

/// One page of a list at one version.
pub(crate) struct Page {
    pub rv: u64,
    pub objects: Vec<(ObjectKey, Arc<Value>)>,
    /// More objects follow the page.
    pub more: bool,
}

/// The requested resourceVersion is older than the oldest kept change.
#[derive(Debug)]
pub(crate) struct Expired {
    pub requested: u64,
    /// The newest forgotten version: any version from here on is served.
    pub oldest: u64,
}

pub(crate) struct Store {
    state: Mutex<State>,
    /// Carries the current resourceVersion so open watches wake up on change.
    changed: watch::Sender<u64>,
}

struct State {
    rv: u64,
    objects: [BTreeMap<ObjectKey, Arc<Value>>; Resource::ALL.len()],
    /// Sorted by `rv`, each strictly above `forgotten`.
    history: VecDeque<Change>,
    /// Changes up to this version are no longer in `history`.
    forgotten: u64,
}

impl Store {
    pub fn new() -> Store {
        Store {
            state: Mutex::new(State {
                rv: 0,
                objects: Default::default(),
                history: VecDeque::new(),
                forgotten: 0,
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock with the state half-updated,
        // so a poisoned lock still guards consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes up whenever the resourceVersion moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Creates or replaces the object with the same namespace and name, and
    /// returns it as stored. Like the API server it sets resourceVersion,
    /// uid and creationTimestamp (keeping the last two on replace), puts
    /// namespaced objects without a namespace in `default`, and treats a
    /// replace that changes nothing as a no-op that bumps no version.
    ///
    /// Panics if the object has no `metadata.name`: callers are tests.
    pub fn apply(&self, resource: Resource, mut object: Value) -> Value {
        let metadata = metadata_mut(&mut object);
        assert!(
            metadata.get("name").is_some_and(Value::is_string),
            "a {} needs metadata.name",
            resource.info().kind
        );
        if !resource.info().namespaced {
            metadata.remove("namespace");
        } else if metadata
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        {
            metadata.insert("namespace".into(), "default".into());
        }
        let key = ObjectKey::of(&object);

        let mut state = self.lock();
        let previous = state.objects[resource.index()].get(&key).cloned();
        let metadata = metadata_mut(&mut object);
        match &previous {
            Some(previous) => {
                for field in ["uid", "creationTimestamp", "resourceVersion"] {
                    match previous["metadata"].get(field) {
                        Some(value) => metadata.insert(field.into(), value.clone()),
                        None => metadata.remove(field),
                    };
                }
                if object == **previous {
                    return object;
                }
            }
            None => {
                // Named after the create's resourceVersion: unique, also
                // across a delete and re-create.
                metadata.insert("uid".into(), uid(state.rv + 1).into());
                metadata.insert("creationTimestamp".into(), json!(Time(Timestamp::now())));
            }
        }
        self.record(&mut state, resource, key, object, previous, false)
    }

    /// Deletes the object; returns its last state, or `None` if it did not
    /// exist.
    pub fn delete(&self, resource: Resource, key: ObjectKey) -> Option<Value> {
        let mut state = self.lock();
        let previous = state.objects[resource.index()].get(&key).cloned()?;
        let object = Value::clone(&previous);
        Some(self.record(&mut state, resource, key, object, Some(previous), true))
    }

    /// Stamps `object` with the next resourceVersion, stores it (or removes
    /// it, for a delete) and appends the change to the history.
    fn record(
        &self,
        state: &mut State,
        resource: Resource,
        key: ObjectKey,
        mut object: Value,
        previous: Option<Arc<Value>>,
        deleted: bool,
    ) -> Value {
        state.rv += 1;
        let rv = state.rv;
        metadata_mut(&mut object).insert("resourceVersion".into(), rv.to_string().into());
        let stored = Arc::new(object);
        let objects = &mut state.objects[resource.index()];
        if deleted {
            objects.remove(&key);
        } else {
            objects.insert(key.clone(), stored.clone());
        }
        state.history.push_back(Change {
            rv,
            resource,
            key,
            object: stored.clone(),
            previous,
            deleted,
        });
        if state.history.len() > HISTORY_LIMIT {
            if let Some(oldest) = state.history.pop_front() {
                state.forgotten = oldest.rv;
            }
        }
        // Sent under the lock so the channel never goes back in time.
        self.changed.send_replace(rv);
        Value::clone(&stored)
    }

    pub fn get(&self, resource: Resource, key: &ObjectKey) -> Option<Arc<Value>> {
        self.lock().objects[resource.index()].get(key).cloned()
    }

    /// The current objects of `resource`.
    pub fn latest(&self, resource: Resource) -> Snapshot {
        let state = self.lock();
        let objects = &state.objects[resource.index()];
        Snapshot {
            rv: state.rv,
            objects: objects
                .iter()
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect(),
        }
    }

    /// One page of the objects of `resource` at version `at` (the latest
    /// when `None` or not older than the latest): those after `after` in
    /// key order that `keep` accepts, at most `limit`. Older states come
    /// from undoing newer changes, key by key, without copying the whole set:
    /// a 100k-object list in pages of 500 must not cost 200 full copies.
    pub fn page(
        &self,
        resource: Resource,
        at: Option<u64>,
        after: Option<&ObjectKey>,
        limit: Option<usize>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Page, Expired> {
        let state = self.lock();
        let rv = match at {
            Some(at) if at < state.rv => at,
            _ => state.rv,
        };
        if rv < state.forgotten {
            return Err(Expired {
                requested: rv,
                oldest: state.forgotten,
            });
        }
        // The state at `rv` of every key changed since: the `previous` of
        // its oldest newer change (`None`: it did not exist yet).
        let mut undone: BTreeMap<&ObjectKey, Option<&Arc<Value>>> = BTreeMap::new();
        let newer = state.history.iter().rev().take_while(|c| c.rv > rv);
        for change in newer.filter(|c| c.resource == resource) {
            undone.insert(&change.key, change.previous.as_ref());
        }
        let lower = || match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut live = state.objects[resource.index()]
            .range::<ObjectKey, _>((lower(), Bound::Unbounded))
            .peekable();
        let mut changed = undone
            .range::<&ObjectKey, _>((lower(), Bound::Unbounded))
            .peekable();
        let mut objects = Vec::new();
        let mut more = false;
        loop {
            // Merge the two key-ordered streams; an undone entry wins.
            let next = match (live.peek(), changed.peek()) {
                (None, None) => break,
                (Some((lk, _)), Some((ck, _))) if *lk < **ck => {
                    live.next().map(|(k, o)| (k, Some(o)))
                }
                (Some(_), None) => live.next().map(|(k, o)| (k, Some(o))),
                (lk, Some(_)) => {
                    let (k, o) = changed.next().expect("peeked");
                    if lk.is_some_and(|(lk, _)| *lk == *k) {
                        live.next();
                    }
                    Some((*k, *o))
                }
            };
            let Some((key, Some(object))) = next else {
                continue;
            };
            if !keep(object) {
                continue;
            }
            if limit.is_some_and(|l| objects.len() >= l) {
                more = true;
                break;
            }
            objects.push((key.clone(), object.clone()));
        }
        Ok(Page { rv, objects, more })
    }

    /// The changes to `resource` after version `after`, oldest first, and the
    /// version they bring a watcher to (the latest, whichever resource it
    /// belongs to).
    pub fn changes_after(
        &self,
        resource: Resource,
        after: u64,
    ) -> Result<(Vec<Change>, u64), Expired> {
        let state = self.lock();
        if after < state.forgotten {
            return Err(Expired {
                requested: after,
                oldest: state.forgotten,
            });
        }
        let first = state.history.partition_point(|c| c.rv <= after);
        let changes = state
            .history
            .range(first..)
            .filter(|c| c.resource == resource)
            .cloned()
            .collect();
        Ok((changes, state.rv))
    }

    /// Forgets every change, like an etcd compaction at the current version.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.forgotten = state.rv;
    }
}

/// The object's metadata map, created if missing.
fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    let metadata = &mut object["metadata"];
    if !metadata.is_object() {
        *metadata = Value::Object(Map::new());
    }
    metadata
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// A UUID-shaped uid, unique within the store.
fn uid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}
