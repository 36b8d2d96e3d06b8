//! The agent's run loop: load and pin the datapath, attach it to pod
//! interfaces as they come and go, and keep the maps equal to what the
//! Services and EndpointSlices ask for (from the API server or manifests).

mod apply;
pub mod telemetry;
mod interfaces;
mod kube_source;
mod manifest_source;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::{
    ebpf::{self, Attacher, BpfDataplane, XdpModeArg},
    reconcile::Reconciler,
};
use apply::Applier;
use interfaces::InterfaceMatcher;
use kube_source::KubeSource;
use manifest_source::ManifestSource;

/// Where Services and EndpointSlices come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A directory of YAML manifests (no cluster needed).
    Manifests(PathBuf),
    /// The Kubernetes API: in-cluster config, or this kubeconfig file.
    Kube { kubeconfig: Option<PathBuf> },
}

/// What the agent needs to run (the binary maps its flags onto this).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: SourceConfig,
    /// Glob patterns of the node-side pod interfaces to attach to.
    pub pod_interfaces: Vec<String>,
    /// Where the maps are pinned.
    pub bpffs: PathBuf,
    pub xdp_mode: XdpModeArg,
    /// Remove the pinned maps on a clean exit (otherwise a restarted agent
    /// adopts them).
    pub unpin_on_exit: bool,
    /// How often interfaces (and manifests) are checked for changes, and
    /// the longest an API change waits before it is written.
    pub poll_interval: Duration,
}

enum Source {
    Manifests(ManifestSource),
    Kube(KubeSource),
}

impl Source {
    async fn start(cfg: &SourceConfig) -> anyhow::Result<Self> {
        Ok(match cfg {
            SourceConfig::Manifests(dir) => Source::Manifests(ManifestSource::new(dir.clone())),
            SourceConfig::Kube { kubeconfig } => {
                Source::Kube(KubeSource::start(kube_client(kubeconfig.as_deref()).await?))
            }
        })
    }
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no --manifests and no usable in-cluster config or kubeconfig")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let matcher = InterfaceMatcher::new(&cfg.pod_interfaces)?;
    let mut ebpf = ebpf::load(&cfg.bpffs, &[])?;
    let mut dataplane = BpfDataplane::from_ebpf(&mut ebpf)?;
    let mut attacher = Attacher::new(&mut ebpf, cfg.xdp_mode)?;
    let mut source = Source::start(&cfg.source).await?;
    let mut reconciler = Reconciler::new();
    let mut applier = Applier::default();
    info!(
        mode = "ebpf-xdp",
        source = ?cfg.source,
        bpffs = %cfg.bpffs.display(),
        pod_interfaces = ?cfg.pod_interfaces,
        "lb-agent starting (kube-proxy replacement; XDP DNAT, TC egress reverse NAT)"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
        }
        match matcher.present() {
            Ok(present) => attacher.sync(&mut ebpf, &present),
            Err(e) => tracing::warn!("listing interfaces: {e}"),
        }
        match &mut source {
            Source::Manifests(m) => m.sync(&mut applier, &mut reconciler, &mut dataplane),
            Source::Kube(k) => k.sync(&mut applier, &mut reconciler, &mut dataplane),
        }
    }

    // Dropping the object closes the program links, which detaches them.
    drop(source);
    drop(attacher);
    drop(dataplane);
    drop(ebpf);
    if cfg.unpin_on_exit {
        unpin(&cfg.bpffs);
    }
    info!("detached; bye");
    Ok(())
}

/// Removes our pinned maps and, if then empty, the pin directory.
fn unpin(dir: &std::path::Path) {
    for name in lb_common::ALL_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}
