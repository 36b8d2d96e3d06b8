//! An in-process Kubernetes API server for tests: it serves Services,
//! EndpointSlices (discovery.k8s.io/v1) and Nodes over plain HTTP with the
//! real list/watch protocol, so the agent's kube-rs reflectors can be tested
//! without a cluster.
//!
//! What it models: one global resourceVersion counter bumped by every
//! change (as etcd's), paginated LISTs from consistent snapshots, WATCHes
//! that replay history after a resourceVersion and then stream live changes
//! with bookmarks, label and field selectors, and the 410 Expired a client
//! gets once the history it needs is gone. Objects are changed through the
//! handle ([`FakeApiServer::apply_service`], ...), not over HTTP: the server
//! only answers get, list and watch.
//!
//! Fault injection covers what a watcher must survive: forgotten history
//! ([`FakeApiServer::compact_history`]), broken watch connections
//! ([`FakeApiServer::drop_watches`]) and an API server that is down
//! ([`FakeApiServer::set_unavailable`]).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use k8s_openapi::api::core::v1::Service;
//! use lb_testbed::apiserver::FakeApiServer;
//!
//! let server = FakeApiServer::start("127.0.0.1:0".parse()?)?;
//! server.write_kubeconfig("/tmp/kubeconfig".as_ref())?; // for `lb-agent --kubeconfig`
//! let mut web = Service::default();
//! web.metadata.name = Some("web".into());
//! let stored = server.apply_service(web); // namespace "default", a fresh resourceVersion
//! # Ok(()) }
//! ```

use std::future::IntoFuture as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use self::resource::{ObjectKey, Resource};
use self::shared::Shared;
use super::netns::{NetNs, NsThread};

mod discovery;
mod list;
mod params;
mod resource;
mod routes;
mod selectors;
mod shared;
mod status;
mod store;
mod watch;

/// One request the server received, for tests of what a client asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The decoded query parameters in order; empty if the query string did
    /// not decode.
    pub query: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a WATCH (`watch=true`) rather than a LIST or a GET.
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }
}

/// A running fake API server; dropping it stops the server and closes every
/// connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<ServerThread>,
}

/// The thread serving requests, on its own single-threaded tokio runtime so
/// that synchronous tests can use the server too.
enum ServerThread {
    Plain(JoinHandle<()>),
    InNamespace(NsThread<()>),
}

