use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;

fn service(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap()
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml::from_str(yaml).unwrap()
}

/// The node the tests compute for.
const NODE: &str = "node-a";

fn desired(services: &[Service], slices: &[EndpointSlice]) -> Desired {
    desired_state(
        Some(NODE),
        services.iter().map(|s| (s, None)),
        slices.iter().map(|s| (s, None)),
    )
}

fn frontend(vip: [u8; 4], port: u16, proto: Proto) -> Frontend {
    Frontend {
        vip: Ipv4Addr::from(vip),
        port,
        proto,
    }
}

/// Backends of endpoints without a `nodeName`, which are remote.
fn backends(addrs: &[([u8; 4], u16)]) -> BTreeSet<BackendAddr> {
    addrs
        .iter()
        .map(|&(ip, port)| BackendAddr {
            ip: Ipv4Addr::from(ip),
            port,
            remote: true,
        })
        .collect()
}

fn backends_of(desired: &Desired, frontend: Frontend) -> &BTreeSet<BackendAddr> {
    &desired
        .frontends
        .get(&frontend)
        .unwrap_or_else(|| panic!("no frontend {frontend}"))
        .backends
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
"#;

const WEB_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
  - {name: http, port: 8080, protocol: TCP}
  - {name: dns, port: 5353, protocol: UDP}
endpoints:
  - addresses: [10.244.1.2]
    conditions: {ready: true}
  - addresses: [10.244.2.2]
  - addresses: [10.244.3.2]
    conditions: {ready: false}
"#;

#[test]
fn named_target_port_resolved_through_slice_port_and_unready_excluded() {
    let d = desired(&[service(WEB)], &[slice(WEB_SLICE)]);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.frontends.len(), 2);
    let http = &d.frontends[&frontend([10, 96, 0, 10], 80, Proto::Tcp)];
    assert_eq!(
        http.service,
        ObjectRef {
            namespace: "default".into(),
            name: "web".into()
        }
    );
    assert_eq!(http.port_name.as_deref(), Some("http"));
    // 10.244.2.2 has no ready condition: kube-proxy counts it as ready.
    assert_eq!(
        http.backends,
        backends(&[([10, 244, 1, 2], 8080), ([10, 244, 2, 2], 8080)])
    );
    let dns = backends_of(&d, frontend([10, 96, 0, 10], 53, Proto::Udp));
    assert_eq!(
        *dns,
        backends(&[([10, 244, 1, 2], 5353), ([10, 244, 2, 2], 5353)])
    );
}

#[test]
fn slices_merged_and_deduplicated_and_port_matched_per_slice() {
    let second = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-2
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.244.1.2]
  - addresses: [10.244.9.9]
"#;
    // Different port number for the same name: pods in a rollout may
    // resolve a named targetPort differently.
    let third = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-3
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
  - addresses: [10.244.7.7]
"#;
    let d = desired(
        &[service(WEB)],
        &[slice(WEB_SLICE), slice(second), slice(third)],
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let http = backends_of(&d, frontend([10, 96, 0, 10], 80, Proto::Tcp));
    let expected = [
        ([10, 244, 1, 2], 8080),
        ([10, 244, 2, 2], 8080),
        ([10, 244, 9, 9], 8080),
        ([10, 244, 7, 7], 9090),
    ];
    assert_eq!(*http, backends(&expected));
    // web-2 and web-3 have no "dns" port, so they add nothing to it.
    let dns = backends_of(&d, frontend([10, 96, 0, 10], 53, Proto::Udp));
    assert_eq!(
        *dns,
        backends(&[([10, 244, 1, 2], 5353), ([10, 244, 2, 2], 5353)])
    );
}

