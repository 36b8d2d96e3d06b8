//! The fake API server (`lb_testbed::apiserver`) driven by the
//! real kube-rs client and runtime, the way the agent's reflectors will use
//! it: lists, watches, selectors, and recovery from expired history, broken
//! watches and outages. No root needed, except for the network namespace
//! test (set LB_SKIP_PRIVILEGED=1 to skip it).

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, VersionMatch, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, Discovery, ResourceExt};
use lb_testbed::apiserver::{FakeApiServer, RecordedRequest};
use lb_testbed::netns::NetNs;
use lb_testbed::privileged::require_privileged;
use lb_testbed::unique_tag;

/// How long any single expectation may take to come true.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a whole test may take.
const TEST_LIMIT: Duration = Duration::from_secs(20);
/// The label EndpointSlices carry to name their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

// ---- fixtures ------------------------------------------------------------

fn start() -> FakeApiServer {
    FakeApiServer::start("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn client(server: &FakeApiServer) -> Client {
    let url = server.url().parse().unwrap();
    Client::try_from(Config::new(url)).unwrap()
}

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(Into::into),
        name: Some(name.into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn service(namespace: &str, name: &str, port: i32) -> Service {
    Service {
        metadata: meta(Some(namespace), name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(vec![ServicePort {
                port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(name: &str, service: &str, ip: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(Some("default"), name, &[(SERVICE_NAME_LABEL, service)]),
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![ip.into()],
            ..Endpoint::default()
        }],
        ..EndpointSlice::default()
    }
}

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: meta(None, name, labels),
        ..Node::default()
    }
}

// ---- helpers -------------------------------------------------------------

/// Runs a test body, failing it if it takes longer than [`TEST_LIMIT`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test took too long");
}

/// Polls `done` until it holds, failing after [`DEADLINE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// name (namespace/name when namespaced) -> resourceVersion.
fn versions<K: ResourceExt>(
    objects: impl IntoIterator<Item = impl Deref<Target = K>>,
) -> BTreeMap<String, String> {
    objects
        .into_iter()
        .map(|o| {
            let name = match o.namespace() {
                Some(ns) => format!("{ns}/{}", o.name_any()),
                None => o.name_any(),
            };
            (name, o.resource_version().unwrap_or_default())
        })
        .collect()
}

/// The server's current objects, as a plain LIST shows them.
async fn listed<K>(api: &Api<K>) -> BTreeMap<String, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    versions(api.list(&ListParams::default()).await.unwrap().items.iter())
}

/// A reflector over `api` with `config`, driven by a background task with
/// the default backoff, like the agent will run it.
fn spawn_reflector<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    // Errors are stream items the backoff already acted on: just keep going.
    tokio::spawn(stream.for_each(|_| async {}));
    reader
}

/// Waits until the reflector's store holds what the server holds now.
async fn converged<K>(store: &Store<K>, api: &Api<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let expected = listed(api).await;
    eventually(&format!("the reflector to hold {expected:?}"), || {
        versions(store.state()) == expected
    })
    .await;
}

/// The code and reason of the `Status` a request failed with.
fn api_error<T>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason),
        Ok(_) => panic!("expected an error"),
        Err(other) => panic!("expected an API error, got {other}"),
    }
}

fn requests_to(server: &FakeApiServer, path: &str) -> Vec<RecordedRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}

/// The LISTs a watcher made: those with its default page size (the tests'
/// own lists have none).
fn watcher_lists(server: &FakeApiServer, path: &str) -> usize {
    requests_to(server, path)
        .iter()
        .filter(|r| !r.is_watch() && r.param("limit") == Some("500"))
        .count()
}

fn watches_of(server: &FakeApiServer, path: &str) -> usize {
    requests_to(server, path)
        .iter()
        .filter(|r| r.is_watch())
        .count()
}

// ---- lists ---------------------------------------------------------------

