//! One Service on its own: the frontends it asks for and what is wrong with
//! it. Endpoints and other Services come in later ([`ServiceShape::frontends`],
//! [`ServiceShape::errors`]), so an EndpointSlice change or a conflicting
//! Service does not require reading the Service object again.

mod external;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

use super::endpoints::{backends, SliceEndpoints};
use super::{
    is_usable_unicast, object_error, port_number, ConfigError, DesiredFrontend, Frontend, Named,
    ObjectRef, Proto, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, NODE_PORT_VIP,
};

/// Service types that have a cluster IP (NodePort and LoadBalancer build on ClusterIP).
const PROXIED_TYPES: [&str; 3] = ["ClusterIP", "NodePort", "LoadBalancer"];

/// What a Service asks for, independent of endpoints and other Services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServiceShape {
    /// The manifest the Service came from, for conflict errors found later.
    file: Option<PathBuf>,
    /// Problems and frontend claims, in the order the Service's fields are
    /// read, so that errors keep that order once conflicts are known.
    items: Box<[Item]>,
    /// It has an IPv6 cluster IP, external IP or load-balancer IP (not
    /// programmed).
    pub(super) ipv6: bool,
    /// externalTrafficPolicy Local: external frontends serve this node's
    /// endpoints only.
    local: bool,
    /// loadBalancerSourceRanges (IPv4), for the load-balancer IP frontends.
    source_ranges: Vec<Ipv4Net>,
    /// The healthCheckNodePort this node must serve (LoadBalancer with
    /// externalTrafficPolicy Local).
    pub(super) health_check: Option<u16>,
    /// sessionAffinity ClientIP timeout (0: none), for all its frontends.
    affinity_timeout_s: u32,
    /// internalTrafficPolicy Local: the cluster IP serves this node's
    /// endpoints only (none: drop, not forward).
    internal_local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// Boxed: errors are rare, claims are kept for every Service.
    Error(Box<ConfigError>),
    /// `spec.ports[port]`, reached `via` one address, wants `frontend`.
    Claim {
        port: usize,
        via: Via,
        frontend: Frontend,
        port_name: Option<String>,
        /// No earlier claim of this Service is for the same frontend.
        first: bool,
    },
}

/// Which address of the Service a frontend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    ClusterIp,
    NodePort,
    /// `spec.externalIPs[i]`.
    ExternalIp(usize),
    /// `status.loadBalancer.ingress[i].ip`.
    LoadBalancer(usize),
}

impl Via {
    /// Reached from outside the node, through its uplinks.
    fn external(self) -> bool {
        self != Via::ClusterIp
    }

    /// The field to fix when the frontend of `spec.ports[port]` reached
    /// this way is taken.
    fn field(self, port: usize) -> String {
        match self {
            Via::ClusterIp => format!("spec.ports[{port}]"),
            Via::NodePort => format!("spec.ports[{port}].nodePort"),
            Via::ExternalIp(i) => format!("spec.externalIPs[{i}]"),
            Via::LoadBalancer(i) => format!("status.loadBalancer.ingress[{i}].ip"),
        }
    }
}

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub(super) const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// sessionAffinity ClientIP's timeout in seconds, 0 without affinity. The
/// API server bounds it to 1..=86400; anything else falls back to the
/// default rather than disabling affinity a workload asked for.
fn affinity_timeout(service: &Service) -> u32 {
    let Some(spec) = &service.spec else { return 0 };
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return 0;
    }
    spec.session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| (1..=86_400).contains(t))
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
}

impl ServiceShape {
    /// Reads a Service. A Service kube-proxy leaves alone asks for nothing.
    pub(super) fn read(service: &Named<'_, Service>) -> Self {
        let mut reader = Reader {
            object: service,
            items: Vec::new(),
            ipv6: false,
        };
        let external = reader.read().unwrap_or_default();
        ServiceShape {
            file: service.file.map(Path::to_path_buf),
            items: reader.items.into(),
            ipv6: reader.ipv6,
            local: external.local,
            source_ranges: external.source_ranges,
            health_check: external.health_check,
            affinity_timeout_s: affinity_timeout(service.object),
            internal_local: service
                .object
                .spec
                .as_ref()
                .is_some_and(|s| s.internal_traffic_policy.as_deref() == Some("Local")),
        }
    }

    /// The distinct frontends claimed, in claim order.
    pub(super) fn claimed(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.claims()
            .filter(|c| c.first)
            .map(|claim| claim.frontend)
    }

