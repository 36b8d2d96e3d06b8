use std::fs;
use std::net::Ipv4Addr;

use super::*;
use crate::model::{BackendAddr, Frontend, Proto};

const WEB_EXAMPLE: &str = include_str!("../../../examples/web.yaml");

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn names<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    objects: &[Sourced<T>],
) -> Vec<String> {
    objects
        .iter()
        .map(|s| s.object.metadata().name.clone().unwrap())
        .collect()
}

#[test]
fn example_loads_as_multi_document_file() {
    let dir = dir_with(&[("web.yaml", WEB_EXAMPLE)]);
    let loaded = load_dir(dir.path());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(names(&loaded.services), ["web"]);
    assert_eq!(names(&loaded.slices), ["web-1"]);
    assert_eq!(
        (loaded.services[0].doc_index, loaded.slices[0].doc_index),
        (0, 1)
    );
    assert_eq!(loaded.slices[0].source, dir.path().join("web.yaml"));

    // The example's pods run on node-a.
    let desired = loaded.desired_state(Some("node-a"));
    assert!(desired.errors.is_empty(), "{:?}", desired.errors);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let pods = |port| {
        [1, 2, 3]
            .map(|n| BackendAddr {
                ip: Ipv4Addr::new(10, 244, n, 2),
                port,
                remote: false,
            })
            .into_iter()
            .collect()
    };
    assert_eq!(
        desired.frontends[&Frontend {
            vip,
            port: 80,
            proto: Proto::Tcp
        }]
            .backends,
        pods(8080)
    );
    assert_eq!(
        desired.frontends[&Frontend {
            vip,
            port: 53,
            proto: Proto::Udp
        }]
            .backends,
        pods(5353)
    );
}

#[test]
fn wrong_type_names_file_object_and_field_and_others_still_load() {
    let broken = r#"
apiVersion: v1
kind: Service
metadata: {name: first}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.2
  ports:
    - {name: a, port: 81}
    - {name: b, port: "eighty"}
---
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: first-1, labels: {kubernetes.io/service-name: first}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.1]}]
"#;
    let other = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
spec: {replicas: "not checked"}
---
apiVersion: v1
kind: Service
metadata: {name: second}
spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}
"#;
    let dir = dir_with(&[
        ("a.yaml", broken),
        ("b.yml", other),
        ("notes.txt", "not: [yaml"),
        (".a.yaml.swp.yaml", "x: ["),
    ]);
    let loaded = load_dir(dir.path());
    assert_eq!(names(&loaded.services), ["first", "second"]);
    assert_eq!(names(&loaded.slices), ["first-1"]);
    assert_eq!(
        loaded.slices[0].doc_index, 3,
        "the empty document still counts"
    );
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    let error = &loaded.errors[0];
    assert_eq!(
        error.file.as_deref(),
        Some(dir.path().join("a.yaml").as_path())
    );
    assert_eq!(error.object, "Service shop/web");
    assert_eq!(error.field, "spec.ports[1].port");
    assert!(error.message.contains("eighty"), "{}", error.message);
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}: Service shop/web: spec.ports[1].port: ",
            dir.path().join("a.yaml").display()
        )),
        "{shown}"
    );
}

#[test]
fn unnamed_and_kindless_documents_are_named_by_position() {
    let text = r#"
kind: Service
apiVersion: v1
spec: {ports: {port: 80}}
---
just: a map
---
- a
- list
"#;
    let dir = dir_with(&[("x.yaml", text)]);
    let loaded = load_dir(dir.path());
    let errors: Vec<(&str, &str)> = loaded
        .errors
        .iter()
        .map(|e| (e.object.as_str(), e.field.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            ("Service in document 1", "spec.ports"),
            ("document 2", "apiVersion"),
            ("document 3", "apiVersion")
        ]
    );
}

#[test]
fn syntax_error_keeps_earlier_documents_and_other_files() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: early}\n---\nkind: [unclosed\n";
    let good = "{apiVersion: v1, kind: Service, metadata: {name: later}}";
    let dir = dir_with(&[("a.yaml", text), ("b.yaml", good)]);
    let loaded = load_dir(dir.path());
    assert_eq!(names(&loaded.services), ["early", "later"]);
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(loaded.errors[0].object, "document 2");
    assert!(
        loaded.errors[0].message.starts_with("invalid YAML"),
        "{}",
        loaded.errors[0]
    );
}

#[test]
fn kubectl_list_is_unpacked() {
    let text = r#"
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Service, metadata: {name: one, namespace: x}, spec: {ports: [{port: 1}]}}
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: skipped}}
  - {apiVersion: v1, kind: Service, metadata: {name: two, namespace: x}, spec: {ports: [{port: true}]}}
  - {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: one-a, namespace: x}, addressType: IPv4, endpoints: []}
"#;
    let dir = dir_with(&[("list.yaml", text)]);
    let loaded = load_dir(dir.path());
    assert_eq!(names(&loaded.services), ["one"]);
    assert_eq!(names(&loaded.slices), ["one-a"]);
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(
        (
            loaded.errors[0].object.as_str(),
            loaded.errors[0].field.as_str()
        ),
        ("Service x/two", "items[2].spec.ports[0].port")
    );
}

#[test]
fn missing_directory_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let loaded = load_dir(&missing);
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(loaded.errors[0].file.as_deref(), Some(missing.as_path()));
    assert!(fingerprint_dir(&missing).is_err());
}

#[test]
fn fingerprint_changes_with_content_or_names_only() {
    let dir = dir_with(&[("a.yaml", "x: 1"), ("ignored.txt", "1")]);
    let before = fingerprint_dir(dir.path()).unwrap();
    assert_eq!(fingerprint_dir(dir.path()).unwrap(), before);
    fs::write(dir.path().join("ignored.txt"), "2").unwrap();
    assert_eq!(fingerprint_dir(dir.path()).unwrap(), before);
    fs::write(dir.path().join("a.yaml"), "x: 2").unwrap();
    let edited = fingerprint_dir(dir.path()).unwrap();
    assert_ne!(edited, before);
    fs::rename(dir.path().join("a.yaml"), dir.path().join("b.yaml")).unwrap();
    assert_ne!(fingerprint_dir(dir.path()).unwrap(), edited);
}
