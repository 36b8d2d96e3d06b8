//! Traffic through a Service that keeps flowing in the background while a
//! test breaks something (the API server, the agent), counting every failure:
//!
//! * [`ConnectionStream`]: long-lived TCP connections, each exchanging a line
//!   with the line-echo server of [`super::servers`] at a fixed interval.
//!   Established connections are what a load balancer restart must not
//!   break: they live on conntrack entries, not on the agent.
//! * [`RequestStream`]: a new TCP connection per request at a fixed
//!   interval, against either TCP server. New flows need the Service maps, so
//!   a gap in the dataplane (maps flushed, programs detached) shows up here.
//!
//! Counting instead of asserting inside the threads lets a test compare
//! windows (before, during and after a fault) and say which one broke.

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};

use super::netns::NsThread;
use super::topology::Pod;

/// How long an exchange or a request may take before it counts as failed.
/// Longer than a TCP retransmission (200 ms minimum RTO), so one lost packet
/// is not a failure; shorter than a test's fault window.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest answer line accepted.
const MAX_LINE: u64 = 1024;

/// Long-lived TCP connections from a pod to a Service, each exchanging a
/// line with its backend every `interval` on its own thread (so a stalled
/// connection does not hold up the others). Stopped and joined on drop.
pub struct ConnectionStream {
    stop: Arc<AtomicBool>,
    stats: Vec<Arc<Mutex<ConnectionStats>>>,
    threads: Vec<JoinHandle<()>>,
}

/// What one connection did so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionStats {
    /// The client's end of the connection.
    pub local: SocketAddr,
    /// The pod that answered the first exchange; every later answer must
    /// come from it too.
    pub backend: String,
    /// Exchanges answered correctly.
    pub ok: u64,
    /// Exchanges that failed (no answer in time, a reset, a wrong answer).
    pub failed: u64,
    /// The latest failure's description.
    pub last_error: Option<String>,
}

/// The counters of every connection of a [`ConnectionStream`] at one time,
/// or (from [`StreamSnapshot::since`]) over a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// In the order the connections were opened.
    pub connections: Vec<ConnectionStats>,
}

impl ConnectionStream {
    /// Opens `n` connections from `client` to `ip:port`, which must lead to
    /// line-echo servers ([`super::servers::LINE_PORT`]). Each connection
    /// makes its first exchange before this returns (an error if one
    /// fails), so every connection is established and knows its backend.
    pub fn open(
        client: &Pod,
        ip: Ipv4Addr,
        port: u16,
        n: usize,
        interval: Duration,
    ) -> Result<ConnectionStream> {
        let to = SocketAddr::from((ip, port));
        // Sockets created inside the pod stay in its namespace, whichever
        // thread uses them later.
        let sockets = client
            .ns
            .run(move || {
                (0..n)
                    .map(|_| TcpStream::connect_timeout(&to, EXCHANGE_TIMEOUT))
                    .collect::<std::io::Result<Vec<_>>>()
            })?
            .with_context(|| format!("connecting {n} times from {} to {to}", client.name))?;
        let mut stream = ConnectionStream {
            stop: Arc::new(AtomicBool::new(false)),
            stats: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for socket in sockets {
            let local = socket.local_addr()?;
            let mut conn = Connection::new(socket)?;
            let first = conn
                .exchange()
                .map_err(|e| anyhow!("first exchange on {local} -> {to}: {e}"))?;
            let stats = Arc::new(Mutex::new(ConnectionStats {
                local,
                backend: first.backend,
                ok: 1,
                failed: 0,
                last_error: None,
            }));
            let (keep, stop) = (Arc::clone(&stats), Arc::clone(&stream.stop));
            let thread = thread::Builder::new()
                .name(format!("conn {local}"))
                .spawn(move || conn.keep_exchanging(&keep, &stop, interval))
                .context("spawning a connection thread")?;
            stream.stats.push(stats);
            stream.threads.push(thread);
        }
        Ok(stream)
    }

    /// The counters now.
    pub fn snapshot(&self) -> StreamSnapshot {
        StreamSnapshot {
            connections: self.stats.iter().map(|s| lock(s).clone()).collect(),
        }
    }
}

impl Drop for ConnectionStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl StreamSnapshot {
    /// The counts between `earlier` (a snapshot of the same stream) and
    /// this one. `last_error` stays only for connections that failed in
    /// between.
    pub fn since(&self, earlier: &StreamSnapshot) -> StreamSnapshot {
        let connections = self
            .connections
            .iter()
            .zip(&earlier.connections)
            .map(|(now, then)| {
                let failed = now.failed - then.failed;
                ConnectionStats {
                    ok: now.ok - then.ok,
                    failed,
                    last_error: now.last_error.clone().filter(|_| failed > 0),
                    ..now.clone()
                }
            })
            .collect();
        StreamSnapshot { connections }
    }

