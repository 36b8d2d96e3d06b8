//! Differential fuzzing of the datapath through BPF_PROG_TEST_RUN (issue
//! 9): seeded random and mutated frames (see `gen`) through the four
//! packet programs, against maps holding every kind of frontend (see
//! `scene`) and the flows the fuzzing opens itself. Each result is held to
//! properties read off the frames independently (see `oracle`):
//!
//! * a frame that addresses no frontend, NodePort or SNAT port, and is no
//!   packet of a flow the datapath balanced, leaves byte for byte
//!   unchanged and is passed (a reply lookalike from a backend included);
//! * a rewritten frame differs from its input only in addresses, ports
//!   and checksums, and its checksums are right if the input's were;
//! * a refusal is a RST|ACK or ICMP port unreachable back to the sender,
//!   with right checksums;
//! * every drop is counted under a drop reason, and every run under one
//!   reason (besides the event counters).

mod gen;
mod oracle;
mod scene;

use std::fmt;
use std::time::{Duration, Instant};

use lb_common::stats;
use rand::{rngs::StdRng, SeedableRng};

use oracle::{checksums_kept, foreign_changes, is_refusal, IpView, Tracked};
use scene::Scene;

use crate::fixture::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_TX};
/// Ethernet and an IPv6 header, the longest minimal L3 header the skb
/// test runner insists on (IPv4: 20 bytes).
const SKB_MIN_L3: usize = 14 + 40;

/// The program a frame is run through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `lb_tc_pod_ingress`: from a pod (the default pod hook).
    TcPodIngress,
    /// `lb_xdp_ingress`: from a pod (`--pod-hook xdp`).
    XdpPod,
    /// `lb_xdp_node`: from outside the node.
    XdpNode,
    /// `lb_tc_egress`: to a pod.
    TcPod,
    /// `lb_tc_node_egress`: out of the node.
    TcNode,
}

impl Program {
    const ALL: [Program; 5] = [
        Program::TcPodIngress,
        Program::XdpPod,
        Program::XdpNode,
        Program::TcPod,
        Program::TcNode,
    ];

    fn is_xdp(self) -> bool {
        matches!(self, Program::XdpPod | Program::XdpNode)
    }

    /// A program of the forward path (DNAT, refusals), as opposed to
    /// the reverse NAT at TC egress.
    pub fn is_forward(self) -> bool {
        matches!(
            self,
            Program::TcPodIngress | Program::XdpPod | Program::XdpNode
        )
    }

    fn name(self) -> &'static str {
        match self {
            Program::TcPodIngress => "lb_tc_pod_ingress",
            Program::XdpPod => "lb_xdp_ingress",
            Program::XdpNode => "lb_xdp_node",
            Program::TcPod => "lb_tc_egress",
            Program::TcNode => "lb_tc_node_egress",
        }
    }
}

/// What happened to the frames one program got.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub frames: u64,
    pub unchanged: u64,
    pub rewritten: u64,
    pub refused: u64,
    pub dropped: u64,
}

/// A frame that broke a property.
#[derive(Debug)]
pub struct Violation {
    pub program: Program,
    pub what: String,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
}

#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub tallies: [Tally; 5],
    /// Drops seen in verdicts, and counted under drop reasons.
    pub drops_seen: u64,
    pub drops_counted: u64,
    /// Runs, and verdict reasons counted.
    pub runs: u64,
    /// Cut frames the skb test runner refuses (see [`SKB_MIN_L3`]).
    pub refused_by_runner: u64,
    pub reasons_counted: u64,
    /// The first violations ([`KEPT_VIOLATIONS`]), and how many there were.
    pub violations: Vec<Violation>,
    pub violations_total: u64,
    pub elapsed: Duration,
}

impl Report {
    /// Every property held.
    pub fn clean(&self) -> bool {
        self.violations_total == 0
            && self.drops_seen == self.drops_counted
            && self.runs == self.reasons_counted
    }
}

/// Keeps the first violations in full; counts them all.
const KEPT_VIOLATIONS: usize = 20;

