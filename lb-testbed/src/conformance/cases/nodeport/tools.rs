//! What the §3 (NodePort) and §9 (LoadBalancer) scenarios share: requests
//! from the upstream vantage points with a chosen timeout, convergence
//! checks that say what they last saw, extra echo servers (payloads larger
//! than the pods' standard servers take, hostNetwork endpoints, pods that
//! can be stopped one at a time), requests from a chosen source address,
//! and routes on the external client (as a cloud load balancer or the
//! network would send its traffic to a node).
//!
//! Everything here runs inside the cluster's namespaces.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::client::{classify, parse, request, RequestError, RequestResult, Transport};
use crate::conformance::objects::Endpoint;
use crate::conformance::Cluster;
use crate::netns::NetNs;
use crate::servers::UDP_ECHO;
use crate::topology::Pod;

/// Ours per step (a loaded 2-core machine); upstream allows
/// KubeProxyLagTimeout (~2 min) or KubeProxyEndpointLagTimeout (~30 s).
pub const CONVERGE: Duration = Duration::from_secs(5);
/// Requests per check: with 4 endpoints, missing one in 40 hashed picks has
/// odds of 4 x 0.75^40 = 4e-5, and a check is retried until CONVERGE.
pub const TRIES: usize = 40;
/// A request that must not be answered gets this long.
pub const SHORT: Duration = Duration::from_millis(300);

/// Node `i`'s name and its first `n` server pods as ready endpoints.
pub fn endpoints(cluster: &Cluster, per_node: usize) -> Vec<Endpoint> {
    (0..cluster.topo.nodes())
        .flat_map(|i| {
            let node = cluster.topo.node_name(i);
            cluster.topo.pods(i)[..per_node]
                .iter()
                .map(move |p| Endpoint::ready(p, node))
        })
        .collect()
}

/// Their names.
pub fn endpoint_names(cluster: &Cluster, per_node: usize) -> BTreeSet<String> {
    names((0..cluster.topo.nodes()).flat_map(|i| &cluster.topo.pods(i)[..per_node]))
}

pub fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// A path: from where, how, to what.
pub type Path<'a> = (Vantage<'a>, Transport, SocketAddr);

