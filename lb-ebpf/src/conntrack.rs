//! Connection tracking: one LRU entry per direction of a balanced flow.
//!
//! The forward entry (client -> frontend tuple) pins the flow to its backend;
//! the reply entry (backend -> client tuple) tells the egress program which
//! frontend to restore. Both carry the same backend and rev-NAT ids.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    CtKey, CtValue, NodeConfig, CT_DIR_FORWARD, CT_DIR_REPLY, CT_DIR_SNAT_IN, CT_DIR_SNAT_OUT,
    CT_F_CLOSING,
};

use crate::maps::CONNTRACK;

/// `last_seen_ns` is refreshed at most this often, to keep the hot path
/// free of map writes for busy flows.
///
/// Timestamps come from the coarse monotonic clock (CLOCK_MONOTONIC_COARSE,
/// tick resolution): conntrack ages are seconds, and the precise clock costs
/// a hardware clock read per packet.
const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn key(
    saddr_be: u32,
    daddr_be: u32,
    sport_be: u16,
    dport_be: u16,
    proto: u8,
    dir: u8,
) -> CtKey {
    CtKey::new(saddr_be, daddr_be, sport_be, dport_be, proto, dir)
}

/// Looks up an entry, refreshing its `last_seen_ns` when stale, and marks
/// it closing when the packet is a TCP FIN or RST (`closing`). Returns the
/// entry (as it was) and whether it was refreshed.
#[inline(always)]
pub fn lookup(k: &CtKey, closing: bool) -> Option<(CtValue, bool)> {
    let entry = CONNTRACK.get_ptr_mut(k)?;
    // SAFETY: the pointer is valid for this program run; a torn read of a
    // timestamp is harmless.
    let v = unsafe { *entry };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let refreshed = now.wrapping_sub(v.last_seen_ns) > REFRESH_NS;
    if refreshed {
        unsafe { (*entry).last_seen_ns = now };
    }
    if closing && v.flags & CT_F_CLOSING == 0 {
        unsafe { (*entry).flags |= CT_F_CLOSING };
    }
    Some((v, refreshed))
}

/// A fresh entry for a flow balanced to `(baddr, bport)`, stamped now.
#[inline(always)]
pub fn new_value(
    baddr_be: u32,
    bport_be: u16,
    backend_id: u32,
    rev_nat_id: lb_common::RevNatId,
) -> CtValue {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    CtValue {
        backend_id,
        rev_nat_id,
        created_ns: now,
        last_seen_ns: now,
        backend_addr_be: baddr_be,
        backend_port_be: bport_be,
        flags: 0,
        nat_addr_be: 0,
        nat_port_be: 0,
        _pad: [0; 2],
    }
}

/// Records a new flow client -> frontend balanced to backend `(baddr,
/// bport)` with `value`: the forward entry and the reply entry. `Err` if
/// either insert failed.
#[inline(always)]
pub fn create_with(fwd: &CtKey, baddr_be: u32, bport_be: u16, value: &CtValue) -> Result<(), ()> {
    let fwd_ok = CONNTRACK.insert(fwd, value, 0).is_ok();
    let reply_ok = insert_reply(fwd, baddr_be, bport_be, value).is_ok();
    if fwd_ok && reply_ok {
        Ok(())
    } else {
        Err(())
    }
}

/// (Re)writes the reply entry of a flow, for a new flow.
#[inline(always)]
pub fn insert_reply(fwd: &CtKey, baddr_be: u32, bport_be: u16, value: &CtValue) -> Result<(), i32> {
    CONNTRACK.insert(&reply_key(fwd, baddr_be, bport_be), value, 0)
}

/// Keeps the reply entry of a tracked flow whose forward packet just
/// passed: looked up, which tells the LRU it is in use, and rewritten when
/// it is gone or when the forward entry was refreshed. A flood of new flows
/// turns an LRU map over faster than a quiet connection speaks; without
/// its reply entry, the backend's next reply would leave un-reverse-NATed
/// and the client would reset the connection.
#[inline(always)]
pub fn keep_reply(fwd: &CtKey, baddr_be: u32, bport_be: u16, value: &CtValue, refreshed: bool) {
    let reply = reply_key(fwd, baddr_be, bport_be);
    if refreshed || CONNTRACK.get_ptr(&reply).is_none() {
        let _ = CONNTRACK.insert(&reply, value, 0);
    }
}