    /// What each claimed frontend serves, given this Service's EndpointSlices
    /// and this node's zone.
    pub(super) fn frontends<'s>(
        &self,
        service: &ObjectRef,
        slices: impl Iterator<Item = &'s SliceEndpoints> + Clone,
        zone: Option<&str>,
    ) -> Vec<(Frontend, DesiredFrontend)> {
        self.claims()
            .filter(|c| c.first)
            .map(|claim| {
                let name = claim.port_name.as_deref().unwrap_or("");
                let external = claim.via.external();
                // externalTrafficPolicy governs traffic from outside,
                // internalTrafficPolicy the cluster IP.
                let local_only = if external {
                    self.local
                } else {
                    self.internal_local
                };
                let source_ranges = match claim.via {
                    Via::LoadBalancer(_) => self.source_ranges.clone(),
                    _ => Vec::new(),
                };
                let proto = claim.frontend.proto;
                let backends_for =
                    |local_only| backends(slices.clone(), name, proto, local_only, zone);
                let chosen = backends_for(local_only);
                let internal_backends = if external && local_only {
                    backends_for(false).difference(&chosen).copied().collect()
                } else {
                    BTreeSet::new()
                };
                let wanted = DesiredFrontend {
                    service: service.clone(),
                    port_name: claim.port_name.clone(),
                    backends: chosen,
                    internal_backends,
                    external,
                    local_only,
                    source_ranges,
                    affinity_timeout_s: self.affinity_timeout_s,
                };
                (claim.frontend, wanted)
            })
            .collect()
    }

    /// The Service's problems, including the ports that lost their frontend
    /// to `winner(frontend)` (another Service, or an earlier claim of this
    /// one) and a health check port served for `health_winner` instead.
    pub(super) fn errors<'w>(
        &self,
        service: &ObjectRef,
        winner: impl Fn(&Frontend) -> Option<&'w ObjectRef>,
        health_winner: Option<&ObjectRef>,
    ) -> Vec<ConfigError> {
        let error = |field: String, message: String| {
            object_error::<Service>(service, self.file.as_deref(), field, message)
        };
        let mut errors = Vec::new();
        for item in &self.items {
            match item {
                Item::Error(e) => errors.push((**e).clone()),
                Item::Claim {
                    port,
                    via,
                    frontend,
                    first,
                    ..
                } => {
                    let message = match winner(frontend) {
                        Some(w) if w != service => {
                            format!("{frontend} is already served by Service {w}; port ignored")
                        }
                        _ if *first => continue,
                        _ => format!(
                            "{frontend} duplicates another port or address of this Service; ignored"
                        ),
                    };
                    errors.push(error(via.field(*port), message));
                }
            }
        }
        if let (Some(port), Some(w)) = (self.health_check, health_winner) {
            if w != service {
                let message = format!(
                    "health check node port {port} is already served for Service {w}; ignored"
                );
                errors.push(error("spec.healthCheckNodePort".into(), message));
            }
        }
        errors
    }

    fn claims(&self) -> impl Iterator<Item = Claim<'_>> {
        self.items.iter().filter_map(|item| match item {
            Item::Claim {
                via,
                frontend,
                port_name,
                first,
                ..
            } => Some(Claim {
                via: *via,
                frontend: *frontend,
                port_name,
                first: *first,
            }),
            Item::Error(_) => None,
        })
    }
}

struct Claim<'a> {
    via: Via,
    frontend: Frontend,
    port_name: &'a Option<String>,
    first: bool,
}

/// Walks one Service's fields.
struct Reader<'r, 'a> {
    object: &'r Named<'a, Service>,
    items: Vec<Item>,
    ipv6: bool,
}

impl Reader<'_, '_> {
    /// Records the frontend claims and problems; returns what external
    /// frontends need besides, or `None` if the Service asks for nothing.
    fn read(&mut self) -> Option<external::Settings> {
        // The API server always stores one; a manifest may lack it.
        let Some(spec) = self.object.object.spec.as_ref() else {
            self.report("spec", "missing: the Service asks for nothing");
            return None;
        };
        if let Some(reason) = self.not_ours(spec) {
            tracing::debug!(service = %self.object.oref, reason, "not proxied");
            return None;
        }
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !PROXIED_TYPES.contains(&type_) {
            self.report("spec.type", format!("unsupported Service type {type_:?}"));
            return None;
        }
        let vips = self.cluster_ips(spec);
        let external_ips = self.external_ips(spec);
        let (settings, lb_ips) = self.external_settings(spec, type_);
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            let Some((number, proto)) = self.service_port(i, port) else {
                continue;
            };
            let port_name = port.name.clone().filter(|n| !n.is_empty());
            let node_port = self.node_port(i, port, type_);
            let addresses = vips.iter().map(|&vip| (Via::ClusterIp, vip, number));
            let addresses = addresses
                .chain(node_port.map(|n| (Via::NodePort, NODE_PORT_VIP, n)))
                .chain(
                    external_ips
                        .iter()
                        .map(|&(j, ip)| (Via::ExternalIp(j), ip, number)),
                )
                .chain(
                    lb_ips
                        .iter()
                        .map(|&(k, ip)| (Via::LoadBalancer(k), ip, number)),
                );
            for (via, vip, port) in addresses {
                let frontend = Frontend { vip, port, proto };
                self.claim(i, via, frontend, port_name.clone());
            }
        }
        Some(settings)
    }

    fn claim(&mut self, port: usize, via: Via, frontend: Frontend, port_name: Option<String>) {
        let first = !self
            .items
            .iter()
            .any(|item| matches!(item, Item::Claim { frontend: f, .. } if *f == frontend));
        self.items.push(Item::Claim {
            port,
            via,
            frontend,
            port_name,
            first,
        });
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
        // The API server keeps clusterIPs[0] equal to clusterIP: reading
        // it again would report one bad address twice.
        let all = (spec.cluster_ips.iter().flatten().enumerate())
            .filter(|&(i, ip)| i > 0 || spec.cluster_ip.as_ref() != Some(ip));
        let fields = primary.chain(all.map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)));
        let mut vips = Vec::new();
        for (field, text) in fields {
            let ip = self.address(field, text, "a cluster IP");
            if let Some(ip) = ip.filter(|ip| !vips.contains(ip)) {
                vips.push(ip);
            }
        }
        vips
    }

    /// The IPv4 address in `field` (`what` it is, for errors), or `None`:
    /// reported if unusable, noted in `ipv6` if IPv6.
    fn address(&mut self, field: String, text: &str, what: &str) -> Option<Ipv4Addr> {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if is_usable_unicast(ip) => Some(ip),
            Ok(IpAddr::V4(ip)) => {
                self.report(field, format!("{ip} cannot be {what}"));
                None
            }
            Ok(IpAddr::V6(_)) => {
                self.ipv6 = true;
                None
            }
            Err(_) => {
                self.report(field, format!("invalid IP address {text:?}"));
                None
            }
        }
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

    fn report(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.items
            .push(Item::Error(Box::new(self.object.error(field, message))));
    }
}
