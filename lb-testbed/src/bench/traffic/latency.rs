//! Sequential new connections from the client pod, each timed: connect,
//! one request line, the backend's answer, close. One connection at a time
//! makes the latency the path's own, not a queue's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::bench::stats::percentile;
use crate::client::{request, Transport};
use crate::topology::Pod;

/// A connection slower than this counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The figures of one run.
pub struct ConnRun {
    /// Answered connections per second of the run's wall time.
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub failed: usize,
    pub first_error: Option<String>,
}

impl ConnRun {
    /// `n` connections from `client` to `to`.
    pub fn measure(client: &Pod, to: SocketAddr, n: usize) -> Result<ConnRun> {
        let (took, results) = client.ns.run(move || {
            let start = Instant::now();
            let results: Vec<_> = (0..n)
                .map(|_| {
                    let t = Instant::now();
                    request(Transport::Tcp, to, CONNECT_TIMEOUT).map(|_| t.elapsed())
                })
                .collect();
            (start.elapsed(), results)
        })?;
        let us: Vec<f64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|d| d.as_secs_f64() * 1e6)
            .collect();
        let failed = n - us.len();
        // A run that mostly failed measures nothing worth reporting.
        ensure!(
            failed < n / 10,
            "{failed} of {n} connections to {to} failed: {:?}",
            results.iter().find(|r| r.is_err())
        );
        Ok(ConnRun {
            per_second: us.len() as f64 / took.as_secs_f64(),
            p50_us: percentile(&us, 50.0),
            p99_us: percentile(&us, 99.0),
            failed,
            first_error: results
                .iter()
                .find_map(|r| r.as_ref().err())
                .map(|e| e.to_string()),
        })
    }
}
