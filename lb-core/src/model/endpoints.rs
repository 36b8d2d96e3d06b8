//! EndpointSlices reduced to what the load balancer needs: the Service they
//! belong to, the addresses of ready endpoints (and of serving-terminating
//! ones, the fallback when none is ready), whether each is on this node,
//! their topology hints, and the named ports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::{
    is_usable_unicast, port_number, BackendAddr, ConfigError, Named, ObjectRef, Proto,
    LABEL_SERVICE_NAME,
};

/// What one EndpointSlice contributes to its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SliceEndpoints {
    // Boxed slices: no spare capacity, kept for every slice of the cluster.
    ports: Box<[SlicePort]>,
    /// Ready endpoints, and serving-but-terminating ones (the fallback).
    endpoints: Box<[ReadyEndpoint]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadyEndpoint {
    ip: Ipv4Addr,
    /// Its `nodeName` is this node's name.
    local: bool,
    /// Ready. Otherwise it is serving and terminating: used only when the
    /// Service port has no ready endpoint (in the set the traffic policy
    /// allows), as kube-proxy does, so that a rolling update or a scale to
    /// zero drains gracefully instead of refusing connections.
    ready: bool,
    /// `hints.forZones`: the zones whose nodes should prefer it. Set by the
    /// EndpointSlice controller for trafficDistribution PreferClose /
    /// PreferSameZone / PreferSameNode and the topology-mode annotation.
    zone_hints: Box<[String]>,
    /// `hints.forNodes`: `None` without node hints (PreferSameNode sets
    /// them), else whether this node is among them.
    for_this_node: Option<bool>,
}

/// Which endpoints of a Service port this node may use, by their hints
/// (kube-proxy's topology modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology<'z> {
    /// Hints are absent, incomplete or name neither this node nor its zone:
    /// every endpoint.
    Any,
    /// Those hinted for this node.
    SameNode,
    /// Those hinted for this zone.
    SameZone(&'z str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SlicePort {
    /// Empty for the unnamed port of a single-port Service.
    name: String,
    proto: Proto,
    port: u16,
}

/// The Service a slice belongs to and what it contributes, or `None` for a
/// slice without the service-name label or with non-IPv4 addresses
/// (kube-proxy ignores the former; the datapath is IPv4-only). `node_name`
/// is this node's, if known: without it no endpoint is local.
pub(super) fn read_slice(
    slice: &Named<'_, EndpointSlice>,
    node_name: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Option<(ObjectRef, SliceEndpoints)> {
    let labels = slice.object.metadata.labels.as_ref();
    let Some(service) = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) else {
        tracing::debug!(slice = %slice.oref, "EndpointSlice without {LABEL_SERVICE_NAME} label ignored");
        return None;
    };
    match slice.object.address_type.as_str() {
        "IPv4" => {}
        "IPv6" | "FQDN" => {
            tracing::debug!(slice = %slice.oref, address_type = slice.object.address_type, "non-IPv4 EndpointSlice ignored");
            return None;
        }
        // A manifest without the (required) field reads as "".
        other => {
            let message =
                format!("address type {other:?} is none of IPv4, IPv6 and FQDN; slice ignored");
            errors.push(slice.error("addressType", message));
            return None;
        }
    }
    let service = ObjectRef {
        namespace: slice.oref.namespace.clone(),
        name: service.clone(),
    };
    Some((service, SliceEndpoints::parse(slice, node_name, errors)))
}

