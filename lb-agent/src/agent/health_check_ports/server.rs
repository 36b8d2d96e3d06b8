//! One health-check port: a listener per bind address, each answering any
//! request with the Service's local endpoint count.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
};

use anyhow::Context as _;
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json, Router,
};
use serde::Serialize;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};
use tracing::error;

/// Whether the proxy as a whole is healthy, asked on every probe.
pub(super) type ProxyHealthy = Arc<dyn Fn() -> bool + Send + Sync>;

/// What a port reports.
pub(super) struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// A running port. Dropping it stops the listeners too, but only
/// [`Server::stop`] waits until they are closed.
pub(super) struct Server {
    health: Arc<RwLock<ServiceHealth>>,
    /// Dropped to tell every listener's server to shut down.
    stop: watch::Sender<()>,
    /// Each resolves when its listening socket is closed.
    closed: Vec<oneshot::Receiver<()>>,
}

impl Server {
    /// Binds every address before serving any, so a port either answers on
    /// all of them or (on error) on none, as kube-proxy's does.
    pub async fn start(
        addrs: &[SocketAddr],
        health: ServiceHealth,
        proxy_healthy: ProxyHealthy,
    ) -> anyhow::Result<Self> {
        let mut listeners = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            listeners.push(listener);
        }
        let (stop, stopping) = watch::channel(());
        let probe = Probe {
            health: Arc::new(RwLock::new(health)),
            proxy_healthy,
        };
        let closed = listeners
            .into_iter()
            .map(|l| serve(l, probe.clone(), stopping.clone()))
            .collect();
        Ok(Self {
            health: probe.health,
            stop,
            closed,
        })
    }

    /// Takes effect on the next probe, on connections already open too.
    pub fn set(&self, health: ServiceHealth) {
        *self.health.write().unwrap_or_else(PoisonError::into_inner) = health;
    }

    /// Returns once no listener accepts connections any more. Requests
    /// already being answered finish in the background.
    pub async fn stop(self) {
        drop(self.stop);
        for closed in self.closed {
            // Never sent: the sender's drop is the signal.
            let _ = closed.await;
        }
    }
}

#[derive(Clone)]
struct Probe {
    health: Arc<RwLock<ServiceHealth>>,
    proxy_healthy: ProxyHealthy,
}

/// Serves in a spawned task until `stopping`'s sender is dropped; the
/// returned receiver resolves when the listening socket is closed.
fn serve(
    listener: TcpListener,
    probe: Probe,
    mut stopping: watch::Receiver<()>,
) -> oneshot::Receiver<()> {
    let (closed_tx, closed) = oneshot::channel();
    let listener = ReportsClose {
        inner: listener,
        _closed: closed_tx,
    };
    // Any path and method, as kube-proxy: probes are configured in the
    // cloud and their path is not ours to choose.
    let routes = Router::new().fallback(answer).with_state(probe);
    tokio::spawn(async move {
        let shutdown = async move {
            // Resolves (with an error) when the sender is dropped.
            let _ = stopping.changed().await;
        };
        if let Err(e) = axum::serve(listener, routes)
            .with_graceful_shutdown(shutdown)
            .await
        {
            error!("a health check server stopped: {e}");
        }
    });
    closed
}

/// A listener that reports its own drop. axum's graceful shutdown drops
/// the listener as soon as it stops accepting, before waiting for open
/// connections, so this is the moment the port starts refusing.
struct ReportsClose {
    inner: TcpListener,
    _closed: oneshot::Sender<()>,
}

impl axum::serve::Listener for ReportsClose {
    type Io = TcpStream;
    type Addr = SocketAddr;

    fn accept(&mut self) -> impl Future<Output = (TcpStream, SocketAddr)> + Send {
        axum::serve::Listener::accept(&mut self.inner)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// kube-proxy's answer, field for field.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    service: ServiceRef<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

async fn answer(State(probe): State<Probe>) -> Response {
    let proxy_healthy = (probe.proxy_healthy)();
    let health = probe.health.read().unwrap_or_else(PoisonError::into_inner);
    let code = if health.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Answer {
        service: ServiceRef {
            namespace: &health.namespace,
            name: &health.name,
        },
        local_endpoints: health.local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    (
        code,
        [(header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        Json(body),
    )
        .into_response()
}
