//! A minimal HTTP/1.0 GET, run inside a namespace, for probing the agent's
//! /healthz, /livez and /metrics the way a kubelet or Prometheus would.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use super::netns::NetNs;

/// Status code and body of `GET http://<addr><path>`, from inside `ns`.
pub fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let owned = path.to_string();
    ns.run(move || get_here(addr, &owned))?
        .with_context(|| format!("GET http://{addr}{path} in {}", ns.name()))
}

fn get_here(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}
