//! From Kubernetes objects to the frontends the load balancer must serve.
//!
//! [`desired_state`] is a pure function of the Services and EndpointSlices
//! (from manifest files or, later, from the API server's watch caches). It
//! follows kube-proxy's semantics, so that replacing kube-proxy changes no
//! Service's behaviour. Anything wrong with one object or one port becomes a
//! [`ConfigError`] and affects only that object or port.

mod endpoints;
mod error;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use endpoints::ServiceEndpoints;
pub(crate) use error::object_label;
pub use error::ConfigError;

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

/// What clients connect to: a cluster IP, a port and a protocol.
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
    /// Ready endpoints. May be empty: the frontend still exists, so the
    /// datapath can reject connections instead of letting them leak out.
    pub backends: BTreeSet<BackendAddr>,
}

/// Everything the load balancer should serve, and what could not be served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<Frontend, DesiredFrontend>,
    pub errors: Vec<ConfigError>,
    /// Services with an IPv6 cluster IP, which is not programmed (the
    /// datapath is IPv4-only for now); their IPv4 family, if any, is.
    pub ipv6_skipped: BTreeSet<ObjectRef>,
}

/// Computes the frontends for `services` and their backends from `slices`.
/// Each object comes with the file it was read from, if any (objects from
/// the API server have none). Input order does not matter.
pub fn desired_state<'a>(
    services: impl IntoIterator<Item = (&'a Service, Option<&'a Path>)>,
    slices: impl IntoIterator<Item = (&'a EndpointSlice, Option<&'a Path>)>,
) -> Desired {
    let mut errors = Vec::new();
    let mut slice_errors = Vec::new();
    let endpoints = ServiceEndpoints::collect(slices, &mut slice_errors);
    let mut frontends = BTreeMap::new();
    let mut ipv6_skipped = BTreeSet::new();
    for object in named_objects(services, &mut errors) {
        let mut service = ServiceCtx {
            object,
            errors: &mut errors,
            ipv6_skipped: &mut ipv6_skipped,
        };
        service.add_frontends(&endpoints, &mut frontends);
    }
    errors.append(&mut slice_errors);
    Desired {
        frontends,
        errors,
        ipv6_skipped,
    }
}

/// An input object with its name resolved and its origin for error messages.
struct Named<'a, T> {
    oref: ObjectRef,
    object: &'a T,
    file: Option<&'a Path>,
}

impl<T: Resource> Named<'_, T> {
    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let label = object_label(T::KIND, Some(&self.oref.namespace), &self.oref.name);
        ConfigError::new(self.file, label, field, message)
    }
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
        let meta = object.metadata();
        let Some(name) = meta.name.clone() else {
            let message = format!("a {} needs a name", T::KIND);
            errors.push(ConfigError::new(file, T::KIND, "metadata.name", message));
            continue;
        };
        let namespace = meta
            .namespace
            .clone()
            .unwrap_or_else(|| error::DEFAULT_NAMESPACE.into());
        named.push(Named {
            oref: ObjectRef { namespace, name },
            object,
            file,
        });
    }
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

/// Service types that have a cluster IP (NodePort and LoadBalancer build on ClusterIP).
const PROXIED_TYPES: [&str; 3] = ["ClusterIP", "NodePort", "LoadBalancer"];

/// One Service being turned into frontends.
struct ServiceCtx<'a, 'e> {
    object: Named<'a, Service>,
    errors: &'e mut Vec<ConfigError>,
    ipv6_skipped: &'e mut BTreeSet<ObjectRef>,
}