#[tokio::test]
async fn list_returns_stored_objects_with_resource_versions() {
    bounded(async {
        let server = start();
        let a = server.apply_service(service("ns-a", "a", 80));
        server.apply_service(service("ns-a", "b", 80));
        server.apply_service(service("ns-b", "c", 80));
        assert_eq!(a.resource_version().as_deref(), Some("1"));
        assert!(a.uid().is_some());
        let client = client(&server);

        let list = Api::<Service>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap();
        let expected: BTreeMap<_, _> = [("ns-a/a", "1"), ("ns-a/b", "2"), ("ns-b/c", "3")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert_eq!(versions(list.items.iter()), expected);
        assert_eq!(list.metadata.resource_version.as_deref(), Some("3"));
        assert_eq!(list.items[0].spec, a.spec);

        let in_a = Api::<Service>::namespaced(client.clone(), "ns-a")
            .list(&ListParams::default())
            .await
            .unwrap();
        assert_eq!(in_a.items.len(), 2);

        // Replacing with identical content is a no-op, as in Kubernetes.
        let same = server.apply_service(service("ns-a", "a", 80));
        assert_eq!(same.resource_version().as_deref(), Some("1"));
        let changed = server.apply_service(service("ns-a", "a", 8080));
        assert_eq!(changed.resource_version().as_deref(), Some("4"));
        assert_eq!(changed.uid(), a.uid(), "an update keeps the uid");
    })
    .await;
}

#[tokio::test]
async fn list_pages_come_from_one_snapshot_until_it_expires() {
    bounded(async {
        let server = start();
        for name in ["a", "b", "c", "d"] {
            server.apply_service(service("default", name, 80));
        }
        let api = Api::<Service>::all(client(&server));

        let first = api.list(&ListParams::default().limit(2)).await.unwrap();
        assert_eq!(versions(first.items.iter()).len(), 2);
        let token = first.metadata.continue_.clone().expect("a continue token");
        // Changes after the first page do not show in the next ones.
        server.delete_service("default", "c");
        server.apply_service(service("default", "e", 80));
        let second = api
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        let names: Vec<_> = second.items.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["c", "d"]);
        assert_eq!(second.metadata.resource_version.as_deref(), Some("4"));
        assert!(second.metadata.continue_.is_none(), "the last page");

        // Once the snapshot's history is gone, the token expires.
        server.compact_history();
        let err = api
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 410 && s.reason == "Expired"));

        // A watcher paging through 2 at a time still sees everything.
        let before = server.requests().len();
        let store = spawn_reflector(api.clone(), watcher::Config::default().page_size(2));
        converged(&store, &api).await;
        let continued = server.requests()[before..]
            .iter()
            .filter(|r| r.param("limit") == Some("2") && r.param("continue").is_some())
            .count();
        assert_eq!(continued, 1, "a, b, then d, e");
    })
    .await;
}

// ---- watches through reflectors ------------------------------------------

#[tokio::test]
async fn reflector_follows_creates_updates_and_deletes() {
    bounded(async {
        let server = start();
        server.apply_service(service("default", "a", 80));
        server.apply_service(service("default", "b", 80));
        let api = Api::<Service>::all(client(&server));
        let store = spawn_reflector(api.clone(), watcher::Config::default());
        converged(&store, &api).await;

        server.apply_service(service("default", "a", 8080));
        server.delete_service("default", "b");
        server.apply_service(service("other", "c", 80));
        converged(&store, &api).await;
        let a = store.state().into_iter().find(|s| s.name_any() == "a");
        let ports = a.and_then(|a| a.spec.clone()?.ports?.first().map(|p| p.port));
        assert_eq!(ports, Some(8080));
        assert_eq!(
            watcher_lists(&server, "/api/v1/services"),
            1,
            "no relist needed"
        );
    })
    .await;
}

#[tokio::test]
async fn reflector_relists_after_history_expires() {
    bounded(async {
        let server = start();
        for name in ["a", "b", "c"] {
            server.apply_service(service("default", name, 80));
        }
        let api = Api::<Service>::all(client(&server));
        // Without bookmarks the watcher's version only moves with Service
        // events, so a change elsewhere leaves it behind deterministically.
        let config = watcher::Config::default().disable_bookmarks();
        let store = spawn_reflector(api.clone(), config);
        converged(&store, &api).await;
        eventually("the watch", || server.active_watches() == 1).await;

        // Its re-watch after the drop comes from a compacted version: 410,
        // so it lists again.
        server.apply_node(node("node-a", &[]));
        server.compact_history();
        server.drop_watches();
        eventually("a relist", || {
            watcher_lists(&server, "/api/v1/services") == 2
        })
        .await;
        converged(&store, &api).await;

        // The same with changes made while it cannot reach the server: it
        // must learn of the delete from the relist.
        server.set_unavailable(true);
        server.delete_service("default", "b");
        server.apply_service(service("default", "a", 8080));
        server.apply_service(service("default", "d", 80));
        server.compact_history();
        server.set_unavailable(false);
        eventually("a relist", || {
            watcher_lists(&server, "/api/v1/services") == 3
        })
        .await;
        converged(&store, &api).await;
        assert!(store.state().iter().all(|s| s.name_any() != "b"));
    })
    .await;
}

