//! `map dump NAME`: every entry of one map, key and value decoded field by
//! field through lb-common's types (never raw bytes).

use std::{fmt, net::Ipv4Addr};

use serde::{Serialize, Serializer};

use super::{
    decode::{ip, port, reason_name, Direction, Proto},
    table::Table,
    MapId, Report, Snapshot,
};

/// JSON: `{"map": "lb_svc_v4", "entries": [{"key": {..}, "value": {..}}, ..]}`
/// with the fields of the lb-common key and value, decoded: `_be` fields
/// lose the suffix (`vip`, `port`, `saddr`, ...), `proto` and `dir` are
/// names, padding is left out. Stats keys are `{"index", "reason"}`,
/// their values summed over CPUs. Sorted by decoded key.
#[derive(Debug, Serialize)]
pub struct Dump {
    pub map: &'static str,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    #[serde(serialize_with = "fields")]
    pub key: Fields,
    #[serde(serialize_with = "fields")]
    pub value: Fields,
}

/// Named fields in declaration order.
pub type Fields = Vec<(&'static str, Value)>;

/// A decoded field: JSON number or string, as its table cell otherwise.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Num(u64),
    /// A bit set: a JSON number, hexadecimal in tables.
    Flags(u64),
    Ip(Ipv4Addr),
    Text(String),
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Num(n)
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Value::Num(n.into())
    }
}

impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Value::Num(n.into())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Num(n) => write!(f, "{n}"),
            Value::Flags(bits) => write!(f, "{bits:#x}"),
            Value::Ip(ip) => write!(f, "{ip}"),
            Value::Text(text) => f.write_str(text),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Num(n) | Value::Flags(n) => s.serialize_u64(*n),
            Value::Ip(_) | Value::Text(_) => s.collect_str(self),
        }
    }
}

fn fields<S: Serializer>(fields: &Fields, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(fields.iter().map(|(name, value)| (name, value)))
}

fn text(value: impl fmt::Display) -> Value {
    Value::Text(value.to_string())
}

