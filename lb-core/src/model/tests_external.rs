//! Traffic from outside the node: endpoint locality, node ports, external
//! and load-balancer IPs, externalTrafficPolicy Local, source ranges and
//! health check ports, each rule on its own.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;

const NODE: &str = "node-a";

fn service(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap()
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml::from_str(yaml).unwrap()
}

fn desired(services: &[Service], slices: &[EndpointSlice]) -> Desired {
    desired_state(
        Some(NODE),
        services.iter().map(|s| (s, None)),
        slices.iter().map(|s| (s, None)),
    )
}

fn tcp(vip: [u8; 4], port: u16) -> Frontend {
    Frontend {
        vip: Ipv4Addr::from(vip),
        port,
        proto: Proto::Tcp,
    }
}

fn node_port(port: u16) -> Frontend {
    Frontend {
        vip: NODE_PORT_VIP,
        port,
        proto: Proto::Tcp,
    }
}

/// `(last octet of 10.244.0.x, remote)` of each backend.
fn backends(desired: &Desired, frontend: Frontend) -> Vec<(u8, bool)> {
    let wanted = desired
        .frontends
        .get(&frontend)
        .unwrap_or_else(|| panic!("no frontend {frontend}"));
    let backends = wanted.backends.iter();
    backends.map(|b| (b.ip.octets()[3], b.remote)).collect()
}

fn fields(desired: &Desired) -> Vec<&str> {
    desired.errors.iter().map(|e| e.field.as_str()).collect()
}

/// A LoadBalancer Service with every external address kind: node port
/// 30080, external IP 192.0.2.10, load-balancer IP 198.51.100.10.
const LB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.10]
  ports: [{name: http, port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.10}]
"#;

/// Endpoints of `lb`: .1 here, .2 on another node, .3 on no known node,
/// .4 here but not ready.
const LB_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-1
  namespace: default
  labels: {kubernetes.io/service-name: lb}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.244.0.1], nodeName: node-a}
  - {addresses: [10.244.0.2], nodeName: node-b}
  - {addresses: [10.244.0.3]}
  - {addresses: [10.244.0.4], nodeName: node-a, conditions: {ready: false}}
"#;

fn with_spec(base: &str, extra: &str) -> Service {
    service(&base.replace(
        "  type: LoadBalancer\n",
        &format!("  type: LoadBalancer\n{extra}"),
    ))
}

#[test]
fn endpoint_is_local_only_when_its_node_name_is_this_nodes() {
    let (services, slices) = ([service(LB)], [slice(LB_SLICE)]);
    let d = desired(&services, &slices);
    let all = vec![(1, false), (2, true), (3, true)];
    assert_eq!(backends(&d, tcp([10, 96, 0, 10], 80)), all);

    // An agent that does not know its node has no local endpoints.
    let services = services.iter().map(|s| (s, None));
    let d = desired_state(None, services, slices.iter().map(|s| (s, None)));
    let remote = vec![(1, true), (2, true), (3, true)];
    assert_eq!(backends(&d, tcp([10, 96, 0, 10], 80)), remote);
}

#[test]
fn endpoint_listed_by_two_slices_is_one_backend_and_local_if_either_says_so() {
    let moved = LB_SLICE
        .replace("lb-1", "lb-2")
        .replace(
            "10.244.0.2], nodeName: node-b",
            "10.244.0.2], nodeName: node-a",
        )
        .replace(
            "10.244.0.1], nodeName: node-a",
            "10.244.0.1], nodeName: node-b",
        );
    let d = desired(&[service(LB)], &[slice(LB_SLICE), slice(&moved)]);
    let expected = vec![(1, false), (2, false), (3, true)];
    assert_eq!(backends(&d, tcp([10, 96, 0, 10], 80)), expected);
}