/// Every path answered `n` times out of `n` by exactly `expected`. Checked
/// in rounds: a quick probe of every path (one request each), and when
/// all pass, the full check of every path. Returns how long after `since`
/// the passing round began: all paths worked from then on, to within one
/// round of quick probes.
pub fn verify_up(
    cluster: &Cluster,
    paths: &[Path<'_>],
    expected: &BTreeSet<String>,
    n: usize,
    since: Instant,
) -> Result<Duration> {
    rounds(
        cluster,
        paths,
        since,
        &format!("{n}/{n} answered by {expected:?}"),
        (
            |r: &RequestResult| r.as_ref().is_ok_and(|r| expected.contains(&r.backend)),
            QUICK,
        ),
        (n, Duration::from_secs(1)),
        |a| a.all_by(expected),
    )
}

/// Every path gets no answer to `n` requests (each given [`SHORT`]), in
/// rounds as [`verify_up`]; how long after `since` the passing round began.
pub fn verify_down(
    cluster: &Cluster,
    paths: &[Path<'_>],
    n: usize,
    since: Instant,
) -> Result<Duration> {
    rounds(
        cluster,
        paths,
        since,
        &format!("0/{n} answered"),
        (|r: &RequestResult| r.is_err(), SHORT),
        (n, SHORT),
        |a| a.ok == 0,
    )
}

/// Until a round passes: `quick` = (test, timeout) holds for one request
/// on every path, then `done` for `full` = (count, timeout) requests on
/// every path.
fn rounds(
    cluster: &Cluster,
    paths: &[Path<'_>],
    since: Instant,
    want: &str,
    quick: (impl Fn(&RequestResult) -> bool, Duration),
    full: (usize, Duration),
    done: impl Fn(&Answers) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last = String::from("no round got past the quick probes");
    loop {
        let round = since.elapsed();
        let mut passed = true;
        for &(from, transport, to) in paths {
            let r = requests(cluster, from, transport, to, 1, quick.1)?;
            if !(quick.0)(&r[0]) {
                last = format!(
                    "quick probe {transport:?} from {} to {to}: {:?}",
                    from.name(cluster),
                    r[0]
                );
                passed = false;
                break;
            }
        }
        if passed {
            for &(from, transport, to) in paths {
                let a = Answers::of(&requests(cluster, from, transport, to, full.0, full.1)?);
                if !done(&a) {
                    last = format!("{transport:?} from {} to {to}: {a:?}", from.name(cluster));
                    passed = false;
                    break;
                }
            }
        }
        if passed {
            return Ok(round);
        }
        if start.elapsed() > CONVERGE {
            bail!(
                "{want} on {} paths: not within {CONVERGE:?}; last: {last}",
                paths.len()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The node IP:port of every node.
pub fn node_ports(cluster: &Cluster, port: u16) -> Vec<SocketAddr> {
    (0..cluster.topo.nodes())
        .map(|i| at(cluster.topo.node_ip(i), port))
        .collect()
}

/// A duration for a figure.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Where requests come from, as upstream's vantage points.
#[derive(Clone, Copy, Debug)]
pub enum Vantage<'a> {
    /// A normal pod (its own namespace, behind a pod veth).
    Pod(&'a Pod),
    /// A process of node `i`: a hostNetwork pod.
    Node(usize),
    /// The client outside the cluster, on the node network.
    Outside,
    /// The same client from another of its addresses (see
    /// [`add_external_address`]): TCP only.
    OutsideFrom(Ipv4Addr),
}

impl Vantage<'_> {
    pub fn name(&self, cluster: &Cluster) -> String {
        match self {
            Vantage::Pod(p) => format!("pod {}", p.name),
            Vantage::Node(i) => format!("hostNetwork on {}", cluster.topo.node_name(*i)),
            Vantage::Outside => "external client".into(),
            Vantage::OutsideFrom(ip) => format!("external client from {ip}"),
        }
    }
}

/// `n` requests from `from` to `to`, each on a fresh socket. A node process
/// waits `Cluster::from_node`'s 1 s per request whatever `timeout` says.
pub fn requests(
    cluster: &Cluster,
    from: Vantage<'_>,
    transport: Transport,
    to: SocketAddr,
    n: usize,
    timeout: Duration,
) -> Result<Vec<RequestResult>> {
    let ns = match from {
        Vantage::Pod(p) => &p.ns,
        Vantage::Outside => &cluster.topo.external_client().ns,
        Vantage::Node(i) => return cluster.from_node(i, transport, to, n),
        Vantage::OutsideFrom(src) => {
            let (SocketAddr::V4(to), Transport::Tcp) = (to, transport) else {
                bail!("requests from a chosen source address are IPv4 TCP only");
            };
            return cluster
                .topo
                .external_client()
                .ns
                .run(move || (0..n).map(|_| tcp_request_from(src, to, timeout)).collect());
        }
    };
    ns.run(move || (0..n).map(|_| request(transport, to, timeout)).collect())
}

/// What a batch of requests got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    pub ok: usize,
    pub failed: usize,
    /// The pods that answered.
    pub by: BTreeSet<String>,
    /// The kinds of failure seen.
    pub errors: BTreeSet<RequestError>,
}

impl Answers {
    pub fn of(results: &[RequestResult]) -> Answers {
        let mut a = Answers::default();
        for r in results {
            match r {
                Ok(reply) => {
                    a.ok += 1;
                    a.by.insert(reply.backend.clone());
                }
                Err(e) => {
                    a.failed += 1;
                    a.errors.insert(e.clone());
                }
            }
        }
        a
    }

    /// Every request answered, by exactly `expected`.
    pub fn all_by(&self, expected: &BTreeSet<String>) -> bool {
        self.failed == 0 && self.by == *expected
    }
}

/// Polls `probe` every 100 ms until `done` holds for its result; the time
/// it took, or an error naming `what` and the last result.
pub fn converge<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T>,
    mut done: impl FnMut(&T) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let last = probe();
        if last.as_ref().is_ok_and(&mut done) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}; last seen: {last:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// How long a quick probe (one request: does it look done yet?) waits for
/// its answer.
pub const QUICK: Duration = Duration::from_millis(250);

/// Polls until a round passes: a quick probe first (`quick`: does it look
/// done?), then, only if it does, the full check. Returns when the quick
/// probe of the passing round was made (the full check's own duration is
/// not counted), or an error naming `what` and the last full check.
pub fn settle<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut quick: impl FnMut() -> Result<bool>,
    mut full: impl FnMut() -> Result<T>,
    mut done: impl FnMut(&T) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last = String::from("(the quick probe never passed)");
    loop {
        let at = start.elapsed();
        match quick() {
            Ok(true) => {
                let result = full();
                if result.as_ref().is_ok_and(&mut done) {
                    return Ok(at);
                }
                last = format!("{result:?}");
            }
            Ok(false) => {}
            Err(e) => last = format!("quick probe: {e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}; last full check: {last}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `n` requests from `from` to `to` are all answered, by
/// exactly `expected` (upstream's "all endpoints seen", and no other); the
/// time until then, to within a quick probe's 250 ms.
pub fn until_all_by(
    cluster: &Cluster,
    from: Vantage<'_>,
    transport: Transport,
    to: SocketAddr,
    n: usize,
    expected: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Duration> {
    let what = format!(
        "{n} {transport:?} requests from {} to {to} answered by {expected:?}",
        from.name(cluster)
    );
    settle(
        &what,
        timeout,
        || {
            let r = requests(cluster, from, transport, to, 1, QUICK)?;
            Ok(r[0].as_ref().is_ok_and(|r| expected.contains(&r.backend)))
        },
        || {
            requests(cluster, from, transport, to, n, Duration::from_secs(1))
                .map(|r| Answers::of(&r))
        },
        |a| a.all_by(expected),
    )
}

/// Names as a set, for comparing with [`Answers::by`].
pub fn names<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<String> {
    pods.into_iter().map(|p| p.name.clone()).collect()
}

/// Adds `ip/32 via <node i>` to the external client's routes: how the
/// network (or a cloud load balancer) delivers an externalIP's or a
/// load-balancer IP's traffic to a node.
pub fn route_via_node(cluster: &Cluster, ip: Ipv4Addr, node: usize) -> Result<()> {
    let via = cluster.topo.node_ip(node).to_string();
    cluster
        .topo
        .external_client()
        .ns
        .ip(["route", "replace", &format!("{ip}/32"), "via", &via])
        .map(drop)
}

/// Gives the external client another address (`ip/32` on its `eth0`): a
/// second client outside the cluster, for source ranges.
pub fn add_external_address(cluster: &Cluster, ip: Ipv4Addr) -> Result<()> {
    cluster
        .topo
        .external_client()
        .ns
        .ip(["addr", "add", &format!("{ip}/32"), "dev", "eth0"])
        .map(drop)
}

/// One request like [`crate::client`]'s TCP one, from source
/// address `src` (the calling thread's namespace must own it).
pub fn tcp_request_from(src: Ipv4Addr, to: SocketAddrV4, timeout: Duration) -> RequestResult {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use nix::sys::time::{TimeVal, TimeValLike as _};
    let errno = |e: nix::errno::Errno| classify(std::io::Error::from(e));
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(errno)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0))).map_err(errno)?;
    // A blocking connect gives up after the send timeout (EINPROGRESS).
    let tv = TimeVal::milliseconds(timeout.as_millis() as i64);
    setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(errno)?;
    match connect(fd.as_raw_fd(), &SockaddrIn::from(to)) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINPROGRESS) => return Err(RequestError::Timeout),
        Err(e) => return Err(errno(e)),
    }
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(timeout)).map_err(classify)?;
    stream.set_write_timeout(Some(timeout)).map_err(classify)?;
    stream.write_all(b"hello\n").map_err(classify)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(classify)?;
    parse(&answer, SocketAddr::V4(to))
}

/// A large request through TCP to an [`EchoServer`]: `payload` (one line,
/// no newline) must come back intact. The answering pod, or what failed.
pub fn tcp_echo(to: SocketAddr, payload: &[u8], timeout: Duration) -> Result<String, String> {
    let fail = |what: &str, e: std::io::Error| format!("{what} {to}: {e}");
    let mut stream = TcpStream::connect_timeout(&to, timeout).map_err(|e| fail("connecting", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| fail("configuring", e))?;
    let mut message = b"echo\n".to_vec();
    message.extend_from_slice(payload);
    message.push(b'\n');
    stream
        .write_all(&message)
        .map_err(|e| fail("sending to", e))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| fail("receiving from", e))?;
    echoed(&answer, payload)
}

/// A large UDP datagram (`payload` after [`UDP_ECHO`]) to the pods'
/// standard UDP server (or an [`EchoServer`]): it must come back intact.
pub fn udp_echo(to: SocketAddr, payload: &[u8], timeout: Duration) -> Result<String, String> {
    let fail = |what: &str, e: std::io::Error| format!("{what} {to}: {e}");
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| fail("binding", e))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| fail("configuring", e))?;
    let mut message = UDP_ECHO.to_vec();
    message.extend_from_slice(payload);
    socket
        .send_to(&message, to)
        .map_err(|e| fail("sending to", e))?;
    let mut buf = vec![0u8; 65_536];
    let (len, _) = socket
        .recv_from(&mut buf)
        .map_err(|e| fail("receiving from", e))?;
    echoed(&buf[..len], payload)
}

/// `"<pod> <peer>\n<payload>[\n]"`: the pod, if the payload came back whole.
fn echoed(answer: &[u8], payload: &[u8]) -> Result<String, String> {
    let newline = answer
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("no answer line in {} bytes", answer.len()))?;
    let line = String::from_utf8_lossy(&answer[..newline]);
    let backend = line.split(' ').next().unwrap_or_default().to_string();
    let rest = &answer[newline + 1..];
    let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
    if rest != payload {
        return Err(format!(
            "{backend} echoed {} bytes, not the {} sent (intact: {})",
            rest.len(),
            payload.len(),
            rest.starts_with(payload)
        ));
    }
    Ok(backend)
}

