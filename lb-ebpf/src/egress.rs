//! TC egress: reverse NAT of backend replies.

use aya_ebpf::programs::TcContext;
use lb_common::{stats, CT_DIR_REPLY};

use crate::{conntrack, maps::REVNAT, nat, parse};

/// Bytes of headers we need in the linear area: Ethernet, IPv4 with the
/// largest options, TCP's fixed header.
const MAX_HEADERS: u32 = 14 + 60 + 20;

#[inline(always)]
pub fn try_egress(ctx: &TcContext) -> Result<u32, u32> {
    let h = match parse::parse(ctx.data(), ctx.data_end()) {
        Ok(h) => h,
        Err(stats::PASS_TRUNCATED) if ctx.len() > (ctx.data_end() - ctx.data()) as u32 => {
            // Headers may sit in a non-linear part of the skb: pull them in.
            let want = if ctx.len() < MAX_HEADERS {
                ctx.len()
            } else {
                MAX_HEADERS
            };
            if ctx.pull_data(want).is_err() {
                return Ok(stats::PASS_TRUNCATED);
            }
            match parse::parse(ctx.data(), ctx.data_end()) {
                Ok(h) => h,
                Err(reason) => return Ok(reason),
            }
        }
        Err(reason) => return Ok(reason),
    };
    let reply = conntrack::key(
        h.saddr_be,
        h.daddr_be,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_REPLY,
    );
    let Some((entry, _)) = conntrack::lookup(&reply) else {
        return Ok(stats::TC_PASS_NOT_REPLY);
    };
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { REVNAT.get(&entry.rev_nat_id).copied() }) else {
        return Ok(stats::TC_PASS_REVNAT_MISSING);
    };
    nat::snat_tc(ctx, &h, frontend.addr_be, frontend.port_be)?;
    Ok(stats::REVNAT)
}