#[test]
fn every_external_address_is_a_frontend_and_only_the_cluster_ip_is_internal() {
    let d = desired(&[service(LB)], &[slice(LB_SLICE)]);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let kinds: Vec<(Frontend, bool)> = d.frontends.iter().map(|(f, w)| (*f, w.external)).collect();
    let expected = [
        (node_port(30080), true),
        (tcp([10, 96, 0, 10], 80), false),
        (tcp([192, 0, 2, 10], 80), true),
        (tcp([198, 51, 100, 10], 80), true),
    ];
    assert_eq!(kinds, expected);
    for wanted in d.frontends.values() {
        assert!(!wanted.local_only && wanted.source_ranges.is_empty());
        assert_eq!(
            wanted.backends.len(),
            3,
            "Cluster policy: all ready endpoints"
        );
        assert_eq!(wanted.port_name.as_deref(), Some("http"));
    }
}

#[test]
fn node_ports_need_a_node_port_type_and_load_balancer_ips_need_load_balancer() {
    let node_port_type = LB.replace("type: LoadBalancer", "type: NodePort");
    let cluster_ip_type = LB.replace("type: LoadBalancer", "type: ClusterIP");
    let d = desired(&[service(&node_port_type)], &[]);
    // A stale load-balancer status of a former LoadBalancer is not served.
    let served: Vec<Frontend> = d.frontends.keys().copied().collect();
    let expected = [
        node_port(30080),
        tcp([10, 96, 0, 10], 80),
        tcp([192, 0, 2, 10], 80),
    ];
    assert_eq!(served, expected);

    let d = desired(&[service(&cluster_ip_type)], &[]);
    let served: Vec<Frontend> = d.frontends.keys().copied().collect();
    assert_eq!(served, [tcp([10, 96, 0, 10], 80), tcp([192, 0, 2, 10], 80)]);
    assert_eq!(fields(&d), ["spec.ports[0].nodePort"]);
}

#[test]
fn load_balancer_ingress_without_a_vip_is_skipped_and_bad_addresses_reported() {
    let ingress = r#"
    ingress:
      - {hostname: lb.invalid}
      - {ip: 198.51.100.11, ipMode: Proxy}
      - {ip: 198.51.100.12, ipMode: VIP}
      - {ip: 'fd00::12'}
      - {ip: 198.51.100.300}
      - {ip: 0.0.0.0}
"#;
    let text = LB
        .replace("    ingress: [{ip: 198.51.100.10}]\n", ingress)
        .replace(
            "externalIPs: [192.0.2.10]",
            "externalIPs: ['fd00::10', 224.0.0.1, 192.0.2.10]",
        );
    let d = desired(&[service(&text)], &[]);
    let lb_ips: Vec<Ipv4Addr> = d
        .frontends
        .keys()
        .map(|f| f.vip)
        .filter(|ip| ip.octets()[0] == 198)
        .collect();
    assert_eq!(lb_ips, [Ipv4Addr::new(198, 51, 100, 12)]);
    assert!(d.frontends.contains_key(&tcp([192, 0, 2, 10], 80)));
    assert_eq!(
        fields(&d),
        [
            "spec.externalIPs[1]",
            "status.loadBalancer.ingress[4].ip",
            "status.loadBalancer.ingress[5].ip",
        ]
    );
    // IPv6 external and load-balancer IPs are noted like IPv6 cluster IPs.
    assert_eq!(d.ipv6_skipped.len(), 1);
}

