//! Change-to-map latency: one endpoint of one random Service moves to a new
//! address through the API server, and the clock runs until the agent has
//! programmed that address into the pinned maps.
//!
//! Changes go one at a time, each after a random pause: the agent batches
//! API changes on a poll tick, so changes made right after the previous one
//! landed would all see the same phase of the tick.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::Rng as _;

use super::cluster::{cluster_ip, EndpointChanger, ENDPOINTS_PER_SERVICE, SERVICE_PORT};
use super::programmed::PinnedMaps;
use crate::apiserver::FakeApiServer;

/// The longest random pause before a change; above the agent's 250 ms tick.
pub const MAX_PAUSE: Duration = Duration::from_millis(300);
/// How often the maps are looked at while waiting.
pub const POLL: Duration = Duration::from_millis(1);
/// A change not programmed by then fails the benchmark.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Makes `changes` changes among Services `0..services`; returns each one's
/// latency in ms. `check` runs on every poll and ends the measurement with
/// its error (the agent died, the user interrupted).
pub fn measure(
    api: &FakeApiServer,
    maps: &PinnedMaps,
    services: usize,
    changes: usize,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let mut rng = rand::rng();
    let mut changer = EndpointChanger::new();
    let mut samples = Vec::with_capacity(changes);
    for _ in 0..changes {
        thread::sleep(rng.random_range(Duration::ZERO..MAX_PAUSE));
        let i = rng.random_range(0..services);
        let j = rng.random_range(0..ENDPOINTS_PER_SERVICE);
        let start = Instant::now();
        let fresh = changer.change(api, i, j)?;
        while !maps
            .backend_addrs(cluster_ip(i), SERVICE_PORT)?
            .contains(&fresh)
        {
            check()?;
            if start.elapsed() > TIMEOUT {
                bail!(
                    "{fresh} was not programmed for {} within {TIMEOUT:?}",
                    cluster_ip(i)
                );
            }
            thread::sleep(POLL);
        }
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(samples)
}
