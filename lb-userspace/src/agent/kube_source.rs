//! Desired state from the Kubernetes API: kube-rs reflectors over Services
//! and EndpointSlices, cluster-wide.
//!
//! A reflector's store only swaps in a re-listed set once the whole list has
//! arrived (kube-rs buffers `InitApply` events until `InitDone`), so the
//! state read here is always a complete snapshot: a re-list after 410 Gone
//! converges without ever showing the maps an empty cluster. While the API
//! server is unreachable the stores keep their last contents and the
//! watchers retry with backoff, so the dataplane keeps serving.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    runtime::{reflector, watcher, WatchStreamExt as _},
    Api, Client, Resource,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::apply::Applier;
use crate::{
    model::{self, Desired},
    reconcile::{Dataplane, Reconciler},
};

pub struct KubeSource {
    services: reflector::Store<Service>,
    slices: reflector::Store<EndpointSlice>,
    /// Set by the watch tasks on every event; cleared when read.
    changed: Arc<AtomicBool>,
    /// Per store: its first list is complete.
    listed: [Arc<AtomicBool>; 2],
    /// Both stores have completed their first list.
    ready: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the watches. Nothing is served until both first lists are in.
    pub fn start(client: Client) -> Self {
        let changed = Arc::new(AtomicBool::new(true));
        let listed = [
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        ];
        let (services, svc_task) =
            watch::<Service>(Api::all(client.clone()), changed.clone(), listed[0].clone());
        let (slices, slice_task) =
            watch::<EndpointSlice>(Api::all(client), changed.clone(), listed[1].clone());
        Self {
            services,
            slices,
            changed,
            listed,
            ready: false,
            tasks: vec![svc_task, slice_task],
        }
    }

    /// Programs the maps if anything changed since the last successful sync
    /// (and the first lists are complete). Garbage (entries of Services that
    /// are gone) is only collected from then on: until the first full list,
    /// a restarted agent leaves the adopted maps as they are.
    pub fn sync(
        &mut self,
        applier: &mut Applier,
        reconciler: &mut Reconciler,
        dp: &mut dyn Dataplane,
    ) {
        if let Some((desired, seen)) = self.desired_if_changed() {
            if !applier.apply(&desired, &[], seen, reconciler, dp) {
                self.changed.store(true, Ordering::Release);
            }
        }
    }

    /// The desired state when anything changed since the last call (and the
    /// first lists are complete), with the time the change was noticed.
    fn desired_if_changed(&mut self) -> Option<(Desired, Instant)> {
        if !self.ready {
            if !self.listed.iter().all(|l| l.load(Ordering::Acquire)) {
                return None;
            }
            self.ready = true;
            info!(
                services = self.services.len(),
                endpointslices = self.slices.len(),
                "initial list complete"
            );
        }
        if !self.changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        let seen = Instant::now();
        let services = self.services.state();
        let slices = self.slices.state();
        let desired = model::desired_state(
            services.iter().map(|s| (s.as_ref(), None)),
            slices.iter().map(|s| (s.as_ref(), None)),
        );
        Some((desired, seen))
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A reflector over `api` driven by a background task that flags changes.
fn watch<K>(
    api: Api<K>,
    changed: Arc<AtomicBool>,
    listed: Arc<AtomicBool>,
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
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone) {
                        listed.store(true, Ordering::Release);
                    }
                    changed.store(true, Ordering::Release);
                }
                // The backoff retries; the store keeps the last good state.
                Err(e) => warn!(kind = %kind, "watch failed, retrying with backoff: {e}"),
            }
        }
    });
    (reader, task)
}