    pub fn ok(&self) -> u64 {
        self.connections.iter().map(|c| c.ok).sum()
    }

    pub fn failed(&self) -> u64 {
        self.connections.iter().map(|c| c.failed).sum()
    }

    /// Connections with fewer than `min_ok` good exchanges: the proof that
    /// a window with no failures also had traffic.
    pub fn stalled(&self, min_ok: u64) -> Vec<&ConnectionStats> {
        self.connections.iter().filter(|c| c.ok < min_ok).collect()
    }

    /// One line per connection, for failure messages.
    pub fn summary(&self) -> String {
        self.connections
            .iter()
            .map(|c| {
                let error = c.last_error.as_deref().unwrap_or("-");
                format!(
                    "  {} via {}: {} ok, {} failed, last error: {error}\n",
                    c.local, c.backend, c.ok, c.failed
                )
            })
            .collect()
    }
}

/// One long-lived connection: requests are sequence numbers, and the
/// line-echo server sends each back, so an answer that arrives after its
/// exchange timed out is recognised and skipped.
struct Connection {
    socket: TcpStream,
    reader: BufReader<TcpStream>,
    /// A partial answer line, kept across read timeouts.
    pending: Vec<u8>,
    seq: u64,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

/// Why an exchange failed.
enum Failure {
    /// No answer in time: packets may still get through later.
    Slow(String),
    /// The connection is unusable from now on.
    Broken(String),
}

impl Failure {
    fn of(what: String, e: &std::io::Error) -> Failure {
        if is_timeout(e) {
            Failure::Slow(format!("{what}: timed out"))
        } else {
            Failure::Broken(format!("{what}: {e}"))
        }
    }
}

/// A server's answer: `"<pod> <peer ip>:<port>[ <echoed line>]"`.
#[derive(Debug)]
struct Answer {
    backend: String,
    echoed: Option<String>,
}

impl Connection {
    fn new(socket: TcpStream) -> Result<Connection> {
        socket.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
        let reader = BufReader::new(socket.try_clone()?);
        Ok(Connection {
            socket,
            reader,
            pending: Vec::new(),
            seq: 0,
            broken: None,
        })
    }

    /// Sends the next sequence number and waits for its echo. Once the
    /// connection is broken for good (reset, closed), every later exchange
    /// fails with the original cause, not with the broken pipe it leads to.
    fn exchange(&mut self) -> std::result::Result<Answer, String> {
        if let Some(cause) = &self.broken {
            return Err(format!("broken earlier: {cause}"));
        }
        self.try_exchange().map_err(|failure| match failure {
            Failure::Slow(e) => e,
            Failure::Broken(e) => {
                self.broken = Some(e.clone());
                e
            }
        })
    }