/// Runs `frames` fuzzed frames from `seed`.
pub fn run(frames: u64, seed: u64) -> anyhow::Result<Report> {
    let scene = Scene::new()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut flows: Vec<gen::Flow> = Vec::new();
    let mut tracked = Tracked::default();
    let mut tallies = [Tally::default(); 5];
    let mut violations = Vec::new();
    let mut drops_seen = 0;
    let mut violations_total = 0;
    let mut refused_by_runner = 0;
    let before = scene.fixture.stats()?;
    let start = Instant::now();
    for _ in 0..frames {
        let (program, input) = gen::case(&mut rng, &scene, &flows);
        let ran = match program {
            Program::TcPodIngress => scene.fixture.run_pod_tc(&input),
            Program::XdpPod => scene.fixture.run_xdp(&input),
            Program::XdpNode => scene.fixture.run_xdp_node(&input),
            Program::TcPod => scene.fixture.run_tc(&input),
            Program::TcNode => scene.fixture.run_tc_node(&input),
        };
        let (verdict, out) = match ran {
            Ok(ran) => ran,
            // The skb test runner wants a whole IP header behind an IP
            // EtherType; the stack never hands TC less.
            Err(_) if !program.is_xdp() && input.len() < SKB_MIN_L3 => {
                refused_by_runner += 1;
                continue;
            }
            Err(e) => anyhow::bail!(
                "{e:#}: {} of {} bytes {}",
                program.name(),
                input.len(),
                hex(&input)
            ),
        };
        let tally = &mut tallies[Program::ALL.iter().position(|&p| p == program).unwrap()];
        tally.frames += 1;
        let dropped = verdict
            == if program.is_xdp() {
                XDP_DROP
            } else {
                TC_ACT_SHOT
            };
        drops_seen += u64::from(dropped);
        let judged = judge(&scene, &tracked, program, verdict, &input, &out);
        match judged {
            Ok(Outcome::Unchanged) => tally.unchanged += 1,
            Ok(Outcome::Dropped) => tally.dropped += 1,
            Ok(Outcome::Refused) => tally.refused += 1,
            Ok(Outcome::Rewritten(view)) => {
                tally.rewritten += 1;
                // A balanced flow: TC may now rewrite its packets.
                let after = IpView::read(&out);
                if let (true, Some(client), Some(backend)) = (
                    program.is_forward(),
                    view.src_addr(),
                    after.and_then(|a| a.dst_addr()),
                ) {
                    if client.ip() == &view.src && backend != view.dst_addr().unwrap_or(backend) {
                        tracked.insert(client, backend, view.proto);
                        flows.push(gen::Flow {
                            client,
                            backend,
                            proto: view.proto,
                        });
                    }
                }
            }
            Err(what) => {
                violations_total += 1;
                if violations.len() < KEPT_VIOLATIONS {
                    violations.push(Violation {
                        program,
                        what,
                        input: input.clone(),
                        output: out.clone(),
                    });
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let after = scene.fixture.stats()?;
    let delta = |reason: u32| after[reason as usize].packets - before[reason as usize].packets;
    let events = [
        stats::Reason::CtInsertFailed.index(),
        stats::Reason::FragInsertFailed.index(),
        stats::Reason::CtMissMidflow.index(),
    ];
    Ok(Report {
        seed,
        tallies,
        drops_seen,
        drops_counted: (stats::Reason::ALL.iter())
            .filter(|r| r.is_drop())
            .map(|r| delta(r.index()))
            .sum(),
        runs: frames - refused_by_runner,
        refused_by_runner,
        reasons_counted: (0..stats::COUNT)
            .filter(|r| !events.contains(r))
            .map(delta)
            .sum(),
        violations,
        violations_total,
        elapsed,
    })
}

enum Outcome {
    Unchanged,
    Dropped,
    Refused,
    Rewritten(IpView),
}

/// Holds one run to the properties.
fn judge(
    scene: &Scene,
    tracked: &Tracked,
    program: Program,
    verdict: u32,
    input: &[u8],
    out: &[u8],
) -> Result<Outcome, String> {
    let view = IpView::read(input);
    let may_change = view.is_some_and(|v| match program {
        Program::TcPodIngress | Program::XdpPod | Program::XdpNode => match v.dst_addr() {
            Some(dst) => scene.may_serve(dst, v.proto),
            None => v.frag_offset != 0 && scene.may_serve_fragment(v.dst),
        },
        Program::TcPod | Program::TcNode => tracked.may_rewrite(&v),
    });
    let (pass, drop) = if program.is_xdp() {
        (XDP_PASS, XDP_DROP)
    } else {
        (TC_ACT_OK, TC_ACT_SHOT)
    };
    if !may_change {
        return if verdict == pass && out == input {
            Ok(Outcome::Unchanged)
        } else {
            Err(format!(
                "not ours, yet verdict {verdict} and {} bytes changed",
                diff_count(input, out)
            ))
        };
    }
    let view = view.expect("may_change needs a view");
    if verdict == drop {
        return Ok(Outcome::Dropped);
    }
    // A refusal: redirected back by TC, sent back by XDP (XDP_TX), or
    // passed up marked for `lb_tc_ingress` to send back: behind metadata
    // (the test runner returns it in front of the frame), or with a
    // trailer where the kernel refuses XDP metadata.
    let mark = lb_common::REJECT_BOUNCE_MARK.to_ne_bytes();
    if program == Program::TcPodIngress && verdict == TC_ACT_REDIRECT {
        return is_refusal(&view, input, out).map(|()| Outcome::Refused);
    }
    if program.is_xdp() && verdict == XDP_PASS && out.starts_with(&mark) {
        return is_refusal(&view, input, &out[mark.len()..]).map(|()| Outcome::Refused);
    }
    if program.is_xdp() && verdict == XDP_PASS && out.ends_with(&mark) {
        return is_refusal(&view, input, &out[..out.len() - mark.len()]).map(|()| Outcome::Refused);
    }
    if program.is_xdp() && verdict == XDP_TX {
        return is_refusal(&view, input, out).map(|()| Outcome::Refused);
    }
    if out == input {
        return (verdict == pass)
            .then_some(Outcome::Unchanged)
            .ok_or_else(|| format!("unchanged, verdict {verdict}"));
    }
    if out.len() != input.len() || out.get(23) != input.get(23) {
        return Err(format!(
            "resized or another protocol, verdict {verdict}, unmarked"
        ));
    }
    if verdict != pass {
        return Err(format!("rewritten, verdict {verdict}"));
    }
    let foreign = foreign_changes(&view, input, out);
    if !foreign.is_empty() {
        return Err(format!("rewrote bytes no NAT may touch: {foreign:?}"));
    }
    if !checksums_kept(program.is_xdp(), &view, input, out) {
        return Err("right checksums made wrong".into());
    }
    Ok(Outcome::Rewritten(view))
}

fn diff_count(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frames: u64 = self.tallies.iter().map(|t| t.frames).sum();
        writeln!(
            f,
            "{frames} frames (seed {}) in {:.1} s ({:.0} frames/s)",
            self.seed,
            self.elapsed.as_secs_f64(),
            frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "| program | frames | unchanged | rewritten | refused | dropped |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|")?;
        for (program, t) in Program::ALL.iter().zip(&self.tallies) {
            writeln!(
                f,
                "| `{}` | {} | {} | {} | {} | {} |",
                program.name(),
                t.frames,
                t.unchanged,
                t.rewritten,
                t.refused,
                t.dropped
            )?;
        }
        writeln!(
            f,
            "drops: {} seen, {} counted under drop reasons; runs: {}, reasons counted: {}; \
             cut frames the skb test runner refused: {}",
            self.drops_seen,
            self.drops_counted,
            self.runs,
            self.reasons_counted,
            self.refused_by_runner
        )?;
        writeln!(f, "violations: {}", self.violations_total)?;
        for v in &self.violations {
            writeln!(
                f,
                "  {}: {}\n    in:  {}\n    out: {}",
                v.program.name(),
                v.what,
                hex(&v.input),
                hex(&v.output)
            )?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
