//! Attaching the XDP (DNAT), TC egress (reverse NAT) and TC ingress
//! (rejections back out) programs to pod interfaces and uplinks, detaching
//! them from interfaces that went away, and adopting the links a previous
//! agent left pinned (see `link_pins`).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};
use lb_common::{
    PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_TC_NODE_EGRESS, PROG_XDP_INGRESS, PROG_XDP_NODE,
};
use tracing::{info, warn};

use super::link_pins::{self, InterfacePins};

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

/// Which interfaces an [`Attacher`] serves, and with which programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// For logs: "pod" or "node".
    pub name: &'static str,
    pub xdp: &'static str,
    pub tc_egress: &'static str,
    pub tc_ingress: &'static str,
    /// Directory of the links' pins, under the pin directory.
    pub links_subdir: &'static str,
}

/// The node side of pod veths: ClusterIP DNAT and its reverse NAT.
pub const POD_INTERFACES: Role = Role {
    name: "pod",
    xdp: PROG_XDP_INGRESS,
    tc_egress: PROG_TC_EGRESS,
    tc_ingress: PROG_TC_INGRESS,
    links_subdir: "links",
};

/// The node's uplinks: NodePort / external IPs, SNAT for remote backends.
pub const NODE_INTERFACES: Role = Role {
    name: "node",
    xdp: PROG_XDP_NODE,
    tc_egress: PROG_TC_NODE_EGRESS,
    tc_ingress: PROG_TC_INGRESS,
    links_subdir: "node-links",
};

/// What is attached to one interface: the three links, pinned.
struct Attached {
    pins: InterfacePins,
    xdp_mode: String,
    // Our fds on the links. The pins keep the links alive without them;
    // holding them makes "detach" a matter of removing the pins.
    _xdp: FdLink,
    _tc: FdLink,
    _tc_ingress: FdLink,
}

/// Owns the loaded programs and the pinned links per interface name.
pub struct Attacher {
    role: Role,
    mode: XdpModeArg,
    links_dir: PathBuf,
    attached: BTreeMap<String, Attached>,
    /// Pins left by a previous agent, not yet adopted (or dropped).
    inherited: Vec<InterfacePins>,
}

impl Attacher {
    /// Loads (verifies) the three programs into the kernel. Links a previous
    /// agent pinned under `pin_dir` are adopted by [`Attacher::sync`].
    pub fn new(
        ebpf: &mut Ebpf,
        role: Role,
        mode: XdpModeArg,
        pin_dir: &Path,
    ) -> anyhow::Result<Self> {
        xdp_prog(ebpf, role)?
            .load()
            .with_context(|| format!("verifying {}", role.xdp))?;
        tc_prog(ebpf, role.tc_egress)?
            .load()
            .with_context(|| format!("verifying {}", role.tc_egress))?;
        // Shared by both roles: loaded once.
        let ingress = tc_prog(ebpf, role.tc_ingress)?;
        if ingress.fd().is_err() {
            ingress
                .load()
                .with_context(|| format!("verifying {}", role.tc_ingress))?;
        }
        let links_dir = pin_dir.join(role.links_subdir);
        super::private_dir::create(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        Ok(Self {
            role,
            mode,
            inherited: link_pins::scan(&links_dir),
            links_dir,
            attached: BTreeMap::new(),
        })
    }

    /// Names of the interfaces we are attached to, with their XDP mode.
    pub fn attached(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attached
            .iter()
            .map(|(n, a)| (n.as_str(), a.xdp_mode.as_str()))
    }

    /// Brings the attachments in line with `present` (name -> ifindex):
    /// adopts links a previous agent pinned for present interfaces, attaches
    /// to new interfaces, and detaches from vanished or renumbered ones. One
    /// failing interface does not stop the others.
    pub fn sync(&mut self, ebpf: &mut Ebpf, present: &BTreeMap<String, u32>) {
        for pins in std::mem::take(&mut self.inherited) {
            if present.get(&pins.ifname) != Some(&pins.ifindex) {
                remove_pins(&pins, "interface gone or no longer matching");
                continue;
            }
            match adopt(ebpf, self.role, &pins) {
                Ok(a) => {
                    info!(interface = %pins.ifname, xdp_mode = %a.xdp_mode, "adopted pinned links (programs replaced in place)");
                    self.attached.insert(pins.ifname.clone(), a);
                }
                Err(e) => {
                    warn!(interface = %pins.ifname, "cannot adopt pinned links, attaching anew: {e:#}");
                    remove_pins(&pins, "not adoptable");
                }
            }
        }
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, a)| present.get(*name) != Some(&a.pins.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let a = self.attached.remove(&name).expect("listed above");
            // The kernel already detached the links of a deleted interface;
            // removing the pins releases them.
            remove_pins(&a.pins, "interface gone");
        }

        for (name, ifindex) in present {
            if self.attached.contains_key(name) {
                continue;
            }
            let pins = InterfacePins::new(&self.links_dir, *ifindex, name);
            match self.attach_one(ebpf, &pins) {
                Ok(a) => {
                    info!(role = self.role.name, interface = %name, xdp_mode = %a.xdp_mode, "attached XDP, TC egress and TC ingress");
                    self.attached.insert(name.clone(), a);
                }
                Err(e) => {
                    warn!(interface = %name, "attach failed: {e:#}");
                    let _ = pins.remove();
                }
            }
        }
    }

