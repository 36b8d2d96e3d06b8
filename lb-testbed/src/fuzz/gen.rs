//! Frames to fuzz with: well-formed TCP (every flag mix), UDP, ICMP and
//! other protocols, with and without IP options, aimed at frontends,
//! NodePorts, backends, SNAT ports or anywhere; then, for some, one
//! mutation: a fragment, a cut at any offset, flipped bytes, a bad header
//! length or total length, a VLAN tag, another EtherType.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{IpNumber, Ipv4Header, PacketBuilder, TcpHeader, TcpOptionElement};
use rand::{rngs::StdRng, Rng};

use super::scene::{Scene, EXTERNAL_CLIENTS, NODE, POD_CLIENTS, SNAT_PORTS};
use super::Program;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const ETH_HLEN: usize = 14;

/// A flow the datapath balanced, seen in its output: TC fuzzing sends its
/// replies (and lookalikes of them).
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub client: SocketAddrV4,
    pub backend: SocketAddrV4,
    pub proto: u8,
}

/// Which program gets the next frame, and the frame.
pub fn case(rng: &mut StdRng, scene: &Scene, flows: &[Flow]) -> (Program, Vec<u8>) {
    let program = match rng.random_range(0..100) {
        0..20 => Program::TcPodIngress,
        20..40 => Program::XdpPod,
        40..65 => Program::XdpNode,
        65..85 => Program::TcPod,
        _ => Program::TcNode,
    };
    let (src, dst, proto) = match program {
        Program::TcPodIngress | Program::XdpPod => forward(rng, scene, &POD_CLIENTS),
        Program::XdpNode => forward(rng, scene, &EXTERNAL_CLIENTS),
        Program::TcPod | Program::TcNode => reply(rng, scene, flows),
    };
    let frame = build(rng, src, dst, proto);
    let frame = mutate(rng, frame);
    (program, frame)
}

/// Client to (mostly) a frontend.
fn forward(
    rng: &mut StdRng,
    scene: &Scene,
    clients: &[Ipv4Addr],
) -> (SocketAddrV4, SocketAddrV4, u8) {
    let src = SocketAddrV4::new(pick(rng, clients), rng.random_range(1024..=65535));
    let targets = scene.targets();
    let target = pick(rng, &targets);
    let (dst, proto) = match rng.random_range(0..100) {
        0..60 => (target.addr, target.proto),
        // A frontend's address on another port or protocol.
        60..70 => (
            SocketAddrV4::new(*target.addr.ip(), rng.random_range(1..=65535)),
            any_proto(rng),
        ),
        // A reply to an SNATed flow, or what looks like one.
        70..78 => (
            SocketAddrV4::new(NODE, rng.random_range(SNAT_PORTS)),
            any_proto(rng),
        ),
        78..86 => (pick(rng, &scene.backends), any_proto(rng)),
        _ => (random_addr(rng), any_proto(rng)),
    };
    (src, dst, proto)
}

/// A backend's reply to a flow the datapath balanced, a lookalike of one
/// (a backend's packet to a client without a flow), or anything.
fn reply(rng: &mut StdRng, scene: &Scene, flows: &[Flow]) -> (SocketAddrV4, SocketAddrV4, u8) {
    let backend = pick(rng, &scene.backends);
    match (rng.random_range(0..100), flows.is_empty()) {
        (0..50, false) => {
            let flow = pick(rng, flows);
            if rng.random_bool(0.8) {
                (flow.backend, flow.client, flow.proto)
            } else {
                // The client's own next packet (SNATed at TC for hairpin
                // and remote-backend flows).
                (flow.client, flow.backend, flow.proto)
            }
        }
        (0..75, _) => {
            let client = SocketAddrV4::new(pick(rng, &POD_CLIENTS), rng.random_range(1024..=65535));
            (
                backend,
                client,
                pick(rng, &[lb_common::IPPROTO_TCP, lb_common::IPPROTO_UDP]),
            )
        }
        _ => {
            let dst = SocketAddrV4::new(random_addr(rng).ip().to_owned(), rng.random());
            (backend, dst, any_proto(rng))
        }
    }
}

/// TCP and UDP mostly, sometimes ICMP or any protocol number.
fn any_proto(rng: &mut StdRng) -> u8 {
    match rng.random_range(0..10) {
        0..4 => lb_common::IPPROTO_TCP,
        4..8 => lb_common::IPPROTO_UDP,
        8 => 1,
        _ => rng.random(),
    }
}