#[test]
fn unnamed_port_matches_unnamed_slice_port_and_slices_of_other_namespace_or_unlabelled_ignored() {
    let svc = service(
        "{apiVersion: v1, kind: Service, metadata: {name: db, namespace: prod}, spec: {clusterIP: 10.96.0.20, ports: [{port: 5432, targetPort: 15432}]}}",
    );
    let own = slice(
        "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: db-1, namespace: prod, labels: {kubernetes.io/service-name: db}}, addressType: IPv4, ports: [{port: 15432}], endpoints: [{addresses: [10.244.1.5]}]}",
    );
    let other_ns = slice(
        "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: db-1, namespace: dev, labels: {kubernetes.io/service-name: db}}, addressType: IPv4, ports: [{port: 15432}], endpoints: [{addresses: [10.244.1.6]}]}",
    );
    let unlabelled = slice(
        "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: db-x, namespace: prod}, addressType: IPv4, ports: [{port: 15432}], endpoints: [{addresses: [10.244.1.7]}]}",
    );
    let ipv6 = slice(
        "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: db-6, namespace: prod, labels: {kubernetes.io/service-name: db}}, addressType: IPv6, ports: [{port: 15432}], endpoints: [{addresses: ['fd00::1']}]}",
    );
    let d = desired(&[svc], &[own, other_ns, unlabelled, ipv6]);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let db = &d.frontends[&frontend([10, 96, 0, 20], 5432, Proto::Tcp)];
    assert_eq!(db.port_name, None);
    assert_eq!(db.backends, backends(&[([10, 244, 1, 5], 15432)]));
}

#[test]
fn services_not_for_us_are_skipped_silently() {
    let skipped = [
        "{apiVersion: v1, kind: Service, metadata: {name: headless}, spec: {clusterIP: None, ports: [{port: 80}]}}",
        "{apiVersion: v1, kind: Service, metadata: {name: unallocated}, spec: {ports: [{port: 80}]}}",
        "{apiVersion: v1, kind: Service, metadata: {name: ext}, spec: {type: ExternalName, externalName: db.external.invalid}}",
        "{apiVersion: v1, kind: Service, metadata: {name: other-proxy, labels: {service.kubernetes.io/service-proxy-name: foo}}, spec: {clusterIP: 10.96.0.30, ports: [{port: 80}]}}",
        "{apiVersion: v1, kind: Service, metadata: {name: labelled-headless, labels: {service.kubernetes.io/headless: ''}}, spec: {clusterIP: 10.96.0.31, ports: [{port: 80}]}}",
        "{apiVersion: v1, kind: Service, metadata: {name: v6}, spec: {clusterIP: 'fd00::10', clusterIPs: ['fd00::10'], ports: [{port: 80}]}}",
    ];
    let services: Vec<Service> = skipped.iter().map(|y| service(y)).collect();
    let d = desired(&services, &[]);
    assert!(d.frontends.is_empty() && d.errors.is_empty(), "{d:?}");
    // The IPv6-only Service is noted (reported once by the agent), not an error.
    let v6: Vec<String> = d.ipv6_skipped.iter().map(ToString::to_string).collect();
    assert_eq!(v6, ["default/v6"]);
}

#[test]
fn dual_stack_programs_the_ipv4_address_and_the_node_port() {
    let svc = service(
        "{apiVersion: v1, kind: Service, metadata: {name: ds}, spec: {type: NodePort, clusterIP: 'fd00::10', clusterIPs: ['fd00::10', 10.96.0.40], ports: [{port: 80, nodePort: 30080}]}}",
    );
    let d = desired(&[svc], &[]);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(
        d.frontends.keys().copied().collect::<Vec<_>>(),
        vec![
            Frontend {
                vip: NODE_PORT_VIP,
                port: 30080,
                proto: Proto::Tcp
            },
            frontend([10, 96, 0, 40], 80, Proto::Tcp)
        ]
    );
    assert_eq!(d.ipv6_skipped.len(), 1);
}

#[test]
fn sctp_port_is_an_error_for_that_port_only() {
    let svc = service(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80}
    - {name: sig, port: 3868, protocol: SCTP}
    - {name: zero, port: 0}
    - {name: dns, port: 53, protocol: UDP}
"#,
    );
    let services = [svc];
    let file = Path::new("examples/web.yaml");
    let d = desired_state(Some(NODE), services.iter().map(|s| (s, Some(file))), []);
    let messages: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            r#"examples/web.yaml: Service default/web: spec.ports[1].protocol: unsupported protocol "SCTP" (TCP and UDP are supported)"#,
            "examples/web.yaml: Service default/web: spec.ports[2].port: port 0 is out of range (1-65535)",
        ]
    );
    let programmed: Vec<Frontend> = d.frontends.keys().copied().collect();
    assert_eq!(
        programmed,
        [
            frontend([10, 96, 0, 10], 53, Proto::Udp),
            frontend([10, 96, 0, 10], 80, Proto::Tcp)
        ]
    );
}

