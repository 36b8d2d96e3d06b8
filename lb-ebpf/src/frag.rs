//! IPv4 fragments (the idea of Cilium's IPv4 fragment map): the later
//! fragments of a datagram carry no L4 header, so they cannot be matched to
//! a frontend or a conntrack entry by themselves. When a program rewrites a
//! datagram's first fragment, it records the datagram's ports under what
//! every fragment of it carries, (source, destination, IP id, protocol) as
//! they arrived; a later fragment arriving at the same program finds them
//! there and then takes the same path as its first fragment did (the same
//! conntrack lookups), with a rewrite of its IP header only.
//!
//! * The L4 checksum sits in the first fragment and covers the whole
//!   datagram, so the first fragment's incremental update keeps it right;
//!   later fragments only need their IP header checksum fixed.
//! * Later fragments never start a flow: they only follow existing
//!   conntrack entries (see `ingress.rs`).
//! * A later fragment that arrives before its first fragment (reordered),
//!   or belongs to a datagram we left alone, finds nothing and passes
//!   untouched: a reordered datagram is then lost, as with Cilium.
//! * A first fragment we leave alone deletes any entry under its key, so an
//!   IP id reused after wrapping never makes later fragments follow an older
//!   datagram's choice.

use lb_common::{FragKey, FragValue};

use crate::stats::{Action, Reason, Step};
use crate::{
    maps::FRAGMENTS,
    packet::Packet,
    parse::{Fragment, Headers},
};

#[inline(always)]
fn key(saddr_be: u32, daddr_be: u32, id_be: u16, proto: u8) -> FragKey {
    FragKey {
        saddr_be,
        daddr_be,
        id_be,
        proto,
        _pad: 0,
    }
}

/// The packet's headers; a later fragment gets the ports recorded for its
/// datagram, if its first fragment was rewritten here, and passes
/// untouched otherwise. After the parse, which reads the packet only.
#[inline(always)]
pub fn headers<P: Packet>(ctx: &P) -> Step<Headers> {
    let mut h = ctx.headers()?;
    if h.fragment == Fragment::Later {
        let k = key(h.saddr_be, h.daddr_be, h.ip_id_be, h.proto);
        // SAFETY: copied out at once.
        let v = unsafe { FRAGMENTS.get(&k).copied() }.ok_or(Reason::PassFragment)?;
        h.sport_be = v.sport_be;
        h.dport_be = v.dport_be;
    }
    Ok(h)
}

/// The last step of every program, given the packet as parsed (before any
/// rewrite) and the verdict of the steps before. A first fragment's ports
/// are recorded if it was rewritten, and forgotten otherwise; a rewritten
/// later fragment is counted as such. Whole datagrams pass through.
#[inline(always)]
pub fn follow(h: &Headers, verdict: Reason) -> Reason {
    let rewritten = verdict.action() == Action::Rewrite;
    match h.fragment {
        Fragment::None => verdict,
        Fragment::First => {
            first_fragment(h, rewritten as u32);
            verdict
        }
        Fragment::Later if rewritten => Reason::FragRewritten,
        Fragment::Later => verdict,
    }
}

/// Records (`rewritten` != 0) or forgets the ports of a first fragment's
/// datagram. A BPF subprogram: its key and value stay off the callers'
/// stacks, which are near the verifier's limit, and only first fragments
/// pay the call.
#[inline(never)]
fn first_fragment(h: &Headers, rewritten: u32) {
    let k = key(h.saddr_be, h.daddr_be, h.ip_id_be, h.proto);
    if rewritten == 0 {
        let _ = FRAGMENTS.remove(&k);
        return;
    }
    let v = FragValue {
        sport_be: h.sport_be,
        dport_be: h.dport_be,
    };
    if FRAGMENTS.insert(&k, &v, 0).is_err() {
        crate::stats::count(Reason::FragInsertFailed, 0);
    }
}
