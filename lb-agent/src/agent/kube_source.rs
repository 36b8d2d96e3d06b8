//! Desired state from the Kubernetes API: watches over Services and
//! EndpointSlices, cluster-wide, and a reflector over this node's Node.
//!
//! Each Service or EndpointSlice change is applied to a [`DesiredIndex`],
//! so handing out the desired state costs what the change touches, not the
//! size of the cluster. A re-list (after 410 Gone) is applied as a whole once
//! it is complete (see [`watch`]), so the maps never see an emptied cluster.
//! While the API server is unreachable the index keeps its contents and the
//! watchers retry with backoff, so the dataplane keeps serving.

#[cfg(test)]
mod tests;
mod watch;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::{reflector, watcher},
    Api, Client,
};
use tokio::{
    sync::mpsc::{unbounded_channel, UnboundedReceiver},
    task::JoinHandle,
};
use tracing::info;

use super::apply::Pending;
use lb_core::model::{object_ref, DesiredIndex, ObjectRef};
use watch::{Signals, Update};

/// A change handed from a watch task to the run loop (boxed: objects are
/// large, and a re-list queues many changes).
enum Change {
    Service(Box<Update<Service>>),
    Slice(Box<Update<EndpointSlice>>),
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
    changes: UnboundedReceiver<Change>,
    index: DesiredIndex,
    node_name: String,
    /// Every Node of the cluster.
    nodes: reflector::Store<Node>,
    signals: Arc<Signals>,
    /// The zone when the Node object has no zone label.
    default_zone: Option<String>,
    /// All first lists are complete.
    ready: bool,
    /// The Services and EndpointSlices of the lists in progress.
    listing_services: Option<BTreeSet<ObjectRef>>,
    listing_slices: Option<BTreeSet<ObjectRef>>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the watches: Services and EndpointSlices cluster-wide, and this
    /// node's Node object. Nothing is served until all first lists are in.
    /// `default_zone` is this node's zone if its Node has no zone label.
    pub fn start(client: Client, node_name: &str, default_zone: Option<String>) -> Self {
        let signals = Arc::new(Signals::default());
        // Until the first lists are complete there is nothing to take.
        *signals.pending_since.lock().expect("fresh") = Some(Instant::now());
        let (tx, changes) = unbounded_channel();
        let svc_task = watch::watch_objects(
            Api::all(client.clone()),
            signals.clone(),
            0,
            tx.clone(),
            |update| Change::Service(Box::new(update)),
        );
        let slice_task =
            watch::watch_objects(Api::all(client.clone()), signals.clone(), 1, tx, |update| {
                Change::Slice(Box::new(update))
            });
        // Every Node: this one for its zone and addresses, the others for
        // their addresses (the node's sockets balance their NodePorts).
        let (nodes, node_task) = watch::reflect::<Node>(
            Api::all(client),
            watcher::Config::default(),
            trim_node,
            signals.clone(),
            2,
        );
        Self {
            changes,
            index: DesiredIndex::new(Some(node_name.to_owned())),
            node_name: node_name.to_owned(),
            nodes,
            signals,
            default_zone,
            ready: false,
            listing_services: None,
            listing_slices: None,
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
    pub fn take_pending(&mut self) -> Option<Pending<'_>> {
        if !self.ready {
            self.apply_changes();
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
                services = self.index.service_count(),
                endpointslices = self.index.slice_count(),
                node_found = self.node().is_some(),
                nodes = self.nodes.len(),
                "initial list complete"
            );
        }
        // The mark first: a change sent after the mark was taken leaves a
        // new mark, so it is not left waiting in the channel unnoticed.
        let seen = self
            .signals
            .pending_since
            .lock()
            .expect("not poisoned")
            .take()?;
        self.apply_changes();
        Some(Pending {
            state: &self.index,
            load_errors: &[],
            seen,
        })
    }

    /// Applies the changes the watch tasks sent so far, and this node's
    /// zone (a Node change wakes nobody: the run loop's `node` check offers
    /// the state again when the zone changed).
    fn apply_changes(&mut self) {
        let zone = self.node().and_then(|n| n.zone);
        self.index
            .set_zone(zone.or_else(|| self.default_zone.clone()));
        while let Ok(change) = self.changes.try_recv() {
            match change {
                Change::Service(update) => match *update {
                    Update::Apply(s) => self.index.apply_service(&s),
                    Update::Delete(s) => {
                        if let Some(oref) = object_ref(&s.metadata) {
                            self.index.delete_service(&oref);
                        }
                    }
                    Update::ListStart => self.listing_services = Some(BTreeSet::new()),
                    Update::Listed(s) => {
                        note_listed(&mut self.listing_services, &s.metadata);
                        self.index.apply_service(&s);
                    }
                    Update::ListDone => {
                        let listed = self.listing_services.take().unwrap_or_default();
                        self.index.retain_services(&listed);
                    }
                },
                Change::Slice(update) => match *update {
                    Update::Apply(s) => self.index.apply_slice(&s),
                    Update::Delete(s) => {
                        if let Some(oref) = object_ref(&s.metadata) {
                            self.index.delete_slice(&oref);
                        }
                    }
                    Update::ListStart => self.listing_slices = Some(BTreeSet::new()),
                    Update::Listed(s) => {
                        note_listed(&mut self.listing_slices, &s.metadata);
                        self.index.apply_slice(&s);
                    }
                    Update::ListDone => {
                        let listed = self.listing_slices.take().unwrap_or_default();
                        self.index.retain_slices(&listed);
                    }
                },
            }
        }
    }

    /// Reports how programming the last pending state went. A failed one
    /// is offered again (with the changes since).
    pub fn done(&mut self, ok: bool, seen: Instant) {
        if ok {
            self.index.clear_changed();
        } else {
            self.offer_again(seen);
        }
    }

    /// Makes the next `take_pending` hand out the current state even if
    /// nothing changed: after a failed sync, or for a periodic resync.
    pub fn offer_again(&self, seen: Instant) {
        self.signals.changed_at(seen);
    }

    /// This node, once its Node object has been seen.
    pub fn node(&self) -> Option<NodeInfo> {
        let node = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()))?;
        let addresses = node_addresses(&node);
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

    /// The IPv4 addresses of every other Node.
    pub fn peer_addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.nodes
            .state()
            .iter()
            .filter(|n| n.metadata.name.as_deref() != Some(self.node_name.as_str()))
            .flat_map(|n| node_addresses(n))
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// Watch failures since the last call.
    pub fn take_watch_failures(&self) -> u64 {
        self.signals.failures.swap(0, Ordering::AcqRel)
    }
}

/// Notes an object of a list in progress (an object without a name is
/// ignored by the index too).
fn note_listed(
    listing: &mut Option<BTreeSet<ObjectRef>>,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) {
    if let (Some(listing), Some(oref)) = (listing, object_ref(metadata)) {
        listing.insert(oref);
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A Node's status.addresses of type InternalIP and ExternalIP.
fn node_addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Keeps of a Node only what the agent reads (name, labels, addresses): a
/// Node's status carries its image list and more, tens of KiB each.
fn trim_node(node: &mut Node) {
    node.metadata.annotations = None;
    node.metadata.managed_fields = None;
    node.spec = None;
    if let Some(status) = &mut node.status {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}
