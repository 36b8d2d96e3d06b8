//! IPv4 fragments end to end: UDP datagrams larger than the pods' MTU (1500,
//! veth default) to `examples/web.yaml`'s UDP ClusterIP arrive whole at one
//! backend, and the backend's answers, as large, arrive whole at the client
//! from the ClusterIP; large TCP requests and responses pass intact. Needs
//! root and a bpffs; LB_SKIP_PRIVILEGED=1 skips.
//!
//! What the node namespace does with the fragments: the topology's
//! `-m conntrack --ctstate INVALID -j DROP` rule loads netfilter conntrack
//! in the node namespace, and with it nf_defrag_ipv4, which reassembles
//! fragments at PREROUTING (keyed by source, destination, IP id and
//! protocol), so the node forwards whole datagrams and fragments them again
//! on the way out (the test prints the node's `Ip: ReasmOKs` and
//! `FragCreates` counters, which show it). That is why a later fragment
//! must be rewritten at XDP exactly as its first fragment was: otherwise
//! the node never completes the datagram (its pieces carry different
//! destinations) and drops it after `ipfrag_time`. Without conntrack in
//! the node the fragments would be routed one by one, and unrewritten later
//! fragments would head for the ClusterIP, which no route leads to: lost as
//! well. The reply takes the same way back: reassembled by the node,
//! fragmented again towards the client, and each fragment given the
//! ClusterIP as source at TC egress.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use lb_common::stats;
use lb_testbed::agent::AgentProcess;
use lb_testbed::netns::NetNs;
use lb_testbed::privileged::require_privileged;
use lb_testbed::servers::{TCP_PORT, UDP_ECHO};
use lb_testbed::topology::{ClusterIpTopology, Pod};
use lb_testbed::web_bed::{WebBed, WEB_YAML};
use lb_testbed::{WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP};
use lbctl::{read_snapshot, MapId};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
/// Sizes of the UDP payloads sent: 4000 bytes are three fragments at a
/// 1500-byte MTU; the last is close to the largest UDP payload (45 fragments).
const UDP_SIZES: [usize; 12] = [
    4000, 4000, 4000, 4000, 4000, 4000, 4000, 4000, 1473, 9000, 30000, 65000,
];
const UDP_TIMEOUT: Duration = Duration::from_secs(2);
/// IP payload per fragment at the veths' MTU.
const FRAGMENT_DATA: usize = 1480;

#[test]
fn fragmented_udp_datagrams_arrive_whole_and_their_answers_too() {
    if !require_privileged("fragmented_udp_datagrams_arrive_whole_and_their_answers_too") {
        return;
    }
    let bed = WebBed::start(lb_testbed::bins::agent(), &[("web.yaml", WEB_YAML)], &[]).unwrap();
    let (topo, agent, client) = (&bed.topo, &bed.agent, bed.topo.client());
    let node_before = ip_counters(topo.node());
    let mut by_backend = BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for (i, &size) in UDP_SIZES.iter().enumerate() {
        let payload = pattern(i, size);
        match udp_echo(client, payload.clone()) {
            Ok(answer) => match check_answer(&answer, &payload, client.ip, topo.backends()) {
                Ok(backend) => *by_backend.entry(backend).or_default() += 1,
                Err(e) => failures.push(format!("datagram {i} ({size} bytes): {e}")),
            },
            Err(e) => failures.push(format!("datagram {i} ({size} bytes): {e}")),
        }
    }
    let node_after = ip_counters(topo.node());
    let delta =
        |name: &str| node_after.get(name).unwrap_or(&0) - node_before.get(name).unwrap_or(&0);
    println!(
        "answered by {by_backend:?}; node namespace: ReasmOKs +{}, FragCreates +{}",
        delta("ReasmOKs"),
        delta("FragCreates"),
    );
    let counts = read_snapshot(agent.pin_dir(), &[MapId::Stats])
        .unwrap()
        .stats;
    let counted = |reason: u32| counts[reason as usize].packets;
    println!(
        "datapath: frag_rewritten {}, pass_fragment {}",
        counted(stats::Reason::FragRewritten.index()),
        counted(stats::Reason::PassFragment.index())
    );
    assert!(
        failures.is_empty(),
        "{} of {} datagrams failed:\n{}\n{}",
        failures.len(),
        UDP_SIZES.len(),
        failures.join("\n"),
        agent.log()
    );
    assert!(
        by_backend.len() > 1,
        "one backend took them all: {by_backend:?}"
    );
    // Every later fragment of every request was rewritten at XDP (those of
    // the answers at TC egress come on top).
    let later_request_fragments: usize = UDP_SIZES
        .iter()
        .map(|size| (8 + UDP_ECHO.len() + size).div_ceil(FRAGMENT_DATA) - 1)
        .sum();
    assert!(
        counted(stats::Reason::FragRewritten.index()) >= later_request_fragments as u64,
        "frag_rewritten {} < {later_request_fragments}",
        counted(stats::Reason::FragRewritten.index())
    );
}

