use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::HealthCheckPorts;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A port nothing listens on (found by binding port 0 and letting go).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

fn desired(entries: &[(u16, &str, usize)]) -> BTreeMap<u16, (String, String, usize)> {
    entries
        .iter()
        .map(|&(port, name, n)| (port, ("ns".to_owned(), name.to_owned(), n)))
        .collect()
}

/// Health-check ports on 127.0.0.1, with the proxy's health in a flag.
fn on_localhost() -> (HealthCheckPorts, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let ports = HealthCheckPorts::new(vec![LOCALHOST], move || flag.load(Ordering::Relaxed));
    (ports, healthy)
}

/// Status, lower-cased head and JSON body of an HTTP/1.0 request on `conn`.
async fn request(mut conn: TcpStream, path: &str) -> (u16, String, Value) {
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {response:?}"));
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (code, head.to_lowercase(), body)
}

async fn probe(port: u16) -> (u16, String, Value) {
    request(TcpStream::connect((LOCALHOST, port)).await.unwrap(), "/").await
}

fn answer(name: &str, local_endpoints: usize, healthy: bool) -> Value {
    json!({
        "service": {"namespace": "ns", "name": name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": healthy,
    })
}

async fn refuses(port: u16) -> bool {
    match TcpStream::connect((LOCALHOST, port)).await {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

#[tokio::test]
async fn answers_200_with_the_local_endpoint_count() {
    let (mut ports, _) = on_localhost();
    let port = free_port();
    assert!(ports.sync(desired(&[(port, "web", 3)])).await.is_empty());
    assert_eq!(ports.ports(), [port]);

    let (code, head, body) = probe(port).await;
    assert_eq!(code, 200);
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body, answer("web", 3, true));

    // Any path: load balancers are configured with their own.
    let conn = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    assert_eq!(request(conn, "/any/path?x=1").await.0, 200);
}

#[tokio::test]
async fn answers_503_without_local_endpoints() {
    let (mut ports, _) = on_localhost();
    let port = free_port();
    assert!(ports.sync(desired(&[(port, "web", 0)])).await.is_empty());

    let (code, head, body) = probe(port).await;
    assert_eq!(code, 503);
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert_eq!(body, answer("web", 0, true));
}

#[tokio::test]
async fn answers_503_while_the_proxy_is_unhealthy() {
    let (mut ports, healthy) = on_localhost();
    let port = free_port();
    assert!(ports.sync(desired(&[(port, "web", 2)])).await.is_empty());

    healthy.store(false, Ordering::Relaxed);
    let (code, _, body) = probe(port).await;
    assert_eq!(code, 503);
    assert_eq!(body, answer("web", 2, false));

    healthy.store(true, Ordering::Relaxed);
    assert_eq!(probe(port).await.0, 200);
}

#[tokio::test]
async fn a_removed_port_refuses_connections() {
    let (mut ports, _) = on_localhost();
    let (kept, removed) = (free_port(), free_port());
    let both = desired(&[(kept, "kept", 1), (removed, "removed", 1)]);
    assert!(ports.sync(both).await.is_empty());
    assert_eq!(probe(removed).await.0, 200);

    assert!(ports.sync(desired(&[(kept, "kept", 1)])).await.is_empty());
    assert!(refuses(removed).await);
    assert_eq!(ports.ports(), [kept]);
    assert_eq!(probe(kept).await.2, answer("kept", 1, true));

    assert!(ports.sync(BTreeMap::new()).await.is_empty());
    assert!(refuses(kept).await);
    assert!(ports.ports().is_empty());
}

#[tokio::test]
async fn a_count_update_keeps_the_listener() {
    let (mut ports, _) = on_localhost();
    let port = free_port();
    assert!(ports.sync(desired(&[(port, "web", 0)])).await.is_empty());
    assert_eq!(probe(port).await.0, 503);

    // Connected before the update, asked after it: a re-bind would have
    // closed this connection.
    let early = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    assert!(ports.sync(desired(&[(port, "web", 2)])).await.is_empty());
    let (code, _, body) = request(early, "/").await;
    assert_eq!(code, 200);
    assert_eq!(body, answer("web", 2, true));

    assert!(ports.sync(desired(&[(port, "web", 0)])).await.is_empty());
    assert_eq!(probe(port).await.0, 503);
}

#[tokio::test]
async fn a_busy_port_is_reported_and_retried() {
    let (mut ports, _) = on_localhost();
    let busy = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let other = free_port();
    let both = desired(&[(busy_port, "blocked", 1), (other, "fine", 1)]);

    let errors = ports.sync(both.clone()).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let msg = format!("{:#}", errors[0]);
    assert!(
        msg.starts_with(&format!(
            "service ns/blocked: health check port {busy_port}: binding 127.0.0.1:{busy_port}: "
        )),
        "{msg}"
    );
    assert_eq!(ports.ports(), [other]);
    assert_eq!(probe(other).await.2, answer("fine", 1, true));

    drop(busy);
    assert!(ports.sync(both).await.is_empty());
    assert_eq!(probe(busy_port).await.2, answer("blocked", 1, true));
    assert_eq!(probe(other).await.0, 200);
}

#[tokio::test]
async fn a_port_opens_on_every_address_or_none() {
    let second = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut ports = HealthCheckPorts::new(vec![LOCALHOST, second], || true);
    let port = free_port();
    let busy = std::net::TcpListener::bind((second, port)).unwrap();

    let errors = ports.sync(desired(&[(port, "web", 1)])).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(refuses(port).await, "left open on the first address");

    drop(busy);
    assert!(ports.sync(desired(&[(port, "web", 1)])).await.is_empty());
    assert_eq!(probe(port).await.0, 200);
    let conn = TcpStream::connect((second, port)).await.unwrap();
    assert_eq!(request(conn, "/").await.0, 200);
}