#[test]
fn no_slices_gives_frontend_without_backends() {
    let d = desired(&[service(WEB)], &[]);
    assert!(d.errors.is_empty());
    assert_eq!(d.frontends.len(), 2);
    assert!(d.frontends.values().all(|f| f.backends.is_empty()));
}

#[test]
fn bad_endpoint_address_is_reported_and_other_endpoints_kept() {
    let bad = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
  - addresses: [10.244.1.2]
  - addresses: [10.244.2.300]
  - addresses: [127.0.0.1]
  - addresses: []
  - addresses: [10.244.3.2]
"#;
    let d = desired(&[service(WEB)], &[slice(bad)]);
    let errors: Vec<(&str, &str)> = d
        .errors
        .iter()
        .map(|e| (e.object.as_str(), e.field.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            ("EndpointSlice default/web-1", "endpoints[1].addresses[0]"),
            ("EndpointSlice default/web-1", "endpoints[2].addresses[0]"),
            ("EndpointSlice default/web-1", "endpoints[3].addresses"),
        ]
    );
    assert_eq!(
        d.errors[0].message,
        r#"invalid IPv4 address "10.244.2.300""#
    );
    let http = backends_of(&d, frontend([10, 96, 0, 10], 80, Proto::Tcp));
    assert_eq!(
        *http,
        backends(&[([10, 244, 1, 2], 8080), ([10, 244, 3, 2], 8080)])
    );
}

#[test]
fn broken_service_does_not_affect_others() {
    let broken = service(
        "{apiVersion: v1, kind: Service, metadata: {name: broken}, spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}}",
    );
    let d = desired(&[broken, service(WEB)], &[slice(WEB_SLICE)]);
    assert_eq!(d.errors.len(), 1);
    assert_eq!(
        d.errors[0].to_string(),
        r#"Service default/broken: spec.clusterIP: invalid IP address "10.96.0.300""#
    );
    assert_eq!(d.frontends.len(), 2);
}

#[test]
fn conflicting_frontend_and_duplicate_object_reported_first_kept() {
    let taker = service(
        "{apiVersion: v1, kind: Service, metadata: {name: zzz, namespace: default}, spec: {clusterIP: 10.96.0.10, ports: [{port: 80}, {port: 81}]}}",
    );
    let duplicate = service(
        "{apiVersion: v1, kind: Service, metadata: {name: web, namespace: default}, spec: {clusterIP: 10.96.0.99, ports: [{port: 80}]}}",
    );
    let (a, b) = (Path::new("a.yaml"), Path::new("b.yaml"));
    let inputs = [
        (&taker, Some(a)),
        (&service(WEB), Some(a)),
        (&duplicate, Some(b)),
    ];
    let d = desired_state(Some(NODE), inputs.iter().map(|&(s, f)| (s, f)), []);
    let messages: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "b.yaml: Service default/web: metadata.name: defined more than once; this copy is ignored (first in a.yaml)",
            "a.yaml: Service default/zzz: spec.ports[0]: 10.96.0.10:80/TCP is already served by Service default/web; port ignored",
        ]
    );
    assert_eq!(
        d.frontends[&frontend([10, 96, 0, 10], 80, Proto::Tcp)]
            .service
            .name,
        "web"
    );
    assert!(d
        .frontends
        .contains_key(&frontend([10, 96, 0, 10], 81, Proto::Tcp)));
    assert!(!d
        .frontends
        .keys()
        .any(|f| f.vip == Ipv4Addr::new(10, 96, 0, 99)));
}

#[test]
fn output_does_not_depend_on_input_order() {
    let services = [service(WEB), service("{apiVersion: v1, kind: Service, metadata: {name: a}, spec: {clusterIP: 10.96.0.1, ports: [{port: 443}]}}")];
    let second = WEB_SLICE
        .replace("web-1", "web-2")
        .replace("10.244.1.2", "10.244.5.5");
    let slices = [slice(WEB_SLICE), slice(&second)];
    let forward = desired(&services, &slices);
    let reversed = desired_state(
        Some(NODE),
        services.iter().rev().map(|s| (s, None)),
        slices.iter().rev().map(|s| (s, None)),
    );
    assert_eq!(forward, reversed);
}
