//! A bounded UDP stream: a fixed number of small datagrams sent with
//! sendmmsg(2) as fast as one thread can, over a few connected sockets
//! (a few flows, as a handful of clients would send), and the backend side
//! that counts what arrives.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::topology::Pod;

/// Datagrams per sendmmsg call.
const BATCH: usize = 64;
/// UDP payload bytes (a 64-byte frame on the wire plus headers).
const PAYLOAD: usize = 18;
/// Distinct source ports, hence flows.
pub const FLOWS: usize = 16;

/// Sends `count` datagrams to `to` from `client`'s namespace; returns how
/// long the sending took.
pub fn send(client: &Pod, to: SocketAddr, count: u64) -> Result<Duration> {
    client
        .ns
        .run(move || send_here(to, count))?
        .context("sending the UDP stream")
}

fn send_here(to: SocketAddr, count: u64) -> io::Result<Duration> {
    let sockets = (0..FLOWS)
        .map(|_| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            s.connect(to)?;
            Ok(s)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let payload = [0x5a_u8; PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD,
    };
    // SAFETY: an all-zero mmsghdr is valid (no name, no control data).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent = 0_u64;
    let mut flow = 0;
    while sent < count {
        let n = (count - sent).min(BATCH as u64) as u32;
        let fd = sockets[flow].as_raw_fd();
        // SAFETY: `msgs` holds `n` valid headers pointing at `payload`,
        // which outlives the call; the sockets are connected.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // A full queue or a transient ICMP error: try again.
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED)
            ) {
                continue;
            }
            return Err(e);
        }
        sent += r as u64;
        flow = (flow + 1) % FLOWS;
    }
    Ok(start.elapsed())
}

/// A UDP socket bound in the backend pod that is never read: datagrams
/// reach the pod's UDP layer (counted by [`delivered`]) without a reader
/// competing for the CPU, and without ICMP port-unreachable replies.
pub struct Sink {
    _socket: UdpSocket,
}

impl Sink {
    pub fn bind(pod: &Pod, port: u16) -> Result<Self> {
        let socket = pod
            .ns
            .run(move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("binding UDP {port} in {}", pod.name))?;
        Ok(Self { _socket: socket })
    }
}

/// Datagrams that reached `pod`'s UDP layer so far: InDatagrams plus
/// RcvbufErrors (those dropped because nobody reads) of its namespace.
pub fn delivered(pod: &Pod) -> Result<u64> {
    let snmp = pod
        .ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?
        .context("reading the pod's /proc/net/snmp")?;
    udp_received(&snmp)
}

fn udp_received(snmp: &str) -> Result<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let field = |name: &str| -> Result<u64> {
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .with_context(|| format!("no Udp {name} in /proc/net/snmp"))?;
        Ok(values.split_whitespace().nth(i).unwrap_or("0").parse()?)
    };
    Ok(field("InDatagrams")? + field("RcvbufErrors")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_received_and_overflowed() {
        let snmp = "Ip: Forwarding\nIp: 1\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 100 2 7 0 5 0\n\
                    UdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(udp_received(snmp).unwrap(), 105);
    }
}
