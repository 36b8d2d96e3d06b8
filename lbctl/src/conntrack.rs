//! `ct list`: conntrack entries joined with their backend and rev-NAT
//! frontend, aged against the monotonic clock, optionally filtered.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use lb_common::{RevNatId, CT_DIR_REPLY};
use serde::Serialize;

use super::{
    decode::{Direction, Endpoint, IpPort, Proto},
    table::{duration, Table},
    MapId, Report, Snapshot,
};

/// The maps [`ct_list`] needs.
pub const READS: &[MapId] = &[MapId::Conntrack, MapId::Backends, MapId::RevNat];

/// JSON: `{"entries": [CtEntry, ...]}`, sorted by tuple.
#[derive(Debug, Serialize)]
pub struct CtList {
    pub entries: Vec<CtEntry>,
}

#[derive(Debug, Serialize)]
pub struct CtEntry {
    /// `forward`: client -> frontend, before DNAT; `reply`: backend ->
    /// client, before reverse NAT.
    pub direction: Direction,
    pub src: IpPort,
    pub dst: IpPort,
    pub proto: Proto,
    pub backend_id: u32,
    /// Null when the backend is gone from the backend map (the flow outlived it).
    pub backend: Option<Endpoint>,
    pub rev_nat_id: RevNatId,
    /// What replies' source is restored to; null when the rev-NAT id is unknown.
    pub frontend: Option<IpPort>,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// Since the flow's first packet.
    pub age_ns: u64,
    /// Since its last packet (refreshed at most once a second).
    pub idle_ns: u64,
}

impl CtEntry {
    fn client(&self) -> Ipv4Addr {
        if self.direction.0 == CT_DIR_REPLY {
            self.dst.ip
        } else {
            self.src.ip
        }
    }
}

/// Which entries `ct list` shows; all when empty.
#[derive(Clone, Debug, Default)]
pub struct CtFilter {
    /// Entries whose rev-NAT frontend is this VIP:PORT.
    pub service: Option<SocketAddrV4>,
    /// Entries whose backend has this address (and port, if given).
    pub backend: Option<HostPort>,
    /// Entries of this client: the source of forward entries, the
    /// destination of replies.
    pub client: Option<Ipv4Addr>,
    /// Only TCP entries that saw a FIN or RST (`Some(true)`), or only the
    /// others (`Some(false)`).
    pub closing: Option<bool>,
    /// Entries at least this old, in ns.
    pub min_age_ns: u64,
    /// Entries idle at least this long, in ns.
    pub min_idle_ns: u64,
}

impl CtFilter {
    fn matches(&self, entry: &CtEntry) -> bool {
        let service = |svc: SocketAddrV4| {
            entry.frontend
                == Some(IpPort {
                    ip: *svc.ip(),
                    port: svc.port(),
                })
        };
        let backend = |want: HostPort| {
            entry
                .backend
                .is_some_and(|b| b.ip == want.ip && want.port.is_none_or(|p| p == b.port))
        };
        let closing = entry.flags & lb_common::CT_F_CLOSING != 0;
        self.service.is_none_or(service)
            && self.backend.is_none_or(backend)
            && self.client.is_none_or(|client| entry.client() == client)
            && self.closing.is_none_or(|want| want == closing)
            && entry.age_ns >= self.min_age_ns
            && entry.idle_ns >= self.min_idle_ns
    }
}

/// `IP` or `IP:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub ip: Ipv4Addr,
    pub port: Option<u16>,
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddrV4>() {
            return Ok(HostPort {
                ip: *addr.ip(),
                port: Some(addr.port()),
            });
        }
        match s.parse() {
            Ok(ip) => Ok(HostPort { ip, port: None }),
            Err(_) => Err(format!("{s:?} is not IPv4 or IPv4:PORT")),
        }
    }
}

pub fn ct_list(snapshot: &Snapshot, filter: &CtFilter) -> CtList {
    let mut entries: Vec<CtEntry> = snapshot
        .ct
        .iter()
        .map(|(key, value)| CtEntry {
            direction: Direction(key.dir),
            src: IpPort::from_be(key.saddr_be, key.sport_be),
            dst: IpPort::from_be(key.daddr_be, key.dport_be),
            proto: Proto(key.proto),
            backend_id: value.backend_id,
            backend: snapshot
                .backends
                .get(&value.backend_id)
                .map(Endpoint::backend),
            rev_nat_id: value.rev_nat_id,
            frontend: snapshot.revnat.get(&value.rev_nat_id).map(IpPort::revnat),
            flags: value.flags,
            // Saturating: the datapath may stamp an entry after `now_ns` was taken.
            age_ns: snapshot.now_ns.saturating_sub(value.created_ns),
            idle_ns: snapshot.now_ns.saturating_sub(value.last_seen_ns),
        })
        .filter(|entry| filter.matches(entry))
        .collect();
    entries.sort_by_key(|e| (e.src, e.dst, e.proto, e.direction));
    CtList { entries }
}

