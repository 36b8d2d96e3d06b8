//! The Services every benchmarked dataplane serves, as one description that
//! the anchor rule sets ([`super::anchors`]) and the fake API server (our
//! agent) are both built from, so each mode is programmed with the same
//! Services.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::sync::cluster;

/// A Service's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// Lower case, as iptables and nft spell it.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// Upper case, as the Kubernetes API spells it.
    pub fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// One Service port with its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub proto: Proto,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Set for a NodePort Service (externalTrafficPolicy Cluster).
    pub node_port: Option<u16>,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Frontend {
    /// `namespace/name:port`, kube-proxy's ServicePortName.
    pub fn port_name(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    /// The Service object the API server would hold.
    pub fn service(&self) -> Service {
        let ip = self.cluster_ip.to_string();
        Service {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(
                    if self.node_port.is_some() {
                        "NodePort"
                    } else {
                        "ClusterIP"
                    }
                    .into(),
                ),
                cluster_ip: Some(ip.clone()),
                cluster_ips: Some(vec![ip]),
                external_traffic_policy: self.node_port.map(|_| "Cluster".into()),
                ports: Some(vec![ServicePort {
                    name: Some(self.port_name.clone()),
                    port: self.port.into(),
                    node_port: self.node_port.map(i32::from),
                    protocol: Some(self.proto.upper().into()),
                    target_port: Some(IntOrString::Int(self.target_port.into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The EndpointSlice the EndpointSlice controller would write for it.
    pub fn slice(&self) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{}-0", self.name)),
                namespace: Some(self.namespace.clone()),
                labels: Some([("kubernetes.io/service-name".into(), self.name.clone())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: self
                .endpoints
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some(self.port_name.clone()),
                port: Some(self.target_port.into()),
                protocol: Some(self.proto.upper().into()),
                ..Default::default()
            }]),
        }
    }
}

/// What a node's proxy is given: the cluster's pod CIDR (kube-proxy's
/// `--cluster-cidr`, which decides what is masqueraded), the node's own
/// addresses (where NodePorts answer) and the Services.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub cluster_cidr: Ipv4Net,
    pub node_ips: Vec<Ipv4Addr>,
    pub frontends: Vec<Frontend>,
}

/// The synthetic Services of the control-plane benchmark (same addresses:
/// see [`cluster`]), `n` of them with 10 endpoints each.
pub fn synthetic(n: usize) -> impl Iterator<Item = Frontend> {
    (0..n).map(|i| cluster::frontend(i, &cluster::initial_endpoints(i)))
}