    fn try_exchange(&mut self) -> std::result::Result<Answer, Failure> {
        self.seq += 1;
        let seq = self.seq.to_string();
        let slow = || Failure::Slow(format!("no answer to {seq} in {EXCHANGE_TIMEOUT:?}"));
        (&self.socket)
            .write_all(format!("{seq}\n").as_bytes())
            .map_err(|e| Failure::of(format!("sending {seq}"), &e))?;
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(slow());
            }
            // A socket option: it applies to the reader's clone as well.
            self.socket
                .set_read_timeout(Some(left))
                .map_err(|e| Failure::of("setting the read timeout".into(), &e))?;
            match self.reader.read_until(b'\n', &mut self.pending) {
                Ok(_) if self.pending.ends_with(b"\n") => {
                    let line = String::from_utf8_lossy(&self.pending).into_owned();
                    self.pending.clear();
                    let answer = parse(&line).map_err(Failure::Broken)?;
                    match answer.echoed.as_deref() {
                        Some(echoed) if echoed == seq => return Ok(answer),
                        // The late answer to an exchange that already timed out.
                        Some(echoed) if echoed.parse::<u64>().is_ok_and(|e| e < self.seq) => {}
                        _ => {
                            return Err(Failure::Broken(format!(
                                "answer {line:?} to request {seq}"
                            )))
                        }
                    }
                }
                Ok(_) => return Err(Failure::Broken("closed by the peer".into())),
                Err(e) if is_timeout(&e) => return Err(slow()),
                Err(e) => return Err(Failure::of("receiving".into(), &e)),
            }
            if self.pending.len() as u64 > MAX_LINE {
                return Err(Failure::Broken("answer line too long".into()));
            }
        }
    }

    /// Exchanges every `interval` until `stop`, counting into `stats`. A
    /// failed connection keeps being tried, so the counts say how long it
    /// stayed broken.
    fn keep_exchanging(
        mut self,
        stats: &Mutex<ConnectionStats>,
        stop: &AtomicBool,
        interval: Duration,
    ) {
        let mut next = Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) {
            sleep_until(next);
            next += interval;
            let result = self.exchange();
            let mut stats = lock(stats);
            let error = match result {
                Ok(answer) if answer.backend == stats.backend => None,
                Ok(answer) => Some(format!(
                    "answered by {}, not {}",
                    answer.backend, stats.backend
                )),
                Err(e) => Some(e),
            };
            match error {
                None => stats.ok += 1,
                Some(e) => {
                    stats.failed += 1;
                    stats.last_error = Some(e);
                }
            }
            // After a slow failure, do not try to catch up with a burst.
            next = next.max(Instant::now());
        }
    }
}

/// New TCP connections from a pod to a Service, one every `interval`, each
/// sending one line and reading one answer line. Stopped on drop.
pub struct RequestStream {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    thread: Option<NsThread<()>>,
}

/// One request of a [`RequestStream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// When the request was started.
    pub at: Instant,
    /// The pod that answered, or what went wrong.
    pub result: std::result::Result<String, String>,
}

impl RequestStream {
    /// Starts requesting from `client` to `ip:port` (either TCP server of
    /// [`super::servers`]); the first request is made right away.
    pub fn start(
        client: &Pod,
        ip: Ipv4Addr,
        port: u16,
        interval: Duration,
    ) -> Result<RequestStream> {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (keep_stop, keep) = (Arc::clone(&stop), Arc::clone(&outcomes));
        let to = SocketAddr::from((ip, port));
        let thread = client.ns.enter_thread(move || {
            let mut next = Instant::now();
            while !keep_stop.load(Ordering::Relaxed) {
                sleep_until(next);
                next += interval;
                let at = Instant::now();
                let result = request(to, EXCHANGE_TIMEOUT);
                lock(&keep).push(Outcome { at, result });
                next = next.max(Instant::now());
            }
        })?;
        Ok(RequestStream {
            stop,
            outcomes,
            thread: Some(thread),
        })
    }

    /// Every request made so far, oldest first.
    pub fn outcomes(&self) -> Vec<Outcome> {
        lock(&self.outcomes).clone()
    }

