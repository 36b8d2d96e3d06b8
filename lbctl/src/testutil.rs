//! Builds snapshots the way the agent writes the maps: addresses and ports
//! in network byte order.

use std::net::Ipv4Addr;

use lb_common::{Backend, CtKey, CtValue, RevNat, RevNatId, ServiceKey, ServiceValue, IPPROTO_TCP};

use super::Snapshot;

pub fn ip_be(ip: &str) -> u32 {
    u32::from_ne_bytes(ip.parse::<Ipv4Addr>().unwrap().octets())
}

pub fn svc_key(vip: &str, port: u16, slot: u16) -> ServiceKey {
    ServiceKey {
        vip_be: ip_be(vip),
        port_be: port.to_be(),
        slot,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

/// A TCP frontend with a master entry, one slot per id of `backend_ids`
/// and its rev-NAT entry.
pub fn add_service(
    s: &mut Snapshot,
    vip: &str,
    port: u16,
    rev_nat_id: RevNatId,
    backend_ids: &[u32],
) {
    let count = backend_ids.len() as u16;
    s.services.insert(
        svc_key(vip, port, 0),
        ServiceValue {
            count,
            rev_nat_id,
            ..Default::default()
        },
    );
    for (slot, &backend_id) in (1..).zip(backend_ids) {
        s.services.insert(
            svc_key(vip, port, slot),
            ServiceValue {
                backend_id,
                ..Default::default()
            },
        );
    }
    s.revnat.insert(
        rev_nat_id,
        RevNat {
            addr_be: ip_be(vip),
            port_be: port.to_be(),
            _pad: 0,
        },
    );
}

pub fn add_backend(s: &mut Snapshot, id: u32, ip: &str, port: u16) {
    s.backends.insert(
        id,
        Backend {
            addr_be: ip_be(ip),
            port_be: port.to_be(),
            proto: IPPROTO_TCP,
            flags: 0,
        },
    );
}

pub fn ct_key(saddr: &str, sport: u16, daddr: &str, dport: u16, dir: u8) -> CtKey {
    CtKey {
        saddr_be: ip_be(saddr),
        daddr_be: ip_be(daddr),
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto: IPPROTO_TCP,
        dir,
        _pad: [0; 2],
    }
}

pub fn ct_value(
    backend_id: u32,
    rev_nat_id: RevNatId,
    created_ns: u64,
    last_seen_ns: u64,
) -> CtValue {
    CtValue {
        backend_id,
        rev_nat_id,
        created_ns,
        last_seen_ns,
        ..Default::default()
    }
}
