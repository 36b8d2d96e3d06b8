//! Echo servers like those of [`super::servers`], on ports a test chooses:
//! for Services whose pods do not all listen where `servers` does (a named
//! targetPort that resolves to different numbers in different
//! EndpointSlices, TCP and UDP on one port number).
//!
//! The same server loops as [`super::servers`], so [`super::client::Client`]
//! reads their answers: `"<pod name> <peer ip>:<peer port>\n"`, after one request line on
//! TCP (then the server closes), for every datagram on UDP.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::{Context as _, Result};

use super::servers;
use super::topology::Pod;

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
                        Box::new(move || servers::serve_tcp(name, listener)(stop))
                    }
                    Listen::Udp(port) => {
                        let socket = pod
                            .ns
                            .run(move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))?
                            .with_context(|| format!("binding UDP {port} in {}", pod.name))?;
                        socket.set_read_timeout(Some(servers::STOP_POLL))?;
                        Box::new(move || servers::serve_udp(name, socket)(stop))
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