impl ServiceCtx<'_, '_> {
    fn add_frontends(
        &mut self,
        endpoints: &ServiceEndpoints,
        frontends: &mut BTreeMap<Frontend, DesiredFrontend>,
    ) {
        let Some(spec) = &self.object.object.spec else {
            return;
        };
        if let Some(reason) = self.not_ours(spec) {
            tracing::debug!(service = %self.object.oref, reason, "not proxied");
            return;
        }
        if let Some(other) = spec.type_.as_deref().filter(|t| !PROXIED_TYPES.contains(t)) {
            self.report("spec.type", format!("unsupported Service type {other:?}"));
            return;
        }
        let vips = self.cluster_ips(spec);
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            let Some((number, proto)) = self.service_port(i, port) else {
                continue;
            };
            let port_name = port.name.clone().filter(|n| !n.is_empty());
            let backends =
                endpoints.backends(&self.object.oref, port_name.as_deref().unwrap_or(""), proto);
            for &vip in &vips {
                let frontend = Frontend {
                    vip,
                    port: number,
                    proto,
                };
                let wanted = DesiredFrontend {
                    service: self.object.oref.clone(),
                    port_name: port_name.clone(),
                    backends: backends.clone(),
                };
                self.claim(frontends, frontend, wanted, i);
            }
        }
    }

    /// Why kube-proxy would leave this Service alone (debug log only: these
    /// are normal, not mistakes).
    fn not_ours(&self, spec: &ServiceSpec) -> Option<&'static str> {
        let labels = self.object.object.metadata.labels.as_ref();
        let has_label = |key: &str| labels.is_some_and(|l| l.contains_key(key));
        if has_label(LABEL_SERVICE_PROXY_NAME) {
            return Some(
                "label service.kubernetes.io/service-proxy-name hands it to another proxy",
            );
        }
        if has_label(LABEL_HEADLESS) {
            return Some("label service.kubernetes.io/headless");
        }
        if spec.type_.as_deref() == Some("ExternalName") {
            return Some("ExternalName Services are DNS-only");
        }
        let primary = spec.cluster_ip.as_deref().or(spec
            .cluster_ips
            .iter()
            .flatten()
            .next()
            .map(String::as_str));
        match primary {
            None | Some("") => Some("no cluster IP"),
            Some("None") => Some("headless"),
            Some(_) => None,
        }
    }

    /// The IPv4 cluster IPs. `clusterIPs[0]` repeats `clusterIP`; a second
    /// entry is the other family of a dual-stack Service. IPv6 is skipped
    /// because the datapath is IPv4-only.
    fn cluster_ips(&mut self, spec: &ServiceSpec) -> Vec<Ipv4Addr> {
        let primary = spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_string(), ip));
        let all = spec.cluster_ips.iter().flatten().enumerate();
        let fields = primary.chain(all.map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)));
        let mut vips = Vec::new();
        for (field, text) in fields {
            match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if !is_usable_unicast(ip) => {
                    self.report(field, format!("{ip} cannot be a cluster IP"));
                }
                Ok(IpAddr::V4(ip)) if !vips.contains(&ip) => vips.push(ip),
                Ok(IpAddr::V6(_)) => {
                    self.ipv6_skipped.insert(self.object.oref.clone());
                }
                Ok(_) => {}
                Err(_) => self.report(field, format!("invalid IP address {text:?}")),
            }
        }
        vips
    }

    /// Port number and protocol of `spec.ports[i]`, or `None` (reported) if
    /// this port cannot be programmed. `targetPort` is deliberately not read:
    /// like kube-proxy, backends take their port from the EndpointSlice port
    /// with the same name, which the EndpointSlice controller resolved per
    /// pod (a named targetPort can differ between pods).
    fn service_port(&mut self, i: usize, port: &ServicePort) -> Option<(u16, Proto)> {
        let proto = Proto::parse(port.protocol.as_deref())
            .map_err(|message| self.report(format!("spec.ports[{i}].protocol"), message))
            .ok()?;
        let Some(number) = port_number(port.port) else {
            self.report(
                format!("spec.ports[{i}].port"),
                format!("port {} is out of range (1-65535)", port.port),
            );
            return None;
        };
        Some((number, proto))
    }

    /// Adds the frontend unless another port (of this or another Service)
    /// already has it; two manifest files can easily reuse a cluster IP.
    fn claim(
        &mut self,
        frontends: &mut BTreeMap<Frontend, DesiredFrontend>,
        frontend: Frontend,
        wanted: DesiredFrontend,
        i: usize,
    ) {
        let Some(owner) = frontends.get(&frontend) else {
            frontends.insert(frontend, wanted);
            return;
        };
        let message = if owner.service == wanted.service {
            format!("{frontend} duplicates another port of this Service; port ignored")
        } else {
            format!(
                "{frontend} is already served by Service {}; port ignored",
                owner.service
            )
        };
        self.report(format!("spec.ports[{i}]"), message);
    }

    fn report(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let error = self.object.error(field, message);
        self.errors.push(error);
    }
}