#[test]
fn external_traffic_policy_local_serves_local_ready_endpoints_on_external_frontends_only() {
    let local = with_spec(LB, "  externalTrafficPolicy: Local\n");
    let d = desired(std::slice::from_ref(&local), &[slice(LB_SLICE)]);
    let cluster_ip = &d.frontends[&tcp([10, 96, 0, 10], 80)];
    assert!(!cluster_ip.local_only);
    assert_eq!(cluster_ip.backends.len(), 3);
    for frontend in [
        node_port(30080),
        tcp([192, 0, 2, 10], 80),
        tcp([198, 51, 100, 10], 80),
    ] {
        assert!(d.frontends[&frontend].local_only, "{frontend}");
        assert_eq!(backends(&d, frontend), [(1, false)], "{frontend}");
        // The node's own clients also get the others, as kube-proxy
        // sends them through the cluster policy.
        assert_eq!(internal_backends(&d, frontend), [(2, true), (3, true)]);
    }
    assert!(cluster_ip.internal_backends.is_empty());

    // No local endpoint: the frontend stays, empty, and the datapath drops
    // traffic from outside; the node's pods still reach the others.
    let elsewhere = LB_SLICE.replace("nodeName: node-a", "nodeName: node-b");
    let d = desired(&[local], &[slice(&elsewhere)]);
    let frontend = &d.frontends[&node_port(30080)];
    assert!(frontend.local_only && frontend.backends.is_empty());
    assert_eq!(
        internal_backends(&d, node_port(30080)),
        [(1, true), (2, true), (3, true)]
    );

    // Cluster policy: every client uses the same backends.
    let d = desired(std::slice::from_ref(&service(LB)), &[slice(LB_SLICE)]);
    assert!(d.frontends[&node_port(30080)].internal_backends.is_empty());
}

/// [`backends`] of the node's own clients only.
fn internal_backends(desired: &Desired, frontend: Frontend) -> Vec<(u8, bool)> {
    let wanted = &desired.frontends[&frontend];
    let backends = wanted.internal_backends.iter();
    backends.map(|b| (b.ip.octets()[3], b.remote)).collect()
}

#[test]
fn source_ranges_apply_to_load_balancer_ips_only() {
    let ranges = "  loadBalancerSourceRanges: [' 10.1.2.3/16 ', 192.168.0.0/24, 'fd00::/8', 192.168.0.0/24]\n";
    let d = desired(&[with_spec(LB, ranges)], &[]);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let expected: Vec<ipnet::Ipv4Net> = vec![
        "10.1.0.0/16".parse().unwrap(),
        "192.168.0.0/24".parse().unwrap(),
    ];
    assert_eq!(
        d.frontends[&tcp([198, 51, 100, 10], 80)].source_ranges,
        expected
    );
    for frontend in [
        node_port(30080),
        tcp([192, 0, 2, 10], 80),
        tcp([10, 96, 0, 10], 80),
    ] {
        assert!(
            d.frontends[&frontend].source_ranges.is_empty(),
            "{frontend}"
        );
    }
}

#[test]
fn bad_source_range_withholds_the_load_balancer_ips_instead_of_opening_them() {
    let ranges = "  loadBalancerSourceRanges: [10.0.0.0/8, 10.0.0.0/33]\n";
    let d = desired(&[with_spec(LB, ranges)], &[]);
    let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            r#"Service default/lb: spec.loadBalancerSourceRanges[1]: invalid CIDR "10.0.0.0/33"; the load-balancer IPs are not served until it is fixed"#
        ]
    );
    assert!(!d.frontends.contains_key(&tcp([198, 51, 100, 10], 80)));
    // Source ranges do not restrict the other frontends, which stay.
    assert_eq!(d.frontends.len(), 3);

    // IPv6 ranges only: no IPv4 client is allowed, so none is served.
    let d = desired(
        &[with_spec(LB, "  loadBalancerSourceRanges: ['fd00::/8']\n")],
        &[],
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert!(!d.frontends.contains_key(&tcp([198, 51, 100, 10], 80)));
}

