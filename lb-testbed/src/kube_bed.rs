//! The single-node bed with the agent watching the fake API server: the
//! three backend pods `examples/web.yaml` lists, their servers, the API
//! server in the node namespace holding the given objects, and the agent
//! (`--kubeconfig`), ready once the `web` ClusterIP answers. Objects then
//! change through `api`, the way they do in a cluster.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::agent::AgentProcess;
use super::apiserver::FakeApiServer;
use super::client::{Client, DEFAULT_TIMEOUT};
use super::scratch::ScratchDir;
use super::servers::{Servers, LINE_PORT};
use super::topology::ClusterIpTopology;
use super::{WEB_TCP_PORT, WEB_VIP};
use lb_core::manifest;

/// The Service port [`web_objects`] adds for the line-echo servers.
pub const LINES_PORT: u16 = 81;

pub struct KubeBed {
    // Field order is drop order: the agent and the API server go before
    // the namespaces they run in.
    pub agent: AgentProcess,
    pub api: FakeApiServer,
    _servers: Servers,
    _scratch: ScratchDir,
    pub topo: ClusterIpTopology,
}

impl KubeBed {
    pub fn start(
        agent: &Path,
        services: &[Service],
        slices: &[EndpointSlice],
        agent_args: &[&str],
    ) -> Result<KubeBed> {
        let topo = ClusterIpTopology::create(3)?;
        let servers = Servers::start(topo.backends())?;
        let api = FakeApiServer::start_in(topo.node())?;
        let scratch = ScratchDir::new()?;
        let kubeconfig = scratch.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        for s in services {
            api.apply_service(s.clone());
        }
        for s in slices {
            api.apply_slice(s.clone());
        }
        let source = [std::ffi::OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
        let mut agent = AgentProcess::start_with_source(
            agent,
            topo.node(),
            &source,
            &topo.pod_interfaces(),
            agent_args,
        )?;
        let client = Client::new(topo.client());
        let ready = agent.wait_ready(Duration::from_secs(20), || {
            matches!(
                client.tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT),
                Ok(Ok(_))
            )
        })?;
        println!("agent ready after {ready:?}");
        Ok(KubeBed {
            agent,
            api,
            _servers: servers,
            _scratch: scratch,
            topo,
        })
    }
}

/// `examples/web.yaml`'s Service and EndpointSlice (three ready pods), with
/// one more TCP port for the line-echo servers: `lines`, [`LINES_PORT`] ->
/// [`LINE_PORT`].
pub fn web_objects() -> (Service, EndpointSlice) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let loaded = manifest::load_dir(dir.as_ref());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut service = loaded.services[0].object.clone();
    let mut slice = loaded.slices[0].object.clone();
    let spec = service.spec.as_mut().expect("web has a spec");
    spec.ports.get_or_insert_with(Vec::new).push(ServicePort {
        name: Some("lines".into()),
        port: LINES_PORT.into(),
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::Int(LINE_PORT.into())),
        ..ServicePort::default()
    });
    slice.ports.get_or_insert_with(Vec::new).push(EndpointPort {
        name: Some("lines".into()),
        port: Some(LINE_PORT.into()),
        protocol: Some("TCP".into()),
        ..EndpointPort::default()
    });
    (service, slice)
}
