//! Frontend lookup and backend choice.

use lb_common::{stats, Backend, ServiceKey, ServiceValue};

use crate::maps::{BACKENDS, NODE_ADDRS, SERVICES};

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
    if let Some(master) = frontend(daddr_be, port_be, proto) {
        return Some((master, false));
    }
    // SAFETY: presence check only.
    unsafe { NODE_ADDRS.get(&daddr_be) }?;
    frontend(0, port_be, proto).map(|m| (m, true))
}

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
) -> Result<(u32, Backend), u32> {
    if master.count == 0 {
        return Err(stats::DROP_NO_BACKENDS);
    }
    let slot = (choice % master.count as u32) as u16 + 1;
    let key = ServiceKey {
        vip_be,
        port_be,
        slot,
        proto,
        _pad: [0; 3],
    };
    let slot_val = unsafe { SERVICES.get(&key).copied() }.ok_or(stats::DROP_BACKEND_MISSING)?;
    let backend = backend(slot_val.backend_id).ok_or(stats::DROP_BACKEND_MISSING)?;
    Ok((slot_val.backend_id, backend))
}

/// A hash of the packet's 5-tuple, the choice for a new flow. Random would
/// spread flows as well, but a hash gives a flow whose conntrack entry was
/// lost (evicted from a full map, expired while idle) the same backend
/// again, so the connection survives as long as the backends stay the
/// same. Each word is mixed in with a 32-bit finaliser (multiply-xorshift,
/// the constants of Wellons' `lowbias32`), so that flows differing in one
/// source port spread evenly.
#[inline(always)]
pub fn flow_hash(saddr_be: u32, daddr_be: u32, sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let ports = ((sport_be as u32) << 16) | dport_be as u32;
    let mut h = mix(FLOW_HASH_SEED ^ saddr_be);
    h = mix(h ^ daddr_be);
    h = mix(h ^ ports);
    mix(h ^ proto as u32)
}

/// Any constant: the hash only needs to be the same on every packet and
/// across agent restarts.
const FLOW_HASH_SEED: u32 = 0x6c62_5f31;

#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    unsafe { BACKENDS.get(&id).copied() }
}
