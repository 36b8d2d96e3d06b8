//! lb-common's wire conventions decoded: `_be` fields hold network byte
//! order (an address `a.b.c.d` is the `u32` whose bytes in memory are
//! `[a, b, c, d]`), protocols and directions are bare numbers.

use std::{borrow::Cow, fmt, net::Ipv4Addr};

use lb_common::{
    stats, Backend, RevNat, ServiceKey, CT_DIR_FORWARD, CT_DIR_REPLY, CT_DIR_SNAT_IN,
    CT_DIR_SNAT_OUT, IPPROTO_TCP, IPPROTO_UDP,
};
use serde::{Serialize, Serializer};

pub fn ip(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_be.to_ne_bytes())
}

pub fn port(port_be: u16) -> u16 {
    u16::from_be(port_be)
}

/// An IP protocol number; shown and serialized as `tcp`, `udp` or the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Proto(pub u8);

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IPPROTO_TCP => f.write_str("tcp"),
            IPPROTO_UDP => f.write_str("udp"),
            other => write!(f, "{other}"),
        }
    }
}

impl Serialize for Proto {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A conntrack entry's direction; shown and serialized as `forward`, `reply`
/// or the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Direction(pub u8);

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            CT_DIR_FORWARD => f.write_str("forward"),
            CT_DIR_REPLY => f.write_str("reply"),
            CT_DIR_SNAT_OUT => f.write_str("snat-out"),
            CT_DIR_SNAT_IN => f.write_str("snat-in"),
            other => write!(f, "{other}"),
        }
    }
}

impl Serialize for Direction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Address and port, as rev-NAT targets and conntrack tuples carry them.
/// JSON: `{"ip": "10.96.0.10", "port": 80}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IpPort {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl IpPort {
    pub fn from_be(addr_be: u32, port_be: u16) -> Self {
        IpPort {
            ip: ip(addr_be),
            port: port(port_be),
        }
    }

    pub fn revnat(target: &RevNat) -> Self {
        Self::from_be(target.addr_be, target.port_be)
    }
}

impl fmt::Display for IpPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// Address, port and protocol of a frontend or a backend.
/// JSON: `{"ip": "10.96.0.10", "port": 80, "proto": "tcp"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl Endpoint {
    /// The frontend a service map key belongs to (whatever its slot).
    pub fn frontend(key: &ServiceKey) -> Self {
        Endpoint {
            ip: ip(key.vip_be),
            port: port(key.port_be),
            proto: Proto(key.proto),
        }
    }

    pub fn backend(backend: &Backend) -> Self {
        Endpoint {
            ip: ip(backend.addr_be),
            port: port(backend.port_be),
            proto: Proto(backend.proto),
        }
    }

    pub fn ip_port(&self) -> IpPort {
        IpPort {
            ip: self.ip,
            port: self.port,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// The name of a stats reason; reasons newer than this lbctl get a
/// placeholder rather than failing the whole read.
pub fn reason_name(index: u32) -> Cow<'static, str> {
    match stats::Reason::from_index(index) {
        Some(reason) => Cow::Borrowed(reason.name()),
        None => Cow::Owned(format!("reason_{index}")),
    }
}

/// Whether the reason at `index` drops its packets (false for reasons
/// newer than this lbctl).
pub fn is_drop(index: usize) -> bool {
    u32::try_from(index)
        .ok()
        .and_then(stats::Reason::from_index)
        .is_some_and(stats::Reason::is_drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_order_is_decoded() {
        let key = ServiceKey {
            vip_be: u32::from_ne_bytes([10, 96, 0, 10]),
            port_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            ..Default::default()
        };
        assert_eq!(Endpoint::frontend(&key).to_string(), "10.96.0.10:80/tcp");
        assert_eq!(Proto(47).to_string(), "47");
        assert_eq!(Direction(CT_DIR_REPLY).to_string(), "reply");
        assert_eq!(reason_name(0), "pass_not_ipv4");
        assert_eq!(reason_name(99), "reason_99");
    }
}