impl Report for CtList {
    fn table(&self) -> String {
        let header = [
            "DIR",
            "SOURCE",
            "DESTINATION",
            "PROTO",
            "BACKEND",
            "FRONTEND",
            "AGE",
            "IDLE",
        ];
        let mut table = Table::new(header).right_align(&[6, 7]);
        for entry in &self.entries {
            let backend = match entry.backend {
                Some(backend) => format!("#{} {}", entry.backend_id, backend.ip_port()),
                None => format!("#{} (gone)", entry.backend_id),
            };
            let frontend = match entry.frontend {
                Some(frontend) => format!("#{} {frontend}", entry.rev_nat_id),
                None => format!("#{} (unknown)", entry.rev_nat_id),
            };
            table.row(vec![
                entry.direction.to_string(),
                entry.src.to_string(),
                entry.dst.to_string(),
                entry.proto.to_string(),
                backend,
                frontend,
                duration(entry.age_ns),
                duration(entry.idle_ns),
            ]);
        }
        format!("{}{} entries\n", table.render(), self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use lb_common::CT_DIR_FORWARD;

    use super::*;
    use crate::{render, testutil::*, Format};

    const S: u64 = 1_000_000_000;

    /// One flow client 10.0.0.5:43210 -> 10.96.0.10:80 -> backend 7, and one
    /// of another client whose backend is gone.
    fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            now_ns: 100 * S,
            ..Default::default()
        };
        add_service(&mut s, "10.96.0.10", 80, 1, &[7]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        let fwd = ct_key("10.0.0.5", 43210, "10.96.0.10", 80, CT_DIR_FORWARD);
        let reply = ct_key("10.244.1.5", 8080, "10.0.0.5", 43210, CT_DIR_REPLY);
        let other = ct_key("10.0.0.6", 5000, "10.96.0.10", 80, CT_DIR_FORWARD);
        s.ct.insert(fwd, ct_value(7, 1, 40 * S, 99 * S));
        s.ct.insert(reply, ct_value(7, 1, 40 * S, 99 * S));
        s.ct.insert(other, ct_value(8, 1, 90 * S, 95 * S));
        s
    }

    #[test]
    fn entries_are_joined_and_aged() {
        let list = ct_list(&snapshot(), &CtFilter::default());
        assert_eq!(
            list.table(),
            "\
DIR      SOURCE           DESTINATION     PROTO  BACKEND             FRONTEND            AGE  IDLE
forward  10.0.0.5:43210   10.96.0.10:80   tcp    #7 10.244.1.5:8080  #1 10.96.0.10:80  1m00s  1.0s
forward  10.0.0.6:5000    10.96.0.10:80   tcp    #8 (gone)           #1 10.96.0.10:80  10.0s  5.0s
reply    10.244.1.5:8080  10.0.0.5:43210  tcp    #7 10.244.1.5:8080  #1 10.96.0.10:80  1m00s  1.0s
3 entries
"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&list, Format::Json)).unwrap();
        assert_eq!(
            json["entries"][0],
            serde_json::json!({
                "direction": "forward",
                "src": {"ip": "10.0.0.5", "port": 43210},
                "dst": {"ip": "10.96.0.10", "port": 80},
                "proto": "tcp",
                "backend_id": 7,
                "backend": {"ip": "10.244.1.5", "port": 8080, "proto": "tcp"},
                "rev_nat_id": 1,
                "frontend": {"ip": "10.96.0.10", "port": 80},
                "flags": 0,
                "age_ns": 60 * S,
                "idle_ns": S,
            })
        );
        assert_eq!(json["entries"][1]["backend"], serde_json::Value::Null);
    }

    #[test]
    fn filters() {
        let s = snapshot();
        let count = |filter: CtFilter| ct_list(&s, &filter).entries.len();
        assert_eq!(
            count(CtFilter {
                client: Some("10.0.0.5".parse().unwrap()),
                ..Default::default()
            }),
            2
        );
        let backend = |b: &str| CtFilter {
            backend: Some(b.parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(count(backend("10.244.1.5")), 2);
        assert_eq!(count(backend("10.244.1.5:8080")), 2);
        assert_eq!(count(backend("10.244.1.5:80")), 0);
        let service = |svc: &str| CtFilter {
            service: Some(svc.parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(count(service("10.96.0.10:80")), 3);
        assert_eq!(count(service("10.96.0.10:443")), 0);
        assert!("10.0.0.300".parse::<HostPort>().is_err());
        // Ages 60 s, 10 s, 60 s; idle 1 s, 5 s, 1 s; none closing.
        let aged = |min_age_s: u64, min_idle_s: u64| CtFilter {
            min_age_ns: min_age_s * S,
            min_idle_ns: min_idle_s * S,
            ..Default::default()
        };
        assert_eq!(count(aged(30, 0)), 2);
        assert_eq!(count(aged(0, 3)), 1);
        let state = |closing| CtFilter {
            closing: Some(closing),
            ..Default::default()
        };
        assert_eq!((count(state(true)), count(state(false))), (0, 3));
    }
}