pub fn dump(snapshot: &Snapshot, kind: MapId) -> Dump {
    let mut entries: Vec<Entry> = match kind {
        MapId::Services => snapshot
            .services
            .iter()
            .map(|(k, v)| Entry {
                key: vec![
                    ("vip", Value::Ip(ip(k.vip_be))),
                    ("port", port(k.port_be).into()),
                    ("proto", text(Proto(k.proto))),
                    ("slot", k.slot.into()),
                ],
                value: vec![
                    ("backend_id", v.backend_id.into()),
                    ("count", v.count.into()),
                    ("rev_nat_id", v.rev_nat_id.into()),
                    ("flags", Value::Flags(v.flags.into())),
                    ("affinity_timeout_s", v.affinity_timeout_s.into()),
                    ("internal_count", v.internal_count.into()),
                ],
            })
            .collect(),
        MapId::Backends => snapshot
            .backends
            .iter()
            .map(|(&id, v)| Entry {
                key: vec![("id", id.into())],
                value: vec![
                    ("addr", Value::Ip(ip(v.addr_be))),
                    ("port", port(v.port_be).into()),
                    ("proto", text(Proto(v.proto))),
                    ("flags", Value::Flags(v.flags.into())),
                ],
            })
            .collect(),
        MapId::RevNat => snapshot
            .revnat
            .iter()
            .map(|(&id, v)| Entry {
                key: vec![("id", id.into())],
                value: vec![
                    ("addr", Value::Ip(ip(v.addr_be))),
                    ("port", port(v.port_be).into()),
                ],
            })
            .collect(),
        MapId::Conntrack => snapshot
            .ct
            .iter()
            .map(|(k, v)| Entry {
                key: vec![
                    ("saddr", Value::Ip(ip(k.saddr_be))),
                    ("sport", port(k.sport_be).into()),
                    ("daddr", Value::Ip(ip(k.daddr_be))),
                    ("dport", port(k.dport_be).into()),
                    ("proto", text(Proto(k.proto))),
                    ("dir", text(Direction(k.dir))),
                ],
                value: vec![
                    ("backend_id", v.backend_id.into()),
                    ("rev_nat_id", v.rev_nat_id.into()),
                    ("flags", Value::Flags(v.flags.into())),
                    ("created_ns", v.created_ns.into()),
                    ("last_seen_ns", v.last_seen_ns.into()),
                    ("backend_addr", Value::Ip(ip(v.backend_addr_be))),
                    ("backend_port", port(v.backend_port_be).into()),
                    ("nat_addr", Value::Ip(ip(v.nat_addr_be))),
                    ("nat_port", port(v.nat_port_be).into()),
                ],
            })
            .collect(),
        MapId::SourceRanges => snapshot
            .source_ranges
            .iter()
            .map(|(prefix_len, r)| Entry {
                key: vec![
                    ("rev_nat_id", u32::from_be(r.rev_nat_id_be).into()),
                    ("addr", Value::Ip(ip(r.addr_be))),
                    ("prefix_len", prefix_len.saturating_sub(32).into()),
                ],
                value: vec![],
            })
            .collect(),
        MapId::Affinity => snapshot
            .affinity
            .iter()
            .map(|(k, v)| Entry {
                key: vec![
                    ("rev_nat_id", k.rev_nat_id.into()),
                    ("client", Value::Ip(ip(k.client_addr_be))),
                ],
                value: vec![
                    ("backend_id", v.backend_id.into()),
                    ("last_used_ns", v.last_used_ns.into()),
                ],
            })
            .collect(),
        MapId::Fragments => snapshot
            .fragments
            .iter()
            .map(|(k, v)| Entry {
                key: vec![
                    ("saddr", Value::Ip(ip(k.saddr_be))),
                    ("daddr", Value::Ip(ip(k.daddr_be))),
                    ("id", u16::from_be(k.id_be).into()),
                    ("proto", text(Proto(k.proto))),
                ],
                value: vec![
                    ("sport", port(v.sport_be).into()),
                    ("dport", port(v.dport_be).into()),
                ],
            })
            .collect(),
        MapId::NodeAddrs => snapshot
            .node_addrs
            .iter()
            .map(|(&addr, &kind)| Entry {
                key: vec![("addr", Value::Ip(ip(addr)))],
                value: vec![(
                    "node",
                    match kind {
                        lb_common::NODE_ADDR_LOCAL => Value::Text("this".into()),
                        lb_common::NODE_ADDR_PEER => Value::Text("peer".into()),
                        other => other.into(),
                    },
                )],
            })
            .collect(),
        MapId::Config => snapshot
            .config
            .iter()
            .map(|c| Entry {
                key: vec![("index", 0u32.into())],
                value: vec![
                    ("snat_addr", Value::Ip(ip(c.snat_addr_be))),
                    ("snat_port_first", c.snat_port_first.into()),
                    ("snat_port_last", c.snat_port_last.into()),
                ],
            })
            .collect(),
        MapId::SockNetns => snapshot
            .sock_netns
            .iter()
            .map(|&cookie| Entry {
                key: vec![("index", 0u32.into())],
                value: vec![("netns_cookie", cookie.into())],
            })
            .collect(),
        MapId::SockRevNat => snapshot
            .sock_revnat
            .iter()
            .map(|(k, v)| Entry {
                key: vec![
                    ("socket_cookie", k.cookie.into()),
                    ("backend_addr", Value::Ip(ip(k.backend_addr_be))),
                    ("backend_port", port(k.backend_port_be).into()),
                ],
                value: vec![
                    ("frontend_addr", Value::Ip(ip(v.frontend_addr_be))),
                    ("frontend_port", port(v.frontend_port_be).into()),
                ],
            })
            .collect(),
        MapId::SvcStats => (0u32..)
            .zip(&snapshot.svc_stats)
            .filter(|(_, v)| v.packets > 0)
            .map(|(index, v)| Entry {
                key: vec![
                    ("rev_nat_id", (index / 2).into()),
                    ("refused", (index % 2).into()),
                ],
                value: vec![("packets", v.packets.into()), ("bytes", v.bytes.into())],
            })
            .collect(),
        MapId::BackendStats => (snapshot.backend_stats.iter())
            .map(|(&id, v)| Entry {
                key: vec![("backend_id", id.into())],
                value: vec![("packets", v.packets.into()), ("bytes", v.bytes.into())],
            })
            .collect(),
        MapId::SvcNames => snapshot
            .svc_names
            .iter()
            .map(|(&id, name)| Entry {
                key: vec![("rev_nat_id", id.into())],
                value: vec![("service", text(name.as_str()))],
            })
            .collect(),
        MapId::Stats => (0u32..)
            .zip(&snapshot.stats)
            .map(|(index, v)| Entry {
                key: vec![
                    ("index", index.into()),
                    ("reason", text(reason_name(index))),
                ],
                value: vec![("packets", v.packets.into()), ("bytes", v.bytes.into())],
            })
            .collect(),
        // Words with bits set, and the valid word (the last).
        MapId::Filter => (0u32..)
            .zip(&snapshot.filter)
            .filter(|&(i, &w)| w != 0 || i == lb_common::FILTER_VALID_WORD)
            .map(|(i, &w)| Entry {
                key: vec![("word", i.into())],
                value: vec![("bits", Value::Flags(w))],
            })
            .collect(),
    };
    // The maps' own order is by raw bytes, i.e. byte-swapped addresses.
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Dump {
        map: kind.name(),
        entries,
    }
}

