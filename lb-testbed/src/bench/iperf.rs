//! Bulk TCP throughput with iperf3: a server in a backend pod, short runs
//! from the client pod.

use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::topology::Pod;

/// The port iperf3 serves on in the pod.
pub const PORT: u16 = 5201;

/// `iperf3 -s` in a pod; killed on drop.
pub struct IperfServer {
    child: Child,
}

impl IperfServer {
    /// Starts the server and waits until it accepts connections.
    pub fn start(pod: &Pod) -> Result<Self> {
        let child = pod
            .ns
            .command("iperf3")?
            .args(["-s", "-p", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting iperf3 -s in {}", pod.name))?;
        let server = Self { child };
        let ip = pod.ip;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pod
            .ns
            .run(move || std::net::TcpStream::connect((ip, PORT)).is_ok())?
        {
            if Instant::now() > deadline {
                bail!("iperf3 -s in {} does not listen", pod.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `iperf3 -c` run of `secs` seconds from `client` to `ip:PORT`;
/// returns the bits per second the receiver got.
pub fn throughput(client: &Pod, ip: std::net::Ipv4Addr, secs: u32) -> Result<f64> {
    let out = client
        .ns
        .command("iperf3")?
        .args(["-c", &ip.to_string(), "-p", &PORT.to_string()])
        .args(["-t", &secs.to_string(), "-J"])
        .output()
        .context("running iperf3 -c")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 -c {ip} printed no JSON ({})", out.status))?;
    if let Some(e) = json.get("error") {
        bail!("iperf3 -c {ip}: {e}");
    }
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| anyhow!("iperf3 -c {ip}: no end.sum_received.bits_per_second"))
}
