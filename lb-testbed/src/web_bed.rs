//! The usual single-node bed: the three backend pods `examples/web.yaml`
//! lists, their echo servers, a manifests directory and an agent serving
//! it, ready once a TCP request to the `web` ClusterIP is answered.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::agent::AgentProcess;
use super::client::{Client, DEFAULT_TIMEOUT};
use super::scratch::ScratchDir;
use super::servers::Servers;
use super::topology::ClusterIpTopology;
use super::{WEB_TCP_PORT, WEB_VIP};

/// `examples/web.yaml`, the Service most tests start from.
pub const WEB_YAML: &str = include_str!("../../examples/web.yaml");
/// How long the agent gets to serve the first request.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct WebBed {
    // Dropped in this order: the agent first, then what it served.
    pub agent: AgentProcess,
    pub scratch: ScratchDir,
    pub servers: Servers,
    pub topo: ClusterIpTopology,
}

impl WebBed {
    /// Writes `files` (name, YAML) into a fresh manifests directory, starts
    /// the agent on it with `agent_args`, and waits until the `web`
    /// ClusterIP answers (so `files` must serve it).
    pub fn start(agent: &Path, files: &[(&str, &str)], agent_args: &[&str]) -> Result<WebBed> {
        Self::start_on(ClusterIpTopology::create(3)?, agent, files, agent_args)
    }

    /// Same, on a topology of three backend pods the caller built (and
    /// looked at before the agent started).
    pub fn start_on(
        topo: ClusterIpTopology,
        agent: &Path,
        files: &[(&str, &str)],
        agent_args: &[&str],
    ) -> Result<WebBed> {
        let servers = Servers::start(topo.backends())?;
        let scratch = ScratchDir::new()?;
        for (name, yaml) in files {
            std::fs::write(scratch.path().join(name), yaml)?;
        }
        let mut agent = AgentProcess::start(
            agent,
            topo.node(),
            scratch.path(),
            &topo.pod_interfaces(),
            agent_args,
        )?;
        let client = Client::new(topo.client());
        agent.wait_ready(READY_TIMEOUT, || {
            client
                .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
                .is_ok_and(|r| r.is_ok())
        })?;
        Ok(WebBed {
            agent,
            scratch,
            servers,
            topo,
        })
    }

    /// The client pod's client.
    pub fn client(&self) -> Client<'_> {
        Client::new(self.topo.client())
    }

    /// Rewrites (or adds) one manifest file; the agent picks it up.
    pub fn write(&self, name: &str, yaml: &str) -> Result<()> {
        Ok(std::fs::write(self.scratch.path().join(name), yaml)?)
    }
}