impl Report for Dump {
    /// Key columns then value columns, named after the JSON fields.
    fn table(&self) -> String {
        let Some(first) = self.entries.first() else {
            return format!("{}: 0 entries\n", self.map);
        };
        let names = first
            .key
            .iter()
            .chain(&first.value)
            .map(|(name, _)| name.to_uppercase());
        let mut table = Table::new(names);
        for entry in &self.entries {
            table.row(
                entry
                    .key
                    .iter()
                    .chain(&entry.value)
                    .map(|(_, v)| v.to_string())
                    .collect(),
            );
        }
        format!(
            "{}{}: {} entries\n",
            table.render(),
            self.map,
            self.entries.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{StatsCounter, CT_DIR_FORWARD};

    use super::*;
    use crate::{render, testutil::*, Format};

    #[test]
    fn services_sorted_by_decoded_key() {
        let mut s = Snapshot::default();
        // Byte-swapped, 10.96.0.10 would sort after 10.96.1.1.
        add_service(&mut s, "10.96.1.1", 53, 2, &[]);
        add_service(&mut s, "10.96.0.10", 80, 1, &[7]);
        let dump = dump(&s, MapId::Services);
        assert_eq!(
            dump.table(),
            "\
VIP         PORT  PROTO  SLOT  BACKEND_ID  COUNT  REV_NAT_ID  FLAGS  AFFINITY_TIMEOUT_S  INTERNAL_COUNT
10.96.0.10  80    tcp    0     0           1      1           0x0    0                   0
10.96.0.10  80    tcp    1     7           0      0           0x0    0                   0
10.96.1.1   53    tcp    0     0           0      2           0x0    0                   0
lb_svc_v4: 3 entries
"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&dump, Format::Json)).unwrap();
        assert_eq!(
            json["entries"][1],
            serde_json::json!({
                "key": {"vip": "10.96.0.10", "port": 80, "proto": "tcp", "slot": 1},
                "value": {"backend_id": 7, "count": 0, "rev_nat_id": 0, "flags": 0, "affinity_timeout_s": 0, "internal_count": 0},
            })
        );
    }

    #[test]
    fn every_map_decodes() {
        let mut s = Snapshot {
            stats: vec![StatsCounter {
                packets: 1,
                bytes: 64,
            }],
            ..Default::default()
        };
        add_service(&mut s, "10.96.0.10", 80, 1, &[7]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        s.ct.insert(
            ct_key("10.0.0.5", 43210, "10.96.0.10", 80, CT_DIR_FORWARD),
            ct_value(7, 1, 5, 6),
        );
        let json = |kind| serde_json::to_value(dump(&s, kind)).unwrap();
        assert_eq!(
            json(MapId::Backends)["entries"][0],
            serde_json::json!({"key": {"id": 7}, "value": {"addr": "10.244.1.5", "port": 8080, "proto": "tcp", "flags": 0}})
        );
        assert_eq!(
            json(MapId::RevNat)["entries"][0],
            serde_json::json!({"key": {"id": 1}, "value": {"addr": "10.96.0.10", "port": 80}})
        );
        assert_eq!(
            json(MapId::Conntrack)["entries"][0]["key"],
            serde_json::json!({"saddr": "10.0.0.5", "sport": 43210, "daddr": "10.96.0.10", "dport": 80, "proto": "tcp", "dir": "forward"})
        );
        assert_eq!(
            json(MapId::Stats)["entries"][0],
            serde_json::json!({"key": {"index": 0, "reason": "pass_not_ipv4"}, "value": {"packets": 1, "bytes": 64}})
        );
        let mut with_fragment = s.clone();
        with_fragment.fragments.insert(
            lb_common::FragKey {
                saddr_be: ip_be("10.0.0.5"),
                daddr_be: ip_be("10.96.0.10"),
                id_be: 1234u16.to_be(),
                proto: lb_common::IPPROTO_UDP,
                _pad: 0,
            },
            lb_common::FragValue {
                sport_be: 43210u16.to_be(),
                dport_be: 53u16.to_be(),
            },
        );
        assert_eq!(
            serde_json::to_value(dump(&with_fragment, MapId::Fragments)).unwrap()["entries"][0],
            serde_json::json!({
                "key": {"saddr": "10.0.0.5", "daddr": "10.96.0.10", "id": 1234, "proto": "udp"},
                "value": {"sport": 43210, "dport": 53},
            })
        );
        let mut with_config = s.clone();
        with_config.config = Some(lb_common::NodeConfig {
            snat_addr_be: u32::from_ne_bytes([192, 168, 50, 10]),
            snat_port_first: 61000,
            snat_port_last: 65000,
        });
        assert_eq!(
            serde_json::to_value(dump(&with_config, MapId::Config)).unwrap()["entries"][0]["value"],
            serde_json::json!({"snat_addr": "192.168.50.10", "snat_port_first": 61000, "snat_port_last": 65000})
        );
        assert_eq!(
            dump(&Snapshot::default(), MapId::Conntrack).table(),
            "lb_ct_v4: 0 entries\n"
        );
    }
}
