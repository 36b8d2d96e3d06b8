//! A cluster for the conformance scenarios: the multi-node namespace
//! topology (one to a few nodes, zones as Node labels), echo servers in
//! every pod, the list/watch test server holding the Nodes, Services and
//! EndpointSlices, and one agent per node watching it, as a DaemonSet
//! would run. Objects change the way they do in a cluster: through the
//! API, one event at a time.

use std::ffi::OsStr;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize as _;

use crate::agent::AgentProcess;
use crate::apiserver::FakeApiServer;
use crate::client::{request, RequestResult, Transport, DEFAULT_TIMEOUT};
use crate::http_get;
use crate::multinode::MultiNodeTopology;
use crate::node_client::node_requests;
use crate::scratch::ScratchDir;
use crate::servers::Servers;
use crate::topology::Pod;

/// Where the programs the scenarios run are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    /// `lb-testbed`, run as a node process for hostNetwork clients.
    pub testbed: PathBuf,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// `topology.kubernetes.io/zone` of each node, if any.
    pub zones: Vec<&'static str>,
    /// Extra agent flags.
    pub agent_args: Vec<String>,
}

impl ClusterSpec {
    pub fn new(nodes: usize, pods_per_node: usize) -> Self {
        ClusterSpec {
            nodes,
            pods_per_node,
            zones: Vec::new(),
            agent_args: Vec::new(),
        }
    }
}

/// kube-proxy's health port, where the agent serves /healthz.
pub const HEALTHZ: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 10256));
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Cluster {
    // Dropped in this order: agents, then the API server, servers and
    // namespaces they used.
    agents: Vec<AgentProcess>,
    pub api: FakeApiServer,
    _servers: Servers,
    _scratch: ScratchDir,
    pub topo: MultiNodeTopology,
    bins: Binaries,
}

impl Cluster {
    /// Builds the cluster and waits until every agent reports healthy
    /// (first complete list programmed).
    pub fn start(bins: &Binaries, spec: &ClusterSpec) -> Result<Cluster> {
        let topo = MultiNodeTopology::create(spec.nodes, spec.pods_per_node)?;
        let servers = Servers::start(topo.all_pods())?;
        // On node a's address: every node's agent reaches it over the
        // node network, as agents reach a real API server.
        let api = FakeApiServer::start_in_at(topo.node(0), SocketAddr::from((topo.node_ip(0), 0)))?;
        let scratch = ScratchDir::new()?;
        let kubeconfig = scratch.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        for i in 0..spec.nodes {
            api.apply_node(node_object(&topo, i, spec.zones.get(i).copied())?);
        }
        let source = [OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
        let mut agents = Vec::with_capacity(spec.nodes);
        for i in 0..spec.nodes {
            let mut args = vec![
                "--node-name".to_string(),
                topo.node_name(i).to_string(),
                "--node-interfaces".to_string(),
                topo.uplink(i).to_string(),
            ];
            args.extend(spec.agent_args.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            agents.push(AgentProcess::start_with_source(
                &bins.agent,
                topo.node(i),
                &source,
                &topo.pod_interfaces(),
                &args,
            )?);
        }
        let mut cluster = Cluster {
            agents,
            api,
            _servers: servers,
            _scratch: scratch,
            topo,
            bins: bins.clone(),
        };
        for i in 0..spec.nodes {
            let node = cluster.topo.node(i);
            cluster.agents[i]
                .wait_ready(READY_TIMEOUT, || {
                    matches!(http_get::get(node, HEALTHZ, "/healthz"), Ok((200, _)))
                })
                .with_context(|| format!("agent on {}", cluster.topo.node_name(i)))?;
        }
        Ok(cluster)
    }

    pub fn agent(&mut self, node: usize) -> &mut AgentProcess {
        &mut self.agents[node]
    }

    /// Starts node `node`'s agent again after it exited (e.g.
    /// [`AgentProcess::kill9`]), on the same pin directory, as a DaemonSet
    /// restarts its pod; returns once it reports healthy again. (The agent
    /// and its node namespace cannot both be borrowed through
    /// [`Self::agent`] and `topo`.)
    pub fn restart_agent(&mut self, node: usize) -> Result<Duration> {
        let ns = self.topo.node(node);
        let agent = &mut self.agents[node];
        agent.restart(ns)?;
        agent
            .wait_ready(READY_TIMEOUT, || {
                matches!(http_get::get(ns, HEALTHZ, "/healthz"), Ok((200, _)))
            })
            .with_context(|| format!("restarted agent on {}", self.topo.node_name(node)))
    }

    /// A `Command` for `program` as a process of node `node` (a hostNetwork
    /// pod): in its namespace and the cgroup its agent balances.
    pub fn node_process(&self, node: usize, program: impl AsRef<OsStr>) -> Result<Command> {
        self.agents[node].node_process(self.topo.node(node), program)
    }

    /// Applies every Service and EndpointSlice of a multi-document YAML.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(doc)?;
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("Service") => {
                    let service: Service = serde_yaml::from_value(value)?;
                    self.api.apply_service(service);
                }
                Some("EndpointSlice") => {
                    let slice: EndpointSlice = serde_yaml::from_value(value)?;
                    self.api.apply_slice(slice);
                }
                None if value.is_null() => {}
                other => bail!("cannot apply a {other:?}"),
            }
        }
        Ok(())
    }

    pub fn delete_service(&self, name: &str) {
        self.api.delete_service("default", name);
    }

    pub fn delete_slice(&self, name: &str) {
        self.api.delete_slice("default", name);
    }

    /// `n` requests from a pod's namespace, one after the other.
    pub fn from_pod(
        &self,
        pod: &Pod,
        transport: Transport,
        to: SocketAddr,
        n: usize,
    ) -> Result<Vec<RequestResult>> {
        pod.ns.run(move || {
            (0..n)
                .map(|_| request(transport, to, DEFAULT_TIMEOUT))
                .collect()
        })
    }

    /// `n` requests from a process of node `node` (a hostNetwork pod).
    pub fn from_node(
        &self,
        node: usize,
        transport: Transport,
        to: SocketAddr,
        n: usize,
    ) -> Result<Vec<RequestResult>> {
        node_requests(
            &self.bins.testbed,
            &self.agents[node],
            self.topo.node(node),
            transport,
            to,
            n,
            DEFAULT_TIMEOUT,
        )
    }

    /// `n` requests from the client outside the cluster.
    pub fn from_outside(
        &self,
        transport: Transport,
        to: SocketAddr,
        n: usize,
    ) -> Result<Vec<RequestResult>> {
        self.from_pod(self.topo.external_client(), transport, to, n)
    }
}

/// Polls `probe` every 100 ms until it holds; the time it took, or an error
/// naming `what` after `timeout`.
pub fn eventually(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if probe() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_object(topo: &MultiNodeTopology, i: usize, zone: Option<&str>) -> Result<Node> {
    let labels = match zone {
        Some(z) => format!("labels: {{topology.kubernetes.io/zone: {z}}}"),
        None => "labels: {}".to_string(),
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, {labels}}}\n\
         status: {{addresses: [{{type: InternalIP, address: \"{ip}\"}}, {{type: Hostname, address: {name}}}]}}\n",
        name = topo.node_name(i),
        ip = topo.node_ip(i),
    );
    Ok(serde_yaml::from_str(&yaml)?)
}
