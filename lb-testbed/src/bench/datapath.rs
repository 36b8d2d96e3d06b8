//! Datapath cost per packet through BPF_PROG_TEST_RUN, side by side with
//! anchors measured in the same run, per hook (XDP and TC): a program that
//! only lets the packet pass, and one that parses Ethernet/IPv4/L4 and does
//! one hash lookup (the floor of any map-based load balancer).
//!
//! A repeated run feeds the *same* bytes to the program each time, so the
//! hit cases use an identity backend (the frontend's own address and port):
//! the rewrite then leaves the packet as it was, and every repetition after
//! the first walks exactly the established-flow path, lookups, checksum
//! arithmetic and writes included. New flows need a conntrack miss per
//! packet, so they are measured as single runs over distinct tuples.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::{NodeConfig, BACKEND_F_REMOTE, IPPROTO_TCP, IPPROTO_UDP};

pub mod sweep;

use super::stats::Spread;
use crate::{
    fixture::{be_addr, DatapathFixture},
    packets::{fragments, frame, L4},
};

/// The anchors' object, built alongside the datapath.
static ANCHORS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("LB_EBPF_OUT_DIR"), "/lb-anchors"));

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 4, 2), 40000);

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Repetitions per timed run (>= 1M for the figures).
    pub repeat: u32,
    /// Timed runs per case; the report gives median, min and max.
    pub runs: usize,
    /// Services installed (10 backends each) besides the measured one.
    pub services: u32,
    /// Distinct tuples for the new-flow case.
    pub new_flows: u32,
}

/// One timing of a case, repeated for its spread.
type Measure<'a> = Box<dyn FnMut() -> anyhow::Result<Duration> + 'a>;

/// One measured case: ns per packet.
pub struct Case {
    pub name: &'static str,
    pub ns: Spread,
    /// The anchor case it is read against (by name).
    pub anchor: &'static str,
}

const XDP_PASS: &str = "anchor: XDP_PASS only";
const TC_OK: &str = "anchor: TC_ACT_OK only";
const XDP_PASS_SINGLE: &str = "anchor: XDP_PASS only, single runs";
const TC_OK_SINGLE: &str = "anchor: TC_ACT_OK only, single runs";

/// A program of the fixture timed on a packet.
type TimeFn = fn(&DatapathFixture, &[u8], u32) -> anyhow::Result<Duration>;

/// Runs every case pinned to one CPU and returns the ns/packet figures.
/// The caller's CPU affinity is restored afterwards (anything started later,
/// agent processes included, would inherit the pin).
pub fn run(p: &Params) -> anyhow::Result<Vec<Case>> {
    pinned(|| run_pinned(p))
}

/// The main cases at each of `scales` (see [`sweep`]), pinned as [`run`].
pub fn run_sweep(p: &Params, scales: &[u32]) -> anyhow::Result<Vec<sweep::Scale>> {
    pinned(|| sweep::run(p, scales))
}

/// Runs `f` pinned to CPU 0, then restores the caller's CPU affinity.
fn pinned<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let me = nix::unistd::Pid::from_raw(0);
    let before = nix::sched::sched_getaffinity(me).context("reading the CPU affinity")?;
    pin_to_cpu(0)?;
    let result = f();
    nix::sched::sched_setaffinity(me, &before).context("restoring the CPU affinity")?;
    result
}

