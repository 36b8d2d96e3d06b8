//! EndpointSlices reduced to what the load balancer needs: the Service they
//! belong to, the addresses of ready endpoints and the named ports.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::{
    is_usable_unicast, port_number, BackendAddr, ConfigError, Named, ObjectRef, Proto,
    LABEL_SERVICE_NAME,
};

/// What one EndpointSlice contributes to its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SliceEndpoints {
    ports: Vec<SlicePort>,
    /// Ready endpoints' addresses.
    addrs: Vec<Ipv4Addr>,
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
/// (kube-proxy ignores the former; the datapath is IPv4-only).
pub(super) fn read_slice(
    slice: &Named<'_, EndpointSlice>,
    errors: &mut Vec<ConfigError>,
) -> Option<(ObjectRef, SliceEndpoints)> {
    let labels = slice.object.metadata.labels.as_ref();
    let Some(service) = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) else {
        tracing::debug!(slice = %slice.oref, "EndpointSlice without {LABEL_SERVICE_NAME} label ignored");
        return None;
    };
    if slice.object.address_type != "IPv4" {
        tracing::debug!(slice = %slice.oref, address_type = slice.object.address_type, "non-IPv4 EndpointSlice ignored");
        return None;
    }
    let service = ObjectRef {
        namespace: slice.oref.namespace.clone(),
        name: service.clone(),
    };
    Some((service, SliceEndpoints::parse(slice, errors)))
}

/// Backends of the Service port named `port_name` with protocol `proto`,
/// from that Service's slices. As in kube-proxy, each slice having a port
/// with that name and protocol contributes its ready addresses at that
/// port's number; a slice without such a port contributes nothing.
pub(super) fn backends<'a>(
    slices: impl IntoIterator<Item = &'a SliceEndpoints>,
    port_name: &str,
    proto: Proto,
) -> BTreeSet<BackendAddr> {
    slices
        .into_iter()
        .filter_map(|slice| {
            let port = slice
                .ports
                .iter()
                .find(|p| p.name == port_name && p.proto == proto)?;
            Some(slice.addrs.iter().map(move |&ip| BackendAddr {
                ip,
                port: port.port,
                remote: false,
            }))
        })
        .flatten()
        .collect()
}

impl SliceEndpoints {
    /// Reads one slice, reporting bad ports and addresses; everything else
    /// in the slice is still used.
    fn parse(slice: &Named<'_, EndpointSlice>, errors: &mut Vec<ConfigError>) -> Self {
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
        let mut addrs = Vec::new();
        for (i, endpoint) in slice.object.endpoints.iter().enumerate() {
            match endpoint_addr(i, endpoint) {
                Ok(addr) if is_ready(endpoint) => addrs.push(addr),
                Ok(_) => {}
                Err((field, message)) => errors.push(slice.error(field, message)),
            }
        }
        SliceEndpoints { ports, addrs }
    }
}

/// kube-proxy treats a missing `ready` condition as ready (the field is
/// only unset by controllers that do not track readiness).
fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false)
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
