//! A flood of new flows: UDP datagrams from one client, each with a 5-tuple
//! of its own (source port x destination port), written with a raw socket
//! so that nothing in the client's stack tracks or limits them. Aimed at a
//! Service frontend it makes the datapath balance, and track, one new flow
//! per datagram: what fills a conntrack map.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::netns::NetNs;

/// Source ports used: the unprivileged range.
const FIRST_SPORT: u16 = 1024;
/// Bytes of UDP payload per datagram.
const PAYLOAD: usize = 16;

/// What a flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub sent: u64,
    pub elapsed: Duration,
}

impl Flood {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends datagrams number `first..first + count` of the sequence from
/// `src` (the namespace's own address) to `dst`: datagram `i` goes to
/// `dst_ports[i % n]` from source port `1024 + i / n`, so every datagram of
/// the sequence is a 5-tuple of its own (up to `n * 64512`). At most `rate`
/// per second: a veth drops what its peer cannot take in time (the sender
/// never learns), and a flow that never reached the datapath floods
/// nothing.
pub fn udp_flood(
    ns: &NetNs,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_ports: &[u16],
    first: u64,
    count: u64,
    rate: u32,
) -> Result<Flood> {
    let n = dst_ports.len() as u64;
    ensure!(n > 0, "no destination port");
    ensure!(
        first + count <= n * u64::from(u16::MAX - FIRST_SPORT + 1),
        "{} datagrams are more 5-tuples than {n} ports give",
        first + count
    );
    let dst_ports = dst_ports.to_vec();
    ns.run(move || send(src, dst, &dst_ports, first..first + count, rate))?
}

/// Datagrams between two looks at the clock: small bursts, as a veth in
/// native XDP mode queues 256 frames for its peer.
const PACING_BATCH: u64 = 32;

fn send(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_ports: &[u16],
    sequence: Range<u64>,
    rate: u32,
) -> Result<Flood> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))
        .context("opening a raw socket")?;
    // We write the IPv4 header; the kernel fills in its checksum.
    socket.set_header_included_v4(true)?;
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    let mut frame = datagram(src, dst);
    let n = dst_ports.len() as u64;
    let start = Instant::now();
    let mut sent = 0;
    for i in sequence {
        if sent % PACING_BATCH == 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / f64::from(rate.max(1)));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let sport = FIRST_SPORT + (i / n) as u16;
        let dport = dst_ports[(i % n) as usize];
        frame[20..22].copy_from_slice(&sport.to_be_bytes());
        frame[22..24].copy_from_slice(&dport.to_be_bytes());
        loop {
            match socket.send_to(&frame, &to) {
                Ok(_) => break,
                // The socket's buffer is full: wait rather than lose the flow.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    std::thread::sleep(Duration::from_micros(50))
                }
                Err(e) => return Err(e).context("sending a datagram"),
            }
        }
        sent += 1;
    }
    Ok(Flood {
        sent,
        elapsed: start.elapsed(),
    })
}

/// An IPv4 + UDP datagram without a UDP checksum (0: none, as UDP allows);
/// ports are filled in per datagram.
fn datagram(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let total = (20 + 8 + PAYLOAD) as u16;
    let mut f = vec![0u8; usize::from(total)];
    f[0] = 0x45;
    f[2..4].copy_from_slice(&total.to_be_bytes());
    f[8] = 64;
    f[9] = libc::IPPROTO_UDP as u8;
    f[12..16].copy_from_slice(&src.octets());
    f[16..20].copy_from_slice(&dst.octets());
    f[24..26].copy_from_slice(&(8 + PAYLOAD as u16).to_be_bytes());
    f
}