fn random_addr(rng: &mut StdRng) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(rng.random::<u32>()), rng.random())
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// A well-formed frame: valid lengths and checksums.
fn build(rng: &mut StdRng, src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber(proto), src.ip().octets(), dst.ip().octets())
        .expect("payload length 0 is valid");
    ip.identification = rng.random();
    ip.dont_fragment = rng.random_bool(0.5);
    if rng.random_bool(0.1) {
        let words = rng.random_range(1..=10);
        let options: Vec<u8> = (0..4 * words).map(|_| rng.random()).collect();
        ip.options = options[..].try_into().expect("at most 40 bytes");
    }
    let len = if rng.random_bool(0.05) {
        rng.random_range(0..1400)
    } else {
        rng.random_range(0..64)
    };
    let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()));
    let mut out = Vec::new();
    match proto {
        lb_common::IPPROTO_TCP => b.tcp_header(tcp(rng, src, dst)).write(&mut out, &payload),
        lb_common::IPPROTO_UDP => b.udp(src.port(), dst.port()).write(&mut out, &payload),
        1 => b
            .icmpv4_echo_request(rng.random(), rng.random())
            .write(&mut out, &payload),
        other => b.write(&mut out, IpNumber(other), &payload),
    }
    .expect("writing to a Vec");
    if proto == lb_common::IPPROTO_UDP && rng.random_bool(0.1) {
        // No checksum (0), as UDP allows.
        let l4 = ETH_HLEN + usize::from(out[ETH_HLEN] & 0x0f) * 4;
        out[l4 + 6..l4 + 8].fill(0);
    }
    out
}

/// A TCP header with random flags (every combination comes up), numbers
/// and sometimes an MSS option.
fn tcp(rng: &mut StdRng, src: SocketAddrV4, dst: SocketAddrV4) -> TcpHeader {
    let mut t = TcpHeader::new(src.port(), dst.port(), rng.random(), rng.random());
    let flags: u8 = rng.random();
    (t.fin, t.syn, t.rst, t.psh) = (
        flags & 1 != 0,
        flags & 2 != 0,
        flags & 4 != 0,
        flags & 8 != 0,
    );
    (t.ack, t.urg, t.ece, t.cwr) = (
        flags & 16 != 0,
        flags & 32 != 0,
        flags & 64 != 0,
        flags & 128 != 0,
    );
    t.acknowledgment_number = rng.random();
    if rng.random_bool(0.2) {
        t.set_options(&[TcpOptionElement::MaximumSegmentSize(1460)])
            .expect("one MSS option fits");
    }
    t
}

/// Leaves most frames as they are; changes the others one way.
fn mutate(rng: &mut StdRng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.random_range(0..100) {
        // A fragment: first (MF) or later (offset), IP checksum kept right.
        0..10 => {
            let offset: u16 = if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(1..0x2000)
            };
            let more = if offset == 0 || rng.random_bool(0.5) {
                0x2000
            } else {
                0
            };
            f[20..22].copy_from_slice(&(offset | more).to_be_bytes());
            fix_ip_checksum(&mut f);
        }
        // Cut at any offset (test runs need the Ethernet header).
        10..20 => f.truncate(rng.random_range(ETH_HLEN..f.len().max(ETH_HLEN + 1))),
        // Flipped bytes anywhere: checksums broken, fields nonsense.
        20..30 => {
            for _ in 0..rng.random_range(1..=3) {
                let i = rng.random_range(0..f.len());
                f[i] ^= rng.random_range(1..=255u8);
            }
        }
        // A header length from 0 to 60 bytes, whatever the header is.
        30..35 => f[ETH_HLEN] = 0x40 | rng.random_range(0..16u8),
        // A total length that lies.
        35..39 => {
            let len: u16 = rng.random();
            f[16..18].copy_from_slice(&len.to_be_bytes());
            fix_ip_checksum(&mut f);
        }
        // An 802.1Q tag before the IPv4 header.
        39..42 => {
            let vid: u16 = rng.random_range(1..4095);
            let tag = [0x81, 0x00, (vid >> 8) as u8, vid as u8];
            f.splice(12..12, tag);
        }
        // Another EtherType: ARP, IPv6, anything.
        42..45 => {
            let any = rng.random();
            let ether_type = pick(rng, &[0x0806u16, 0x86dd, any]);
            f[12..14].copy_from_slice(&ether_type.to_be_bytes());
        }
        _ => {}
    }
    f
}

/// Recomputes the IPv4 header checksum after a field change (unless the
/// header is one etherparse refuses, e.g. for a length below its own).
fn fix_ip_checksum(f: &mut [u8]) {
    if let Ok((hdr, _)) = Ipv4Header::from_slice(&f[ETH_HLEN..]) {
        let sum = hdr.calc_header_checksum();
        f[24..26].copy_from_slice(&sum.to_be_bytes());
    }
}