#[test]
fn health_check_counts_distinct_local_ready_addresses_of_local_load_balancers() {
    let local = with_spec(
        LB,
        "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
    );
    // A second port on the same pods: still one endpoint each.
    let two_ports = LB_SLICE
        .replace("lb-1", "lb-2")
        .replace("{name: http, port: 8080}", "{name: metrics, port: 9090}");
    let d = desired(
        std::slice::from_ref(&local),
        &[slice(LB_SLICE), slice(&two_ports)],
    );
    let oref = ObjectRef {
        namespace: "default".into(),
        name: "lb".into(),
    };
    let expected = HealthCheck {
        service: oref,
        local_endpoints: 1,
    };
    assert_eq!(
        d.health_checks.into_iter().collect::<Vec<_>>(),
        [(32000, expected)]
    );

    // Only LoadBalancer Services with the Local policy have one.
    let cluster_policy = with_spec(
        LB,
        "  externalTrafficPolicy: Cluster\n  healthCheckNodePort: 32000\n",
    );
    let node_port_type = serde_yaml::to_string(&local)
        .unwrap()
        .replace("LoadBalancer", "NodePort");
    for other in [cluster_policy, service(&node_port_type)] {
        let d = desired(&[other], &[slice(LB_SLICE)]);
        assert!(d.health_checks.is_empty() && d.errors.is_empty(), "{d:?}");
    }
}

#[test]
fn shared_health_check_port_goes_to_the_first_service_by_name() {
    let local = "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n";
    let first = with_spec(&LB.replace("name: lb,", "name: a,"), local);
    let second = with_spec(
        &LB.replace("name: lb,", "name: b,")
            .replace("30080", "30081"),
        local,
    );
    let (services, slices) = ([second.clone(), first.clone()], []);
    let d = desired(&services, &slices);
    assert_eq!(d.health_checks[&32000].service.name, "a");
    let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors.contains(&"Service default/b: spec.healthCheckNodePort: health check node port 32000 is already served for Service default/a; ignored".to_string()),
        "{errors:?}"
    );

    // The index hands the port over when the winner goes, and the loser's
    // error goes with it.
    let mut index = DesiredIndex::new(Some(NODE.into()));
    index.apply_service(&first);
    index.apply_service(&second);
    let a = ObjectRef {
        namespace: "default".into(),
        name: "a".into(),
    };
    index.delete_service(&a);
    assert_eq!(index.desired().health_checks[&32000].service.name, "b");
    assert!(!index
        .desired()
        .errors
        .iter()
        .any(|e| e.field == "spec.healthCheckNodePort"));
}

#[test]
fn index_recounts_local_endpoints_when_a_slice_changes() {
    let local = with_spec(
        LB,
        "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
    );
    let mut index = DesiredIndex::new(Some(NODE.into()));
    index.apply_service(&local);
    assert_eq!(index.desired().health_checks[&32000].local_endpoints, 0);
    index.apply_slice(&slice(LB_SLICE));
    assert_eq!(index.desired().health_checks[&32000].local_endpoints, 1);
    let ready = LB_SLICE.replace("conditions: {ready: false}", "conditions: {ready: true}");
    index.apply_slice(&slice(&ready));
    assert_eq!(index.desired().health_checks[&32000].local_endpoints, 2);
    assert_eq!(
        backends(index.desired(), node_port(30080)),
        [(1, false), (4, false)]
    );
}

#[test]
fn node_port_and_external_ip_conflicts_go_to_the_first_service_by_name() {
    let other = r#"
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  externalIPs: [10.96.0.10]
  ports: [{port: 80, nodePort: 30080}]
"#;
    let d = desired(&[service(other), service(LB)], &[]);
    let messages: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "Service default/other: spec.ports[0].nodePort: 0.0.0.0:30080/TCP is already served by Service default/lb; port ignored",
            "Service default/other: spec.externalIPs[0]: 10.96.0.10:80/TCP is already served by Service default/lb; port ignored",
        ]
    );
    assert_eq!(d.frontends[&node_port(30080)].service.name, "lb");
    assert!(!d.frontends[&tcp([10, 96, 0, 10], 80)].external);
    assert_eq!(d.frontends[&tcp([10, 96, 0, 20], 80)].service.name, "other");
}

