//! Conntrack expiry. The datapath stamps each entry with the last time it
//! was used (coarse monotonic clock, refreshed at most once a second) and
//! marks TCP entries that saw a FIN or RST; the agent walks the map now and
//! then and removes what has been idle too long, so that the LRU map's
//! room goes to live flows and `lb_conntrack_entries` means something.

use std::time::Duration;

use lb_common::{CtKey, CtValue, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_CLOSING, IPPROTO_TCP};

/// How long an entry may be idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP, open connection (Cilium's default; netfilter's is 5 days).
    pub tcp: Duration,
    /// TCP after a FIN or RST in this direction.
    pub tcp_closing: Duration,
    /// UDP (and anything else).
    pub udp: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// Whether the entry has been idle longer than its timeout at `now_ns`
/// (CLOCK_MONOTONIC_COARSE, the datapath's clock).
pub fn expired(key: &CtKey, value: &CtValue, now_ns: u64, t: &CtTimeouts) -> bool {
    let timeout = if key.proto != IPPROTO_TCP {
        t.udp
    } else if value.flags & CT_F_CLOSING != 0 {
        t.tcp_closing
    } else {
        t.tcp
    };
    now_ns.saturating_sub(value.last_seen_ns) > timeout.as_nanos() as u64
}

/// The reply entry that belongs to a forward entry (written with it), so
/// that both go together.
pub fn reply_of(key: &CtKey, value: &CtValue) -> Option<CtKey> {
    (key.dir == CT_DIR_FORWARD).then_some(CtKey {
        saddr_be: value.backend_addr_be,
        daddr_be: key.saddr_be,
        sport_be: value.backend_port_be,
        dport_be: key.sport_be,
        proto: key.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    })
}

/// CLOCK_MONOTONIC_COARSE now, in ns.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::IPPROTO_UDP;

    const S: u64 = 1_000_000_000;

    fn entry(proto: u8, flags: u16, last_seen_s: u64) -> (CtKey, CtValue) {
        let key = CtKey {
            saddr_be: 1,
            daddr_be: 2,
            sport_be: 3,
            dport_be: 4,
            proto,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        let value = CtValue {
            last_seen_ns: last_seen_s * S,
            flags,
            backend_addr_be: 9,
            backend_port_be: 8,
            ..Default::default()
        };
        (key, value)
    }

    #[test]
    fn timeouts_by_protocol_and_state() {
        let t = CtTimeouts::default();
        let now = 100_000 * S;
        let idle = |proto, flags, secs: u64| {
            let (k, v) = entry(proto, flags, 100_000 - secs);
            expired(&k, &v, now, &t)
        };
        assert!(
            !idle(IPPROTO_TCP, 0, 3600),
            "an hour-idle TCP connection stays"
        );
        assert!(idle(IPPROTO_TCP, 0, 7 * 3600));
        assert!(!idle(IPPROTO_TCP, CT_F_CLOSING, 5));
        assert!(idle(IPPROTO_TCP, CT_F_CLOSING, 11), "closed TCP goes fast");
        assert!(!idle(IPPROTO_UDP, 0, 30));
        assert!(idle(IPPROTO_UDP, 0, 61));
        // A stamp from the future (clock skew between CPUs) is not expired.
        let (k, v) = entry(IPPROTO_UDP, 0, 100_001);
        assert!(!expired(&k, &v, now, &t));
    }

    #[test]
    fn a_forward_entry_names_its_reply_entry() {
        let (k, v) = entry(IPPROTO_TCP, 0, 0);
        let reply = reply_of(&k, &v).unwrap();
        assert_eq!(
            (
                reply.saddr_be,
                reply.daddr_be,
                reply.sport_be,
                reply.dport_be,
                reply.dir
            ),
            (9, 1, 8, 3, CT_DIR_REPLY)
        );
        assert_eq!(reply_of(&reply, &v), None);
    }

    #[test]
    fn the_clock_moves() {
        let a = now_ns();
        std::thread::sleep(Duration::from_millis(20));
        assert!(now_ns() > a);
    }
}
