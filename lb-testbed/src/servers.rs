//! Echo servers in the backend pods that tell who answered and whom they saw.
//!
//! Protocol, all answering with `"<pod name> <peer ip>:<peer port>"`:
//! * TCP on [`TCP_PORT`]: the client sends one line, the server answers and closes;
//! * UDP on [`UDP_PORT`]: every datagram gets one answer datagram; one that
//!   starts with [`UDP_ECHO`] gets the rest of it back after the answer
//!   line (datagrams up to 64 KiB, so replies can be larger than the MTU);
//! * TCP on [`LINE_PORT`]: every line the client sends is answered on the same
//!   connection with `"<pod name> <peer ip>:<peer port> <the line>\n"` until
//!   the client closes; the echoed line lets a client with a long-lived
//!   connection (see [`super::stream`]) match answers to requests.
//!
//! The peer is what the pod's kernel saw: the client's own address if the load
//! balancer preserved the source.

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::topology::Pod;

/// Backend TCP port: the `targetPort` of `examples/web.yaml`'s TCP port.
pub const TCP_PORT: u16 = 8080;
/// Backend UDP port: the `targetPort` of `examples/web.yaml`'s UDP port.
pub const UDP_PORT: u16 = 5353;
/// A UDP request starting with these bytes asks for its payload (what
/// follows them) back, after the answer line: `"<pod name> <peer>\n<payload>"`.
pub const UDP_ECHO: &[u8] = b"echo\n";
/// The largest UDP payload over IPv4 (65535 - 20 - 8).
const MAX_UDP_PAYLOAD: usize = 65_507;
/// Backend TCP port of the line-echo server, for long-lived connections. No
/// example manifest uses it: tests add a Service port for it themselves.
pub const LINE_PORT: u16 = 8081;

/// How long a server waits before looking at its stop flag again.
pub(super) const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a TCP connection may take to send its line.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest line the line-echo server accepts.
const MAX_LINE: usize = 1024;

/// The servers of a set of pods; stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts the servers of every pod: one-shot TCP, UDP and line-echo TCP.
    /// They are listening when this returns.
    pub fn start(pods: &[Pod]) -> Result<Servers> {
        let mut servers = Servers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for pod in pods {
            // Bound from inside the pod, the sockets stay in its namespace
            // whichever thread serves them.
            let (tcp, udp, lines) = pod
                .ns
                .run(|| -> std::io::Result<_> {
                    let any = Ipv4Addr::UNSPECIFIED;
                    Ok((
                        TcpListener::bind((any, TCP_PORT))?,
                        UdpSocket::bind((any, UDP_PORT))?,
                        TcpListener::bind((any, LINE_PORT))?,
                    ))
                })?
                .with_context(|| format!("binding the servers of {}", pod.name))?;
            udp.set_read_timeout(Some(STOP_POLL))?;
            servers.spawn(
                format!("{} tcp", pod.name),
                serve_tcp(pod.name.clone(), tcp),
            )?;
            servers.spawn(
                format!("{} udp", pod.name),
                serve_udp(pod.name.clone(), udp),
            )?;
            servers.spawn(
                format!("{} lines", pod.name),
                serve_lines(pod.name.clone(), lines),
            )?;
        }
        Ok(servers)
    }

    fn spawn(
        &mut self,
        name: String,
        serve: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> Result<()> {
        let stop = Arc::clone(&self.stop);
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || serve(stop))?;
        self.threads.push(thread);
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

pub(super) fn serve_tcp(name: String, listener: TcpListener) -> impl FnOnce(Arc<AtomicBool>) {
    move |stop| {
        while !stop.load(Ordering::Relaxed) {
            // Wait in poll, not accept, so the stop flag is seen within STOP_POLL.
            if !readable(&listener) {
                continue;
            }
            match listener.accept() {
                // One thread per connection: a slow client must not hold up the others.
                Ok((stream, _)) => {
                    let name = name.clone();
                    thread::spawn(move || answer_tcp(&name, stream));
                }
                Err(e) => eprintln!("{name}: tcp accept: {e}"),
            }
        }
    }
}

fn answer_tcp(name: &str, stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else { return };
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
        return;
    }
    let mut line = String::new();
    // Read the whole request line first: closing with unread data would
    // send an RST instead of a FIN.
    if BufReader::new((&stream).take(1024))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let _ = (&stream).write_all(format!("{name} {peer}\n").as_bytes());
}

pub(super) fn serve_udp(name: String, socket: UdpSocket) -> impl FnOnce(Arc<AtomicBool>) {
    move |stop| {
        let mut buf = vec![0u8; MAX_UDP_PAYLOAD];
        let mut answer = Vec::with_capacity(MAX_UDP_PAYLOAD);
        while !stop.load(Ordering::Relaxed) {
            match socket.recv_from(&mut buf) {
                Ok((len, peer)) => {
                    answer.clear();
                    answer.extend_from_slice(format!("{name} {peer}\n").as_bytes());
                    if let Some(payload) = buf[..len].strip_prefix(UDP_ECHO) {
                        // The answer line is longer than the prefix: cut
                        // what would not fit a datagram.
                        let room = MAX_UDP_PAYLOAD.saturating_sub(answer.len());
                        answer.extend_from_slice(&payload[..payload.len().min(room)]);
                    }
                    if let Err(e) = socket.send_to(&answer, peer) {
                        eprintln!("{name}: udp reply to {peer}: {e}");
                    }
                }
                // The read timeout, there to look at the stop flag.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => eprintln!("{name}: udp receive: {e}"),
            }
        }
    }
}

fn serve_lines(name: String, listener: TcpListener) -> impl FnOnce(Arc<AtomicBool>) {
    move |stop| {
        while !stop.load(Ordering::Relaxed) {
            if !readable(&listener) {
                continue;
            }
            match listener.accept() {
                // The connection thread is not joined, but it sees the stop
                // flag within STOP_POLL and then closes its connection.
                Ok((stream, _)) => {
                    let (name, stop) = (name.clone(), Arc::clone(&stop));
                    thread::spawn(move || echo_lines(&name, stream, &stop));
                }
                Err(e) => eprintln!("{name}: lines accept: {e}"),
            }
        }
    }
}

/// Answers every line on `stream` until the client closes, the connection
/// fails or the servers stop.
fn echo_lines(name: &str, stream: TcpStream, stop: &AtomicBool) {
    let Ok(peer) = stream.peer_addr() else { return };
    // Not a limit on the client: a wake-up to look at the stop flag.
    if stream.set_read_timeout(Some(STOP_POLL)).is_err() {
        return;
    }
    let mut reader = BufReader::new(&stream);
    // Survives read timeouts, so a line split across them is kept whole.
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return, // the client closed
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line);
                let answer = format!("{name} {peer} {}\n", text.trim_end());
                line.clear();
                if (&stream).write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            // End of stream in the middle of a line.
            Ok(_) => return,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        if line.len() > MAX_LINE {
            return;
        }
    }
}

/// Waits up to STOP_POLL for a connection to accept.
pub(super) fn readable(listener: &TcpListener) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, STOP_POLL.as_millis() as libc::c_int) };
    ready > 0
}
