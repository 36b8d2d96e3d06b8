//! TC egress helpers: reading an skb's headers, and the reverse NAT of
//! backend replies (see `node_egress` for the program body).

use aya_ebpf::programs::TcContext;
use lb_common::{CT_DIR_REPLY, CT_F_CLOSING};

use crate::stats::{Reason, Step};
use crate::{
    conntrack,
    maps::REVNAT,
    nat,
    parse::{self, Headers},
    select::BackendFilter,
};

/// Bytes of headers we need in the linear area: Ethernet, IPv4 with the
/// largest options, TCP's fixed header.
const MAX_HEADERS: u32 = 14 + 60 + 20;

/// Parses an skb's headers, pulling them into the linear area first if
/// they sit in a non-linear part. `Err` is the pass reason.
#[inline(always)]
pub fn parse_skb(ctx: &TcContext) -> Step<Headers> {
    match parse::parse(ctx.data(), ctx.data_end()) {
        Err(Reason::PassTruncated) if ctx.len() > (ctx.data_end() - ctx.data()) as u32 => {
            let want = if ctx.len() < MAX_HEADERS {
                ctx.len()
            } else {
                MAX_HEADERS
            };
            if ctx.pull_data(want).is_err() {
                return Err(Reason::PassTruncated);
            }
            parse::parse(ctx.data(), ctx.data_end())
        }
        other => other,
    }
}

/// Rewrites a tracked backend reply to come from its frontend: `Some`
/// reason if it was one, `None` if the packet is not a tracked reply.
#[inline(always)]
pub fn reverse_nat(ctx: &TcContext, h: &Headers, filter: BackendFilter) -> Step<Option<Reason>> {
    // A reply comes from a backend: from anything else, no lookup.
    if !filter.maybe_backend(h.saddr_be, h.sport_be, h.proto) {
        return Ok(None);
    }
    let reply = conntrack::key(
        h.saddr_be,
        h.daddr_be,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_REPLY,
    );
    let Some((entry, _)) = conntrack::lookup(&reply, h.is_tcp_closing()) else {
        return Ok(None);
    };
    if h.is_tcp_syn_ack() && entry.flags & CT_F_CLOSING != 0 {
        // A closed flow's tuple answering a new connection that reached
        // the backend without us: a client that used the same source port
        // towards a NodePort (DNATed to a local backend, client address
        // kept) and then to the backend itself (socket LB, pod IP). The
        // new connection is not ours to rewrite; the stale entry goes.
        conntrack::remove(&reply);
        return Ok(None);
    }
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { REVNAT.get(&entry.rev_nat_id).copied() }) else {
        return Ok(Some(Reason::TcPassRevnatMissing));
    };
    // A NodePort's rev-NAT target is 0.0.0.0:nodePort: the address is the
    // one the client used, kept in the entry.
    let addr_be = if frontend.addr_be == 0 {
        entry.nat_addr_be
    } else {
        frontend.addr_be
    };
    nat::snat_tc(ctx, h, addr_be, frontend.port_be)?;
    Ok(Some(Reason::Revnat))
}
