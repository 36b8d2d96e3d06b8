//! From Kubernetes objects to the frontends the load balancer must serve.
//!
//! [`desired_state`] is a pure function of the Services and EndpointSlices
//! (from manifest files or from the API server's watches); [`DesiredIndex`]
//! gives the same result kept up to date one object change at a time, at a
//! cost that does not grow with the cluster. Both compute for one node
//! (which endpoints are local to it) and follow kube-proxy's semantics, so
//! that replacing kube-proxy changes no Service's behaviour.
//! Anything wrong with one object or one port becomes a [`ConfigError`] and
//! affects only that object or port.

mod claims;
mod endpoints;
mod error;
mod health_checks;
mod index;
mod service;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_bad_input;
#[cfg(test)]
mod tests_external;
#[cfg(test)]
mod tests_topology;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

pub(crate) use error::object_label;
pub use error::ConfigError;
pub use index::DesiredIndex;

/// Label linking an EndpointSlice to its Service (same namespace).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label handing a Service to another proxy; kube-proxy leaves it alone.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a Service headless; kube-proxy leaves it alone.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// Transport protocol of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// IP protocol number, as the datapath sees it in the IP header.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    /// Reads a Kubernetes `protocol` field; absent means TCP (the API default).
    fn parse(protocol: Option<&str>) -> Result<Proto, String> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            other => Err(format!(
                "unsupported protocol {other:?} (TCP and UDP are supported)"
            )),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// The address of NodePort frontends: they answer on every address of the
/// node that `--nodeport-addresses` selects (the datapath checks the
/// destination against the node's addresses, then looks up this wildcard).
pub const NODE_PORT_VIP: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// What clients connect to: a cluster IP (or an external IP, a load
/// balancer IP, [`NODE_PORT_VIP`] for a NodePort), a port and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.vip, self.port, self.proto)
    }
}

/// Namespace and name of a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a frontend's traffic goes: a pod address and the port the pod listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The endpoint is not on this node (its `nodeName` is another node's,
    /// or unknown): traffic from outside to it is SNATed.
    pub remote: bool,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// One frontend to program and the Service port it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub service: ObjectRef,
    pub port_name: Option<String>,
    /// Ready endpoints (this node's only, if `local_only`). May be empty:
    /// the frontend still exists, so the datapath can reject connections
    /// instead of letting them leak out.
    pub backends: BTreeSet<BackendAddr>,
    /// Reached from outside the node (NodePort, externalIP, load-balancer
    /// IP): served on the uplinks.
    pub external: bool,
    /// externalTrafficPolicy Local (external frontends) or
    /// internalTrafficPolicy Local (the cluster IP): `backends`
    /// are this node's endpoints only, and none means drop.
    pub local_only: bool,
    /// An external frontend with `local_only`: the cluster's other
    /// endpoints, which the node's own clients (its pods and host-network
    /// sockets) use too: kube-proxy sends them through the cluster policy,
    /// so that a pod reaches a Local Service's load-balancer IP from any
    /// node. Empty for every other frontend.
    pub internal_backends: BTreeSet<BackendAddr>,
    /// loadBalancerSourceRanges (load-balancer IP frontends); empty: any
    /// client.
    pub source_ranges: Vec<ipnet::Ipv4Net>,
    /// sessionAffinity ClientIP: a client's new flows stick to its last
    /// backend while its previous flow is less than this many seconds old
    /// (0: no affinity).
    pub affinity_timeout_s: u32,
}

impl DesiredFrontend {
    /// Every backend in slot order: those for every client, then those
    /// for the node's own clients only.
    pub fn slots(&self) -> impl Iterator<Item = &BackendAddr> {
        self.backends.iter().chain(&self.internal_backends)
    }

    /// How many slots [`Self::slots`] fills.
    pub fn slot_count(&self) -> usize {
        self.backends.len() + self.internal_backends.len()
    }

    /// Keeps the first `n` slots only.
    pub fn truncate_slots(&mut self, n: usize) {
        let external = self.backends.len().min(n);
        self.backends = std::mem::take(&mut self.backends)
            .into_iter()
            .take(external)
            .collect();
        let internal = std::mem::take(&mut self.internal_backends);
        self.internal_backends = internal.into_iter().take(n - external).collect();
    }
}

/// A Service's health check node port (externalTrafficPolicy Local), as
/// kube-proxy serves it for cloud load balancers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ObjectRef,
    /// Ready endpoints of the Service on this node (distinct addresses:
    /// one pod serving several ports is one endpoint, as in kube-proxy).
    pub local_endpoints: usize,
}

/// Everything the load balancer should serve, and what could not be served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<Frontend, DesiredFrontend>,
    pub errors: Vec<ConfigError>,
    /// Services with an IPv6 cluster IP, external IP or load-balancer IP,
    /// which is not programmed (the datapath is IPv4-only for now); their
    /// IPv4 addresses, if any, are.
    pub ipv6_skipped: BTreeSet<ObjectRef>,
    /// healthCheckNodePort -> its Service and local endpoint count.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

