//! The synthetic cluster the benchmark serves: N ClusterIP Services with one
//! TCP port each, and per Service one EndpointSlice of
//! [`ENDPOINTS_PER_SERVICE`] ready endpoints on pod IPs no other Service
//! uses (so the backends map holds N x 10 backends, the worst case for it).
//!
//! Addresses are computed from the Service's index, so the benchmark can
//! recompute any Service's frontend and endpoints instead of keeping 100k
//! objects around. None of them ever leaves the benchmark's namespace.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::apiserver::FakeApiServer;
use crate::bench::frontends::{Frontend, Proto};

pub const ENDPOINTS_PER_SERVICE: usize = 10;
/// Every Service's frontend port (TCP).
pub const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const PORT_NAME: &str = "http";
const NAMESPACE: &str = "default";

/// ClusterIPs come from 10.100.0.0/14.
const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([10, 100, 0, 0]);
const CLUSTER_IP_HOST_BITS: u32 = 32 - 14;
/// Pod IPs from 10.128.0.0/10: room for 10 endpoints each of 400k Services.
const POD_IP_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
/// Addresses endpoint changes move to: 10.200.0.0/16, outside the pod range,
/// so a new address is never one the Service already had.
const FRESH_IP_BASE: u32 = u32::from_be_bytes([10, 200, 0, 0]);
const FRESH_IP_HOST_BITS: u32 = 32 - 16;

/// The most Services the ClusterIP range holds (its first and last address
/// are left out).
pub const MAX_SERVICES: usize = (1 << CLUSTER_IP_HOST_BITS) - 2;

/// The ClusterIP of Service `i`.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(CLUSTER_IP_BASE + 1 + i as u32)
}

/// The endpoints Service `i` starts with.
pub fn initial_endpoints(i: usize) -> Vec<Ipv4Addr> {
    let first = POD_IP_BASE + 1 + (i * ENDPOINTS_PER_SERVICE) as u32;
    (0..ENDPOINTS_PER_SERVICE as u32)
        .map(|j| Ipv4Addr::from(first + j))
        .collect()
}

/// Loads `n` Services and their slices into `api`; returns how long that
/// took (the fake server's and this process's time, not the agent's).
/// `stop` is polled now and then: the fill of 100k Services takes a while.
pub fn fill(api: &FakeApiServer, n: usize, stop: &dyn Fn() -> bool) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..n {
        api.apply_service(service(i));
        api.apply_slice(slice(i, &initial_endpoints(i)));
        if i % 1000 == 0 && stop() {
            bail!("interrupted");
        }
    }
    Ok(start.elapsed())
}

/// Moves one endpoint of one Service at a time to a fresh address, through
/// the API server, as a rolled pod would.
pub struct EndpointChanger {
    /// Endpoints of the Services changed so far (the others have their
    /// [`initial_endpoints`]).
    changed: BTreeMap<usize, Vec<Ipv4Addr>>,
    next_fresh: u32,
}

impl EndpointChanger {
    pub fn new() -> Self {
        Self {
            changed: BTreeMap::new(),
            next_fresh: 1,
        }
    }

    /// Replaces endpoint `j` of Service `i` with a fresh address, which it
    /// returns.
    pub fn change(&mut self, api: &FakeApiServer, i: usize, j: usize) -> Result<Ipv4Addr> {
        ensure!(
            self.next_fresh < (1 << FRESH_IP_HOST_BITS) - 1,
            "out of fresh endpoint addresses"
        );
        let fresh = Ipv4Addr::from(FRESH_IP_BASE + self.next_fresh);
        self.next_fresh += 1;
        let endpoints = self
            .changed
            .entry(i)
            .or_insert_with(|| initial_endpoints(i));
        endpoints[j] = fresh;
        api.apply_slice(slice(i, endpoints));
        Ok(fresh)
    }
}

pub(in crate::bench) fn service_name(i: usize) -> String {
    format!("svc-{i:06}")
}

/// Service `i` with these (ready) endpoints.
pub(in crate::bench) fn frontend(i: usize, endpoints: &[Ipv4Addr]) -> Frontend {
    Frontend {
        namespace: NAMESPACE.into(),
        name: service_name(i),
        port_name: PORT_NAME.into(),
        proto: Proto::Tcp,
        cluster_ip: cluster_ip(i),
        port: SERVICE_PORT,
        node_port: None,
        target_port: TARGET_PORT,
        endpoints: endpoints.to_vec(),
    }
}

fn service(i: usize) -> Service {
    frontend(i, &[]).service()
}

/// The slice the EndpointSlice controller would write for Service `i` with
/// these (ready) endpoints.
fn slice(i: usize, endpoints: &[Ipv4Addr]) -> EndpointSlice {
    frontend(i, endpoints).slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_range() {
        let last = MAX_SERVICES - 1;
        assert_eq!(cluster_ip(0), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(cluster_ip(last), Ipv4Addr::new(10, 103, 255, 254));
        assert_eq!(initial_endpoints(0)[0], Ipv4Addr::new(10, 128, 0, 1));
        assert_eq!(initial_endpoints(1)[0], Ipv4Addr::new(10, 128, 0, 11));
        // The last Service's endpoints stay below the fresh range.
        assert!(u32::from(initial_endpoints(last)[9]) < FRESH_IP_BASE);
    }

    #[test]
    fn objects_pass_the_agent_model() {
        let desired = lb_core::model::desired_state(
            None,
            [(&service(3), None)],
            [(&slice(3, &initial_endpoints(3)), None)],
        );
        assert!(desired.errors.is_empty(), "{:?}", desired.errors);
        assert_eq!(desired.frontends.len(), 1);
        let (_, d) = desired.frontends.iter().next().unwrap();
        assert_eq!(d.backends.len(), ENDPOINTS_PER_SERVICE);
    }
}