fn run_pinned(p: &Params) -> anyhow::Result<Vec<Case>> {
    let mut f = DatapathFixture::new()?;
    // The measured frontend: identity backend (see the module doc).
    f.add_service(VIP, 80, IPPROTO_TCP, &[(VIP, 80)])?;
    install_others(&mut f, p.services)?;
    let anchors = Anchors::load()?;

    let hit = frame(
        L4::TcpAck,
        CLIENT,
        SocketAddrV4::new(VIP, 80),
        &[],
        &[0u8; 64],
    );
    // Creates the flow: later runs of either hook are established hits.
    f.run_pod_tc(&hit)?;
    let reply = frame(
        L4::TcpAck,
        SocketAddrV4::new(VIP, 80),
        CLIENT,
        &[],
        &[0u8; 64],
    );
    let miss = frame(
        L4::TcpAck,
        CLIENT,
        SocketAddrV4::new(Ipv4Addr::new(10, 96, 99, 99), 80),
        &[],
        &[0u8; 64],
    );

    let timed = |mut one: Measure<'_>| -> anyhow::Result<Spread> {
        let samples: anyhow::Result<Vec<f64>> = (0..p.runs)
            .map(|_| Ok(one()?.as_secs_f64() * 1e9))
            .collect();
        Ok(Spread::of(&samples?))
    };
    let case = |name, anchor, ns| Case { name, ns, anchor };
    let mut cases = vec![
        case(
            XDP_PASS,
            XDP_PASS,
            timed(Box::new(|| anchors.time("anchor_xdp_pass", &hit, p.repeat)))?,
        ),
        case(
            "anchor: XDP parse + 1 hash lookup",
            XDP_PASS,
            timed(Box::new(|| {
                anchors.time("anchor_xdp_parse_lookup", &hit, p.repeat)
            }))?,
        ),
        case(
            TC_OK,
            TC_OK,
            timed(Box::new(|| anchors.time("anchor_tc_ok", &hit, p.repeat)))?,
        ),
        case(
            "anchor: TC parse + 1 hash lookup",
            TC_OK,
            timed(Box::new(|| {
                anchors.time("anchor_tc_parse_lookup", &hit, p.repeat)
            }))?,
        ),
        case(
            "TC ingress (pod hook) established-flow hit (DNAT)",
            TC_OK,
            timed(Box::new(|| f.time_pod_tc(&hit, p.repeat)))?,
        ),
        case(
            "TC ingress (pod hook) miss (not a Service)",
            TC_OK,
            timed(Box::new(|| f.time_pod_tc(&miss, p.repeat)))?,
        ),
        case(
            "XDP (--pod-hook xdp) established-flow hit (DNAT)",
            XDP_PASS,
            timed(Box::new(|| f.time_xdp(&hit, p.repeat)))?,
        ),
        case(
            "XDP (--pod-hook xdp) miss (not a Service)",
            XDP_PASS,
            timed(Box::new(|| f.time_xdp(&miss, p.repeat)))?,
        ),
        case(
            "TC egress reply reverse-NAT",
            TC_OK,
            timed(Box::new(|| f.time_tc(&reply, p.repeat)))?,
        ),
        case(
            "TC ingress beside XDP, frame not marked for rejection (every packet)",
            TC_OK,
            timed(Box::new(|| f.time_tc_ingress(&hit, p.repeat)))?,
        ),
    ];
    cases.extend(fragment_cases(&mut f, p, &timed)?);
    cases.extend(nodeport_cases(&mut f, p, &timed)?);
    let mut port = 1024u16;
    let pod_tc: TimeFn = DatapathFixture::time_pod_tc;
    let xdp: TimeFn = DatapathFixture::time_xdp;
    cases.extend([
        case(
            XDP_PASS_SINGLE,
            XDP_PASS_SINGLE,
            timed(Box::new(|| {
                single_ns(&anchors, "anchor_xdp_pass", &hit, p.new_flows)
            }))?,
        ),
        case(
            "XDP new-flow hit, single runs (pick + 2 CT inserts + DNAT)",
            XDP_PASS_SINGLE,
            timed(Box::new(|| {
                new_flow_ns(&mut f, xdp, &mut port, p.new_flows)
            }))?,
        ),
        case(
            TC_OK_SINGLE,
            TC_OK_SINGLE,
            timed(Box::new(|| {
                single_ns(&anchors, "anchor_tc_ok", &hit, p.new_flows)
            }))?,
        ),
        case(
            "TC ingress new-flow hit, single runs (pick + 2 CT inserts + DNAT)",
            TC_OK_SINGLE,
            timed(Box::new(|| {
                new_flow_ns(&mut f, pod_tc, &mut port, p.new_flows)
            }))?,
        ),
    ]);
    Ok(cases)
}