/// Computes the frontends for `services` and their backends from `slices`,
/// as seen from the node named `node_name` (see [`DesiredIndex::new`]).
/// Each object comes with the file it was read from, if any (objects from
/// the API server have none). Input order does not matter.
///
/// This is [`DesiredIndex`] filled from scratch, so a full computation and
/// the index kept up to date event by event can never disagree.
pub fn desired_state<'a>(
    node_name: Option<&str>,
    services: impl IntoIterator<Item = (&'a Service, Option<&'a Path>)>,
    slices: impl IntoIterator<Item = (&'a EndpointSlice, Option<&'a Path>)>,
) -> Desired {
    let mut index = DesiredIndex::new(node_name.map(str::to_owned));
    // Slices first: each Service then finds its endpoints when it arrives.
    index.replace_slices(slices);
    index.replace_services(services);
    index.into_desired()
}

/// Namespace and name of an object; `None` if it has no name (or an empty
/// one). A manifest object without a namespace (or with an empty one)
/// lands in `default`, as with `kubectl apply`.
pub fn object_ref(meta: &ObjectMeta) -> Option<ObjectRef> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let namespace = (meta.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| error::DEFAULT_NAMESPACE.into());
    Some(ObjectRef { namespace, name })
}

/// The API server refuses names longer than a DNS subdomain and
/// namespaces longer than a DNS label; a manifest may still hold one
/// (a paste gone wrong), which would then flood every log line naming it.
/// Returns the field and the problem.
fn name_problem(oref: &ObjectRef) -> Option<(&'static str, String)> {
    const MAX_NAME: usize = 253;
    const MAX_NAMESPACE: usize = 63;
    let too_long = |what: &str, len: usize, max: usize| {
        format!("{what} is {len} characters long; Kubernetes allows at most {max}")
    };
    if oref.name.len() > MAX_NAME {
        let message = too_long("the name", oref.name.len(), MAX_NAME);
        return Some(("metadata.name", message));
    }
    if oref.namespace.len() > MAX_NAMESPACE {
        let message = too_long("the namespace", oref.namespace.len(), MAX_NAMESPACE);
        return Some(("metadata.namespace", message));
    }
    None
}

/// An input object with its name resolved and its origin for error messages.
struct Named<'a, T> {
    oref: ObjectRef,
    object: &'a T,
    file: Option<&'a Path>,
}

impl<T: Resource> Named<'_, T> {
    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        object_error::<T>(&self.oref, self.file, field, message)
    }
}

/// A problem with the object of kind `T` named `oref`.
fn object_error<T: Resource>(
    oref: &ObjectRef,
    file: Option<&Path>,
    field: impl Into<String>,
    message: impl Into<String>,
) -> ConfigError {
    let label = object_label(T::KIND, Some(&oref.namespace), &oref.name);
    ConfigError::new(file, label, field, message)
}

/// Sorts objects by namespace/name, so the outcome (which of two conflicting
/// Services wins a frontend) does not depend on the order a cache lists
/// them. An unnamed object or a second object with the same name (two
/// manifest files defining it) is reported and dropped; of duplicates the
/// first in input order is kept.
fn named_objects<'a, T>(
    objects: impl IntoIterator<Item = (&'a T, Option<&'a Path>)>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Named<'a, T>>
where
    T: Resource + Metadata<Ty = ObjectMeta> + 'a,
{
    let mut named: Vec<Named<'a, T>> = Vec::new();
    for (object, file) in objects {
        let Some(oref) = object_ref(object.metadata()) else {
            let message = format!("a {} needs a name", T::KIND);
            errors.push(ConfigError::new(file, T::KIND, "metadata.name", message));
            continue;
        };
        let named_object = Named { oref, object, file };
        match name_problem(&named_object.oref) {
            Some((field, message)) => errors.push(named_object.error(field, message)),
            None => named.push(named_object),
        }
    }
    // Stable: of two copies the first in input order stays first.
    named.sort_by(|a, b| a.oref.cmp(&b.oref));
    let mut unique: Vec<Named<'a, T>> = Vec::with_capacity(named.len());
    for item in named {
        match unique.last() {
            Some(kept) if kept.oref == item.oref => {
                let first = kept
                    .file
                    .map_or("another object".into(), |f| f.display().to_string());
                errors.push(item.error(
                    "metadata.name",
                    format!("defined more than once; this copy is ignored (first in {first})"),
                ));
            }
            _ => unique.push(item),
        }
    }
    unique
}

/// Kubernetes port numbers are `i32`; a usable one is 1..=65535.
fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&p| p != 0)
}

/// The API server refuses these as cluster IPs or endpoint addresses; a
/// frontend or backend at such an address would capture or leak node-local
/// traffic.
fn is_usable_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast())
}