/// The largest request line an [`EchoServer`] takes.
const MAX_ECHO: u64 = 70_000;
const STOP_POLL: Duration = Duration::from_millis(100);

/// Servers speaking the standard servers' protocol (`"<name> <peer>\n"` per
/// TCP connection or UDP datagram) in any namespace, on ports of our
/// choosing, stopped when dropped: for hostNetwork endpoints (in a node's
/// namespace), for payloads beyond the standard TCP server's 1 KiB (a TCP
/// request `"echo\n<payload>\n"` gets `"<name> <peer>\n<payload>\n"`; UDP
/// as the standard server, with [`UDP_ECHO`]), and for pods that stop
/// serving one at a time (a rolling update).
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Listening on TCP `tcp` and UDP `udp` (0: none) in `ns` when this
    /// returns.
    pub fn start(ns: &NetNs, name: &str, tcp: u16, udp: u16) -> Result<EchoServer> {
        let (listener, socket) = ns
            .run(move || -> std::io::Result<_> {
                let any = Ipv4Addr::UNSPECIFIED;
                let listener = TcpListener::bind((any, tcp))?;
                let socket = match udp {
                    0 => None,
                    port => Some(UdpSocket::bind((any, port))?),
                };
                Ok((listener, socket))
            })?
            .with_context(|| format!("binding echo servers for {name} in {}", ns.name()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (n, s) = (name.to_string(), Arc::clone(&stop));
        threads.push(thread::spawn(move || serve_tcp(&n, &listener, &s)));
        if let Some(socket) = socket {
            socket.set_read_timeout(Some(STOP_POLL))?;
            let (n, s) = (name.to_string(), Arc::clone(&stop));
            threads.push(thread::spawn(move || serve_udp(&n, &socket, &s)));
        }
        Ok(EchoServer { stop, threads })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(name: &str, listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, STOP_POLL.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        if let Ok((stream, peer)) = listener.accept() {
            let name = name.to_string();
            thread::spawn(move || answer_tcp(&name, stream, peer));
        }
    }
}

fn answer_tcp(name: &str, stream: TcpStream, peer: SocketAddr) {
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return;
    }
    let mut reader = BufReader::new((&stream).take(MAX_ECHO));
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).is_err() {
        return;
    }
    let mut answer = format!("{name} {peer}\n").into_bytes();
    if line == b"echo\n" {
        let mut payload = Vec::new();
        if reader.read_until(b'\n', &mut payload).is_err() {
            return;
        }
        answer.extend_from_slice(&payload);
    }
    let _ = (&stream).write_all(&answer);
}

fn serve_udp(name: &str, socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let mut answer = format!("{name} {peer}\n").into_bytes();
        if let Some(payload) = buf[..len].strip_prefix(UDP_ECHO) {
            answer.extend_from_slice(payload);
        }
        let _ = socket.send_to(&answer, peer);
    }
}
