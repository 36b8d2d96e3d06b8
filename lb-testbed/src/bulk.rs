//! Large TCP transfers through a Service: a server in each pod that takes an
//! upload of any size and sends back a download of the size asked for, and
//! hashes of both, so that the client can tell every byte arrived intact.
//!
//! Protocol, one transfer per connection:
//! 1. the client sends `"<upload bytes> <download bytes> <seed>\n"` and then
//!    the upload;
//! 2. once the server has read the whole upload it answers
//!    `"<pod name> <peer ip>:<peer port> <bytes received> <their hash>
//!    <download hash>\n"`, then the download ([`pattern`] bytes from `seed`),
//!    then closes.
//!
//! Hashes are FNV-1a 64 ([`Fnv64`]): not cryptographic, but any corrupted,
//! lost, duplicated or reordered byte changes them.

use std::io::{BufRead as _, BufReader, ErrorKind, Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

use super::servers::readable;
use super::topology::Pod;

/// The bulk server's port in every pod it runs in.
pub const BULK_PORT: u16 = 8090;
/// The largest upload or download the server accepts.
const MAX_TRANSFER: u64 = 256 << 20;
/// The longest a single read or write may block, on either side.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per write.
const CHUNK: usize = 64 << 10;

/// The bulk servers of a set of pods; stopped and joined on drop.
pub struct BulkServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BulkServers {
    /// Starts a bulk server on [`BULK_PORT`] in each of `pods`; they are
    /// listening when this returns.
    pub fn start(pods: &[Pod]) -> Result<BulkServers> {
        let mut servers = BulkServers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for pod in pods {
            let listener = pod
                .ns
                .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, BULK_PORT)))?
                .with_context(|| format!("binding the bulk server of {}", pod.name))?;
            let (name, stop) = (pod.name.clone(), Arc::clone(&servers.stop));
            let thread = thread::Builder::new()
                .name(format!("{} bulk", pod.name))
                .spawn(move || serve(&name, &listener, &stop))
                .context("spawning a bulk server thread")?;
            servers.threads.push(thread);
        }
        Ok(servers)
    }
}

impl Drop for BulkServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve(name: &str, listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let name = name.to_owned();
                thread::spawn(move || {
                    if let Err(e) = answer(&name, stream) {
                        eprintln!("{name}: bulk transfer: {e:#}");
                    }
                });
            }
            Err(e) => eprintln!("{name}: bulk accept: {e}"),
        }
    }
}

fn answer(name: &str, stream: TcpStream) -> Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // The upload is read through the same buffer as the header line, which
    // may already hold its first bytes.
    let mut reader = BufReader::new(&stream);
    let mut header = String::new();
    (&mut reader).take(128).read_line(&mut header)?;
    let numbers: Vec<u64> = header
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("bad header {header:?}"))?;
    let [upload, download, seed] = numbers[..] else {
        bail!("bad header {header:?}");
    };
    ensure!(
        upload <= MAX_TRANSFER && download <= MAX_TRANSFER,
        "transfer too large: {header:?}"
    );
    let (received, upload_hash) = drain(&mut (&mut reader).take(upload))?;
    let data = pattern(seed, download as usize);
    let download_hash = Fnv64::of(&data).0;
    let head = format!(
        "{name} {peer} {received} {upload_hash:016x} {download_hash:016x}\n",
        upload_hash = upload_hash.0
    );
    (&stream).write_all(head.as_bytes())?;
    for chunk in data.chunks(CHUNK) {
        (&stream).write_all(chunk)?;
    }
    Ok(())
}

/// One transfer as both ends saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The pod that served it.
    pub backend: String,
    /// The client address as the backend saw it.
    pub seen_peer: SocketAddr,
    /// Upload: bytes and hash the client sent, bytes and hash the server
    /// received.
    pub upload_sent: (u64, u64),
    pub upload_received: (u64, u64),
    /// Download: bytes asked for and the hash of what the server sent,
    /// bytes and hash the client received.
    pub download_sent: (u64, u64),
    pub download_received: (u64, u64),
    /// From connect to the end of the download.
    pub took: Duration,
}