/// Backends of the Service port named `port_name` with protocol `proto`,
/// from that Service's slices; with `local_only`, this node's endpoints
/// only, else those the topology hints give this node (in `zone`, if it
/// has one). As in kube-proxy, each slice having a port with that name and
/// protocol contributes its ready addresses at that port's number (or, when
/// no slice has a ready one, its serving-and-terminating ones); a slice
/// without such a port contributes nothing. An address:port listed by
/// several slices with different nodes counts as local if any says so
/// (kube-proxy's choice; the slices are briefly inconsistent while a pod
/// moves between them).
pub(super) fn backends<'a>(
    slices: impl IntoIterator<Item = &'a SliceEndpoints>,
    port_name: &str,
    proto: Proto,
    local_only: bool,
    zone: Option<&str>,
) -> BTreeSet<BackendAddr> {
    let slices: Vec<&SliceEndpoints> = slices.into_iter().collect();
    // Traffic policy Local already keeps traffic on the node; kube-proxy
    // applies hints to the cluster-wide endpoints only.
    let topology = if local_only {
        Topology::Any
    } else {
        topology(&slices, port_name, proto, zone)
    };
    let ready = usable(&slices, port_name, proto, local_only, true, topology);
    let chosen = if ready.is_empty() {
        usable(&slices, port_name, proto, local_only, false, topology)
    } else {
        ready
    };
    chosen
        .into_iter()
        .map(|((ip, port), remote)| BackendAddr { ip, port, remote })
        .collect()
}

/// kube-proxy's topology mode for a Service port, decided by its ready
/// endpoints: same node if every one has node hints and some are for this
/// node; else same zone if every one has zone hints and some are for this
/// node's zone; else any. The fallbacks keep a Service answering while
/// the EndpointSlice controller is part-way through hinting, and on a node
/// whose zone has no endpoint (PreferClose's "fall back cluster-wide").
fn topology<'z>(
    slices: &[&SliceEndpoints],
    port_name: &str,
    proto: Proto,
    zone: Option<&'z str>,
) -> Topology<'z> {
    let ready: Vec<&ReadyEndpoint> = slices
        .iter()
        .filter(|slice| slice.port(port_name, proto).is_some())
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|endpoint| endpoint.ready)
        .collect();
    let all_node_hinted = ready.iter().all(|e| e.for_this_node.is_some());
    if all_node_hinted && ready.iter().any(|e| e.for_this_node == Some(true)) {
        return Topology::SameNode;
    }
    let Some(zone) = zone else {
        return Topology::Any;
    };
    let all_zone_hinted = ready.iter().all(|e| !e.zone_hints.is_empty());
    if all_zone_hinted && ready.iter().any(|e| e.zone_hints.iter().any(|z| z == zone)) {
        return Topology::SameZone(zone);
    }
    Topology::Any
}

impl Topology<'_> {
    fn admits(self, endpoint: &ReadyEndpoint) -> bool {
        match self {
            Topology::Any => true,
            Topology::SameNode => endpoint.for_this_node == Some(true),
            Topology::SameZone(zone) => endpoint.zone_hints.iter().any(|z| z == zone),
        }
    }
}

/// (address, port) -> remote, of the ready endpoints (`ready`) or of the
/// serving-and-terminating ones (`!ready`) that serve the port and that
/// `topology` admits.
fn usable(
    slices: &[&SliceEndpoints],
    port_name: &str,
    proto: Proto,
    local_only: bool,
    ready: bool,
    topology: Topology<'_>,
) -> BTreeMap<(Ipv4Addr, u16), bool> {
    let mut remote_by_addr: BTreeMap<(Ipv4Addr, u16), bool> = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice.port(port_name, proto) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if (local_only && !endpoint.local)
                || endpoint.ready != ready
                || !topology.admits(endpoint)
            {
                continue;
            }
            let remote = remote_by_addr
                .entry((endpoint.ip, port.port))
                .or_insert(true);
            *remote &= !endpoint.local;
        }
    }
    remote_by_addr
}

/// How many distinct addresses of this node's ready endpoints the slices
/// list, which kube-proxy's health check server reports for a Service
/// (one pod serving several ports is one endpoint). Like kube-proxy, it
/// counts slices with at least one port, whether or not the Service has
/// that port; ports this load balancer cannot serve (SCTP) are not counted,
/// so a node does not attract traffic it would not balance.
pub(super) fn local_ready_count<'a>(slices: impl IntoIterator<Item = &'a SliceEndpoints>) -> usize {
    let local: BTreeSet<Ipv4Addr> = slices
        .into_iter()
        .filter(|slice| !slice.ports.is_empty())
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|endpoint| endpoint.local && endpoint.ready)
        .map(|endpoint| endpoint.ip)
        .collect();
    local.len()
}

