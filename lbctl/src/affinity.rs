//! `affinity list`: sessionAffinity ClientIP memory: per frontend and
//! client, the backend new flows go to and how long it still holds.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{
    decode::{ip, IpPort},
    table::{or_dash, Table},
    MapId, Report, Snapshot,
};

/// The maps [`affinity_list`] needs.
pub const READS: &[MapId] = &[
    MapId::Affinity,
    MapId::Backends,
    MapId::RevNat,
    MapId::Services,
    MapId::SvcNames,
];

/// JSON: `{"entries": [AffinityEntry, ...]}`, by frontend then client.
#[derive(Debug, Serialize)]
pub struct AffinityList {
    pub entries: Vec<AffinityEntry>,
}

#[derive(Debug, Serialize)]
pub struct AffinityEntry {
    /// Null when the rev-NAT id is unknown (the frontend is gone).
    pub frontend: Option<IpPort>,
    pub service: Option<String>,
    pub client: Ipv4Addr,
    pub backend_id: u32,
    /// Null when the backend is gone (the next flow picks anew).
    pub backend: Option<IpPort>,
    /// Since the client's last new flow.
    pub idle_ns: u64,
    /// Seconds the choice still holds; null when the frontend's timeout is
    /// unknown; 0 when expired.
    pub remaining_s: Option<u64>,
}

pub fn affinity_list(snap: &Snapshot) -> AffinityList {
    let entries = snap
        .affinity
        .iter()
        .map(|(key, value)| {
            let idle_ns = snap.now_ns.saturating_sub(value.last_used_ns);
            let timeout_s = snap
                .services
                .values()
                .find(|v| v.rev_nat_id == key.rev_nat_id && v.affinity_timeout_s > 0)
                .map(|v| u64::from(v.affinity_timeout_s));
            AffinityEntry {
                frontend: snap.revnat.get(&key.rev_nat_id).map(IpPort::revnat),
                service: snap
                    .svc_names
                    .get(&key.rev_nat_id)
                    .map(|n| n.as_str().to_owned()),
                client: ip(key.client_addr_be),
                backend_id: value.backend_id,
                backend: snap
                    .backends
                    .get(&value.backend_id)
                    .map(|b| IpPort::from_be(b.addr_be, b.port_be)),
                idle_ns,
                remaining_s: timeout_s.map(|t| t.saturating_sub(idle_ns / 1_000_000_000)),
            }
        })
        .collect();
    AffinityList { entries }
}

impl Report for AffinityList {
    fn table(&self) -> String {
        let header = [
            "FRONTEND",
            "SERVICE",
            "CLIENT",
            "BACKEND",
            "IDLE",
            "REMAINING",
        ];
        let mut table = Table::new(header);
        for e in &self.entries {
            table.row(vec![
                or_dash(e.frontend),
                or_dash(e.service.as_deref()),
                e.client.to_string(),
                or_dash(e.backend),
                format!("{} s", e.idle_ns / 1_000_000_000),
                or_dash(e.remaining_s.map(|s| format!("{s} s"))),
            ]);
        }
        table.render()
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{AffinityKey, AffinityValue, Backend, RevNat, ServiceKey, ServiceValue};

    use super::*;

    #[test]
    fn decodes_and_ages_entries() {
        let be = |a: [u8; 4]| u32::from_ne_bytes(a);
        let mut s = Snapshot {
            now_ns: 70_000_000_000,
            ..Default::default()
        };
        s.services.insert(
            ServiceKey {
                vip_be: be([10, 96, 0, 10]),
                port_be: 80u16.to_be(),
                slot: 0,
                proto: 6,
                _pad: [0; 3],
            },
            ServiceValue {
                rev_nat_id: 4,
                affinity_timeout_s: 100,
                ..Default::default()
            },
        );
        s.revnat.insert(
            4,
            RevNat {
                addr_be: be([10, 96, 0, 10]),
                port_be: 80u16.to_be(),
                _pad: 0,
            },
        );
        s.backends.insert(
            7,
            Backend {
                addr_be: be([10, 244, 1, 2]),
                port_be: 8080u16.to_be(),
                proto: 6,
                flags: 0,
            },
        );
        s.affinity.insert(
            AffinityKey {
                rev_nat_id: 4,
                client_addr_be: be([10, 244, 4, 2]),
            },
            AffinityValue {
                backend_id: 7,
                _pad: 0,
                last_used_ns: 40_000_000_000,
            },
        );
        let list = affinity_list(&s);
        let e = &list.entries[0];
        assert_eq!(e.client, Ipv4Addr::new(10, 244, 4, 2));
        assert_eq!(e.backend.unwrap().to_string(), "10.244.1.2:8080");
        assert_eq!(e.frontend.unwrap().to_string(), "10.96.0.10:80");
        assert_eq!((e.idle_ns, e.remaining_s), (30_000_000_000, Some(70)));
        assert!(
            list.table()
                .contains("10.244.4.2  10.244.1.2:8080  30 s  70 s"),
            "{}",
            list.table()
        );
    }
}
