//! Echo servers like those of [`super::servers`], on ports a test chooses:
//! for Services whose pods do not all listen where `servers` does (a named
//! targetPort that resolves to different numbers in different
//! EndpointSlices, TCP and UDP on one port number).
//!
//! Same answers as [`super::servers`], so [`super::client::Client`] reads
//! them: `"<pod name> <peer ip>:<peer port>\n"`, after one request line on
//! TCP (then the server closes), for every datagram on UDP.

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::topology::Pod;

/// How long a server waits before looking at its stop flag again.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a TCP client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// What to listen on, in every pod given to [`PortServers::start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// One-shot TCP: a request line in, one answer line out, close.
    Tcp(u16),
    /// UDP: one answer datagram per datagram.
    Udp(u16),
}

/// The servers of a set of pods; stopped and joined on drop.
pub struct PortServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PortServers {
    /// Starts a server for each of `listen` in each of `pods`; they are
    /// listening when this returns.
    pub fn start(pods: &[Pod], listen: &[Listen]) -> Result<PortServers> {
        let mut servers = PortServers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for pod in pods {
            for &what in listen {
                let name = pod.name.clone();
                let stop = Arc::clone(&servers.stop);
                // Bound from inside the pod, the socket stays in its
                // namespace whichever thread serves it.
                let serve: Box<dyn FnOnce() + Send> = match what {
                    Listen::Tcp(port) => {
                        let listener = pod
                            .ns
                            .run(move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
                            .with_context(|| format!("binding TCP {port} in {}", pod.name))?;
                        Box::new(move || serve_tcp(&name, &listener, &stop))
                    }
                    Listen::Udp(port) => {
                        let socket = pod
                            .ns
                            .run(move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))?
                            .with_context(|| format!("binding UDP {port} in {}", pod.name))?;
                        socket.set_read_timeout(Some(STOP_POLL))?;
                        Box::new(move || serve_udp(&name, &socket, &stop))
                    }
                };
                let thread = thread::Builder::new()
                    .name(format!("{} {what:?}", pod.name))
                    .spawn(serve)
                    .context("spawning a server thread")?;
                servers.threads.push(thread);
            }
        }
        Ok(servers)
    }
}

impl Drop for PortServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve_tcp(name: &str, listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // Wait in poll, not accept, so the stop flag is seen within STOP_POLL.
        if !readable(listener) {
            continue;
        }
        match listener.accept() {
            // One thread per connection: a slow client must not hold up others.
            Ok((stream, _)) => {
                let name = name.to_owned();
                thread::spawn(move || answer_tcp(&name, stream));
            }
            Err(e) => eprintln!("{name}: tcp accept: {e}"),
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

fn serve_udp(name: &str, socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(format!("{name} {peer}\n").as_bytes(), peer) {
                    eprintln!("{name}: udp reply to {peer}: {e}");
                }
            }
            // The read timeout, there to look at the stop flag.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => eprintln!("{name}: udp receive: {e}"),
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
