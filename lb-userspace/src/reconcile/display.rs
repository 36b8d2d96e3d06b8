//! Human-readable writes and sync reports, for logs and
//! [`DataplaneError::op`](super::DataplaneError::op).

use std::fmt;
use std::net::Ipv4Addr;

use lb_common::{ServiceKey, IPPROTO_TCP, IPPROTO_UDP};

use super::{MapOp, SyncReport};

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writes: backends +{} -{}, rev-nat +{} -{}, service entries +{} -{}",
            self.total(),
            self.upserted_backends,
            self.deleted_backends,
            self.upserted_revnat,
            self.deleted_revnat,
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
                    "upsert service {} (count {}, rev-nat {})",
                    frontend(k),
                    v.count,
                    v.rev_nat_id
                )
            }
            MapOp::UpsertService(k, v) => write!(
                f,
                "upsert service {} -> backend {}",
                frontend(k),
                v.backend_id
            ),
            MapOp::DeleteService(k) => write!(f, "delete service {}", frontend(k)),
            MapOp::DeleteRevNat(id) => write!(f, "delete rev-nat {id}"),
            MapOp::DeleteBackend(id) => write!(f, "delete backend {id}"),
        }
    }
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