impl Transfer {
    /// Both directions arrived whole and unchanged.
    pub fn intact(&self) -> bool {
        self.upload_sent == self.upload_received && self.download_sent == self.download_received
    }
}

/// Uploads `upload` bytes to the bulk server behind `to` and downloads
/// `download` bytes from it, on one connection from inside `client`.
/// Errors are transport failures (refused, reset, a timeout, a server that
/// closed early); a transfer that completes but corrupted bytes is an `Ok`
/// whose [`Transfer::intact`] is false.
pub fn transfer(client: &Pod, to: SocketAddr, upload: u64, download: u64) -> Result<Transfer> {
    client
        .ns
        .run(move || transfer_here(to, upload, download))?
        .with_context(|| format!("bulk transfer from {} to {to}", client.name))
}

fn transfer_here(to: SocketAddr, upload: u64, download: u64) -> Result<Transfer> {
    // Any seed will do; a new one per transfer, so that a stale or
    // misrouted stream cannot match.
    let seed = rand::random::<u64>() | 1;
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&to, IO_TIMEOUT).context("connecting")?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    (&stream).write_all(format!("{upload} {download} {seed}\n").as_bytes())?;
    let data = pattern(seed.rotate_left(17), upload as usize);
    for chunk in data.chunks(CHUNK) {
        (&stream).write_all(chunk).context("uploading")?;
    }
    let upload_sent = (upload, Fnv64::of(&data).0);

    let mut reader = BufReader::new(&stream);
    let mut head = String::new();
    (&mut reader)
        .take(256)
        .read_line(&mut head)
        .context("reading the server's answer")?;
    let bad = || anyhow!("unexpected answer {head:?}");
    let words: Vec<&str> = head.split_whitespace().collect();
    let [backend, peer, received, their_hash, download_hash] = words[..] else {
        return Err(bad());
    };
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
    let upload_received = (received.parse().map_err(|_| bad())?, hex(their_hash)?);
    let download_sent = (download, hex(download_hash)?);
    let download_received = drain(&mut reader).context("downloading")?;
    Ok(Transfer {
        backend: backend.to_owned(),
        seen_peer: peer.parse().map_err(|_| bad())?,
        upload_sent,
        upload_received,
        download_sent,
        download_received: (download_received.0, download_received.1 .0),
        took: start.elapsed(),
    })
}

/// Reads `from` to its end: how many bytes, and their hash.
fn drain(from: &mut impl Read) -> std::io::Result<(u64, Fnv64)> {
    let mut buf = vec![0u8; CHUNK];
    let (mut total, mut hash) = (0u64, Fnv64::new());
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok((total, hash)),
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64*): cheap, and no run
/// repeats, so a misplaced segment changes the hash.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    data.truncate(len);
    data
}

/// FNV-1a, 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv64(pub u64);

impl Fnv64 {
    pub fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn of(bytes: &[u8]) -> Fnv64 {
        let mut hash = Fnv64::new();
        hash.update(bytes);
        hash
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_its_reference_values() {
        // From the FNV reference test suite.
        assert_eq!(Fnv64::of(b"").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv64::of(b"a").0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv64::of(b"foobar").0, 0x8594_4171_f739_67e8);
        let mut split = Fnv64::new();
        split.update(b"foo");
        split.update(b"bar");
        assert_eq!(split, Fnv64::of(b"foobar"));
    }

    #[test]
    fn patterns_depend_on_the_seed_and_stay_prefixes() {
        assert_eq!(pattern(7, 100).len(), 100);
        assert_eq!(&pattern(7, 1000)[..100], &pattern(7, 100)[..]);
        assert_ne!(pattern(7, 100), pattern(9, 100));
        // No byte is stuck: the pattern is not a repeated word.
        let p = pattern(7, 4096);
        assert_ne!(p[..8], p[8..16]);
    }
}