#[test]
fn client_ip_affinity_applies_to_every_frontend_with_kube_proxys_default_timeout() {
    let svc = |extra: &str| {
        service(&format!(
            "{{apiVersion: v1, kind: Service, metadata: {{name: s, namespace: default}}, spec: {{type: NodePort, clusterIP: 10.96.0.50, {extra} ports: [{{port: 80, nodePort: 30050}}]}}}}"
        ))
    };
    let timeouts =
        |d: &Desired| -> Vec<u32> { d.frontends.values().map(|f| f.affinity_timeout_s).collect() };
    let none = desired(&[svc("")], &[]);
    assert_eq!(timeouts(&none), [0, 0]);
    let default = desired(&[svc("sessionAffinity: ClientIP,")], &[]);
    assert_eq!(
        timeouts(&default),
        [10_800, 10_800],
        "ClusterIP and NodePort"
    );
    let explicit = desired(
        &[svc(
            "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}},",
        )],
        &[],
    );
    assert_eq!(timeouts(&explicit), [60, 60]);
    let off = desired(
        &[svc(
            "sessionAffinity: None, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}},",
        )],
        &[],
    );
    assert_eq!(timeouts(&off), [0, 0]);
}

#[test]
fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
    let svc = service(
        "{apiVersion: v1, kind: Service, metadata: {name: t, namespace: default}, spec: {clusterIP: 10.96.0.60, ports: [{port: 80}]}}",
    );
    let slice_with = |endpoints: &str| {
        slice(&format!(
            "{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: t-1, namespace: default, labels: {{kubernetes.io/service-name: t}}}}, addressType: IPv4, ports: [{{port: 8080}}], endpoints: [{endpoints}]}}"
        ))
    };
    let addrs = |d: &Desired| -> Vec<String> {
        d.frontends[&tcp([10, 96, 0, 60], 80)]
            .backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect()
    };
    let ready = "{addresses: [10.244.0.1], conditions: {ready: true}}";
    let draining =
        "{addresses: [10.244.0.2], conditions: {ready: false, serving: true, terminating: true}}";
    let gone =
        "{addresses: [10.244.0.3], conditions: {ready: false, serving: false, terminating: true}}";
    // A ready endpoint exists: the terminating one gets no new flows.
    let d = desired(
        std::slice::from_ref(&svc),
        &[slice_with(&format!("{ready}, {draining}, {gone}"))],
    );
    assert_eq!(addrs(&d), ["10.244.0.1"]);
    // None ready: fall back to those still serving while terminating.
    let d = desired(
        std::slice::from_ref(&svc),
        &[slice_with(&format!("{draining}, {gone}"))],
    );
    assert_eq!(addrs(&d), ["10.244.0.2"]);
    // Nothing serving: no backends (the frontend stays, to reject).
    let d = desired(&[svc], &[slice_with(gone)]);
    assert!(addrs(&d).is_empty());
}

#[test]
fn internal_traffic_policy_local_limits_the_cluster_ip_to_this_nodes_endpoints() {
    let svc = |policy: &str| {
        service(&format!(
            "{{apiVersion: v1, kind: Service, metadata: {{name: i, namespace: default}}, spec: {{type: NodePort, clusterIP: 10.96.0.70, internalTrafficPolicy: {policy}, ports: [{{port: 80, nodePort: 30070}}]}}}}"
        ))
    };
    let slice = slice(&format!(
        "{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: i-1, namespace: default, labels: {{kubernetes.io/service-name: i}}}}, addressType: IPv4, ports: [{{port: 8080}}], endpoints: [{{addresses: [10.244.0.1], nodeName: {NODE}}}, {{addresses: [10.244.0.2], nodeName: other}}]}}"
    ));
    let cluster_ip = tcp([10, 96, 0, 70], 80);
    let d = desired(&[svc("Local")], std::slice::from_ref(&slice));
    let internal = &d.frontends[&cluster_ip];
    assert!(internal.local_only);
    assert_eq!(internal.backends.len(), 1, "{:?}", internal.backends);
    // The NodePort follows externalTrafficPolicy (Cluster): every endpoint.
    assert_eq!(d.frontends[&node_port(30070)].backends.len(), 2);
    let d = desired(&[svc("Cluster")], &[slice]);
    assert!(!d.frontends[&cluster_ip].local_only);
    assert_eq!(d.frontends[&cluster_ip].backends.len(), 2);
}
