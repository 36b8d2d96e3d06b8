//! The Services and EndpointSlices scenarios apply, written as the API
//! server and the EndpointSlice controller would hold them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::servers::{LINE_PORT, TCP_PORT, UDP_PORT};
use crate::topology::Pod;

/// A Service port: name, port, protocol ("TCP"/"UDP"), targetPort (a
/// number or a name, as YAML), nodePort (0: none).
#[derive(Clone, Copy, Debug)]
pub struct Port {
    pub name: &'static str,
    pub port: u16,
    pub protocol: &'static str,
    pub target: &'static str,
    pub node_port: u16,
}

/// The echo servers' ports in every pod, under the names slices give them.
pub const HTTP: SlicePort = SlicePort {
    name: "http",
    port: TCP_PORT,
    protocol: "TCP",
};
pub const DNS: SlicePort = SlicePort {
    name: "dns",
    port: UDP_PORT,
    protocol: "UDP",
};
pub const LINES: SlicePort = SlicePort {
    name: "lines",
    port: LINE_PORT,
    protocol: "TCP",
};

/// Service port `port` named `http` to the TCP echo server.
pub const fn http(port: u16) -> Port {
    Port {
        name: "http",
        port,
        protocol: "TCP",
        target: "http",
        node_port: 0,
    }
}

/// Service port `port` named `dns` to the UDP echo server.
pub const fn dns(port: u16) -> Port {
    Port {
        name: "dns",
        port,
        protocol: "UDP",
        target: "dns",
        node_port: 0,
    }
}

impl Port {
    pub const fn node_port(mut self, node_port: u16) -> Port {
        self.node_port = node_port;
        self
    }
}

/// A Service of `type_` with `ports`, and `extra` spec lines (indented two
/// spaces, e.g. `"  sessionAffinity: ClientIP\n"`).
pub fn service(
    name: &str,
    type_: &str,
    cluster_ip: Ipv4Addr,
    ports: &[Port],
    extra: &str,
) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  type: {type_}\n  clusterIP: {cluster_ip}\n  clusterIPs: [\"{cluster_ip}\"]\n{extra}  ports:\n"
    );
    for p in ports {
        let _ = write!(
            yaml,
            "  - {{name: {}, port: {}, protocol: {}, targetPort: {}",
            p.name, p.port, p.protocol, p.target
        );
        if p.node_port != 0 {
            let _ = write!(yaml, ", nodePort: {}", p.node_port);
        }
        yaml.push_str("}\n");
    }
    yaml.push_str("---\n");
    yaml
}

/// A port of an EndpointSlice.
#[derive(Clone, Copy, Debug)]
pub struct SlicePort {
    pub name: &'static str,
    pub port: u16,
    pub protocol: &'static str,
}

/// An endpoint: a pod on a node, with its conditions.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub node: String,
    pub zone: Option<&'static str>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hints.forZones`.
    pub zone_hints: Vec<&'static str>,
}

impl Endpoint {
    /// A ready endpoint for `pod` on `node`.
    pub fn ready(pod: &Pod, node: &str) -> Endpoint {
        Endpoint {
            ip: pod.ip,
            node: node.to_string(),
            zone: None,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: Vec::new(),
        }
    }

    /// Its pod is shutting down but still serving.
    pub fn terminating(mut self) -> Endpoint {
        self.ready = false;
        self.terminating = true;
        self
    }

    /// Its pod failed its readiness probe.
    pub fn unready(mut self) -> Endpoint {
        self.ready = false;
        self.serving = false;
        self
    }

    pub fn in_zone(mut self, zone: &'static str, hinted: bool) -> Endpoint {
        self.zone = Some(zone);
        if hinted {
            self.zone_hints = vec![zone];
        }
        self
    }
}

/// The slice `name` of Service `service`.
pub fn slice(name: &str, service: &str, ports: &[SlicePort], endpoints: &[Endpoint]) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports:\n"
    );
    for p in ports {
        let _ = writeln!(
            yaml,
            "  - {{name: {}, port: {}, protocol: {}}}",
            p.name, p.port, p.protocol
        );
    }
    if endpoints.is_empty() {
        yaml.push_str("endpoints: []\n");
    } else {
        yaml.push_str("endpoints:\n");
    }
    for e in endpoints {
        let _ = write!(
            yaml,
            "  - addresses: [\"{}\"]\n    nodeName: {}\n    conditions: {{ready: {}, serving: {}, terminating: {}}}\n",
            e.ip, e.node, e.ready, e.serving, e.terminating
        );
        if let Some(zone) = e.zone {
            let _ = writeln!(yaml, "    zone: {zone}");
        }
        if !e.zone_hints.is_empty() {
            let zones: Vec<String> = e
                .zone_hints
                .iter()
                .map(|z| format!("{{name: {z}}}"))
                .collect();
            let _ = writeln!(yaml, "    hints: {{forZones: [{}]}}", zones.join(", "));
        }
    }
    yaml.push_str("---\n");
    yaml
}
