//! lb-agent: keeps the XDP load balancer's maps in sync with Kubernetes
//! Services and EndpointSlices, in place of kube-proxy.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use lb_userspace::{
    agent::{self, AgentConfig, SourceConfig},
    ebpf::XdpModeArg,
};

/// eBPF/XDP Kubernetes Service load balancer agent (kube-proxy replacement).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory of Service and EndpointSlice (discovery.k8s.io/v1) YAML
    /// manifests to serve instead of a cluster's; edits are picked up
    /// within a second.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig to reach the API server with. Without it (and without
    /// --manifests): $KUBECONFIG, ~/.kube/config, or the in-cluster
    /// service account, in that order.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Node-side pod interfaces to attach to: comma-separated names or glob
    /// patterns (e.g. `veth*,cali*`). New matching interfaces are attached
    /// as they appear.
    #[arg(long, value_delimiter = ',', required = true)]
    pod_interfaces: Vec<String>,
    /// bpffs directory where the maps are pinned. Agents with different
    /// directories run side by side.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Remove the pinned maps on exit (by default they stay, so that a
    /// restarted agent adopts them).
    #[arg(long)]
    unpin_on_exit: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log_level)?)
        .with_writer(std::io::stderr)
        .init();
    agent::run(AgentConfig {
        source: match args.manifests {
            Some(dir) => SourceConfig::Manifests(dir),
            None => SourceConfig::Kube {
                kubeconfig: args.kubeconfig,
            },
        },
        pod_interfaces: args.pod_interfaces,
        bpffs: args.bpffs,
        xdp_mode: args.xdp_mode,
        unpin_on_exit: args.unpin_on_exit,
        poll_interval: Duration::from_millis(250),
    })
    .await
}