#[tokio::test]
async fn dropped_watches_resume_without_relisting() {
    bounded(async {
        let server = start();
        server.apply_service(service("default", "a", 80));
        let api = Api::<Service>::all(client(&server));
        let store = spawn_reflector(api.clone(), watcher::Config::default());
        converged(&store, &api).await;
        eventually("the watch", || server.active_watches() == 1).await;

        server.drop_watches();
        eventually("a second watch", || {
            watches_of(&server, "/api/v1/services") == 2 && server.active_watches() == 1
        })
        .await;
        server.apply_service(service("default", "b", 80));
        converged(&store, &api).await;
        assert_eq!(watcher_lists(&server, "/api/v1/services"), 1);
    })
    .await;
}

#[tokio::test]
async fn watcher_resumes_after_an_outage() {
    bounded(async {
        let server = start();
        server.apply_service(service("default", "a", 80));
        server.apply_service(service("default", "b", 80));
        let api = Api::<Service>::all(client(&server));
        let store = spawn_reflector(api.clone(), watcher::Config::default());
        converged(&store, &api).await;

        server.set_unavailable(true);
        let before = server.requests().len();
        // The client notices: its re-watch is refused.
        eventually("a refused re-watch", || {
            server.requests()[before..]
                .iter()
                .any(RecordedRequest::is_watch)
        })
        .await;
        eventually("the old watch to close", || server.active_watches() == 0).await;
        server.delete_service("default", "a");
        server.apply_service(service("default", "b", 8080));
        server.apply_service(service("default", "c", 80));
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.set_unavailable(false);

        converged(&store, &api).await;
        // The kept history covered the outage: it resumed, no relist.
        assert_eq!(watcher_lists(&server, "/api/v1/services"), 1);
    })
    .await;
}

#[tokio::test]
async fn label_selector_moves_slices_in_and_out_of_the_selection() {
    bounded(async {
        let server = start();
        server.apply_slice(slice("web-1", "web", "10.244.1.2"));
        server.apply_slice(slice("db-1", "db", "10.244.2.2"));
        let client = client(&server);
        let all = Api::<EndpointSlice>::namespaced(client.clone(), "default");
        let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}=web"));
        let store = spawn_reflector(all.clone(), config);
        let names = || {
            let mut names: Vec<_> = store.state().iter().map(|s| s.name_any()).collect();
            names.sort();
            names
        };
        eventually("web-1 only", || names() == ["web-1"]).await;

        // Relabelled into the selection: ADDED; out of it: DELETED.
        server.apply_slice(slice("db-1", "web", "10.244.2.2"));
        eventually("web-1 and db-1", || names() == ["db-1", "web-1"]).await;
        server.apply_slice(slice("web-1", "db", "10.244.1.2"));
        eventually("db-1 only", || names() == ["db-1"]).await;
        server.delete_slice("default", "db-1");
        eventually("nothing", || names().is_empty()).await;

        let path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
        assert_eq!(watcher_lists(&server, path), 1);
        // `!=` also selects objects without the label, as in Kubernetes.
        server.apply_slice(EndpointSlice {
            metadata: meta(Some("default"), "unlabelled", &[]),
            ..slice("", "", "10.244.3.2")
        });
        let not_db = all
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}!=db")))
            .await
            .unwrap();
        let names: Vec<_> = not_db.items.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["unlabelled"]);
    })
    .await;
}