impl FakeApiServer {
    /// Serves on `bind` (e.g. `127.0.0.1:0` for a free port) in the current
    /// network namespace; returns once the server is listening.
    pub fn start(bind: SocketAddr) -> Result<FakeApiServer> {
        let shared = Arc::new(Shared::new());
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let serving = shared.clone();
        let thread = thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || serve(bind, serving, ready_tx, shutdown_rx))
            .context("spawning the fake API server's thread")?;
        FakeApiServer::started(shared, ready, shutdown, ServerThread::Plain(thread))
    }

    /// Serves on a free port of `127.0.0.1` inside `ns`, so that a process in
    /// that namespace (e.g. the agent in a topology's node namespace) reaches
    /// it on its own loopback, which must be up. Returns once listening.
    pub fn start_in(ns: &NetNs) -> Result<FakeApiServer> {
        FakeApiServer::start_in_at(ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// Serves on `bind` inside `ns` (e.g. a node's address, for agents on
    /// other nodes of a multi-node topology). Returns once listening.
    pub fn start_in_at(ns: &NetNs, bind: SocketAddr) -> Result<FakeApiServer> {
        let shared = Arc::new(Shared::new());
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let serving = shared.clone();
        let thread = ns.enter_thread(move || serve(bind, serving, ready_tx, shutdown_rx))?;
        FakeApiServer::started(shared, ready, shutdown, ServerThread::InNamespace(thread))
    }

    /// Waits for the serving thread to report its address or its failure.
    fn started(
        shared: Arc<Shared>,
        ready: mpsc::Receiver<Result<SocketAddr>>,
        shutdown: oneshot::Sender<()>,
        thread: ServerThread,
    ) -> Result<FakeApiServer> {
        let mut server = FakeApiServer {
            shared,
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        // On failure `server` drops here, which joins the finished thread.
        server.addr = ready
            .recv()
            .map_err(|_| anyhow!("the fake API server's thread died while starting"))??;
        Ok(server)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<ip>:<port>`; a wildcard bind address becomes loopback.
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }

    /// A kubeconfig for [`Self::url`]: one cluster, one context (namespace
    /// `default`) and a user without credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake-apiserver
  cluster:
    server: {url}
users:
- name: fake-apiserver
  user: {{}}
contexts:
- name: fake-apiserver
  context:
    cluster: fake-apiserver
    user: fake-apiserver
    namespace: default
current-context: fake-apiserver
",
            url = self.url()
        )
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.kubeconfig())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The current (latest issued) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }

    /// Creates or replaces the Service with the same namespace (`default` if
    /// unset) and name; returns it as stored, with its resourceVersion and
    /// uid. Replacing with identical content changes nothing, as in
    /// Kubernetes. Panics if the Service has no name.
    pub fn apply_service(&self, service: Service) -> Service {
        self.apply(Resource::Services, service)
    }

    /// Like [`Self::apply_service`], for an EndpointSlice.
    pub fn apply_slice(&self, slice: EndpointSlice) -> EndpointSlice {
        self.apply(Resource::EndpointSlices, slice)
    }

    /// Like [`Self::apply_service`], for a Node (cluster-scoped).
    pub fn apply_node(&self, node: Node) -> Node {
        self.apply(Resource::Nodes, node)
    }

    /// Deletes a Service; false if there was none.
    pub fn delete_service(&self, namespace: &str, name: &str) -> bool {
        self.delete(Resource::Services, namespace, name)
    }

    /// Deletes an EndpointSlice; false if there was none.
    pub fn delete_slice(&self, namespace: &str, name: &str) -> bool {
        self.delete(Resource::EndpointSlices, namespace, name)
    }

    /// Deletes a Node; false if there was none.
    pub fn delete_node(&self, name: &str) -> bool {
        self.delete(Resource::Nodes, "", name)
    }

    fn apply<K: Serialize + DeserializeOwned>(&self, resource: Resource, object: K) -> K {
        let value = serde_json::to_value(object).expect("Kubernetes objects serialize to JSON");
        let stored = self.shared.store.apply(resource, value);
        serde_json::from_value(stored).expect("a stored object reads back as its type")
    }

    fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let key = ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.shared.store.delete(resource, key).is_some()
    }

    /// Forgets all history, like an etcd compaction: a watch or a list
    /// continuation from any older resourceVersion now gets 410 Expired.
    pub fn compact_history(&self) {
        self.shared.store.compact();
    }

    /// Breaks every open watch connection abruptly (no final chunk), as a
    /// network failure or an API server restart would. Clients re-watch
    /// from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared.abort_watches();
    }

    /// While true, every request is answered 503 ServiceUnavailable; turning
    /// it on also drops the open watches.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.set_unavailable(unavailable);
    }

    /// Every request received so far, oldest first (also those answered 503).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// How many watch responses are streaming now. A watch whose client went
    /// away counts until its next write fails (at most one bookmark
    /// interval when bookmarks are on).
    pub fn active_watches(&self) -> usize {
        self.shared.active_watches()
    }

    /// How often idle watches that allow bookmarks get one (default 1 s);
    /// applies to watches started afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.set_bookmark_interval(interval);
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // Fails only if the thread is already gone, which is fine.
            let _ = shutdown.send(());
        }
        match self.thread.take() {
            Some(ServerThread::Plain(thread)) => {
                // The serving code does not panic; if it did, the test
                // already saw its requests fail.
                let _ = thread.join();
            }
            Some(ServerThread::InNamespace(thread)) => thread.join(),
            None => {}
        }
    }
}

/// The serving thread: builds a runtime and a listener on `bind`, reports
/// the address (or the failure) on `ready`, and serves until `shutdown`.
fn serve(
    bind: SocketAddr,
    shared: Arc<Shared>,
    ready: mpsc::SyncSender<Result<SocketAddr>>,
    shutdown: oneshot::Receiver<()>,
) {
    let setup = || -> Result<_> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the fake API server's runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(bind))
            .with_context(|| format!("binding the fake API server to {bind}"))?;
        let addr = listener.local_addr()?;
        Ok((runtime, listener, addr))
    };
    let (runtime, listener, addr) = match setup() {
        Ok(started) => started,
        Err(e) => {
            // `started` waits for this message, so the send cannot fail.
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(addr));
    runtime.block_on(async {
        tokio::select! {
            served = axum::serve(listener, routes::router(shared)).into_future() => {
                if let Err(e) = served {
                    tracing::error!("fake API server stopped: {e}");
                }
            }
            _ = shutdown => {}
        }
    });
    // Dropping the runtime drops every connection, open watches included.
}
