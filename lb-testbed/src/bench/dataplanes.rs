//! The ways a node can carry the benchmarked Services, switchable in one
//! topology so that every mode is measured on the same namespaces in the
//! same run: nothing (clients go to a pod IP directly: the limit), the same
//! with our agent attached (what every pod pays for it, Service or not),
//! our agent (pod hook TC, the default, and XDP), and kube-proxy's
//! iptables and nftables rule sets.
//!
//! Every Service is installed once per topology: into the fake API server
//! our agent watches, and as both anchor rule sets, loaded but not hooked
//! into netfilter. Switching then only starts or stops the agent (which
//! detaches its programs on exit) or adds or removes the anchors' hooks, so
//! exactly one mode handles a packet at any time, and a 10k-Service load is
//! paid once per topology instead of once per run.
//!
//! The iptables anchor is loaded with iptables-legacy: with iptables-nft
//! (Debian's default) loading 10k Services takes minutes (see the
//! programming-cost benchmark), and kube-proxy's iptables-wrapper uses
//! legacy on nodes whose other rules are legacy.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::anchors::iptables::{self, Backend};
use super::anchors::nftables;
use super::frontends::Cluster;
use super::nscmd::run_file;
use super::sync::{agent_args, probe::AgentHelp};
use crate::{agent::AgentProcess, apiserver::FakeApiServer, netns::NetNs, scratch::ScratchDir};

/// The iptables flavour of the iptables anchor (see the module doc).
const IPTABLES: Backend = Backend::Legacy;

/// How long the agent may take to serve the Services after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No Service handling; clients send to a pod IP.
    Direct,
    /// Clients send to a pod IP while our agent is attached.
    DirectAgentAttached,
    /// Our agent, pod hook TC (the default).
    Ours,
    /// Our agent with `--pod-hook xdp`.
    OursXdp,
    Iptables,
    Nftables,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::DirectAgentAttached,
        Mode::Ours,
        Mode::OursXdp,
        Mode::Iptables,
        Mode::Nftables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "no NAT (pod IP)",
            Mode::DirectAgentAttached => "pod IP, our agent attached",
            Mode::Ours => "ours (TC)",
            Mode::OursXdp => "ours (--pod-hook xdp)",
            Mode::Iptables => "kube-proxy iptables (legacy)",
            Mode::Nftables => "kube-proxy nftables",
        }
    }

    /// The agent's extra arguments in the modes it runs in.
    pub fn agent_args(self) -> Option<&'static [&'static str]> {
        match self {
            Mode::DirectAgentAttached | Mode::Ours => Some(&[]),
            Mode::OursXdp => Some(&["--pod-hook", "xdp"]),
            Mode::Direct | Mode::Iptables | Mode::Nftables => None,
        }
    }

    /// Whether clients send to the pod IP rather than the Service.
    pub fn to_pod_ip(self) -> bool {
        matches!(self, Mode::Direct | Mode::DirectAgentAttached)
    }
}

/// A node namespace with the Services installed for every mode.
pub struct Dataplanes<'a> {
    node: &'a NetNs,
    agent_bin: &'a Path,
    pod_interfaces: String,
    agent_args: Vec<String>,
    agent: Option<AgentProcess>,
    current: Mode,
    // Dropped after the agent (field order): it watches the server.
    api: FakeApiServer,
    scratch: ScratchDir,
}

impl<'a> Dataplanes<'a> {
    /// Installs `cluster` in `node` for every mode and starts in
    /// [`Mode::Direct`]. `extra_args` go to the agent (e.g. its node name).
    pub fn install(
        node: &'a NetNs,
        agent_bin: &'a Path,
        cluster: &Cluster,
        pod_interfaces: &str,
        extra_args: &[&str],
    ) -> Result<Self> {
        let scratch = ScratchDir::new()?;
        let api = FakeApiServer::start_in(node)?;
        for f in &cluster.frontends {
            api.apply_service(f.service());
            api.apply_slice(f.slice());
        }
        let help = AgentHelp::of(agent_bin)?;
        let mut args = agent_args(&help, cluster.frontends.len());
        args.extend(extra_args.iter().map(|&a| a.to_owned()));

        let rules = scratch.path().join("iptables.rules");
        fs::write(&rules, iptables::restore_input(cluster, &[]))?;
        run_file(node, IPTABLES.restore(), &["-w", "--noflush"], &rules)
            .context("loading the iptables anchor")?;
        let ruleset = scratch.path().join("kube-proxy.nft");
        fs::write(&ruleset, nftables::ruleset(cluster))?;
        run_file(node, "nft", &["-f"], &ruleset).context("loading the nftables anchor")?;
        Ok(Self {
            node,
            agent_bin,
            pod_interfaces: pod_interfaces.to_owned(),
            agent_args: args,
            agent: None,
            current: Mode::Direct,
            api,
            scratch,
        })
    }

    /// Turns the current mode off and `mode` on. For the agent's modes,
    /// `serves` is polled until it holds (the agent's first sync is done).
    pub fn switch(&mut self, mode: Mode, mut serves: impl FnMut() -> bool) -> Result<()> {
        if mode == self.current {
            return Ok(());
        }
        self.turn(self.current, false)
            .with_context(|| format!("turning {} off", self.current.label()))?;
        self.current = Mode::Direct;
        self.turn(mode, true)
            .with_context(|| format!("turning {} on", mode.label()))?;
        self.current = mode;
        if mode.agent_args().is_some() {
            let agent = self.agent.as_mut().expect("started above");
            if let Err(e) = agent.wait_ready(READY_TIMEOUT, &mut serves) {
                let log = agent.log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "{e:#}; agent log tail:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        } else if !serves() {
            bail!("{} is on but the Service does not answer", mode.label());
        }
        Ok(())
    }

    fn turn(&mut self, mode: Mode, on: bool) -> Result<()> {
        match mode {
            Mode::Direct => Ok(()),
            Mode::DirectAgentAttached | Mode::Ours | Mode::OursXdp if on => {
                let kubeconfig = self.scratch.path().join("kubeconfig");
                self.api.write_kubeconfig(&kubeconfig)?;
                let source = [OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
                let mut args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
                args.extend(mode.agent_args().unwrap_or_default());
                self.agent = Some(AgentProcess::start_with_source(
                    self.agent_bin,
                    self.node,
                    &source,
                    &self.pod_interfaces,
                    &args,
                )?);
                Ok(())
            }
            Mode::DirectAgentAttached | Mode::Ours | Mode::OursXdp => {
                if let Some(mut agent) = self.agent.take() {
                    agent.stop()?;
                }
                Ok(())
            }
            Mode::Iptables => {
                let op = if on { "-I" } else { "-D" };
                for (table, chain, rule) in iptables::HOOKS {
                    self.node.exec(
                        [IPTABLES.iptables(), "-w", "-t", table, op, chain]
                            .into_iter()
                            .chain(rule.split(' ')),
                    )?;
                }
                Ok(())
            }
            Mode::Nftables => {
                let file = self.scratch.path().join("hooks.nft");
                fs::write(&file, nftables::hooks(on))?;
                run_file(self.node, "nft", &["-f"], &file)
            }
        }
    }
}