#[tokio::test]
async fn streaming_list_watcher_converges() {
    bounded(async {
        let server = start();
        server.apply_node(node("node-a", &[]));
        server.apply_node(node("node-b", &[]));
        let api = Api::<Node>::all(client(&server));
        let store = spawn_reflector(api.clone(), watcher::Config::default().streaming_lists());
        converged(&store, &api).await;
        server.delete_node("node-a");
        converged(&store, &api).await;

        // The watcher never lists (the lists are converged()'s): it starts
        // with a watch that sends the initial state.
        let requests = requests_to(&server, "/api/v1/nodes");
        assert!(requests[0].is_watch());
        assert_eq!(requests[0].param("sendInitialEvents"), Some("true"));
        assert!(requests
            .iter()
            .all(|r| r.is_watch() || r.param("limit").is_none()));
    })
    .await;
}

// ---- the raw protocol ------------------------------------------------------

#[tokio::test]
async fn request_shapes_match_what_kube_sends() {
    bounded(async {
        let server = start();
        server.apply_service(service("default", "a", 80));
        let list_rv = server.resource_version().to_string();
        let client = client(&server);
        let services = Api::<Service>::all(client.clone());
        let store = spawn_reflector(services.clone(), watcher::Config::default());
        eventually("the watch", || server.active_watches() == 1).await;

        let requests = requests_to(&server, "/api/v1/services");
        let [list, watch] = &requests[..] else {
            panic!("expected a LIST then a WATCH, got {requests:#?}");
        };
        assert_eq!(list.method, "GET");
        assert!(!list.is_watch());
        assert_eq!(list.param("limit"), Some("500"));
        assert_eq!(watch.param("watch"), Some("true"));
        assert_eq!(watch.param("resourceVersion"), Some(list_rv.as_str()));
        assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
        assert_eq!(watch.param("timeoutSeconds"), Some("290"));
        converged(&store, &services).await;

        // A Node watch on one name only ever sees that node.
        server.apply_node(node("node-a", &[]));
        server.apply_node(node("node-b", &[]));
        let nodes = Api::<Node>::all(client);
        let config = watcher::Config::default().fields("metadata.name=node-a");
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        tokio::spawn(
            watcher(nodes, config)
                .default_backoff()
                .for_each(move |event| {
                    if let Ok(event) = event {
                        seen.lock().unwrap().push(event);
                    }
                    async {}
                }),
        );
        let names_seen = || {
            let events = events.lock().unwrap();
            let mut names = Vec::new();
            for event in events.iter() {
                let _ = event
                    .clone()
                    .modify(|n: &mut Node| names.push(n.name_any()));
            }
            names
        };
        eventually("node-a listed", || names_seen() == ["node-a"]).await;
        server.apply_node(node("node-b", &[("role", "b")]));
        server.delete_node("node-b");
        server.apply_node(node("node-a", &[("role", "a")]));
        eventually("node-a modified", || names_seen().len() == 2).await;
        assert_eq!(names_seen(), ["node-a", "node-a"]);
        for request in requests_to(&server, "/api/v1/nodes") {
            assert_eq!(request.param("fieldSelector"), Some("metadata.name=node-a"));
        }
    })
    .await;
}

