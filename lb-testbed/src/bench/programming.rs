//! Programming cost: the time from one endpoint change to the dataplane
//! being updated, at N Services x 10 endpoints. For kube-proxy's layouts
//! we time the kernel-facing step only, as its proxiers issue it: in
//! iptables mode a full-sync `iptables-restore --noflush` of both tables
//! (every chain rewritten, the stale endpoint chain deleted); in nftables
//! mode the incremental `nft -f` transaction of a partial sync (new endpoint
//! chain, the Service chain rewritten, the stale chain deleted). kube-proxy
//! itself adds its informer delay, its Go-side rule generation and its
//! minimum sync period (1 s by default) on top, so these are lower bounds.
//! Ours comes from the control-plane benchmark ([`super::sync`]): API write
//! to the address being in the pinned maps, end to end.
//!
//! Each scale gets a namespace of its own with only loopback; the initial
//! loads are timed too.

use std::fs;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rand::Rng as _;

use super::anchors::iptables::{self, Backend};
use super::anchors::nftables;
use super::frontends::{synthetic, Cluster};
use super::nscmd::{timed, Timed};
use crate::{netns::NetNs, scratch::ScratchDir, unique_tag};

mod report;

pub use self::report::{plots, report};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Params {
    /// Numbers of Services (10 endpoints each), one namespace each.
    pub scales: Vec<usize>,
    /// Endpoint changes timed per scale and layout.
    pub changes: usize,
    /// A load or change still running after this is killed and reported
    /// as such; later steps of that layout at that scale are skipped.
    pub deadline: Duration,
}

/// A kube-proxy rule layout whose loads are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Iptables(Backend),
    Nftables,
}

impl Kind {
    /// In the traffic benchmark's colour order: iptables-legacy (which it
    /// uses), nftables, then iptables-nft.
    pub const ALL: [Kind; 3] = [
        Kind::Iptables(Backend::Legacy),
        Kind::Nftables,
        Kind::Iptables(Backend::Nft),
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Iptables(Backend::Nft) => "iptables-nft-restore (full sync)",
            Kind::Iptables(Backend::Legacy) => "iptables-legacy-restore (full sync)",
            Kind::Nftables => "nft -f (incremental)",
        }
    }
}

/// One layout's figures at one scale.
#[derive(Clone, Debug)]
pub struct Layout {
    pub kind: Kind,
    pub initial: Timed,
    /// Completed changes, in ms.
    pub change_ms: Vec<f64>,
    /// A change that ran into the deadline.
    pub change_timed_out: Option<Duration>,
}

impl Layout {
    /// Whether a change can be timed: the rules loaded and no change was
    /// killed yet.
    fn live(&self) -> bool {
        self.change_timed_out.is_none() && matches!(self.initial, Timed::Done(_))
    }
}

pub struct ScaleResult {
    pub services: usize,
    /// In [`Kind::ALL`] order.
    pub layouts: Vec<Layout>,
}

pub struct ProgrammingResult {
    pub params: Params,
    pub scales: Vec<ScaleResult>,
}

pub fn run(p: &Params) -> Result<ProgrammingResult> {
    let mut scales = Vec::new();
    for &n in &p.scales {
        println!("  {n} Services x 10 endpoints…");
        scales.push(measure_scale(p, n).with_context(|| format!("at {n} Services"))?);
    }
    Ok(ProgrammingResult {
        params: p.clone(),
        scales,
    })
}

fn measure_scale(p: &Params, n: usize) -> Result<ScaleResult> {
    let ns = NetNs::create(unique_tag())?;
    ns.ip(["link", "set", "lo", "up"])?;
    let scratch = ScratchDir::new()?;
    let file = scratch.path().join("rules");
    let mut cluster = Cluster {
        cluster_cidr: "10.128.0.0/10".parse().expect("a valid CIDR"),
        node_ips: Vec::new(),
        frontends: synthetic(n).collect(),
    };
    // Writes `text` and loads it the way `kind` does.
    let load = |kind: Kind, text: String| -> Result<Timed> {
        fs::write(&file, text)?;
        match kind {
            Kind::Iptables(b) => timed(&ns, b.restore(), &["-w", "--noflush"], &file, p.deadline),
            Kind::Nftables => timed(&ns, "nft", &["-f"], &file, p.deadline),
        }
    };
    let mut layouts = Vec::new();
    for kind in Kind::ALL {
        let text = match kind {
            Kind::Iptables(_) => iptables::restore_input(&cluster, &[]),
            Kind::Nftables => nftables::ruleset(&cluster),
        };
        let initial = load(kind, text)?;
        report_step(kind, "initial load", initial);
        layouts.push(Layout {
            kind,
            initial,
            change_ms: Vec::new(),
            change_timed_out: None,
        });
    }

    let mut rng = rand::rng();
    for c in 0..p.changes {
        let (i, j) = (rng.random_range(0..n), rng.random_range(0..10));
        let fresh = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + c as u32);
        let stale = iptables::sep_chain(&cluster.frontends[i], cluster.frontends[i].endpoints[j]);
        let old = std::mem::replace(&mut cluster.frontends[i].endpoints[j], fresh);
        for layout in layouts.iter_mut().filter(|l| l.live()) {
            let text = match layout.kind {
                Kind::Iptables(_) => {
                    iptables::restore_input(&cluster, std::slice::from_ref(&stale))
                }
                Kind::Nftables => nftables::endpoint_change(&cluster, &cluster.frontends[i], old),
            };
            match load(layout.kind, text)? {
                Timed::Done(t) => layout.change_ms.push(t.as_secs_f64() * 1e3),
                Timed::TimedOut(t) => {
                    report_step(layout.kind, "change", Timed::TimedOut(t));
                    layout.change_timed_out = Some(t);
                }
            }
        }
    }
    Ok(ScaleResult {
        services: n,
        layouts,
    })
}

fn report_step(kind: Kind, what: &str, t: Timed) {
    match t {
        Timed::Done(t) => println!("    {}, {what}: {:.2} s", kind.label(), t.as_secs_f64()),
        Timed::TimedOut(t) => println!(
            "    {}, {what}: killed after {:.0} s",
            kind.label(),
            t.as_secs_f64()
        ),
    }
}
