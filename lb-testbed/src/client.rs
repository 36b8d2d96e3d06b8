//! Requests from the client pod to the servers of [`super::servers`].
//!
//! Every request uses a fresh socket, hence a fresh source port: a new flow
//! for the load balancer to schedule.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::Result;

use super::topology::Pod;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The pod that answered.
    pub backend: String,
    /// The client address as the backend saw it.
    pub seen_peer: SocketAddr,
    /// Where the answer came from as the client saw it: must be the
    /// frontend. For TCP this is true by construction (the connected peer);
    /// for UDP it is the answer's source address.
    pub reply_from: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum RequestError {
    #[error("refused")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Other(String),
}

pub type RequestResult = std::result::Result<Reply, RequestError>;

/// Sends requests from inside a pod.
pub struct Client<'a> {
    pod: &'a Pod,
}

impl<'a> Client<'a> {
    pub fn new(pod: &'a Pod) -> Client<'a> {
        Client { pod }
    }

    /// One TCP request to `ip:port`.
    pub fn tcp_request(&self, ip: Ipv4Addr, port: u16, timeout: Duration) -> Result<RequestResult> {
        self.pod
            .ns
            .run(move || tcp_request((ip, port).into(), timeout))
    }

    /// `n` TCP connections to `ip:port`, one after the other.
    pub fn tcp_requests(
        &self,
        ip: Ipv4Addr,
        port: u16,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RequestResult>> {
        self.pod.ns.run(move || {
            (0..n)
                .map(|_| tcp_request((ip, port).into(), timeout))
                .collect()
        })
    }

    /// `n` UDP datagrams to `ip:port`, each from a new socket, one after the
    /// other.
    pub fn udp_requests(
        &self,
        ip: Ipv4Addr,
        port: u16,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RequestResult>> {
        self.pod.ns.run(move || {
            (0..n)
                .map(|_| udp_request((ip, port).into(), timeout))
                .collect()
        })
    }
}

/// A transport protocol to send a request over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Tcp,
    /// An unconnected socket (`sendto`), which sees where the answer came
    /// from but not an ICMP error.
    Udp,
    /// A connected socket, as `nc -u` uses: an ICMP port unreachable
    /// surfaces as ECONNREFUSED on the next receive.
    UdpConnected,
}

/// One request to `to` from the calling thread's namespace: a fresh
/// connection (TCP) or socket (UDP).
pub fn request(transport: Transport, to: SocketAddr, timeout: Duration) -> RequestResult {
    match transport {
        Transport::Tcp => tcp_request(to, timeout),
        Transport::Udp => udp_request(to, timeout),
        Transport::UdpConnected => udp_connected_request(to, timeout),
    }
}

/// One line per result, for a result crossing a process boundary (see
/// [`parse_result`]).
pub fn format_result(result: &RequestResult) -> String {
    match result {
        Ok(r) => format!("ok {} {} {}", r.backend, r.seen_peer, r.reply_from),
        Err(RequestError::Refused) => "refused".into(),
        Err(RequestError::Timeout) => "timeout".into(),
        Err(RequestError::Other(e)) => format!("error {e}"),
    }
}

/// Reads a line of [`format_result`].
pub fn parse_result(line: &str) -> RequestResult {
    let bad = || RequestError::Other(format!("unreadable result line {line:?}"));
    match line.split_once(' ').unwrap_or((line, "")) {
        ("ok", rest) => {
            let mut fields = rest.split(' ');
            let mut next = || fields.next().ok_or_else(bad);
            let backend = next()?.to_owned();
            let seen_peer = next()?.parse().map_err(|_| bad())?;
            let reply_from = next()?.parse().map_err(|_| bad())?;
            Ok(Reply {
                backend,
                seen_peer,
                reply_from,
            })
        }
        ("refused", _) => Err(RequestError::Refused),
        ("timeout", _) => Err(RequestError::Timeout),
        ("error", e) => Err(RequestError::Other(e.to_owned())),
        _ => Err(bad()),
    }
}

fn tcp_request(to: SocketAddr, timeout: Duration) -> RequestResult {
    let mut stream = TcpStream::connect_timeout(&to, timeout).map_err(classify)?;
    stream.set_read_timeout(Some(timeout)).map_err(classify)?;
    stream.set_write_timeout(Some(timeout)).map_err(classify)?;
    stream.write_all(b"hello\n").map_err(classify)?;
    let mut answer = String::new();
    // The server closes after answering.
    stream.read_to_string(&mut answer).map_err(classify)?;
    let reply_from = stream.peer_addr().map_err(classify)?;
    parse(&answer, reply_from)
}

fn udp_request(to: SocketAddr, timeout: Duration) -> RequestResult {
    // Not connected: a connected socket would silently drop an answer from
    // another address, and we want to see where the answer came from.
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(classify)?;
    socket.set_read_timeout(Some(timeout)).map_err(classify)?;
    socket.send_to(b"hello\n", to).map_err(classify)?;
    let mut buf = [0u8; 2048];
    let (len, reply_from) = socket.recv_from(&mut buf).map_err(classify)?;
    parse(&String::from_utf8_lossy(&buf[..len]), reply_from)
}

fn udp_connected_request(to: SocketAddr, timeout: Duration) -> RequestResult {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(classify)?;
    socket.set_read_timeout(Some(timeout)).map_err(classify)?;
    socket.connect(to).map_err(classify)?;
    socket.send(b"hello\n").map_err(classify)?;
    let mut buf = [0u8; 2048];
    let len = socket.recv(&mut buf).map_err(classify)?;
    parse(&String::from_utf8_lossy(&buf[..len]), to)
}

/// Parses `"<pod name> <peer ip>:<peer port>\n"`, the echo servers'
/// answer.
pub(crate) fn parse(answer: &str, reply_from: SocketAddr) -> RequestResult {
    let bad = || RequestError::Other(format!("unexpected answer {answer:?} from {reply_from}"));
    let (backend, peer) = answer.trim_end().split_once(' ').ok_or_else(bad)?;
    let seen_peer = peer.parse().map_err(|_| bad())?;
    Ok(Reply {
        backend: backend.to_owned(),
        seen_peer,
        reply_from,
    })
}

pub(crate) fn classify(e: std::io::Error) -> RequestError {
    match e.kind() {
        ErrorKind::ConnectionRefused => RequestError::Refused,
        // A read timeout shows up as WouldBlock on Linux.
        ErrorKind::TimedOut | ErrorKind::WouldBlock => RequestError::Timeout,
        _ => RequestError::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_cross_a_process_boundary_unchanged() {
        let ok = Ok(Reply {
            backend: "pod-1".into(),
            seen_peer: "10.244.0.9:40000".parse().unwrap(),
            reply_from: "10.96.0.10:53".parse().unwrap(),
        });
        for result in [
            ok,
            Err(RequestError::Refused),
            Err(RequestError::Timeout),
            Err(RequestError::Other("no route to host".into())),
        ] {
            assert_eq!(parse_result(&format_result(&result)), result);
        }
        assert!(matches!(
            parse_result("ok pod-1"),
            Err(RequestError::Other(_))
        ));
    }

    #[test]
    fn parses_answers() {
        let from: SocketAddr = "10.96.0.10:53".parse().unwrap();
        let reply = parse("pod-2 10.244.4.2:40000\n", from).unwrap();
        assert_eq!(reply.backend, "pod-2");
        assert_eq!(reply.seen_peer, "10.244.4.2:40000".parse().unwrap());
        assert_eq!(reply.reply_from, from);
        assert!(matches!(
            parse("garbage", from),
            Err(RequestError::Other(_))
        ));
    }
}
