//! Looking at the agent from outside: which flags it has, whether its
//! /healthz says ready, what its metrics say, and how much memory it has
//! used at most.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::netns::NetNs;

/// The agent binary's `--help`, to pass optional flags (map sizes, health
/// endpoint) only to an agent that has them, so the benchmark also runs
/// against older builds at scales that fit their fixed map sizes.
pub struct AgentHelp(String);

impl AgentHelp {
    pub fn of(binary: &Path) -> Result<Self> {
        let out = Command::new(binary)
            .arg("--help")
            .output()
            .with_context(|| format!("running {} --help", binary.display()))?;
        if !out.status.success() {
            bail!("{} --help failed ({})", binary.display(), out.status);
        }
        Ok(Self(String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    pub fn has(&self, flag: &str) -> bool {
        self.0
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|word| word == flag)
    }
}

/// Whether `GET /healthz` on `addr` inside `ns` answers 200. Any failure
/// (nothing listening yet, 503, timeout) is "not yet".
pub fn healthz_ok(ns: &NetNs, addr: SocketAddrV4) -> bool {
    ns.run(move || http_get(addr, "/healthz").is_some_and(|(status, _)| status == 200))
        .unwrap_or(false)
}

/// The value of the unlabelled Prometheus sample `name` served on
/// `addr/metrics` inside `ns`; `None` if the agent does not export it.
pub fn metric(ns: &NetNs, addr: SocketAddrV4, name: &str) -> Option<f64> {
    let (status, body) = ns.run(move || http_get(addr, "/metrics")).ok()??;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Status and body of a plain HTTP/1.1 GET (the body read to the end, so
/// not de-chunked); the socket is created by the calling thread, so in its
/// network namespace.
fn http_get(addr: SocketAddrV4, path: &str) -> Option<(u16, String)> {
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr.into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    // "HTTP/1.1 200 OK"
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// VmHWM of `pid`: its peak resident set size so far, in KiB. For the
/// agent, `AgentProcess::pid` is the agent itself, not a wrapper:
/// `NetNs::command` enters the namespace in a pre-exec hook, no `ip netns
/// exec` in between.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_flags_match_whole_words() {
        let help = AgentHelp("  --healthz-bind <ADDR>\n  --metrics-bind=<ADDR>, --x".into());
        assert!(help.has("--healthz-bind"));
        assert!(help.has("--metrics-bind"));
        assert!(!help.has("--healthz"));
    }
}
