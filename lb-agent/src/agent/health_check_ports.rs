//! kube-proxy's service health-check servers. A Service with
//! `externalTrafficPolicy: Local` gets a `healthCheckNodePort`; cloud load
//! balancers probe `http://<node>:<port>/` and send traffic only to nodes
//! that answer 200, that is nodes with a local ready endpoint, since such
//! traffic is never forwarded to another node.

mod server;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::anyhow;
use tracing::info;

use server::{ProxyHealthy, Server, ServiceHealth};

/// The health-check listeners, kept equal to a desired state.
pub struct HealthCheckPorts {
    bind_ips: Vec<IpAddr>,
    proxy_healthy: ProxyHealthy,
    open: BTreeMap<u16, Server>,
}

impl HealthCheckPorts {
    /// Listens on every address in `bind_ips` (all IPv4 addresses when
    /// empty, as kube-proxy does without `--nodeport-addresses`).
    /// `proxy_healthy` is asked on every probe: a node whose proxy is
    /// unhealthy answers 503 whatever its endpoints, so load balancers move
    /// traffic away from a node that may not be programming it.
    pub fn new(
        bind_ips: Vec<IpAddr>,
        proxy_healthy: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        let bind_ips = if bind_ips.is_empty() {
            vec![Ipv4Addr::UNSPECIFIED.into()]
        } else {
            bind_ips
        };
        Self {
            bind_ips,
            proxy_healthy: Arc::new(proxy_healthy),
            open: BTreeMap::new(),
        }
    }

    /// Desired state: healthCheckNodePort -> (namespace, name, local ready
    /// endpoint count). Closes the listeners of ports no longer wanted (they
    /// refuse connections once this returns), updates the others in place
    /// (a re-bind would refuse probes in between and could lose the port),
    /// and opens new ones. A port that cannot be bound yields an error naming
    /// the service and port, and is tried again on the next call.
    pub async fn sync(
        &mut self,
        desired: BTreeMap<u16, (String, String, usize)>,
    ) -> Vec<anyhow::Error> {
        let (kept, gone) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|(port, _)| desired.contains_key(port));
        self.open = kept;
        for (port, server) in gone {
            server.stop().await;
            info!(port, "health check port closed");
        }
        let mut errors = Vec::new();
        for (port, (namespace, name, local_endpoints)) in desired {
            let health = ServiceHealth {
                namespace,
                name,
                local_endpoints,
            };
            if let Some(server) = self.open.get(&port) {
                server.set(health);
                continue;
            }
            let service = format!("{}/{}", health.namespace, health.name);
            match self.open_port(port, health).await {
                Ok(server) => {
                    info!(port, %service, addresses = ?self.bind_ips, "health check port open");
                    self.open.insert(port, server);
                }
                Err(e) => {
                    errors.push(e.context(format!("service {service}: health check port {port}")))
                }
            }
        }
        errors
    }

    /// The ports with an open listener.
    pub fn ports(&self) -> Vec<u16> {
        self.open.keys().copied().collect()
    }

    async fn open_port(&self, port: u16, health: ServiceHealth) -> anyhow::Result<Server> {
        if port == 0 {
            // Binding would pick a random port no load balancer probes.
            return Err(anyhow!("0 is not a port"));
        }
        let addrs: Vec<_> = self
            .bind_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        Server::start(&addrs, health, self.proxy_healthy.clone()).await
    }
}
