//! One Service on its own: the frontends it asks for and what is wrong with
//! it. Endpoints and other Services come in later ([`ServiceShape::frontends`],
//! [`ServiceShape::errors`]), so an EndpointSlice change or a conflicting
//! Service does not require reading the Service object again.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

use super::endpoints::{backends, SliceEndpoints};
use super::{
    is_usable_unicast, object_error, port_number, ConfigError, DesiredFrontend, Frontend, Named,
    ObjectRef, Proto, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME,
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
    items: Vec<Item>,
    /// It has an IPv6 cluster IP (not programmed).
    pub(super) ipv6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Error(ConfigError),
    /// `spec.ports[port]` at one cluster IP wants `frontend`.
    Claim {
        port: usize,
        frontend: Frontend,
        port_name: Option<String>,
        /// No earlier port of this Service claims the same frontend.
        first: bool,
    },
}

impl ServiceShape {
    /// Reads a Service. A Service kube-proxy leaves alone asks for nothing.
    pub(super) fn read(service: &Named<'_, Service>) -> Self {
        let mut reader = Reader {
            object: service,
            items: Vec::new(),
            ipv6: false,
        };
        reader.read();
        ServiceShape {
            file: service.file.map(Path::to_path_buf),
            items: reader.items,
            ipv6: reader.ipv6,
        }
    }

    /// The distinct frontends claimed, in claim order.
    pub(super) fn claimed(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.claims()
            .filter(|c| c.first)
            .map(|claim| claim.frontend)
    }

    /// What each claimed frontend serves, given this Service's EndpointSlices.
    pub(super) fn frontends<'s>(
        &self,
        service: &ObjectRef,
        slices: impl Iterator<Item = &'s SliceEndpoints> + Clone,
    ) -> Vec<(Frontend, DesiredFrontend)> {
        self.claims()
            .filter(|c| c.first)
            .map(|claim| {
                let name = claim.port_name.as_deref().unwrap_or("");
                let wanted = DesiredFrontend {
                    service: service.clone(),
                    port_name: claim.port_name.clone(),
                    backends: backends(slices.clone(), name, claim.frontend.proto),
                    external: false,
                    local_only: false,
                    source_ranges: Vec::new(),
                };
                (claim.frontend, wanted)
            })
            .collect()
    }

    /// The Service's problems, including the ports that lost their frontend
    /// to `winner(frontend)` (another Service, or an earlier port of this one).
    pub(super) fn errors<'w>(
        &self,
        service: &ObjectRef,
        winner: impl Fn(&Frontend) -> Option<&'w ObjectRef>,
    ) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for item in &self.items {
            match item {
                Item::Error(e) => errors.push(e.clone()),
                Item::Claim {
                    port,
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
                            "{frontend} duplicates another port of this Service; port ignored"
                        ),
                    };
                    let field = format!("spec.ports[{port}]");
                    errors.push(object_error::<Service>(
                        service,
                        self.file.as_deref(),
                        field,
                        message,
                    ));
                }
            }
        }
        errors
    }

    fn claims(&self) -> impl Iterator<Item = Claim<'_>> {
        self.items.iter().filter_map(|item| match item {
            Item::Claim {
                frontend,
                port_name,
                first,
                ..
            } => Some(Claim {
                frontend: *frontend,
                port_name,
                first: *first,
            }),
            Item::Error(_) => None,
        })
    }
}

struct Claim<'a> {
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
    fn read(&mut self) {
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
            for &vip in &vips {
                let frontend = Frontend {
                    vip,
                    port: number,
                    proto,
                };
                let first = !self
                    .items
                    .iter()
                    .any(|item| matches!(item, Item::Claim { frontend: f, .. } if *f == frontend));
                self.items.push(Item::Claim {
                    port: i,
                    frontend,
                    port_name: port_name.clone(),
                    first,
                });
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
                Ok(IpAddr::V6(_)) => self.ipv6 = true,
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

    fn report(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.items
            .push(Item::Error(self.object.error(field, message)));
    }
}
