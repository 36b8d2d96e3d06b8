//! Attaching the XDP (DNAT) and TC egress (reverse NAT) programs to pod
//! interfaces, and detaching them from interfaces that went away.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context as _};
use aya::{
    programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf,
};
use lb_common::{PROG_TC_EGRESS, PROG_XDP_INGRESS};
use tracing::{info, warn};

/// Which XDP mode to attach in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode, falling back to generic when the driver lacks it.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// What is attached to one interface.
struct Attached {
    ifindex: u32,
    xdp_mode: &'static str,
    xdp: aya::programs::xdp::XdpLinkId,
    tc: aya::programs::tc::SchedClassifierLinkId,
}

/// Owns the loaded programs and the links per interface name.
pub struct Attacher {
    mode: XdpModeArg,
    attached: BTreeMap<String, Attached>,
}

impl Attacher {
    /// Loads (verifies) both programs into the kernel.
    pub fn new(ebpf: &mut Ebpf, mode: XdpModeArg) -> anyhow::Result<Self> {
        xdp_prog(ebpf)?
            .load()
            .context("verifying the XDP program")?;
        tc_prog(ebpf)?
            .load()
            .context("verifying the TC egress program")?;
        Ok(Self {
            mode,
            attached: BTreeMap::new(),
        })
    }

    /// Names of the interfaces we are attached to, with their XDP mode.
    pub fn attached(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.attached.iter().map(|(n, a)| (n.as_str(), a.xdp_mode))
    }

    /// Brings the attachments in line with `present`: attaches to new
    /// interfaces (name -> ifindex), forgets vanished or renumbered ones.
    /// One failing interface does not stop the others.
    pub fn sync(&mut self, ebpf: &mut Ebpf, present: &BTreeMap<String, u32>) {
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, a)| present.get(*name) != Some(&a.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let a = self.attached.remove(&name).expect("listed above");
            // The kernel already dropped the links of a deleted interface;
            // detaching is only needed when the name now has a new index.
            let _ = xdp_prog(ebpf).map(|p| p.detach(a.xdp));
            let _ = tc_prog(ebpf).map(|p| p.detach(a.tc));
            info!(interface = %name, "interface gone, detached");
        }
        for (name, ifindex) in present {
            if self.attached.contains_key(name) {
                continue;
            }
            match self.attach_one(ebpf, name, *ifindex) {
                Ok(a) => {
                    info!(interface = %name, xdp_mode = a.xdp_mode, "attached XDP ingress and TC egress");
                    self.attached.insert(name.clone(), a);
                }
                Err(e) => warn!(interface = %name, "attach failed: {e:#}"),
            }
        }
    }

    fn attach_one(&self, ebpf: &mut Ebpf, name: &str, ifindex: u32) -> anyhow::Result<Attached> {
        let xdp = xdp_prog(ebpf)?;
        let (xdp_link, xdp_mode) = match self.mode {
            XdpModeArg::Native => (xdp.attach_to_if_index(ifindex, XdpMode::Driver)?, "native"),
            XdpModeArg::Generic => (xdp.attach_to_if_index(ifindex, XdpMode::Skb)?, "generic"),
            XdpModeArg::Auto => match xdp.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(l) => (l, "native"),
                Err(_) => (xdp.attach_to_if_index(ifindex, XdpMode::Skb)?, "generic"),
            },
        };
        // clsact is needed only for the netlink fallback on kernels < 6.6
        // (tcx otherwise); adding it is harmless when it already exists.
        let _ = tc::qdisc_add_clsact(name);
        let tc_link = match tc_prog(ebpf)?.attach(name, TcAttachType::Egress) {
            Ok(l) => l,
            Err(e) => {
                let _ = xdp_prog(ebpf).map(|p| p.detach(xdp_link));
                return Err(e).context("attaching TC egress");
            }
        };
        Ok(Attached {
            ifindex,
            xdp_mode,
            xdp: xdp_link,
            tc: tc_link,
        })
    }
}

fn xdp_prog(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut(PROG_XDP_INGRESS)
        .ok_or_else(|| anyhow!("program {PROG_XDP_INGRESS} missing from the object"))?
        .try_into()
        .context(PROG_XDP_INGRESS)
}

fn tc_prog(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    ebpf.program_mut(PROG_TC_EGRESS)
        .ok_or_else(|| anyhow!("program {PROG_TC_EGRESS} missing from the object"))?
        .try_into()
        .context(PROG_TC_EGRESS)
}
