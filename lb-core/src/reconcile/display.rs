//! Human-readable writes and sync reports, for logs and
//! [`DataplaneError::op`](super::DataplaneError::op).

use std::fmt;
use std::net::Ipv4Addr;

use lb_common::{ServiceKey, IPPROTO_TCP, IPPROTO_UDP, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES};

use super::{MapOp, SyncReport};

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writes: backends +{} -{}, rev-nat +{} -{}, source ranges +{} -{}, service entries +{} -{}",
            self.total(),
            self.upserted_backends,
            self.deleted_backends,
            self.upserted_revnat,
            self.deleted_revnat,
            self.upserted_source_ranges,
            self.deleted_source_ranges,
            self.upserted_services,
            self.deleted_services,
        )
    }
}

impl fmt::Display for MapOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frontend = |k: &ServiceKey| {
            format!(
                "{}:{}/{} slot {}",
                ip_from_be(k.vip_be),
                u16::from_be(k.port_be),
                proto_name(k.proto),
                k.slot
            )
        };
        match self {
            MapOp::UpsertBackend(id, b) => {
                write!(
                    f,
                    "upsert backend {id} = {}:{}/{}",
                    ip_from_be(b.addr_be),
                    u16::from_be(b.port_be),
                    proto_name(b.proto)
                )
            }
            MapOp::UpsertRevNat(id, r) => write!(
                f,
                "upsert rev-nat {id} = {}:{}",
                ip_from_be(r.addr_be),
                u16::from_be(r.port_be)
            ),
            MapOp::UpsertService(k, v) if k.slot == 0 => {
                write!(
                    f,
                    "upsert service {} (count {}, rev-nat {}{})",
                    frontend(k),
                    v.count,
                    v.rev_nat_id,
                    flag_names(v.flags)
                )
            }
            MapOp::UpsertService(k, v) => write!(
                f,
                "upsert service {} -> backend {}",
                frontend(k),
                v.backend_id
            ),
            MapOp::UpsertSourceRange(id, net) => {
                write!(f, "upsert source range {net} of rev-nat {id}")
            }
            MapOp::DeleteService(k) => write!(f, "delete service {}", frontend(k)),
            MapOp::DeleteSourceRange(id, net) => {
                write!(f, "delete source range {net} of rev-nat {id}")
            }
            MapOp::DeleteRevNat(id) => write!(f, "delete rev-nat {id}"),
            MapOp::DeleteBackend(id) => write!(f, "delete backend {id}"),
        }
    }
}

/// `, local-only, source-ranges` for the master's flags that are set.
fn flag_names(flags: u16) -> String {
    [
        (SVC_F_LOCAL_ONLY, ", local-only"),
        (SVC_F_SOURCE_RANGES, ", source-ranges"),
    ]
    .iter()
    .filter(|(flag, _)| flags & flag != 0)
    .map(|(_, name)| *name)
    .collect()
}

fn ip_from_be(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_be.to_ne_bytes())
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        other => format!("proto {other}"),
    }
}
