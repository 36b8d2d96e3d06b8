//! Attaching the programs to pod interfaces (TC ingress: DNAT, TC egress:
//! reverse NAT; or XDP on `--pod-hook xdp`) and uplinks (XDP, TC egress,
//! TC ingress for rejections), detaching them from interfaces that went
//! away, and adopting what a previous agent left attached (see
//! `link_pins`).
//!
//! TC programs attach as tcx links (kernel >= 6.6) or, on older kernels
//! (or `--tc-attach netlink`), as cls_bpf filters in direct-action mode
//! under a clsact qdisc, at a fixed priority and handle (see
//! [`TC_NL_PRIORITY`]): netlink filters cannot be pinned, so a pinned copy
//! of the program marks the interface as ours, and a restarted agent
//! replaces the filter's program in place by priority and handle.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use aya::{
    programs::{
        links::{FdLink, Link as _, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf,
};
use lb_common::{
    PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_TC_NODE_EGRESS, PROG_TC_POD_INGRESS, PROG_XDP_INGRESS,
    PROG_XDP_NODE,
};
use tracing::{info, warn};

use lb_core::pins::{self as link_pins, InterfacePins, TcDir, NODE_LINKS, POD_LINKS};

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

/// Where the pod-side forward path (DNAT) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PodHook {
    /// TC ingress of the node-side veth (as Cilium does): pods keep their
    /// segmentation offloads.
    Tc,
    /// XDP on the node-side veth: the kernel turns TSO off on the pod's
    /// eth0 while it is attached, which costs every pod most of its TCP
    /// throughput.
    Xdp,
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttachArg {
    /// tcx links where the kernel has them (>= 6.6), netlink otherwise.
    Auto,
    /// tcx links (kernel >= 6.6).
    Tcx,
    /// cls_bpf filters under a clsact qdisc, through netlink (any kernel).
    Netlink,
}

/// How a TC program is attached to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    Tcx,
    Netlink,
}

impl TcAttachArg {
    /// The mode `Auto` stands for on this kernel.
    pub fn resolve(self) -> TcMode {
        match self {
            TcAttachArg::Tcx => TcMode::Tcx,
            TcAttachArg::Netlink => TcMode::Netlink,
            TcAttachArg::Auto => match KernelVersion::current() {
                Ok(v) if v >= KernelVersion::new(6, 6, 0) => TcMode::Tcx,
                _ => TcMode::Netlink,
            },
        }
    }
}

/// Priority of our netlink TC filters: first among the filters of the
/// hook (a lower number runs earlier).
pub const TC_NL_PRIORITY: u16 = 1;
/// Handle of our netlink TC filters ("LB"), with [`TC_NL_PRIORITY`] what a
/// restarted agent and `--cleanup` find them by.
pub const TC_NL_HANDLE: u16 = 0x4c42;

/// Which interfaces an [`Attacher`] serves, and with which programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// For logs: "pod" or "node".
    pub name: &'static str,
    /// The XDP program, if the role has one.
    pub xdp: Option<&'static str>,
    pub tc_ingress: &'static str,
    pub tc_egress: &'static str,
    /// Directory of the links' pins, under the pin directory.
    pub links_subdir: &'static str,
}

/// The node side of pod veths: ClusterIP DNAT at TC ingress and its
/// reverse NAT at TC egress (the default, `--pod-hook tc`).
pub const POD_INTERFACES: Role = Role {
    name: "pod",
    xdp: None,
    tc_ingress: PROG_TC_POD_INGRESS,
    tc_egress: PROG_TC_EGRESS,
    links_subdir: POD_LINKS,
};

/// The same with the DNAT at XDP (`--pod-hook xdp`); TC ingress sends the
/// rejections XDP wrote back out.
pub const POD_INTERFACES_XDP: Role = Role {
    name: "pod",
    xdp: Some(PROG_XDP_INGRESS),
    tc_ingress: PROG_TC_INGRESS,
    tc_egress: PROG_TC_EGRESS,
    links_subdir: POD_LINKS,
};