/// Bytes that differ between datagrams and along each one.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + seed * 7 + i / 997) as u8)
        .collect()
}

/// An answer as the client saw it.
struct Answer {
    /// The client socket's address.
    local: SocketAddr,
    /// Where the answer came from.
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// Sends `UDP_ECHO + payload` to the ClusterIP's UDP port from a fresh
/// socket (a new flow) in the client pod, and waits for the answer.
fn udp_echo(client: &Pod, payload: Vec<u8>) -> Result<Answer, String> {
    client
        .ns
        .run(move || -> std::io::Result<Answer> {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.set_read_timeout(Some(UDP_TIMEOUT))?;
            let mut request = UDP_ECHO.to_vec();
            request.extend_from_slice(&payload);
            socket.send_to(&request, (WEB_VIP, WEB_UDP_PORT))?;
            let mut buf = vec![0u8; 65_536];
            let (len, from) = socket.recv_from(&mut buf)?;
            buf.truncate(len);
            Ok(Answer {
                local: socket.local_addr()?,
                from,
                bytes: buf,
            })
        })
        .map_err(|e| format!("{e:#}"))?
        .map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => "no answer (timed out)".to_owned(),
            _ => e.to_string(),
        })
}

/// Checks an answer: from the ClusterIP, by one of the backends, which saw
/// the client's own address and port, carrying the payload back intact.
/// Returns the backend's name.
fn check_answer(
    answer: &Answer,
    payload: &[u8],
    client_ip: Ipv4Addr,
    backends: &[Pod],
) -> Result<String, String> {
    let frontend = SocketAddr::from((WEB_VIP, WEB_UDP_PORT));
    if answer.from != frontend {
        return Err(format!("answer from {}, not {frontend}", answer.from));
    }
    let newline = answer.bytes.iter().position(|&b| b == b'\n');
    let Some(newline) = newline else {
        return Err("answer without a line".into());
    };
    let line = String::from_utf8_lossy(&answer.bytes[..newline]);
    let (backend, peer) = line
        .split_once(' ')
        .ok_or_else(|| format!("bad answer line {line:?}"))?;
    if !backends.iter().any(|pod| pod.name == backend) {
        return Err(format!("answered by {backend:?}, not a backend"));
    }
    let expected_peer = SocketAddr::V4(SocketAddrV4::new(client_ip, answer.local.port()));
    if peer.parse::<SocketAddr>().ok() != Some(expected_peer) {
        return Err(format!("{backend} saw {peer}, not {expected_peer}"));
    }
    let echoed = &answer.bytes[newline + 1..];
    if echoed != payload {
        let first_diff = echoed.iter().zip(payload).position(|(a, b)| a != b);
        return Err(format!(
            "{backend} echoed {} bytes of {}, first difference at {first_diff:?}",
            echoed.len(),
            payload.len()
        ));
    }
    Ok(backend.to_owned())
}

