//! The requests the agent's watches send, checked at the client's service
//! layer (a `tower-test` mock instead of HTTP): what to list and watch, and
//! with which selectors, is part of the contract with the API server and
//! with the RBAC rules in deploy/.

use std::collections::BTreeSet;

use http::{Request, Response};
use kube::client::Body;
use tower_test::mock;

use super::kube_source::KubeSource;

/// Answers one request with `body`; returns "METHOD path?query".
async fn answer(handle: &mut mock::Handle<Request<Body>, Response<Body>>, body: &str) -> String {
    let (request, send) = handle.next_request().await.expect("a request");
    let line = format!("{} {}", request.method(), request.uri());
    send.send_response(
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.as_bytes().to_vec()))
            .unwrap(),
    );
    line
}

fn empty_list(kind: &str) -> String {
    format!(
        r#"{{"kind":"{kind}List","apiVersion":"v1","metadata":{{"resourceVersion":"7"}},"items":[]}}"#
    )
}

#[tokio::test]
async fn lists_then_watches_services_slices_and_nodes() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let _source = KubeSource::start(client, "node-a", None);

    // First the three LISTs (in any order), each answered with an empty list.
    let mut lists = BTreeSet::new();
    for _ in 0..3 {
        let (request, send) = handle.next_request().await.expect("a list");
        let uri = request.uri().to_string();
        let kind = if uri.starts_with("/api/v1/services") {
            "Service"
        } else if uri.starts_with("/apis/discovery.k8s.io/v1/endpointslices") {
            "EndpointSlice"
        } else {
            "Node"
        };
        lists.insert(format!("{} {uri}", request.method()));
        send.send_response(
            Response::builder()
                .body(Body::from(empty_list(kind).into_bytes()))
                .unwrap(),
        );
    }
    let lists: Vec<String> = lists.into_iter().collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    // Cluster-wide (no namespace in the path), paginated, no watch yet.
    // Every Node: this one's zone and addresses, the others' addresses.
    assert!(lists[0].starts_with("GET /api/v1/nodes?"), "{lists:?}");
    assert!(lists[1].starts_with("GET /api/v1/services?"), "{lists:?}");
    assert!(
        lists[2].starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?"),
        "{lists:?}"
    );
    for l in &lists {
        assert!(!l.contains("watch=true"), "{l}");
        assert!(l.contains("limit="), "a paginated list: {l}");
    }
    assert!(
        lists.iter().all(|l| !l.contains("fieldSelector")),
        "{lists:?}"
    );

    // Then a WATCH of each from the list's resourceVersion, with bookmarks.
    let mut watches = BTreeSet::new();
    for _ in 0..3 {
        watches.insert(answer(&mut handle, "").await);
    }
    for w in &watches {
        assert!(w.contains("watch=true"), "{w}");
        assert!(w.contains("resourceVersion=7"), "{w}");
        assert!(w.contains("allowWatchBookmarks=true"), "{w}");
    }
    assert!(
        watches.iter().any(|w| w.contains("/api/v1/nodes")),
        "{watches:?}"
    );
}