/// Installs `n` other Services x 10 backends (10.97.0.0 + i, port 80).
fn install_others(f: &mut DatapathFixture, n: u32) -> anyhow::Result<()> {
    for i in 0..n {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
        let backends: Vec<_> = (0..10u8)
            .map(|b| (Ipv4Addr::new(10, 245, (i % 250) as u8, b + 1), 8080))
            .collect();
        f.add_service(vip, 80, IPPROTO_TCP, &backends)?;
    }
    Ok(())
}

/// Mean time of `flows` single runs of `time`, each a SYN of a new tuple to
/// the measured frontend (source ports go on from `port`).
fn new_flow_ns(
    f: &mut DatapathFixture,
    time: TimeFn,
    port: &mut u16,
    flows: u32,
) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for _ in 0..flows {
        *port = port.wrapping_add(1).max(1024);
        let src = SocketAddrV4::new(
            Ipv4Addr::new(10, 244, (*port >> 8) as u8, *port as u8),
            *port,
        );
        total += time(
            f,
            &frame(L4::TcpSyn, src, SocketAddrV4::new(VIP, 80), &[], &[]),
            1,
        )?;
    }
    Ok(total / flows)
}

/// Single runs carry the syscall's fixed timing overhead: an anchor timed
/// the same way, so that the new-flow rows can be read against it.
fn single_ns(
    anchors: &Anchors,
    anchor: &str,
    packet: &[u8],
    runs: u32,
) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for _ in 0..runs {
        total += anchors.time(anchor, packet, 1)?;
    }
    Ok(total / runs)
}

/// A later fragment (no L4 header) of a UDP datagram whose first fragment
/// was DNATed: fragment map lookup, then the established-flow path with a
/// rewrite of the IP header only (identity backend, as above). And one of a
/// datagram never seen: a fragment map miss, passed.
fn fragment_cases(
    f: &mut DatapathFixture,
    p: &Params,
    timed: &dyn Fn(Measure<'_>) -> anyhow::Result<Spread>,
) -> anyhow::Result<Vec<Case>> {
    let dns = SocketAddrV4::new(VIP, 53);
    f.add_service(VIP, 53, IPPROTO_UDP, &[(VIP, 53)])?;
    let datagram = |id| fragments(L4::Udp, CLIENT, dns, id, &[0u8; 1500], 1480);
    let tracked = datagram(1);
    f.run_pod_tc(&tracked[0])?; // balances the flow, records the datagram
    let untracked = datagram(2);
    Ok(vec![
        Case {
            name:
                "TC ingress later fragment of a tracked datagram (frag map + DNAT of the IP header)",
            ns: timed(Box::new(|| f.time_pod_tc(&tracked[1], p.repeat)))?,
            anchor: TC_OK,
        },
        Case {
            name: "TC ingress later fragment of an unknown datagram (frag map miss, pass)",
            ns: timed(Box::new(|| f.time_pod_tc(&untracked[1], p.repeat)))?,
            anchor: TC_OK,
        },
    ])
}

/// The uplink path: NodePort established flows to a local and a remote
/// backend (the remote one SNATed at the uplink's TC egress), and the
/// un-SNAT of the remote backend's reply.
///
/// BPF_PROG_TEST_RUN repeats a program on one buffer, so a rewrite would
/// change the input of the next repetition: as for the ClusterIP cases,
/// every rewrite here is an identity (backend = the NodePort address
/// itself, SNAT source = the client itself), which costs the same lookups
/// and checksum updates as a real one.
fn nodeport_cases(
    f: &mut DatapathFixture,
    p: &Params,
    timed: &dyn Fn(Measure<'_>) -> anyhow::Result<Spread>,
) -> anyhow::Result<Vec<Case>> {
    let node = Ipv4Addr::new(192, 168, 50, 10);
    let external = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 100), 50000);
    let local = SocketAddrV4::new(node, 30080);
    let remote = SocketAddrV4::new(node, 30081);
    f.add_node_address(node)?;
    f.set_config(NodeConfig {
        snat_addr_be: be_addr(*external.ip()),
        snat_port_first: external.port(),
        snat_port_last: external.port(),
    })?;
    f.add_frontend(
        Ipv4Addr::UNSPECIFIED,
        local.port(),
        IPPROTO_TCP,
        &[(*local.ip(), local.port(), 0)],
        0,
    )?;
    f.add_frontend(
        Ipv4Addr::UNSPECIFIED,
        remote.port(),
        IPPROTO_TCP,
        &[(*remote.ip(), remote.port(), BACKEND_F_REMOTE)],
        0,
    )?;
    let payload = [0u8; 64];
    let local_hit = frame(L4::TcpAck, external, local, &[], &payload);
    let remote_hit = frame(L4::TcpAck, external, remote, &[], &payload);
    f.run_xdp_node(&frame(L4::TcpSyn, external, local, &[], &[]))?;
    f.run_xdp_node(&frame(L4::TcpSyn, external, remote, &[], &[]))?;
    // Leaving for the remote backend; its reply, addressed to the SNAT
    // source (the client itself here).
    let leaving = frame(L4::TcpAck, external, remote, &[], &payload);
    let reply = frame(L4::TcpAck, remote, external, &[], &payload);
    Ok(vec![
        Case {
            name: "XDP uplink NodePort established, local backend (DNAT)",
            ns: timed(Box::new(|| f.time_xdp_node(&local_hit, p.repeat)))?,
            anchor: XDP_PASS,
        },
        Case {
            name: "XDP uplink NodePort established, remote backend (DNAT)",
            ns: timed(Box::new(|| f.time_xdp_node(&remote_hit, p.repeat)))?,
            anchor: XDP_PASS,
        },
        Case {
            name: "TC uplink egress SNAT to the node (remote backend)",
            ns: timed(Box::new(|| f.time_tc_node(&leaving, p.repeat)))?,
            anchor: TC_OK,
        },
        Case {
            name: "XDP uplink un-SNAT of the remote backend's reply",
            ns: timed(Box::new(|| f.time_xdp_node(&reply, p.repeat)))?,
            anchor: XDP_PASS,
        },
    ])
}