/// Rewrites both entries of a flow a SYN starts (again), stamped now and
/// without a closing mark. Not inlined: a SYN's rare work keeps its value
/// copy off the callers' stacks.
#[inline(never)]
pub fn reopen(fwd: &CtKey, value: &CtValue) {
    let mut v = *value;
    v.flags &= !CT_F_CLOSING;
    v.last_seen_ns = unsafe { bpf_ktime_get_coarse_ns() };
    let _ = CONNTRACK.insert(fwd, &v, 0);
    let _ = insert_reply(fwd, v.backend_addr_be, v.backend_port_be, &v);
}

/// Forgets an entry.
#[inline(always)]
pub fn remove(k: &CtKey) {
    let _ = CONNTRACK.remove(k);
}

/// The reply direction's key of forward key `fwd` balanced to `(baddr,
/// bport)`.
#[inline(always)]
fn reply_key(fwd: &CtKey, baddr_be: u32, bport_be: u16) -> CtKey {
    debug_assert!(fwd.dir == CT_DIR_FORWARD);
    key(
        baddr_be,
        fwd.saddr_be,
        bport_be,
        fwd.sport_be,
        fwd.proto,
        CT_DIR_REPLY,
    )
}

/// Records the SNAT of a flow balanced to a remote backend, choosing a free
/// SNAT port: the SNAT_IN entry (backend -> node:port, for the reply) is
/// inserted only if no other flow to that backend holds the port, so two
/// flows never share a reply tuple; then the SNAT_OUT entry (client ->
/// backend, for egress). Returns the port, or `Err` when every try hit a
/// taken port (or an insert failed).
///
/// Not inlined: a BPF subprogram (at most 5 arguments) whose entry copies
/// stay off the uplink program's stack, which must fit 512 bytes together
/// with the reject subprogram's.
#[inline(never)]
pub fn create_snat(fwd: &CtKey, value: &CtValue, config: &NodeConfig) -> Result<u16, ()> {
    let (baddr_be, bport_be) = (value.backend_addr_be, value.backend_port_be);
    let (snat_addr_be, first_port, last_port) = (
        config.snat_addr_be,
        config.snat_port_first,
        config.snat_port_last,
    );
    if snat_addr_be == 0 || last_port < first_port {
        return Err(());
    }
    let span = (last_port - first_port) as u32 + 1;
    let r = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() };
    let mut reply_in = *value;
    reply_in.nat_addr_be = fwd.saddr_be;
    reply_in.nat_port_be = fwd.sport_be;
    for attempt in 0..SNAT_PORT_TRIES {
        // Probes spread over the range: a new random start each time.
        let r = r.wrapping_add(attempt.wrapping_mul(0x9e37_79b9));
        let port_be = (first_port + (r % span) as u16).to_be();
        let k_in = key(
            baddr_be,
            snat_addr_be,
            bport_be,
            port_be,
            fwd.proto,
            CT_DIR_SNAT_IN,
        );
        if CONNTRACK.insert(&k_in, &reply_in, BPF_NOEXIST).is_ok() {
            let mut out = *value;
            out.nat_addr_be = snat_addr_be;
            out.nat_port_be = port_be;
            let k_out = key(
                fwd.saddr_be,
                baddr_be,
                fwd.sport_be,
                bport_be,
                fwd.proto,
                CT_DIR_SNAT_OUT,
            );
            if CONNTRACK.insert(&k_out, &out, 0).is_err() {
                let _ = CONNTRACK.remove(&k_in);
                return Err(());
            }
            return Ok(port_be);
        }
    }
    Err(())
}

/// Random probes for a free SNAT port before giving up on a new flow.
const SNAT_PORT_TRIES: u32 = 8;
/// `bpf_map_update_elem` flag: only insert, never overwrite.
const BPF_NOEXIST: u64 = 1;
