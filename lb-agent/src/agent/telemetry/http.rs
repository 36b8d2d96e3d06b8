//! The health and metrics HTTP servers.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::encoding::prometheus_text;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{error, info};

use super::Telemetry;

/// Binds now (so a bad or busy address fails at start), then serves
/// /healthz and /livez in a spawned task.
pub async fn serve_health(bind: SocketAddr, t: Telemetry) -> anyhow::Result<JoinHandle<()>> {
    let listener = bind_listener(bind, "health").await?;
    Ok(spawn_server(listener, "health", health_routes(t)))
}

/// Binds now (so a bad or busy address fails at start), then serves
/// /metrics, and /healthz and /proxyMode as kube-proxy's metrics server
/// also does, in a spawned task.
pub async fn serve_metrics(bind: SocketAddr, t: Telemetry) -> anyhow::Result<JoinHandle<()>> {
    let listener = bind_listener(bind, "metrics").await?;
    Ok(spawn_server(listener, "metrics", metrics_routes(t)))
}

async fn bind_listener(bind: SocketAddr, server: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the {server} server to {bind}"))
}

fn health_routes(t: Telemetry) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(t)
}

fn metrics_routes(t: Telemetry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/proxyMode", get(proxy_mode))
        .with_state(t)
}

/// Serves on the runtime the caller runs on (the agent's is
/// current-thread): connections are handled by tasks between the run
/// loop's awaits.
fn spawn_server(listener: TcpListener, server: &'static str, routes: Router) -> JoinHandle<()> {
    match listener.local_addr() {
        Ok(addr) => info!(%addr, "{server} server listening"),
        Err(e) => info!("{server} server listening (address unknown: {e})"),
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, routes).await {
            error!("the {server} server stopped: {e}");
        }
    })
}

async fn healthz(State(t): State<Telemetry>) -> Response {
    probe(&t, true)
}

/// Like /healthz but without node eligibility, which says whether the
/// node should get traffic, not whether the agent works.
async fn livez(State(t): State<Telemetry>) -> Response {
    probe(&t, false)
}

fn probe(t: &Telemetry, with_node_eligible: bool) -> Response {
    let report = t.health_report();
    let code = if report.status.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        Json(report.json(with_node_eligible)),
    )
        .into_response()
}

/// What kube-proxy's /proxyMode answers with its mode (`iptables`,
/// `ipvs`, `nftables`); ours has one.
const PROXY_MODE: &str = "ebpf";

/// kube-proxy's /proxyMode: the mode's name as plain text (the upstream
/// e2e "kube-proxy urls" check asks for a 200 here).
async fn proxy_mode() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        PROXY_MODE,
    )
        .into_response()
}

async fn metrics(State(t): State<Telemetry>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        t.encode_metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Status code, headers (lower-cased) and body of `GET path`.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_lowercase(), body.to_owned())
    }

    async fn start(routes: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        spawn_server(listener, "test", routes);
        addr
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
    }

    #[tokio::test]
    async fn health_server_answers_probes() {
        let t = Telemetry::new(Duration::from_secs(60));
        let addr = start(health_routes(t.clone())).await;

        let (code, head, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert_eq!(json(&body)["message"], "no sync has succeeded yet");

        t.sync_done(Instant::now(), Duration::from_millis(1), true, None);
        let (code, _, body) = get(addr, "/healthz").await;
        assert_eq!(code, 200);
        let body = json(&body);
        assert_eq!(body["nodeEligible"], true);
        assert!(
            body["currentTime"].as_str().unwrap().ends_with('Z'),
            "{body}"
        );

        let (code, _, body) = get(addr, "/livez").await;
        assert_eq!(code, 200);
        assert_eq!(json(&body).get("nodeEligible"), None);

        assert_eq!(get(addr, "/metrics").await.0, 404);
    }

    #[tokio::test]
    async fn metrics_server_serves_metrics_and_healthz() {
        let t = Telemetry::new(Duration::from_secs(60));
        t.error("watch");
        let addr = start(metrics_routes(t)).await;

        let (code, head, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        let content_type = format!("content-type: {}", prometheus_text::CONTENT_TYPE);
        assert!(head.contains(&content_type), "{head}");
        assert!(
            body.contains("lb_errors_total{kind=\"watch\"} 1\n"),
            "{body}"
        );

        assert_eq!(get(addr, "/healthz").await.0, 503);
        let (code, _, body) = get(addr, "/proxyMode").await;
        assert_eq!((code, body.as_str()), (200, PROXY_MODE));
        assert_eq!(get(addr, "/nope").await.0, 404);
    }

    #[tokio::test]
    async fn serve_health_binds_and_serves() {
        // Find a free port, release it, and serve there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let server = serve_health(addr, Telemetry::new(Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(get(addr, "/livez").await.0, 503);
        server.abort();
    }

    #[tokio::test]
    async fn a_busy_address_is_an_error_naming_it() {
        let busy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = busy.local_addr().unwrap();
        let t = Telemetry::new(Duration::from_secs(1));

        let err = serve_health(addr, t.clone()).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(&format!("binding the health server to {addr}: ")),
            "{msg}"
        );

        let err = serve_metrics(addr, t).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(&format!("binding the metrics server to {addr}: ")),
            "{msg}"
        );
    }
}