#[tokio::test]
async fn watch_from_a_compacted_version_gets_410_expired() {
    bounded(async {
        let server = start();
        let old = server.apply_service(service("default", "a", 80));
        server.apply_service(service("default", "b", 80));
        server.compact_history();
        let api = Api::<Service>::all(client(&server));

        let old_rv = old.resource_version().unwrap();
        let mut events = api
            .watch(&WatchParams::default(), &old_rv)
            .await
            .unwrap()
            .boxed();
        match events.next().await {
            Some(Ok(WatchEvent::Error(status))) => {
                assert_eq!(status.code, 410);
                assert_eq!(status.reason, "Expired");
                assert_eq!(status.message, "too old resource version: 1 (2)");
            }
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }
        assert!(events.next().await.is_none(), "the stream ends after it");

        // From the current version the watch works and sees what follows.
        let current = server.resource_version().to_string();
        let mut events = api
            .watch(&WatchParams::default(), &current)
            .await
            .unwrap()
            .boxed();
        server.delete_service("default", "a");
        match events.next().await {
            Some(Ok(WatchEvent::Deleted(s))) => {
                assert_eq!(s.name_any(), "a");
                assert_eq!(s.resource_version(), Some("3".into()));
            }
            other => panic!("expected DELETED a, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn watches_carry_bookmarks_and_end_at_their_timeout() {
    bounded(async {
        let server = start();
        server.set_bookmark_interval(Duration::from_millis(100));
        server.apply_service(service("default", "a", 80));
        let api = Api::<Service>::all(client(&server));
        let start_rv = server.resource_version().to_string();
        let started = Instant::now();
        let mut events = api
            .watch(&WatchParams::default().timeout(2), &start_rv)
            .await
            .unwrap()
            .boxed();
        // A change to another resource moves the version bookmarks carry.
        let node_rv = server
            .apply_node(node("node-a", &[]))
            .resource_version()
            .unwrap();

        let mut bookmarks = Vec::new();
        while let Some(event) = events.next().await {
            match event.unwrap() {
                WatchEvent::Bookmark(b) => bookmarks.push(b.metadata.resource_version),
                other => panic!("expected only bookmarks, got {other:?}"),
            }
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(4),
            "ended after {elapsed:?}"
        );
        assert!(bookmarks.len() >= 5, "{bookmarks:?}");
        assert_eq!(bookmarks.last(), Some(&node_rv));
        eventually("the watch to close", || server.active_watches() == 0).await;
    })
    .await;
}

#[tokio::test]
async fn get_discovery_and_error_statuses() {
    bounded(async {
        let server = start();
        server.apply_node(node("node-a", &[]));
        let client = client(&server);
        let nodes = Api::<Node>::all(client.clone());

        assert_eq!(nodes.get("node-a").await.unwrap().name_any(), "node-a");
        assert!(nodes.get_opt("node-x").await.unwrap().is_none());
        let version = client.apiserver_version().await.unwrap();
        assert_eq!(
            (version.major.as_str(), version.minor.as_str()),
            ("1", "33")
        );
        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        let kinds: Vec<_> = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .map(|(resource, _)| resource.kind)
            .collect();
        for kind in ["Service", "Node", "EndpointSlice"] {
            assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
        }

        let bad_labels = ListParams::default().labels("a in (b");
        assert_eq!(
            api_error(nodes.list(&bad_labels).await),
            (400, "BadRequest".into())
        );
        let bad_fields = ListParams::default().fields("spec.unschedulable=true");
        assert_eq!(
            api_error(nodes.list(&bad_fields).await),
            (400, "BadRequest".into())
        );
        let pods = Api::<Pod>::all(client).list(&ListParams::default()).await;
        assert_eq!(api_error(pods), (404, "NotFound".into()));

        // kube retries a 504 for a long time by default.
        let mut config = Config::new(server.url().parse().unwrap());
        config.default_retry = false;
        let nodes = Api::<Node>::all(Client::try_from(config).unwrap());
        let exact = ListParams::default()
            .at("999")
            .matching(VersionMatch::Exact);
        assert_eq!(api_error(nodes.list(&exact).await), (504, "Timeout".into()));
    })
    .await;
}

#[tokio::test]
async fn kube_accepts_the_kubeconfig() {
    bounded(async {
        let server = start();
        server.apply_service(service("default", "a", 80));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        server.write_kubeconfig(&path).unwrap();

        let kubeconfig = Kubeconfig::read_from(&path).unwrap();
        let options = KubeConfigOptions::default();
        let config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .unwrap();
        assert_eq!(config.cluster_url.to_string(), format!("{}/", server.url()));
        let client = Client::try_from(config).unwrap();
        let services = Api::<Service>::default_namespaced(client);
        let list = services.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
    })
    .await;
}

/// `start_in` serves on the namespace's own loopback.
#[test]
fn serves_inside_a_network_namespace() {
    if !require_privileged("serves_inside_a_network_namespace") {
        return;
    }
    let ns = NetNs::create(unique_tag()).unwrap();
    ns.ip(["link", "set", "lo", "up"]).unwrap();
    let server = FakeApiServer::start_in(&ns).unwrap();
    server.apply_node(node("node-a", &[]));
    let url = server.url();
    let names = ns
        .run(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let client = Client::try_from(Config::new(url.parse().unwrap())).unwrap();
                let nodes = Api::<Node>::all(client);
                let list = ListParams::default();
                let list = tokio::time::timeout(DEADLINE, nodes.list(&list));
                let list = list.await.unwrap().unwrap();
                list.items.iter().map(|n| n.name_any()).collect::<Vec<_>>()
            })
        })
        .unwrap();
    assert_eq!(names, ["node-a"]);
}
