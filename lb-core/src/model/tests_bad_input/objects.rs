//! Generated Services and EndpointSlices for the bad-input properties: a
//! set of valid objects that do not conflict with each other, and one
//! object broken in one way, with the field its error must name.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::model::{ObjectRef, LABEL_SERVICE_NAME};

/// A Service before it is built: distinct (port, protocol) pairs, whether
/// it is a NodePort, and its pods (`10.244.a.b`, ready or not).
#[derive(Debug, Clone)]
pub struct Shape {
    pub ports: Vec<(u16, &'static str)>,
    pub node_ports: bool,
    pub pods: Vec<(u8, u8, bool)>,
}

pub fn shape() -> impl Strategy<Value = Shape> {
    let protocol = prop_oneof![Just("TCP"), Just("UDP")];
    (
        prop::collection::btree_set((1u16..=65535, protocol), 1..4),
        any::<bool>(),
        prop::collection::vec((1u8..=254, 1u8..=254, any::<bool>()), 1..6),
    )
        .prop_map(|(ports, node_ports, pods)| Shape {
            ports: ports.into_iter().collect(),
            node_ports,
            pods,
        })
}

/// Valid Services `svc-<i>` (each with one slice), in a few namespaces,
/// with distinct cluster IPs and node ports, so none has an error.
pub fn valid_set() -> impl Strategy<Value = Vec<(String, Shape)>> {
    let namespace = prop_oneof![Just("default"), Just("kube-system"), Just("team-a")];
    prop::collection::vec((namespace.prop_map(String::from), shape()), 0..6)
}

/// The Services and slices of a valid set.
pub fn build_valid(set: &[(String, Shape)]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, (namespace, shape)) in set.iter().enumerate() {
        let name = format!("svc-{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let node_port_base = 30_000 + 10 * i as i32;
        services.push(service(namespace, &name, &ip, node_port_base, shape));
        slices.push(slice(namespace, &format!("{name}-1"), Some(&name), shape));
    }
    (services, slices)
}

pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    node_port_base: i32,
    shape: &Shape,
) -> Service {
    let ports = (shape.ports.iter().enumerate())
        .map(|(k, &(port, protocol))| ServicePort {
            name: Some(format!("p{k}")),
            port: port.into(),
            protocol: Some(protocol.into()),
            node_port: shape.node_ports.then_some(node_port_base + k as i32),
            ..ServicePort::default()
        })
        .collect();
    Service {
        metadata: meta(namespace, name, None),
        spec: Some(ServiceSpec {
            type_: Some(
                if shape.node_ports {
                    "NodePort"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            // As the API server stores them: clusterIPs[0] repeats clusterIP.
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The slice of the Service named `service` (none: an orphan), with a port
/// per Service port (same name and protocol, pod port 8000 + k).
pub fn slice(namespace: &str, name: &str, service: Option<&str>, shape: &Shape) -> EndpointSlice {
    let ports = (shape.ports.iter().enumerate())
        .map(|(k, &(_, protocol))| EndpointPort {
            name: Some(format!("p{k}")),
            port: Some(8000 + k as i32),
            protocol: Some(protocol.into()),
            ..EndpointPort::default()
        })
        .collect();
    let endpoints = (shape.pods.iter())
        .map(|&(a, b, ready)| Endpoint {
            addresses: vec![format!("10.244.{a}.{b}")],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..EndpointConditions::default()
            }),
            node_name: Some(if a % 2 == 0 { "node-a" } else { "node-b" }.into()),
            ..Endpoint::default()
        })
        .collect();
    EndpointSlice {
        metadata: meta(namespace, name, service),
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(ports),
    }
}

fn meta(namespace: &str, name: &str, service: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: service.map(|s| BTreeMap::from([(LABEL_SERVICE_NAME.into(), s.into())])),
        ..ObjectMeta::default()
    }
}

/// One thing wrong with a name: none, empty, or longer than Kubernetes
/// allows (253 characters) up to absurd.
#[derive(Debug, Clone)]
pub enum NameFault {
    Missing,
    Empty,
    Huge(usize),
}

fn name_fault() -> impl Strategy<Value = NameFault> {
    prop_oneof![
        Just(NameFault::Missing),
        Just(NameFault::Empty),
        (254usize..100_000).prop_map(NameFault::Huge),
    ]
}

impl NameFault {
    fn apply(&self, meta: &mut ObjectMeta) {
        meta.name = match self {
            NameFault::Missing => None,
            NameFault::Empty => Some(String::new()),
            NameFault::Huge(len) => Some("n".repeat(*len)),
        };
    }
}

/// One thing wrong with a Service.
#[derive(Debug, Clone)]
pub enum ServiceFault {
    Name(NameFault),
    NoSpec,
    PortNumber(Index, i32),
    Protocol(Index, &'static str),
    ClusterIp(&'static str),
    Type(&'static str),
    /// A copy of one port (same number and protocol) under another name.
    DuplicatePort(Index),
    NodePort(Index, i32),
    ExternalIp(&'static str),
    /// A LoadBalancer with an ingress IP and this source range.
    SourceRange(&'static str),
    /// A second Service with the name of a valid one (`Index` into the
    /// valid set); without one, a broken name instead.
    SameNameAsValid(Index),
}

/// Numbers no port can have (the API's type is i32).
fn bad_port() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(65_536),
        Just(-1),
        Just(i32::MIN),
        Just(i32::MAX),
        65_536..=i32::MAX,
        i32::MIN..0,
    ]
}

pub fn service_fault() -> impl Strategy<Value = ServiceFault> {
    let not_an_ip = prop::sample::select(vec![
        "10.96.0.256",
        "not-an-ip",
        "10.96.0",
        "1.2.3.4/32",
        " 10.96.9.9",
        "10.96.9.9 ",
        "0x0a600909",
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.5",
        "255.255.255.255",
        "169.254.0.1",
    ]);
    prop_oneof![
        name_fault().prop_map(ServiceFault::Name),
        Just(ServiceFault::NoSpec),
        (any::<Index>(), bad_port()).prop_map(|(i, p)| ServiceFault::PortNumber(i, p)),
        (
            any::<Index>(),
            prop::sample::select(vec!["SCTP", "tcp", "", "HTTP", "TCP "])
        )
            .prop_map(|(i, p)| ServiceFault::Protocol(i, p)),
        not_an_ip.clone().prop_map(ServiceFault::ClusterIp),
        prop::sample::select(vec!["Foo", "clusterip", "NodePorts", ""])
            .prop_map(ServiceFault::Type),
        any::<Index>().prop_map(ServiceFault::DuplicatePort),
        (
            any::<Index>(),
            prop_oneof![Just(65_536), Just(-1), Just(i32::MAX)]
        )
            .prop_map(|(i, p)| ServiceFault::NodePort(i, p)),
        not_an_ip.prop_map(ServiceFault::ExternalIp),
        prop::sample::select(vec!["10.0.0.0/33", "10.0.0.0", "any", "", "10.0.0.0/-1"])
            .prop_map(ServiceFault::SourceRange),
        any::<Index>().prop_map(ServiceFault::SameNameAsValid),
    ]
}

/// A broken object, and what its one error must say.
#[derive(Debug, Clone)]
pub struct Bad<T> {
    pub object: T,
    /// `Service zz-bad/bad`, or only the kind for an unnamed object.
    pub label: String,
    pub field: String,
    /// The name under which the object's intact parts may be programmed.
    pub oref: ObjectRef,
}

const BAD_NAMESPACE: &str = "zz-bad";

/// The Service `zz-bad/bad` of `shape` (cluster IP and node ports apart
/// from the valid set's) broken by `fault`.
pub fn bad_service(shape: &Shape, fault: &ServiceFault, valid: &[(String, Shape)]) -> Bad<Service> {
    let mut shape = shape.clone();
    let mut oref = ObjectRef {
        namespace: BAD_NAMESPACE.into(),
        name: "bad".into(),
    };
    if let ServiceFault::NodePort(..) = fault {
        shape.node_ports = true;
    }
    if let ServiceFault::DuplicatePort(i) = fault {
        let copy = shape.ports[i.index(shape.ports.len())];
        shape.ports.push(copy);
    }
    let mut service = service(&oref.namespace, &oref.name, "10.97.0.1", 32_000, &shape);
    let spec = service.spec.as_mut().expect("built with a spec");
    let ports = spec.ports.as_mut().expect("built with ports");
    let at = |i: &Index| i.index(ports.len());
    let mut label = format!("Service {oref}");
    let field = match fault {
        ServiceFault::Name(name) => {
            name.apply(&mut service.metadata);
            label = match name {
                NameFault::Huge(len) => format!(
                    "Service {BAD_NAMESPACE}/{}… ({len} characters)",
                    "n".repeat(40)
                ),
                _ => "Service".into(),
            };
            "metadata.name".into()
        }
        ServiceFault::NoSpec => {
            service.spec = None;
            "spec".into()
        }
        ServiceFault::PortNumber(i, number) => {
            let k = at(i);
            ports[k].port = *number;
            format!("spec.ports[{k}].port")
        }
        ServiceFault::Protocol(i, protocol) => {
            let k = at(i);
            ports[k].protocol = Some((*protocol).into());
            format!("spec.ports[{k}].protocol")
        }
        ServiceFault::ClusterIp(text) => {
            spec.cluster_ip = Some((*text).into());
            spec.cluster_ips = Some(vec![(*text).into()]);
            "spec.clusterIP".into()
        }
        ServiceFault::Type(type_) => {
            spec.type_ = Some((*type_).into());
            "spec.type".into()
        }
        ServiceFault::DuplicatePort(_) => format!("spec.ports[{}]", ports.len() - 1),
        ServiceFault::NodePort(i, number) => {
            let k = at(i);
            ports[k].node_port = Some(*number);
            format!("spec.ports[{k}].nodePort")
        }
        ServiceFault::ExternalIp(text) => {
            spec.external_ips = Some(vec![(*text).into()]);
            "spec.externalIPs[0]".into()
        }
        ServiceFault::SourceRange(text) => {
            spec.type_ = Some("LoadBalancer".into());
            spec.load_balancer_source_ranges = Some(vec![(*text).into()]);
            let ingress = LoadBalancerIngress {
                ip: Some("10.98.0.1".into()),
                ..LoadBalancerIngress::default()
            };
            service.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![ingress]),
                }),
                ..ServiceStatus::default()
            });
            "spec.loadBalancerSourceRanges[0]".into()
        }
        ServiceFault::SameNameAsValid(i) if !valid.is_empty() => {
            let k = i.index(valid.len());
            oref = ObjectRef {
                namespace: valid[k].0.clone(),
                name: format!("svc-{k}"),
            };
            service.metadata.namespace = Some(oref.namespace.clone());
            service.metadata.name = Some(oref.name.clone());
            label = format!("Service {oref}");
            "metadata.name".into()
        }
        ServiceFault::SameNameAsValid(_) => {
            service.metadata.name = None;
            label = "Service".into();
            "metadata.name".into()
        }
    };
    Bad {
        object: service,
        label,
        field,
        oref,
    }
}

/// One thing wrong with an EndpointSlice.
#[derive(Debug, Clone)]
pub enum SliceFault {
    Name(NameFault),
    PortNumber(Index, i32),
    Address(Index, &'static str),
    NoAddress(Index),
    AddressType(&'static str),
}

pub fn slice_fault() -> impl Strategy<Value = SliceFault> {
    let bad_address = prop::sample::select(vec![
        "10.244.1.256",
        "pod-a",
        "",
        "fd00::1",
        "10.244.1.2/32",
        "127.0.0.1",
        "0.0.0.0",
        "239.1.1.1",
        "169.254.169.254",
    ]);
    prop_oneof![
        name_fault().prop_map(SliceFault::Name),
        (any::<Index>(), bad_port()).prop_map(|(i, p)| SliceFault::PortNumber(i, p)),
        (any::<Index>(), bad_address).prop_map(|(i, a)| SliceFault::Address(i, a)),
        any::<Index>().prop_map(SliceFault::NoAddress),
        prop::sample::select(vec!["", "ipv4", "IPv5", "IPV4"]).prop_map(SliceFault::AddressType),
    ]
}

/// The slice `<namespace>/zz-bad-slice` of the valid Service `owner`
/// indexes (of a Service `ghost` that does not exist if the set is empty)
/// broken by `fault`, and the same
/// slice with the broken part taken out (`None`: the whole slice).
pub fn bad_slice(
    shape: &Shape,
    fault: &SliceFault,
    owner: &Index,
    valid: &[(String, Shape)],
) -> (Bad<EndpointSlice>, Option<EndpointSlice>) {
    let (namespace, service, shape) = if valid.is_empty() {
        // Labelled, so that it is read (unlabelled slices are skipped).
        ("default".to_string(), "ghost".to_string(), shape.clone())
    } else {
        let k = owner.index(valid.len());
        // Its pods, its Service's ports.
        let (namespace, owner_shape) = &valid[k];
        let shape = Shape {
            ports: owner_shape.ports.clone(),
            ..shape.clone()
        };
        (namespace.clone(), format!("svc-{k}"), shape)
    };
    let oref = ObjectRef {
        namespace,
        name: "zz-bad-slice".into(),
    };
    let mut object = slice(&oref.namespace, &oref.name, Some(&service), &shape);
    let mut repaired = Some(object.clone());
    let mut label = format!("EndpointSlice {oref}");
    let field = match fault {
        SliceFault::Name(name) => {
            name.apply(&mut object.metadata);
            label = match name {
                NameFault::Huge(len) => {
                    format!(
                        "EndpointSlice {}/{}… ({len} characters)",
                        oref.namespace,
                        "n".repeat(40)
                    )
                }
                _ => "EndpointSlice".into(),
            };
            repaired = None;
            "metadata.name".into()
        }
        SliceFault::PortNumber(i, number) => {
            let ports = object.ports.as_mut().expect("built with ports");
            let k = i.index(ports.len());
            ports[k].port = Some(*number);
            if let Some(r) = repaired.as_mut().and_then(|r| r.ports.as_mut()) {
                r.remove(k);
            }
            format!("ports[{k}].port")
        }
        SliceFault::Address(i, text) => {
            let k = i.index(object.endpoints.len());
            object.endpoints[k].addresses = vec![(*text).into()];
            if let Some(r) = repaired.as_mut() {
                r.endpoints.remove(k);
            }
            format!("endpoints[{k}].addresses[0]")
        }
        SliceFault::AddressType(text) => {
            object.address_type = (*text).into();
            repaired = None;
            "addressType".into()
        }
        SliceFault::NoAddress(i) => {
            let k = i.index(object.endpoints.len());
            object.endpoints[k].addresses.clear();
            if let Some(r) = repaired.as_mut() {
                r.endpoints.remove(k);
            }
            format!("endpoints[{k}].addresses")
        }
    };
    let bad = Bad {
        object,
        label,
        field,
        oref,
    };
    (bad, repaired)
}