impl SliceEndpoints {
    fn port(&self, name: &str, proto: Proto) -> Option<&SlicePort> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.proto == proto)
    }

    /// Reads one slice, reporting bad ports and addresses; everything else
    /// in the slice is still used.
    fn parse(
        slice: &Named<'_, EndpointSlice>,
        node_name: Option<&str>,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let mut ports = Vec::new();
        for (k, port) in slice.object.ports.iter().flatten().enumerate() {
            // An unsupported protocol (SCTP) cannot match a port we program.
            let Ok(proto) = Proto::parse(port.protocol.as_deref()) else {
                continue;
            };
            // No number means "all ports", which only headless Services use.
            let Some(number) = port.port else { continue };
            match port_number(number) {
                Some(n) => ports.push(SlicePort {
                    name: port.name.clone().unwrap_or_default(),
                    proto,
                    port: n,
                }),
                None => errors.push(slice.error(
                    format!("ports[{k}].port"),
                    format!("port {number} is out of range (1-65535)"),
                )),
            }
        }
        let mut endpoints = Vec::new();
        for (i, endpoint) in slice.object.endpoints.iter().enumerate() {
            match endpoint_addr(i, endpoint) {
                Ok(ip) if is_ready(endpoint) || is_serving_terminating(endpoint) => {
                    endpoints.push(ReadyEndpoint {
                        ip,
                        local: is_local(endpoint, node_name),
                        ready: is_ready(endpoint),
                        zone_hints: zone_hints(endpoint),
                        for_this_node: for_this_node(endpoint, node_name),
                    })
                }
                Ok(_) => {}
                Err((field, message)) => errors.push(slice.error(field, message)),
            }
        }
        SliceEndpoints {
            ports: ports.into(),
            endpoints: endpoints.into(),
        }
    }
}

/// kube-proxy treats a missing `ready` condition as ready (the field is
/// only unset by controllers that do not track readiness).
fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false)
}

/// Serving while terminating: its pod is shutting down but still answers
/// (`serving` unset means "as ready", per the API).
fn is_serving_terminating(endpoint: &Endpoint) -> bool {
    let conditions = endpoint.conditions.as_ref();
    let terminating = conditions.and_then(|c| c.terminating) == Some(true);
    let serving = conditions.and_then(|c| c.serving.or(c.ready)) != Some(false);
    terminating && serving
}

/// kube-proxy's rule: the endpoint is on this node iff its `nodeName` is
/// this node's name. An endpoint without one (or an agent that does not
/// know its node) counts as remote: SNATing traffic to a local pod costs
/// the client address, while not SNATing traffic to a remote one breaks it.
fn is_local(endpoint: &Endpoint, node_name: Option<&str>) -> bool {
    node_name.is_some_and(|this| endpoint.node_name.as_deref() == Some(this))
}

fn zone_hints(endpoint: &Endpoint) -> Box<[String]> {
    let zones = endpoint.hints.as_ref().and_then(|h| h.for_zones.as_ref());
    zones
        .into_iter()
        .flatten()
        .map(|z| z.name.clone())
        .collect()
}

fn for_this_node(endpoint: &Endpoint, node_name: Option<&str>) -> Option<bool> {
    let nodes = endpoint.hints.as_ref()?.for_nodes.as_ref()?;
    if nodes.is_empty() {
        return None;
    }
    Some(node_name.is_some_and(|this| nodes.iter().any(|n| n.name == this)))
}

/// The endpoint's address. Like kube-proxy, only the first of `addresses`
/// is used: the API says they are fungible and consumers may use the first.
fn endpoint_addr(i: usize, endpoint: &Endpoint) -> Result<Ipv4Addr, (String, String)> {
    let Some(text) = endpoint.addresses.first() else {
        return Err((
            format!("endpoints[{i}].addresses"),
            "endpoint has no address".into(),
        ));
    };
    let field = format!("endpoints[{i}].addresses[0]");
    match text.parse::<Ipv4Addr>() {
        Ok(ip) if is_usable_unicast(ip) => Ok(ip),
        Ok(ip) => Err((field, format!("{ip} cannot be an endpoint address"))),
        Err(_) => Err((field, format!("invalid IPv4 address {text:?}"))),
    }
}