/// The node's uplinks: NodePort / external IPs, SNAT for remote backends.
pub const NODE_INTERFACES: Role = Role {
    name: "node",
    xdp: Some(PROG_XDP_NODE),
    tc_ingress: PROG_TC_INGRESS,
    tc_egress: PROG_TC_NODE_EGRESS,
    links_subdir: NODE_LINKS,
};

impl PodHook {
    pub fn role(self) -> Role {
        match self {
            PodHook::Tc => POD_INTERFACES,
            PodHook::Xdp => POD_INTERFACES_XDP,
        }
    }
}

/// What is attached to one interface.
struct Attached {
    pins: InterfacePins,
    /// "native" or "generic"; None without XDP.
    xdp_mode: Option<String>,
    tc_mode: TcMode,
    // Our fds on the pinned links. The pins keep the links alive without
    // them; holding them makes "detach" a matter of removing the pins.
    _links: Vec<FdLink>,
}

/// Owns the loaded programs and the attachments per interface name.
pub struct Attacher {
    role: Role,
    xdp_mode: XdpModeArg,
    tc_mode: TcMode,
    links_dir: PathBuf,
    attached: BTreeMap<String, Attached>,
    /// Pins left by a previous agent, not yet adopted (or dropped).
    inherited: Vec<InterfacePins>,
}

impl Attacher {
    /// Loads (verifies) the role's programs into the kernel. What a
    /// previous agent left pinned under `pin_dir` is adopted by
    /// [`Attacher::sync`].
    pub fn new(
        ebpf: &mut Ebpf,
        role: Role,
        xdp_mode: XdpModeArg,
        tc: TcAttachArg,
        pin_dir: &Path,
    ) -> anyhow::Result<Self> {
        if let Some(name) = role.xdp {
            xdp_prog(ebpf, name)?
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        for name in [role.tc_ingress, role.tc_egress] {
            // lb_tc_ingress serves two roles: loaded once.
            let prog = tc_prog(ebpf, name)?;
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("verifying {name}"))?;
            }
        }
        let links_dir = pin_dir.join(role.links_subdir);
        super::private_dir::create(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        Ok(Self {
            role,
            xdp_mode,
            tc_mode: tc.resolve(),
            inherited: link_pins::scan(&links_dir),
            links_dir,
            attached: BTreeMap::new(),
        })
    }

