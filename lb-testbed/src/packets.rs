//! Test packets, built and checked with etherparse: an implementation
//! independent of ours, so a checksum bug in the datapath cannot hide behind
//! the same bug in the checker. Used by the datapath tests and benchmarks.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Type, IpFragOffset, IpNumber, Ipv4Header, PacketBuilder,
    SlicedPacket, TcpOptionElement, TransportSlice,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// Which L4 protocol a test packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A TCP segment with the SYN flag.
    TcpSyn,
    /// A SYN carrying an MSS option (data offset 6).
    TcpSynMss,
    /// A server's SYN-ACK.
    TcpSynAck,
    /// A TCP segment with the ACK flag.
    TcpAck,
    /// A TCP segment with FIN and ACK.
    TcpFin,
    /// A TCP segment with RST and ACK.
    TcpRst,
    /// A UDP datagram with a checksum.
    Udp,
    /// A UDP datagram without a checksum (0).
    UdpNoChecksum,
}

/// An Ethernet/IPv4/L4 frame from `src` to `dst`. `ip_options` (a multiple
/// of 4 bytes, at most 40) lengthens the IPv4 header.
pub fn frame(
    l4: L4,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ip_options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, src.ip().octets(), dst.ip().octets())
        .expect("payload length 0 is valid");
    ip.identification = 0x1c46;
    ip.dont_fragment = true;
    ip.options = ip_options
        .try_into()
        .expect("IPv4 options: multiple of 4 bytes, at most 40");
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()));
    let mut out = Vec::new();
    match l4 {
        L4::TcpSyn => b
            .tcp(src.port(), dst.port(), 1000, 64240)
            .syn()
            .write(&mut out, payload),
        L4::TcpSynMss => b
            .tcp(src.port(), dst.port(), 1000, 64240)
            .syn()
            .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
            .expect("one MSS option fits")
            .write(&mut out, payload),
        L4::TcpSynAck => b
            .tcp(src.port(), dst.port(), 5000, 64240)
            .syn()
            .ack(1001)
            .write(&mut out, payload),
        L4::TcpAck => b
            .tcp(src.port(), dst.port(), 1001, 64240)
            .ack(1)
            .write(&mut out, payload),
        L4::TcpFin => b
            .tcp(src.port(), dst.port(), 1001, 64240)
            .ack(1)
            .fin()
            .write(&mut out, payload),
        L4::TcpRst => b
            .tcp(src.port(), dst.port(), 1001, 0)
            .ack(1)
            .rst()
            .write(&mut out, payload),
        L4::Udp | L4::UdpNoChecksum => b.udp(src.port(), dst.port()).write(&mut out, payload),
    }
    .expect("writing to a Vec");
    if l4 == L4::UdpNoChecksum {
        let csum_off = 14 + 20 + ip_options.len() + 6;
        out[csum_off..csum_off + 2].copy_from_slice(&[0, 0]);
    }
    out
}

/// The frames of one datagram cut into IPv4 fragments, as a sender's stack
/// does it: the datagram is the one [`frame`] builds (no IP options), sent
/// with IP id `id` and without DF, and its IP payload (L4 header and data)
/// is cut into pieces of `piece` bytes (a multiple of 8; the last piece may
/// be shorter). Each frame carries its own IPv4 header: offset, more-fragments
/// flag, length and checksum. The L4 checksum, in the first fragment, covers
/// the whole datagram.
pub fn fragments(
    l4: L4,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    id: u16,
    payload: &[u8],
    piece: usize,
) -> Vec<Vec<u8>> {
    assert!(
        piece > 0 && piece.is_multiple_of(8),
        "fragment payloads: multiples of 8"
    );
    let whole = frame(l4, src, dst, &[], payload);
    let (ip, _) = Ipv4Header::from_slice(&whole[14..]).expect("frame writes IPv4");
    let (eth, data) = (&whole[..14], &whole[14 + ip.header_len()..]);
    assert!(data.len() > piece, "{} bytes fit one piece", data.len());
    let count = data.len().div_ceil(piece);
    data.chunks(piece)
        .enumerate()
        .map(|(i, chunk)| {
            let mut hdr = ip.clone();
            hdr.identification = id;
            hdr.dont_fragment = false;
            hdr.more_fragments = i + 1 < count;
            hdr.fragment_offset =
                IpFragOffset::try_new((i * piece / 8) as u16).expect("offset fits 13 bits");
            hdr.set_payload_len(chunk.len())
                .expect("a piece fits an IPv4 packet");
            let mut out = eth.to_vec();
            hdr.write(&mut out).expect("writing to a Vec");
            out.extend_from_slice(chunk);
            out
        })
        .collect()
}