    /// Forgets the interfaces whose links were detached behind our back
    /// (`bpftool link detach`), so that the next [`Attacher::sync`]
    /// attaches them anew like new interfaces. A few syscalls per link:
    /// called on the monitor tick, not on every sync. Returns how many.
    pub fn drop_severed(&mut self) -> usize {
        let severed: Vec<String> = self
            .attached
            .iter()
            .filter(|(_, a)| a.severed())
            .map(|(name, _)| name.clone())
            .collect();
        for name in &severed {
            let a = self.attached.remove(name).expect("listed above");
            warn!(interface = %name, "a program of ours was detached behind our back; attaching again");
            remove_pins(&a.pins, "severed");
        }
        severed.len()
    }

    /// Detaches everything: removes the pins, then the fds.
    pub fn detach_all(&mut self) {
        for (_, a) in std::mem::take(&mut self.attached) {
            remove_pins(&a.pins, "detaching");
        }
        let _ = fs::remove_dir(&self.links_dir);
    }

    fn attach_one(&self, ebpf: &mut Ebpf, pins: &InterfacePins) -> anyhow::Result<Attached> {
        let xdp = xdp_prog(ebpf, self.role)?;
        let ifindex = pins.ifindex;
        let (id, xdp_mode) = match self.mode {
            XdpModeArg::Native => (xdp.attach_to_if_index(ifindex, XdpMode::Driver)?, "native"),
            XdpModeArg::Generic => (xdp.attach_to_if_index(ifindex, XdpMode::Skb)?, "generic"),
            XdpModeArg::Auto => match xdp.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(l) => (l, "native"),
                Err(_) => (xdp.attach_to_if_index(ifindex, XdpMode::Skb)?, "generic"),
            },
        };
        // Until pinned, dropping the link detaches it: failures below undo.
        let xdp_link =
            FdLink::try_from(xdp.take_link(id)?).context("XDP link is not an fd link")?;
        // clsact is needed only for the netlink fallback on kernels < 6.6
        // (tcx otherwise); adding it is harmless when it already exists.
        let _ = tc::qdisc_add_clsact(&pins.ifname);
        let tc_link = attach_tc(
            ebpf,
            self.role.tc_egress,
            &pins.ifname,
            TcAttachType::Egress,
        )?;
        let tc_ingress = attach_tc(
            ebpf,
            self.role.tc_ingress,
            &pins.ifname,
            TcAttachType::Ingress,
        )?;
        super::private_dir::create(&pins.dir)
            .with_context(|| format!("creating {}", pins.dir.display()))?;
        let xdp_link = pin(xdp_link, &pins.xdp(xdp_mode))?;
        let tc_link = pin(tc_link, &pins.tc())?;
        let tc_ingress = pin(tc_ingress, &pins.tc_ingress())?;
        Ok(Attached {
            pins: pins.clone(),
            xdp_mode: xdp_mode.to_string(),
            _xdp: xdp_link,
            _tc: tc_link,
            _tc_ingress: tc_ingress,
        })
    }
}