    /// Brings the attachments in line with `present` (name -> ifindex):
    /// adopts what a previous agent left for present interfaces, attaches
    /// to new interfaces, and detaches from vanished or renumbered ones. One
    /// failing interface does not stop the others.
    pub fn sync(&mut self, ebpf: &mut Ebpf, present: &BTreeMap<String, u32>) {
        for pins in std::mem::take(&mut self.inherited) {
            if present.get(&pins.ifname) != Some(&pins.ifindex) {
                remove_pins(&pins, "interface gone or no longer matching");
                continue;
            }
            match adopt(ebpf, self.role, self.xdp_mode, &pins) {
                Ok(a) => {
                    info!(interface = %pins.ifname, xdp_mode = ?a.xdp_mode, tc = ?a.tc_mode, "adopted the attached programs (replaced in place)");
                    self.attached.insert(pins.ifname.clone(), a);
                }
                Err(e) => {
                    warn!(interface = %pins.ifname, "cannot adopt what is attached, attaching anew: {e:#}");
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
            // The kernel already detached the programs of a deleted
            // interface; removing the pins releases them.
            remove_pins(&a.pins, "interface gone");
        }

        for (name, ifindex) in present {
            if self.attached.contains_key(name) {
                continue;
            }
            let pins = InterfacePins::new(&self.links_dir, *ifindex, name);
            match self.attach_one(ebpf, &pins) {
                Ok(a) => {
                    info!(role = self.role.name, interface = %name, xdp_mode = ?a.xdp_mode, tc = ?a.tc_mode, "attached");
                    self.attached.insert(name.clone(), a);
                }
                Err(e) => {
                    warn!(interface = %name, "attach failed: {e:#}");
                    remove_pins(&pins, "attach failed");
                }
            }
        }
    }

    /// Forgets the interfaces whose links were detached behind our back
    /// (`bpftool link detach`), so that the next [`Attacher::sync`]
    /// attaches them anew like new interfaces. A few syscalls per link:
    /// called on the monitor tick, not on every sync. Returns how many.
    /// Netlink filters are not checked (they have no link to read).
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

    /// Detaches everything: removes the pins (and netlink filters), then
    /// the fds.
    pub fn detach_all(&mut self) {
        for (_, a) in std::mem::take(&mut self.attached) {
            remove_pins(&a.pins, "detaching");
        }
        let _ = fs::remove_dir(&self.links_dir);
    }

    fn attach_one(&self, ebpf: &mut Ebpf, pins: &InterfacePins) -> anyhow::Result<Attached> {
        // Until pinned, dropping a link detaches it: failures below undo.
        let xdp = match self.role.xdp {
            Some(name) => Some(attach_xdp(ebpf, name, self.xdp_mode, pins.ifindex)?),
            None => None,
        };
        if self.tc_mode == TcMode::Netlink {
            // Adding it is harmless when it already exists.
            let _ = tc::qdisc_add_clsact(&pins.ifname);
        }
        let ingress = attach_tc(
            ebpf,
            self.tc_mode,
            self.role.tc_ingress,
            pins,
            TcDir::Ingress,
        )?;
        let egress = attach_tc(ebpf, self.tc_mode, self.role.tc_egress, pins, TcDir::Egress)?;
        super::private_dir::create(&pins.dir)
            .with_context(|| format!("creating {}", pins.dir.display()))?;
        let mut links = Vec::new();
        let xdp_mode = match xdp {
            Some((link, mode)) => {
                links.push(pin(link, &pins.xdp(mode))?);
                Some(mode.to_string())
            }
            None => None,
        };
        for (link, dir, name) in [
            (ingress, TcDir::Ingress, self.role.tc_ingress),
            (egress, TcDir::Egress, self.role.tc_egress),
        ] {
            links.extend(link.keep(ebpf, pins, dir, name)?);
        }
        Ok(Attached {
            pins: pins.clone(),
            xdp_mode,
            tc_mode: self.tc_mode,
            _links: links,
        })
    }
}

impl Attached {
    /// Whether any of its links lost its interface (see
    /// `link_pins::is_severed`); a link that cannot be read counts too.
    fn severed(&self) -> bool {
        let mut pins: Vec<PathBuf> = self.xdp_mode.iter().map(|m| self.pins.xdp(m)).collect();
        if self.tc_mode == TcMode::Tcx {
            pins.extend([self.pins.tc(), self.pins.tc_ingress()]);
        }
        pins.iter()
            .any(|pin| link_pins::is_severed(pin).unwrap_or(true))
    }
}

/// A TC attachment not yet made to outlive us.
enum TcLink {
    Tcx(FdLink),
    Netlink(SchedClassifierLink),
}

impl TcLink {
    /// Makes the attachment outlive the agent: a tcx link is pinned (its fd
    /// returned); a netlink filter stays in the kernel by itself, and a
    /// pinned copy of its program marks it as ours.
    fn keep(
        self,
        ebpf: &mut Ebpf,
        pins: &InterfacePins,
        dir: TcDir,
        name: &str,
    ) -> anyhow::Result<Option<FdLink>> {
        match self {
            TcLink::Tcx(link) => Ok(Some(pin(link, &pins.tc_dir(dir))?)),
            TcLink::Netlink(link) => {
                let marker = pins.tc_netlink(dir);
                let _ = fs::remove_file(&marker);
                let fd = tc_prog(ebpf, name)?.fd()?.try_clone()?;
                link_pins::pin_fd(std::os::fd::AsFd::as_fd(&fd), &marker)
                    .with_context(|| format!("pinning {}", marker.display()))?;
                // Dropping the link would detach the filter.
                std::mem::forget(link);
                Ok(None)
            }
        }
    }
}

/// Takes over what a previous agent attached to one interface, swapping
/// the programs loaded by this agent in (atomically: a `BPF_LINK_UPDATE`,
/// or a netlink filter replaced at its priority and handle; no packet goes
/// unprocessed, and the maps are the same pinned ones). TC keeps the
/// attach mode it was found in. Switching the pod hook (TC <-> XDP) is
/// hitless too: the new TC ingress program goes in before the XDP program
/// goes away, and a packet both see is DNATed once (the second sees a
/// backend, no frontend).
fn adopt(
    ebpf: &mut Ebpf,
    role: Role,
    xdp_mode: XdpModeArg,
    pins: &InterfacePins,
) -> anyhow::Result<Attached> {
    let open = |path: &Path| -> anyhow::Result<FdLink> {
        Ok(PinnedLink::from_pin(path)
            .with_context(|| format!("opening {}", path.display()))?
            .into())
    };
    let mut links = Vec::new();
    let pinned_xdp = pins.pinned_xdp();
    let xdp_mode = match (role.xdp, &pinned_xdp) {
        (Some(name), Some((path, mode))) => {
            let xdp = xdp_prog(ebpf, name)?;
            let link = XdpLink::try_from(open(path)?).context("not an XDP link")?;
            let id = xdp
                .attach_to_link(link)
                .context("replacing the XDP program")?;
            links.push(FdLink::try_from(xdp.take_link(id)?)?);
            Some(mode.clone())
        }
        (Some(name), None) => {
            let (link, mode) = attach_xdp(ebpf, name, xdp_mode, pins.ifindex)?;
            links.push(pin(link, &pins.xdp(mode))?);
            Some(mode.to_string())
        }
        (None, _) => None,
    };
    let tc_mode = if pins.tc_netlink(TcDir::Egress).exists() {
        TcMode::Netlink
    } else {
        TcMode::Tcx
    };
    for (dir, name) in [
        (TcDir::Ingress, role.tc_ingress),
        (TcDir::Egress, role.tc_egress),
    ] {
        match tc_mode {
            TcMode::Tcx if pins.tc_dir(dir).exists() => {
                let tc = tc_prog(ebpf, name)?;
                let link = SchedClassifierLink::try_from(open(&pins.tc_dir(dir))?)
                    .context("not a tcx link")?;
                let id = tc
                    .attach_to_link(link)
                    .with_context(|| format!("replacing {name}"))?;
                links.push(FdLink::try_from(tc.take_link(id)?)?);
            }
            // An agent from before the TC ingress program left no such pin:
            // attach it now (nothing to replace).
            TcMode::Tcx => {
                let link = attach_tc(ebpf, TcMode::Tcx, name, pins, dir)?;
                links.extend(link.keep(ebpf, pins, dir, name)?);
            }
            TcMode::Netlink => {
                let link = replace_netlink(ebpf, name, pins, dir)
                    .with_context(|| format!("replacing {name}"))?;
                link.keep(ebpf, pins, dir, name)?;
            }
        }
    }
    // The pod hook moved from XDP to TC: XDP goes last.
    if let (None, Some((path, _))) = (role.xdp, pinned_xdp) {
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        info!(interface = %pins.ifname, "XDP detached: the pod hook is TC now");
    }
    Ok(Attached {
        pins: pins.clone(),
        xdp_mode,
        tc_mode,
        _links: links,
    })
}

/// Attaches XDP program `name` in `mode`; returns the link (detached when
/// dropped, until pinned) and the mode it got.
fn attach_xdp(
    ebpf: &mut Ebpf,
    name: &str,
    mode: XdpModeArg,
    ifindex: u32,
) -> anyhow::Result<(FdLink, &'static str)> {
    let xdp = xdp_prog(ebpf, name)?;
    let (id, mode) = match mode {
        XdpModeArg::Native => (xdp.attach_to_if_index(ifindex, XdpMode::Driver)?, "native"),
        XdpModeArg::Generic => (xdp.attach_to_if_index(ifindex, XdpMode::Skb)?, "generic"),
        XdpModeArg::Auto => match xdp.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(l) => (l, "native"),
            Err(_) => (xdp.attach_to_if_index(ifindex, XdpMode::Skb)?, "generic"),
        },
    };
    let link = FdLink::try_from(xdp.take_link(id)?).context("XDP link is not an fd link")?;
    Ok((link, mode))
}

/// Attaches TC program `name` to the interface; detached when dropped
/// until [`TcLink::keep`]. A netlink filter of ours that a lost pin left
/// behind is replaced.
fn attach_tc(
    ebpf: &mut Ebpf,
    mode: TcMode,
    name: &str,
    pins: &InterfacePins,
    dir: TcDir,
) -> anyhow::Result<TcLink> {
    let at = attach_type(dir);
    let tc = tc_prog(ebpf, name)?;
    match mode {
        TcMode::Tcx => {
            let id = tc
                .attach_with_options(
                    &pins.ifname,
                    at,
                    TcAttachOptions::TcxOrder(Default::default()),
                )
                .with_context(|| format!("attaching {name} ({at:?}) as a tcx link"))?;
            Ok(TcLink::Tcx(FdLink::try_from(tc.take_link(id)?)?))
        }
        TcMode::Netlink => {
            let options = NlOptions {
                priority: TC_NL_PRIORITY,
                handle: TcHandle::new(0, TC_NL_HANDLE),
                classid: None,
            };
            match tc.attach_with_options(&pins.ifname, at, TcAttachOptions::Netlink(options)) {
                Ok(id) => Ok(TcLink::Netlink(tc.take_link(id)?)),
                Err(e) => replace_netlink(ebpf, name, pins, dir).map_err(|_| {
                    anyhow::Error::new(e)
                        .context(format!("attaching {name} ({at:?}) through netlink"))
                }),
            }
        }
    }
}

/// Swaps program `name` into our netlink filter (priority and handle) on
/// the interface, in place.
fn replace_netlink(
    ebpf: &mut Ebpf,
    name: &str,
    pins: &InterfacePins,
    dir: TcDir,
) -> anyhow::Result<TcLink> {
    let ours = our_filter(pins, dir)?;
    let tc = tc_prog(ebpf, name)?;
    let id = tc.attach_to_link(ours)?;
    Ok(TcLink::Netlink(tc.take_link(id)?))
}

/// Our netlink filter on the pins' interface, for a replace or a detach.
/// Careful: dropping it detaches the filter.
fn our_filter(pins: &InterfacePins, dir: TcDir) -> anyhow::Result<SchedClassifierLink> {
    let current = nix::net::if_::if_nametoindex(pins.ifname.as_str())
        .with_context(|| format!("interface {}", pins.ifname))?;
    if current != pins.ifindex {
        anyhow::bail!("{} is another interface now", pins.ifname);
    }
    Ok(SchedClassifierLink::attached(
        &pins.ifname,
        attach_type(dir),
        TC_NL_PRIORITY,
        TcHandle::new(0, TC_NL_HANDLE),
        None,
    )?)
}

fn attach_type(dir: TcDir) -> TcAttachType {
    match dir {
        TcDir::Ingress => TcAttachType::Ingress,
        TcDir::Egress => TcAttachType::Egress,
    }
}

fn pin(link: FdLink, path: &Path) -> anyhow::Result<FdLink> {
    Ok(link
        .pin(path)
        .with_context(|| format!("pinning {}", path.display()))?
        .into())
}

/// Detaches what is pinned for one interface: netlink filters marked as
/// ours explicitly (while the interface is still the one pinned), links
/// by removing their pins.
pub fn remove_pins(pins: &InterfacePins, why: &str) {
    for dir in [TcDir::Ingress, TcDir::Egress] {
        if pins.tc_netlink(dir).exists() {
            if let Ok(filter) = our_filter(pins, dir) {
                if let Err(e) = filter.detach() {
                    warn!(interface = %pins.ifname, "detaching our {dir:?} filter: {e}");
                }
            }
        }
    }
    match pins.remove() {
        Ok(()) => info!(interface = %pins.ifname, ifindex = pins.ifindex, "{why}: detached"),
        Err(e) => warn!(interface = %pins.ifname, "removing {}: {e}", pins.dir.display()),
    }
}

/// Detaches everything pinned under `links_dir` (`--cleanup`).
pub fn detach_pinned(links_dir: &Path) -> std::io::Result<()> {
    for pins in link_pins::scan(links_dir) {
        remove_pins(&pins, "cleanup");
    }
    match fs::remove_dir_all(links_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn xdp_prog<'e>(ebpf: &'e mut Ebpf, name: &str) -> anyhow::Result<&'e mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| name.to_owned())
}

fn tc_prog<'e>(ebpf: &'e mut Ebpf, name: &str) -> anyhow::Result<&'e mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| name.to_owned())
}