/// The `Ip:` counters of `/proc/net/snmp` in `ns` (reassemblies,
/// fragmentations, ...).
fn ip_counters(ns: &NetNs) -> BTreeMap<String, u64> {
    let snmp = ns.exec(["cat", "/proc/net/snmp"]).unwrap();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

// ---- large TCP --------------------------------------------------------------

/// Bytes per TCP request (and per response, which echoes it).
const TCP_BYTES: usize = 4 << 20;
const TCP_CONNECTIONS: usize = 6;
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn large_tcp_requests_and_responses_pass_intact() {
    if !require_privileged("large_tcp_requests_and_responses_pass_intact") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    // The web Service's TCP port leads to TCP_PORT: a bulk echo there.
    let _echo = BulkEcho::start(topo.backends());
    let mut agent = AgentProcess::start(
        lb_testbed::bins::agent(),
        topo.node(),
        EXAMPLES.as_ref(),
        &topo.pod_interfaces(),
        &[],
    )
    .unwrap();
    let client = topo.client();
    agent
        .wait_ready(Duration::from_secs(15), || {
            bulk_exchange(client, b"ready".to_vec(), Duration::from_secs(1)).is_ok()
        })
        .unwrap();
    let mut failures = Vec::new();
    for i in 0..TCP_CONNECTIONS {
        let request = pattern(i, TCP_BYTES);
        match bulk_exchange(client, request.clone(), TCP_TIMEOUT) {
            Ok((peer, response)) if peer == SocketAddr::from((WEB_VIP, WEB_TCP_PORT)) => {
                if response != request {
                    failures.push(format!(
                        "connection {i}: {} bytes back for {}, first difference at {:?}",
                        response.len(),
                        request.len(),
                        response.iter().zip(&request).position(|(a, b)| a != b)
                    ));
                }
            }
            Ok((peer, _)) => failures.push(format!("connection {i}: connected to {peer}")),
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        agent.log()
    );
    agent.stop().unwrap();
}

/// Sends `request` (after its length, 8 bytes big-endian) over a new TCP
/// connection to the ClusterIP's TCP port, and reads the echo until the
/// server closes. Returns the connected peer and the bytes read.
fn bulk_exchange(
    client: &Pod,
    request: Vec<u8>,
    timeout: Duration,
) -> Result<(SocketAddr, Vec<u8>), String> {
    client
        .ns
        .run(move || -> std::io::Result<_> {
            let to = SocketAddr::from((WEB_VIP, WEB_TCP_PORT));
            let mut stream = TcpStream::connect_timeout(&to, timeout)?;
            // Asked now: once both sides closed, there is no peer any more.
            let peer = stream.peer_addr()?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            // Written on its own thread: the server echoes while it reads,
            // and neither side may block the other on full buffers.
            let mut writer = stream.try_clone()?;
            let sending = thread::spawn(move || -> std::io::Result<()> {
                writer.write_all(&(request.len() as u64).to_be_bytes())?;
                writer.write_all(&request)?;
                writer.shutdown(Shutdown::Write)
            });
            let mut response = Vec::new();
            let read = stream.read_to_end(&mut response);
            sending.join().expect("the writer does not panic")?;
            read?;
            Ok((peer, response))
        })
        .map_err(|e| format!("{e:#}"))?
        .map_err(|e| e.to_string())
}

/// In every pod, on TCP_PORT: reads an 8-byte big-endian length and that
/// many bytes, echoing them as they come, then closes. Stopped on drop.
struct BulkEcho {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BulkEcho {
    fn start(pods: &[Pod]) -> BulkEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = pods
            .iter()
            .map(|pod| {
                let listener = pod
                    .ns
                    .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT)))
                    .unwrap()
                    .unwrap();
                listener.set_nonblocking(true).unwrap();
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                thread::spawn(move || {
                                    let _ = echo_bulk(stream);
                                });
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                thread::sleep(Duration::from_millis(20));
                            }
                            Err(e) => eprintln!("bulk echo accept: {e}"),
                        }
                    }
                })
            })
            .collect();
        BulkEcho { stop, threads }
    }
}

impl Drop for BulkEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn echo_bulk(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let mut left = u64::from_be_bytes(len);
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    // Wait for the client's close: closing with unread data would reset.
    let _ = stream.read(&mut buf);
    Ok(())
}