impl Attached {
    /// Whether any of its links lost its interface (see
    /// `link_pins::is_severed`); a link that cannot be read counts too.
    fn severed(&self) -> bool {
        let xdp = self.pins.xdp(&self.xdp_mode);
        [xdp, self.pins.tc(), self.pins.tc_ingress()]
            .iter()
            .any(|pin| link_pins::is_severed(pin).unwrap_or(true))
    }
}

/// Takes over the links pinned for one interface, swapping the programs
/// loaded by this agent into them (an atomic `BPF_LINK_UPDATE`: no packet
/// goes unprocessed, and the maps are the same pinned ones).
fn adopt(ebpf: &mut Ebpf, role: Role, pins: &InterfacePins) -> anyhow::Result<Attached> {
    let (xdp_path, xdp_mode) = pins
        .pinned_xdp()
        .ok_or_else(|| anyhow!("no XDP link pinned in {}", pins.dir.display()))?;
    let open = |path: &Path| -> anyhow::Result<FdLink> {
        Ok(PinnedLink::from_pin(path)
            .with_context(|| format!("opening {}", path.display()))?
            .into())
    };
    let xdp = xdp_prog(ebpf, role)?;
    let link = XdpLink::try_from(open(&xdp_path)?).context("not an XDP link")?;
    let id = xdp
        .attach_to_link(link)
        .context("replacing the XDP program")?;
    let xdp_link = FdLink::try_from(xdp.take_link(id)?)?;
    let replace_tc = |ebpf: &mut Ebpf, name: &str, path: &Path| -> anyhow::Result<FdLink> {
        let tc = tc_prog(ebpf, name)?;
        let link = SchedClassifierLink::try_from(open(path)?).context("not a tcx link")?;
        let id = tc
            .attach_to_link(link)
            .with_context(|| format!("replacing {name}"))?;
        Ok(FdLink::try_from(tc.take_link(id)?)?)
    };
    let tc_link = replace_tc(ebpf, role.tc_egress, &pins.tc())?;
    // An agent from before the TC ingress program left no such pin: attach
    // it now (nothing to replace).
    let tc_ingress = if pins.tc_ingress().exists() {
        replace_tc(ebpf, role.tc_ingress, &pins.tc_ingress())?
    } else {
        let link = attach_tc(ebpf, role.tc_ingress, &pins.ifname, TcAttachType::Ingress)?;
        pin(link, &pins.tc_ingress())?
    };
    Ok(Attached {
        pins: pins.clone(),
        xdp_mode,
        _xdp: xdp_link,
        _tc: tc_link,
        _tc_ingress: tc_ingress,
    })
}

/// Attaches the TC program `name` to `ifname` as a tcx link (its fd; the
/// link detaches when the fd closes, until pinned).
fn attach_tc(
    ebpf: &mut Ebpf,
    name: &str,
    ifname: &str,
    at: TcAttachType,
) -> anyhow::Result<FdLink> {
    let tc = tc_prog(ebpf, name)?;
    let id = tc
        .attach(ifname, at)
        .with_context(|| format!("attaching {name} ({at:?})"))?;
    FdLink::try_from(tc.take_link(id)?)
        .context("TC link is not an fd (tcx) link; kernel >= 6.6 needed")
}

fn pin(link: FdLink, path: &Path) -> anyhow::Result<FdLink> {
    Ok(link
        .pin(path)
        .with_context(|| format!("pinning {}", path.display()))?
        .into())
}

fn remove_pins(pins: &InterfacePins, why: &str) {
    match pins.remove() {
        Ok(()) => info!(interface = %pins.ifname, ifindex = pins.ifindex, "{why}: detached"),
        Err(e) => warn!(interface = %pins.ifname, "removing {}: {e}", pins.dir.display()),
    }
}

fn xdp_prog(ebpf: &mut Ebpf, role: Role) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut(role.xdp)
        .ok_or_else(|| anyhow!("program {} missing from the object", role.xdp))?
        .try_into()
        .context(role.xdp)
}

fn tc_prog<'e>(ebpf: &'e mut Ebpf, name: &str) -> anyhow::Result<&'e mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| name.to_owned())
}
