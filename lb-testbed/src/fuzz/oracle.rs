//! What a program may do with a frame, decided from the frame alone with
//! plain header offsets and etherparse: never with the datapath's code.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::packets::{decode, ipv4_checksum_ok};

const ETH_HLEN: usize = 14;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// The IPv4 header fields of a frame, if it is an untagged IPv4 frame
/// whose header (options included) fits in it.
#[derive(Clone, Copy, Debug)]
pub struct IpView {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Offset of the L4 header in the frame.
    pub l4: usize,
    /// Fragment offset (8-byte units) and more-fragments flag.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// Source and destination port: a first fragment (or whole datagram)
    /// of TCP or UDP long enough to carry them.
    pub ports: Option<(u16, u16)>,
}

impl IpView {
    pub fn read(f: &[u8]) -> Option<IpView> {
        if f.len() < ETH_HLEN + 20 || f[12..14] != ETH_P_IP || f[ETH_HLEN] >> 4 != 4 {
            return None;
        }
        let l4 = ETH_HLEN + usize::from(f[ETH_HLEN] & 0x0f) * 4;
        if l4 < ETH_HLEN + 20 || f.len() < l4 {
            return None;
        }
        let addr = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
        let frag = u16::from_be_bytes([f[20], f[21]]);
        let proto = f[23];
        let frag_offset = frag & 0x1fff;
        let ports = (frag_offset == 0
            && (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
            && f.len() >= l4 + 4)
            .then(|| {
                let port = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
                (port(l4), port(l4 + 2))
            });
        Some(IpView {
            src: addr(26),
            dst: addr(30),
            proto,
            l4,
            frag_offset,
            more_fragments: frag & 0x2000 != 0,
            ports,
        })
    }

    pub fn is_fragment(&self) -> bool {
        self.frag_offset != 0 || self.more_fragments
    }

    pub fn src_addr(&self) -> Option<SocketAddrV4> {
        self.ports.map(|(s, _)| SocketAddrV4::new(self.src, s))
    }

    pub fn dst_addr(&self) -> Option<SocketAddrV4> {
        self.ports.map(|(_, d)| SocketAddrV4::new(self.dst, d))
    }

    /// The byte offsets a NAT may change: the IPv4 checksum, addresses,
    /// and (with ports) the ports and the L4 checksum.
    fn rewritable(&self, offset: usize) -> bool {
        let l4 = self.l4;
        let l4_checksum = match self.proto {
            IPPROTO_TCP => l4 + 16..l4 + 18,
            _ => l4 + 6..l4 + 8,
        };
        (24..34).contains(&offset)
            || (self.ports.is_some()
                && ((l4..l4 + 4).contains(&offset) || l4_checksum.contains(&offset)))
    }
}

/// The bytes where `out` differs from `input` (same length) that no NAT
/// may touch.
pub fn foreign_changes(view: &IpView, input: &[u8], out: &[u8]) -> Vec<usize> {
    (0..input.len())
        .filter(|&i| input[i] != out[i] && !view.rewritable(i))
        .collect()
}

/// Whether the rewrite kept checksums right that were right before:
/// IPv4 header always, L4 for whole datagrams. At XDP (`xdp`), which
/// cannot tell, a frame whose L4 field holds its pseudo-header sum is
/// taken for a partial (offloaded) checksum, as the datapath must (see
/// `lb-ebpf/src/nat.rs`): then the field must hold the new pseudo-header
/// sum. TC knows from the skb (a test run's is never partial).
pub fn checksums_kept(xdp: bool, view: &IpView, input: &[u8], out: &[u8]) -> bool {
    let ip_kept = !ipv4_checksum_ok(input) || ipv4_checksum_ok(out);
    if view.is_fragment() {
        return ip_kept;
    }
    if xdp && partial_form(view, input) {
        return ip_kept && partial_form(view, out);
    }
    match decode(input) {
        Ok(d) if d.checksums_ok => decode(out).is_ok_and(|o| o.checksums_ok),
        // Broken before (or not parseable): nothing to keep.
        _ => true,
    }
}

/// Whether the frame's L4 checksum field holds the folded (not inverted)
/// sum of its pseudo-header: what a stack sending with checksum offload
/// leaves there. Computed here word by word, not with the datapath's code.
pub fn partial_form(view: &IpView, f: &[u8]) -> bool {
    let Some(_) = view.ports else { return false };
    let at = match view.proto {
        IPPROTO_TCP => view.l4 + 16,
        _ => view.l4 + 6,
    };
    if f.len() < at + 2 {
        return false;
    }
    let word = |i: usize| u32::from(u16::from_be_bytes([f[i], f[i + 1]]));
    let tot_len = word(16) as usize;
    let l4_len = tot_len.saturating_sub(view.l4 - ETH_HLEN) as u32;
    let mut sum = word(26) + word(28) + word(30) + word(32) + u32::from(view.proto) + l4_len;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    word(at) == sum
}

/// Whether `out` is the right refusal of `input`: a RST|ACK or an ICMP
/// port unreachable, from the address the client sent to, back to it,
/// with valid checksums.
pub fn is_refusal(view: &IpView, input: &[u8], out: &[u8]) -> Result<(), String> {
    let p = SlicedPacket::from_ethernet(out).map_err(|e| format!("unparseable: {e}"))?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return Err("not IPv4".into());
    };
    let hdr = ip.header().to_header();
    if hdr.calc_header_checksum() != hdr.header_checksum {
        return Err("bad IPv4 checksum".into());
    }
    let (src, dst) = (Ipv4Addr::from(hdr.source), Ipv4Addr::from(hdr.destination));
    if (src, dst) != (view.dst, view.src) {
        return Err(format!("{src} -> {dst}, not back to the sender"));
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let d = decode(out)?;
            let (sport, dport) = view.ports.ok_or("a RST for a packet without ports")?;
            if !(t.rst() && t.ack() && !t.syn())
                || (t.source_port(), t.destination_port()) != (dport, sport)
            {
                return Err("not a RST|ACK on the flow's ports".into());
            }
            d.checksums_ok
                .then_some(())
                .ok_or_else(|| "bad TCP checksum".into())
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            if (icmp.type_u8(), icmp.code_u8()) != (3, 3) {
                return Err("ICMP, but not port unreachable".into());
            }
            if icmp.icmp_type().calc_checksum(icmp.payload()) != icmp.checksum() {
                return Err("bad ICMP checksum".into());
            }
            let quote = &input[ETH_HLEN..(ETH_HLEN + 28).min(input.len())];
            (icmp.payload() == quote)
                .then_some(())
                .ok_or_else(|| "does not quote the datagram's first 28 bytes".into())
        }
        _ => Err("neither TCP nor ICMP".into()),
    }
}

/// Flows the datapath balanced (from its outputs): the tuples TC may
/// rewrite, the backend's replies and the client's later packets.
#[derive(Default)]
pub struct Tracked {
    tuples: BTreeSet<(SocketAddrV4, SocketAddrV4, u8)>,
    addrs: BTreeSet<Ipv4Addr>,
}

impl Tracked {
    pub fn insert(&mut self, client: SocketAddrV4, backend: SocketAddrV4, proto: u8) {
        self.tuples.insert((backend, client, proto));
        self.tuples.insert((client, backend, proto));
        self.addrs.extend([*client.ip(), *backend.ip()]);
    }

    /// Whether TC may rewrite the frame `view`.
    pub fn may_rewrite(&self, view: &IpView) -> bool {
        match (view.src_addr(), view.dst_addr()) {
            (Some(src), Some(dst)) => self.tuples.contains(&(src, dst, view.proto)),
            // A later fragment: of a tracked flow's datagram, maybe.
            _ => {
                view.frag_offset != 0
                    && (self.addrs.contains(&view.src) || self.addrs.contains(&view.dst))
            }
        }
    }
}