    /// Stops after the request in progress and returns every outcome.
    pub fn stop(mut self) -> Vec<Outcome> {
        self.halt();
        self.outcomes()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join();
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `n` requests of the kind a [`RequestStream`] makes, one after the
/// other: for a check that works against either TCP server (the line-echo
/// server does not close after answering, so [`super::client::Client`]'s
/// requests, which read to the end, cannot use it).
pub fn requests(client: &Pod, ip: Ipv4Addr, port: u16, n: usize) -> Result<Vec<Outcome>> {
    let to = SocketAddr::from((ip, port));
    client.ns.run(move || {
        (0..n)
            .map(|_| Outcome {
                at: Instant::now(),
                result: request(to, EXCHANGE_TIMEOUT),
            })
            .collect()
    })
}

/// The failed outcomes, for a message: how many, and the first few with
/// their time relative to `origin`.
pub fn describe_failures(outcomes: &[Outcome], origin: Instant) -> String {
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let mut text = format!("{} of {} requests failed", failed.len(), outcomes.len());
    for o in failed.iter().take(5) {
        let at = o.at.saturating_duration_since(origin);
        let error = o.result.as_ref().err().map_or("", String::as_str);
        text += &format!("\n  at {at:?}: {error}");
    }
    text
}

fn request(to: SocketAddr, timeout: Duration) -> std::result::Result<String, String> {
    let fail = |what: &str, e: std::io::Error| format!("{what} {to}: {}", describe(&e));
    let socket = TcpStream::connect_timeout(&to, timeout).map_err(|e| fail("connecting to", e))?;
    socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.set_write_timeout(Some(timeout)))
        .map_err(|e| fail("configuring the socket to", e))?;
    (&socket)
        .write_all(b"request\n")
        .map_err(|e| fail("sending to", e))?;
    let mut line = String::new();
    BufReader::new((&socket).take(MAX_LINE))
        .read_line(&mut line)
        .map_err(|e| fail("receiving from", e))?;
    if !line.ends_with('\n') {
        return Err(format!("{to} closed without a whole answer: {line:?}"));
    }
    Ok(parse(&line)?.backend)
}

fn parse(line: &str) -> std::result::Result<Answer, String> {
    let mut words = line.split_whitespace();
    let (Some(backend), Some(peer)) = (words.next(), words.next()) else {
        return Err(format!("unexpected answer {line:?}"));
    };
    peer.parse::<SocketAddr>()
        .map_err(|_| format!("unexpected answer {line:?}"))?;
    Ok(Answer {
        backend: backend.to_owned(),
        echoed: words.next().map(str::to_owned),
    })
}

fn is_timeout(e: &std::io::Error) -> bool {
    // A read timeout shows up as WouldBlock on Linux.
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn describe(e: &std::io::Error) -> String {
    if is_timeout(e) {
        "timed out".into()
    } else {
        e.to_string()
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        thread::sleep(deadline - now);
    }
}

/// The counters stay meaningful if a thread panicked while holding the lock.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_servers_answers() {
        let one_shot = parse("pod-2 10.244.4.2:40000\n").unwrap();
        assert_eq!(one_shot.backend, "pod-2");
        assert_eq!(one_shot.echoed, None);
        let line = parse("pod-1 10.244.4.2:40000 17\n").unwrap();
        assert_eq!(
            (line.backend.as_str(), line.echoed.as_deref()),
            ("pod-1", Some("17"))
        );
        assert!(parse("garbage\n").is_err());
        assert!(parse("pod-1 not-an-address 1\n").is_err());
    }

    #[test]
    fn a_window_subtracts_counts_and_keeps_only_its_errors() {
        let conn = |ok, failed, error: Option<&str>| ConnectionStats {
            local: "10.244.4.2:40000".parse().unwrap(),
            backend: "pod-1".into(),
            ok,
            failed,
            last_error: error.map(str::to_owned),
        };
        let earlier = StreamSnapshot {
            connections: vec![conn(10, 1, Some("old")), conn(5, 0, None)],
        };
        let now = StreamSnapshot {
            connections: vec![conn(30, 1, Some("old")), conn(6, 2, Some("new"))],
        };
        let window = now.since(&earlier);
        assert_eq!((window.ok(), window.failed()), (21, 2));
        assert_eq!(window.connections[0].last_error, None);
        assert_eq!(window.connections[1].last_error.as_deref(), Some("new"));
        assert_eq!(window.stalled(5).len(), 1);
    }
}
