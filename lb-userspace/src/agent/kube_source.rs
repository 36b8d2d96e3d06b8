//! Desired state from the Kubernetes API: kube-rs reflectors over Services
//! and EndpointSlices, cluster-wide, and over this node's Node.
//!
//! A reflector's store only swaps in a re-listed set once the whole list has
//! arrived (kube-rs buffers `InitApply` events until `InitDone`), so the
//! state read here is always a complete snapshot: a re-list after 410 Gone
//! converges without ever showing the maps an empty cluster. While the API
//! server is unreachable the stores keep their last contents and the
//! watchers retry with backoff, so the dataplane keeps serving.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::{reflector, watcher, WatchStreamExt as _},
    Api, Client, Resource,
};
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{info, warn};

use super::apply::Pending;
use crate::model;

/// What the watch tasks tell the run loop.
#[derive(Default)]
struct Signals {
    /// When the oldest change not yet handed out was seen (`None`: none).
    pending_since: Mutex<Option<Instant>>,
    /// Wakes the run loop; a wake-up sent while it is busy is kept.
    wake: Notify,
    /// Per watch: its first list is complete.
    listed: [AtomicBool; 3],
    /// Watch failures since the last look (for metrics).
    failures: std::sync::atomic::AtomicU64,
}

impl Signals {
    fn changed_at(&self, at: Instant) {
        let mut pending = self.pending_since.lock().expect("not poisoned");
        if pending.is_none_or(|p| at < p) {
            *pending = Some(at);
        }
        drop(pending);
        self.wake.notify_one();
    }
}

/// This node as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// status.addresses of type InternalIP and ExternalIP.
    pub addresses: Vec<IpAddr>,
    /// Label topology.kubernetes.io/zone.
    pub zone: Option<String>,
}

pub struct KubeSource {
    services: reflector::Store<Service>,
    slices: reflector::Store<EndpointSlice>,
    nodes: reflector::Store<Node>,
    signals: Arc<Signals>,
    /// All first lists are complete.
    ready: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the watches: Services and EndpointSlices cluster-wide, and this
    /// node's Node object. Nothing is served until all first lists are in.
    pub fn start(client: Client, node_name: &str) -> Self {
        let signals = Arc::new(Signals::default());
        // Until the first lists are complete there is nothing to take.
        *signals.pending_since.lock().expect("fresh") = Some(Instant::now());
        let all = watcher::Config::default();
        let (services, svc_task) =
            watch::<Service>(Api::all(client.clone()), all.clone(), signals.clone(), 0);
        let (slices, slice_task) =
            watch::<EndpointSlice>(Api::all(client.clone()), all, signals.clone(), 1);
        let this_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let (nodes, node_task) = watch::<Node>(Api::all(client), this_node, signals.clone(), 2);
        Self {
            services,
            slices,
            nodes,
            signals,
            ready: false,
            tasks: vec![svc_task, slice_task, node_task],
        }
    }

    /// Resolves when a watched object changed since the last `take_pending`
    /// (immediately if a change is already waiting).
    pub async fn changed(&self) {
        self.signals.wake.notified().await
    }

    /// The desired state when anything changed since the last call and all
    /// first lists are complete. Garbage (entries of Services that are gone)
    /// is only ever collected from such a complete state: a restarted agent
    /// leaves the adopted maps as they are until its first full list.
    pub fn take_pending(&mut self) -> Option<Pending> {
        if !self.ready {
            if !self
                .signals
                .listed
                .iter()
                .all(|l| l.load(Ordering::Acquire))
            {
                return None;
            }
            self.ready = true;
            info!(
                services = self.services.len(),
                endpointslices = self.slices.len(),
                node_found = self.nodes.len() == 1,
                "initial list complete"
            );
        }
        let seen = self
            .signals
            .pending_since
            .lock()
            .expect("not poisoned")
            .take()?;
        let services = self.services.state();
        let slices = self.slices.state();
        let desired = model::desired_state(
            services.iter().map(|s| (s.as_ref(), None)),
            slices.iter().map(|s| (s.as_ref(), None)),
        );
        Some(Pending {
            desired,
            load_errors: Vec::new(),
            seen,
        })
    }

    /// Programming the state from `take_pending` failed: offer it again.
    pub fn retry(&self, seen: Instant) {
        self.signals.changed_at(seen);
    }

    /// This node, once its Node object has been seen.
    pub fn node(&self) -> Option<NodeInfo> {
        let node = self.nodes.state().into_iter().next()?;
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("topology.kubernetes.io/zone").cloned());
        Some(NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            addresses,
            zone,
        })
    }

    /// Watch failures since the last call.
    pub fn take_watch_failures(&self) -> u64 {
        self.signals.failures.swap(0, Ordering::AcqRel)
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A reflector over `api` driven by a background task that signals changes.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    signals: Arc<Signals>,
    index: usize,
) -> (reflector::Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone) {
                        signals.listed[index].store(true, Ordering::Release);
                    }
                    signals.changed_at(Instant::now());
                }
                // The backoff retries; the store keeps the last good state.
                Err(e) => {
                    signals.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(kind = %kind, "watch failed, retrying with backoff: {e}");
                }
            }
        }
    });
    (reader, task)
}
