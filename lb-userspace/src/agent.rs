//! The agent's run loop: load and pin the datapath, attach it to pod
//! interfaces as they come and go, and keep the maps equal to what the
//! manifests ask for.

mod interfaces;
mod manifest_source;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::{
    ebpf::{self, Attacher, BpfDataplane, XdpModeArg},
    reconcile::Reconciler,
};
use interfaces::InterfaceMatcher;
use manifest_source::ManifestSource;

/// What the agent needs to run (the binary maps its flags onto this).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Directory of Service/EndpointSlice YAML manifests.
    pub manifests: PathBuf,
    /// Glob patterns of the node-side pod interfaces to attach to.
    pub pod_interfaces: Vec<String>,
    /// Where the maps are pinned.
    pub bpffs: PathBuf,
    pub xdp_mode: XdpModeArg,
    /// Remove the pinned maps on a clean exit (otherwise a restarted agent
    /// adopts them).
    pub unpin_on_exit: bool,
    /// How often interfaces and manifests are checked for changes.
    pub poll_interval: Duration,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let matcher = InterfaceMatcher::new(&cfg.pod_interfaces)?;
    let mut ebpf = ebpf::load(&cfg.bpffs, &[])?;
    let mut dataplane = BpfDataplane::from_ebpf(&mut ebpf)?;
    let mut attacher = Attacher::new(&mut ebpf, cfg.xdp_mode)?;
    let mut source = ManifestSource::new(cfg.manifests.clone());
    let mut reconciler = Reconciler::new();
    info!(
        mode = "ebpf-xdp",
        manifests = %cfg.manifests.display(),
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
        source.sync_if_changed(&mut reconciler, &mut dataplane);
    }

    // Dropping the object closes the program links, which detaches them.
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