/// A markdown table of the cases, each also as a ratio to its hook's
/// pass-only anchor.
pub fn report(p: &Params, cases: &[Case]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Per-packet cost, BPF_PROG_TEST_RUN, {} repetitions x {} runs, pinned to CPU 0, {} other Services x 10 backends installed. \
         ns/packet as median (min–max); ratio = median / the median of the anchor named (the same hook's program that only \
         lets the packet pass; single-run rows against the same anchor timed in single runs). The pod hook is TC ingress \
         (the default); the XDP rows are `--pod-hook xdp`.\n",
        p.repeat, p.runs, p.services
    );
    let _ = writeln!(
        out,
        "| case | ns/packet | ratio | anchor |\n|---|---|---|---|"
    );
    for c in cases {
        let base = cases
            .iter()
            .find(|a| a.name == c.anchor)
            .map_or(f64::NAN, |a| a.ns.median);
        let _ = writeln!(
            out,
            "| {} | {} | {:.2}x | {} |",
            c.name,
            c.ns,
            c.ns.median / base,
            c.anchor
        );
    }
    out
}

struct Anchors(Ebpf);

impl Anchors {
    fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(ANCHORS).context("loading the anchor programs")?;
        for name in ["anchor_xdp_pass", "anchor_xdp_parse_lookup"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("{name} missing"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        for name in ["anchor_tc_ok", "anchor_tc_parse_lookup"] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("{name} missing"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        Ok(Self(ebpf))
    }

    fn time(&self, name: &str, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        let prog = self
            .0
            .program(name)
            .ok_or_else(|| anyhow!("{name} missing"))?;
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        };
        let res = match name.starts_with("anchor_tc") {
            true => <&SchedClassifier>::try_from(prog)?.test_run(opts)?,
            false => <&Xdp>::try_from(prog)?.test_run(opts)?,
        };
        Ok(res.duration)
    }
}

/// BPF_PROG_TEST_RUN runs on the calling CPU: keep it on one.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("pinning to one CPU")?;
    Ok(())
}