/// Whether a frame's IPv4 header checksum is right (fragments included,
/// which [`decode`] does not take).
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    Ipv4Header::from_slice(&frame[14..])
        .is_ok_and(|(hdr, _)| hdr.calc_header_checksum() == hdr.header_checksum)
}

/// The reply header a rejection carries: id 0, DF, TTL 64, no options.
fn reply_ip(src: Ipv4Addr, dst: Ipv4Addr, proto: IpNumber) -> Ipv4Header {
    let mut ip = Ipv4Header::new(0, 64, proto, src.octets(), dst.octets())
        .expect("payload length 0 is valid");
    ip.dont_fragment = true;
    ip
}

/// The RST|ACK (seq 0, window 0, no options) with which `frontend` refuses
/// a connection, back to the sender of one of our frames.
pub fn rst_frame(frontend: SocketAddrV4, client: SocketAddrV4, ack: u32) -> Vec<u8> {
    let ip = reply_ip(*frontend.ip(), *client.ip(), IpNumber::TCP);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(NODE_MAC, CLIENT_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(frontend.port(), client.port(), 0, 0)
        .rst()
        .ack(ack)
        .write(&mut out, &[])
        .expect("writing to a Vec");
    out
}

/// The ICMP port unreachable from `frontend` that refuses `original`, one
/// of our UDP frames: it quotes the original IPv4 header and UDP header.
pub fn icmp_port_unreachable_frame(frontend: Ipv4Addr, original: &[u8]) -> Vec<u8> {
    let client = Ipv4Addr::new(original[26], original[27], original[28], original[29]);
    let ip = reply_ip(frontend, client, IpNumber::ICMP);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(NODE_MAC, CLIENT_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut out, &original[14..14 + 28])
        .expect("writing to a Vec");
    out
}

/// The addresses and checksum state of a frame, as an independent parser
/// reads them.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// True when both the IPv4 header checksum and the L4 checksum (unless
    /// a UDP checksum is 0 = absent) are correct.
    pub checksums_ok: bool,
    /// UDP only: the checksum field is 0.
    pub udp_no_checksum: bool,
}

/// Parses a frame and verifies its checksums from scratch.
pub fn decode(frame: &[u8]) -> Result<Decoded, String> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| e.to_string())?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        return Err("not IPv4".into());
    };
    let hdr = ip.header().to_header();
    let ip_ok = hdr.calc_header_checksum() == hdr.header_checksum;
    let (s, d) = (Ipv4Addr::from(hdr.source), Ipv4Addr::from(hdr.destination));
    let payload = ip.payload().payload;
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let th = t.to_header();
            let ok = th
                .calc_checksum_ipv4(&hdr, t.payload())
                .map_err(|e| e.to_string())?
                == th.checksum;
            Ok(Decoded {
                src: SocketAddrV4::new(s, th.source_port),
                dst: SocketAddrV4::new(d, th.destination_port),
                checksums_ok: ip_ok && ok,
                udp_no_checksum: false,
            })
        }
        Some(TransportSlice::Udp(u)) => {
            let uh = u.to_header();
            let none = uh.checksum == 0;
            let ok = none
                || uh
                    .calc_checksum_ipv4(&hdr, &payload[8..])
                    .map_err(|e| e.to_string())?
                    == uh.checksum;
            Ok(Decoded {
                src: SocketAddrV4::new(s, uh.source_port),
                dst: SocketAddrV4::new(d, uh.destination_port),
                checksums_ok: ip_ok && ok,
                udp_no_checksum: none,
            })
        }
        _ => Err("neither TCP nor UDP".into()),
    }
}
