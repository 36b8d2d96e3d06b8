//! Frontend lookup and backend choice.

use lb_common::{
    filter_slot, Backend, ServiceKey, ServiceValue, FILTER_BACKENDS, FILTER_FRONTENDS,
    FILTER_VALID, FILTER_VALID_WORD, NODE_ADDR_LOCAL,
};

use crate::maps::{BACKENDS, FILTER, NODE_ADDRS, SERVICES};
use crate::stats::{Reason, Step};

/// The master entry of the frontend `(vip, port, proto)`, if it is one.
#[inline(always)]
pub fn frontend(vip_be: u32, port_be: u16, proto: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        vip_be,
        port_be,
        slot: 0,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out at once.
    unsafe { SERVICES.get(&key).copied() }
}

/// The frontend a packet from outside the node is for: an exact match
/// (external IP, load-balancer IP), else, when it is addressed to one of
/// the node's NodePort addresses, the NodePort wildcard `0.0.0.0:port`.
/// Returns the master and whether it is the wildcard.
#[inline(always)]
pub fn external_frontend(daddr_be: u32, port_be: u16, proto: u8) -> Option<(ServiceValue, bool)> {
    match any_frontend(daddr_be, port_be, proto)? {
        (master, FRONTEND_EXACT) => Some((master, false)),
        (master, NODE_ADDR_LOCAL) => Some((master, true)),
        _ => None,
    }
}

/// The frontend `daddr:port` names for the node's own sockets: an exact
/// match ([`FRONTEND_EXACT`]), or the NodePort wildcard when `daddr` is a
/// node address, with its [`MAP_NODE_ADDRS`](lb_common::MAP_NODE_ADDRS)
/// kind (this node's or a peer's).
#[inline(always)]
pub fn any_frontend(daddr_be: u32, port_be: u16, proto: u8) -> Option<(ServiceValue, u32)> {
    let filtered = filter_valid();
    if !filtered || maybe_frontend(daddr_be, port_be, proto) {
        if let Some(master) = frontend(daddr_be, port_be, proto) {
            return Some((master, FRONTEND_EXACT));
        }
    }
    // The NodePort wildcard's bit says whether `port` is a NodePort at all.
    if filtered && !maybe_frontend(0, port_be, proto) {
        return None;
    }
    // SAFETY: copied out at once.
    let kind = unsafe { NODE_ADDRS.get(&daddr_be).copied() }?;
    frontend(0, port_be, proto).map(|m| (m, kind))
}

/// The agent has written the filter (see `lb_common::filter`).
#[inline(always)]
fn filter_valid() -> bool {
    FILTER.get(FILTER_VALID_WORD).copied() == Some(FILTER_VALID)
}

/// False when `(addr, port, proto)` is certainly no frontend.
#[inline(always)]
fn maybe_frontend(addr_be: u32, port_be: u16, proto: u8) -> bool {
    filter_bit(FILTER_FRONTENDS, addr_be, port_be, proto)
}

/// The filter's answer for backends, read once per packet: the valid
/// word decides whether the bits mean anything.
#[derive(Clone, Copy)]
pub struct BackendFilter {
    valid: bool,
}

impl BackendFilter {
    #[inline(always)]
    pub fn read() -> Self {
        Self {
            valid: filter_valid(),
        }
    }

    /// False when `(addr, port, proto)` is certainly no backend: no
    /// conntrack entry has it as its backend (an unwritten filter says
    /// nothing).
    #[inline(always)]
    pub fn maybe_backend(self, addr_be: u32, port_be: u16, proto: u8) -> bool {
        !self.valid || filter_bit(FILTER_BACKENDS, addr_be, port_be, proto)
    }
}

#[inline(always)]
fn filter_bit(region: u32, addr_be: u32, port_be: u16, proto: u8) -> bool {
    let (word, mask) = filter_slot(region, addr_be, port_be, proto);
    FILTER.get(word).is_none_or(|w| w & mask != 0)
}

/// [`any_frontend`]'s kind of an exact (non-NodePort) frontend.
pub const FRONTEND_EXACT: u32 = 0;

/// Picks the backend in slot `1 + choice % count` of the frontend: with a
/// uniform `choice` (a flow hash, a random number), uniformly among its
/// backends. `Err` is the drop reason.
#[inline(always)]
pub fn pick_backend(
    vip_be: u32,
    port_be: u16,
    proto: u8,
    master: &ServiceValue,
    choice: u32,
) -> Step<(u32, Backend)> {
    if master.count == 0 {
        return Err(Reason::DropNoBackends);
    }
    let slot = (choice % master.count as u32) as u16 + 1;
    let key = ServiceKey {
        vip_be,
        port_be,
        slot,
        proto,
        _pad: [0; 3],
    };
    let slot_val = unsafe { SERVICES.get(&key).copied() }.ok_or(Reason::DropBackendMissing)?;
    let backend = backend(slot_val.backend_id).ok_or(Reason::DropBackendMissing)?;
    Ok((slot_val.backend_id, backend))
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    unsafe { BACKENDS.get(&id).copied() }
}
