//! The fields that make a Service reachable from outside the node (node
//! ports, external IPs, load-balancer IPs) and the ones that apply to those
//! frontends only (externalTrafficPolicy, loadBalancerSourceRanges,
//! healthCheckNodePort), read as kube-proxy reads them.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

use super::Reader;
use crate::model::port_number;

/// What the external frontends of one Service need besides their addresses.
#[derive(Debug, Default)]
pub(super) struct Settings {
    /// externalTrafficPolicy is Local.
    pub(super) local: bool,
    /// For the load-balancer IP frontends; empty: any client.
    pub(super) source_ranges: Vec<Ipv4Net>,
    pub(super) health_check: Option<u16>,
}

/// Addresses with the index of the list entry they come from (for errors).
type Indexed = Vec<(usize, Ipv4Addr)>;

impl Reader<'_, '_> {
    /// `spec.externalIPs`, IPv4, each once. kube-proxy serves them whatever
    /// the Service type.
    pub(super) fn external_ips(&mut self, spec: &ServiceSpec) -> Indexed {
        let mut ips = Indexed::new();
        for (i, text) in spec.external_ips.iter().flatten().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            let ip = self.address(field, text, "an external IP");
            if let Some(ip) = ip.filter(|ip| ips.iter().all(|(_, seen)| seen != ip)) {
                ips.push((i, ip));
            }
        }
        ips
    }

    /// What applies to external frontends, and the load-balancer IPs to
    /// serve. Only a LoadBalancer Service has load-balancer IPs, source
    /// ranges and a health check port (the API server refuses the latter
    /// two on other types; a stale ingress status of a former LoadBalancer
    /// is not served).
    pub(super) fn external_settings(
        &mut self,
        spec: &ServiceSpec,
        type_: &str,
    ) -> (Settings, Indexed) {
        // kube-proxy: externalTrafficPolicy matters on every externally
        // reachable Service, and only external frontends are built with it.
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let mut settings = Settings {
            local,
            ..Settings::default()
        };
        if type_ != "LoadBalancer" {
            return (settings, Indexed::new());
        }
        let mut lb_ips = self.load_balancer_ips();
        match self.source_ranges(spec) {
            Some(ranges) => settings.source_ranges = ranges,
            None => lb_ips.clear(),
        }
        if local {
            settings.health_check = self.health_check_port(spec);
        }
        (settings, lb_ips)
    }

    /// The VIP-mode IPv4 addresses of `status.loadBalancer.ingress`, each
    /// once. An `ipMode: Proxy` load balancer connects to the nodes itself,
    /// so, as in kube-proxy, its IP is not served here; a hostname-only
    /// ingress has no address to serve.
    fn load_balancer_ips(&mut self) -> Indexed {
        let status = self.object.object.status.as_ref();
        let lb = status.and_then(|s| s.load_balancer.as_ref());
        let mut ips = Indexed::new();
        for (i, ingress) in lb
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(text) = ingress.ip.as_deref().filter(|t| !t.is_empty()) else {
                continue;
            };
            if ingress.ip_mode.as_deref().is_some_and(|mode| mode != "VIP") {
                continue;
            }
            let field = format!("status.loadBalancer.ingress[{i}].ip");
            let ip = self.address(field, text, "a load-balancer IP");
            if let Some(ip) = ip.filter(|ip| ips.iter().all(|(_, seen)| seen != ip)) {
                ips.push((i, ip));
            }
        }
        ips
    }

    /// `spec.loadBalancerSourceRanges` for IPv4 clients, sorted, or `None`
    /// if no IPv4 client may connect: then the load-balancer IPs are not
    /// served at all (nothing forwards their packets to a backend).
    ///
    /// kube-proxy skips an entry it cannot parse (and serves a list left
    /// empty to everyone). The list only ever allows: with every entry
    /// skipped, a Service meant for a few clients would be open to all. So
    /// any bad entry is reported and withholds the load-balancer IPs until
    /// it is fixed, which fails closed and is impossible to miss; serving
    /// the good entries only would also be closed, but would turn away some
    /// intended clients with no visible cause. A list of IPv6 ranges only
    /// allows no IPv4 client, so it withholds them the same way (kube-proxy
    /// would leave the IPv4 addresses open).
    fn source_ranges(&mut self, spec: &ServiceSpec) -> Option<Vec<Ipv4Net>> {
        let texts = spec
            .load_balancer_source_ranges
            .as_deref()
            .unwrap_or_default();
        let mut ranges = Vec::new();
        let mut valid = true;
        for (i, text) in texts.iter().enumerate() {
            // As in kube-proxy: API validation lets whitespace padding through.
            match text.trim().parse::<IpNet>() {
                Ok(IpNet::V4(net)) => ranges.push(net.trunc()),
                Ok(IpNet::V6(_)) => {}
                Err(_) => {
                    valid = false;
                    self.report(
                        format!("spec.loadBalancerSourceRanges[{i}]"),
                        format!("invalid CIDR {text:?}; the load-balancer IPs are not served until it is fixed"),
                    );
                }
            }
        }
        if !valid || (ranges.is_empty() && !texts.is_empty()) {
            return None;
        }
        ranges.sort();
        ranges.dedup();
        Some(ranges)
    }

    /// The nodePort of `spec.ports[i]`, if any (a LoadBalancer may have
    /// none: allocateLoadBalancerNodePorts false). The API server refuses
    /// one on a ClusterIP Service, so a manifest's is reported, not served.
    pub(super) fn node_port(&mut self, i: usize, port: &ServicePort, type_: &str) -> Option<u16> {
        let number = port.node_port.filter(|&n| n != 0)?;
        let field = format!("spec.ports[{i}].nodePort");
        if type_ == "ClusterIP" {
            self.report(
                field,
                "only NodePort and LoadBalancer Services have node ports; ignored",
            );
            return None;
        }
        let node_port = port_number(number);
        if node_port.is_none() {
            self.report(field, format!("port {number} is out of range (1-65535)"));
        }
        node_port
    }

    /// The port cloud load balancers probe to find the nodes with local
    /// endpoints (kube-proxy serves one for LoadBalancer Services with
    /// externalTrafficPolicy Local only).
    fn health_check_port(&mut self, spec: &ServiceSpec) -> Option<u16> {
        let number = spec.health_check_node_port.filter(|&n| n != 0)?;
        let port = port_number(number);
        if port.is_none() {
            let message = format!("port {number} is out of range (1-65535)");
            self.report("spec.healthCheckNodePort", message);
        }
        port
    }
}
