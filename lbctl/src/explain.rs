//! `explain`: what the datapath does with a packet from `src` to `dst`,
//! step by step as `lb-ebpf/src/ingress.rs` takes them, read from the
//! pinned maps: which frontend matches, which backend the flow gets and
//! why (its conntrack entry, session affinity, or the flow hash, which
//! userspace computes exactly as the kernel does), and the rewrite.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    hash::flow_hash, Backend, CtKey, ServiceKey, ServiceValue, BACKEND_F_REMOTE, CT_DIR_FORWARD,
    CT_DIR_SNAT_IN, FILTER_FRONTENDS, IPPROTO_TCP, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES,
};
use serde::Serialize;

use super::{
    decode::{Endpoint, IpPort, Proto},
    MapId, Report, Snapshot,
};

/// The maps [`explain`] needs.
pub const READS: &[MapId] = &[
    MapId::Services,
    MapId::Backends,
    MapId::Conntrack,
    MapId::Config,
    MapId::SourceRanges,
    MapId::NodeAddrs,
    MapId::Affinity,
    MapId::SvcNames,
    MapId::Filter,
];

/// Where the packet enters the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// From a pod, through its veth (lb_tc_pod_ingress, or lb_xdp_ingress).
    Pod,
    /// From outside the node, through an uplink (lb_xdp_node).
    Uplink,
}

/// The flow to explain.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: Ipv4Addr,
    /// Unknown: the answer covers any new flow of this client.
    pub sport: Option<u16>,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub via: Via,
}

/// JSON: the steps taken, the verdict, and the rewrite if any.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub flow: FlowJson,
    /// The frontend that matched, if any.
    pub frontend: Option<Endpoint>,
    /// Its Kubernetes Service, `namespace/name[:port]`, when known.
    pub service: Option<String>,
    /// Each check in order, with what it found.
    pub steps: Vec<Step>,
    /// `dnat`, `pass`, `drop` or `reject`.
    pub verdict: &'static str,
    /// The backend the flow goes to (dnat only).
    pub backend: Option<IpPort>,
    /// Why that backend: `conntrack`, `affinity` or `hash`.
    pub chosen_by: Option<&'static str>,
    /// How the packet is rewritten, and its replies.
    pub rewrite: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FlowJson {
    pub src: String,
    pub dst: IpPort,
    pub proto: Proto,
    pub via: Via,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub check: &'static str,
    pub found: String,
}

impl Explanation {
    fn step(&mut self, check: &'static str, found: impl Into<String>) {
        self.steps.push(Step {
            check,
            found: found.into(),
        });
    }

    fn end(mut self, verdict: &'static str, why: impl Into<String>) -> Self {
        self.verdict = verdict;
        self.step("verdict", why);
        self
    }
}

/// Explains `flow` against the maps in `snap`.
pub fn explain(snap: &Snapshot, flow: &Flow) -> Explanation {
    let be = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
    let (saddr, daddr) = (be(flow.src), be(*flow.dst.ip()));
    let dport_be = flow.dst.port().to_be();
    let mut e = Explanation {
        flow: FlowJson {
            src: match flow.sport {
                Some(p) => format!("{}:{p}", flow.src),
                None => flow.src.to_string(),
            },
            dst: IpPort {
                ip: *flow.dst.ip(),
                port: flow.dst.port(),
            },
            proto: Proto(flow.proto),
            via: flow.via,
        },
        frontend: None,
        service: None,
        steps: Vec::new(),
        verdict: "",
        backend: None,
        chosen_by: None,
        rewrite: Vec::new(),
    };

    // 1. A reply to a flow this node SNATed.
    if let (Some(config), Some(sport)) = (snap.config, flow.sport) {
        let dport = flow.dst.port();
        if daddr == config.snat_addr_be
            && config.snat_addr_be != 0
            && (config.snat_port_first..=config.snat_port_last).contains(&dport)
        {
            let key = CtKey::new(
                saddr,
                daddr,
                sport.to_be(),
                dport_be,
                flow.proto,
                CT_DIR_SNAT_IN,
            );
            if let Some(entry) = snap.ct.get(&key) {
                let client = IpPort::from_be(entry.nat_addr_be, entry.nat_port_be);
                e.step(
                    "SNAT reply",
                    format!("a reply to a flow SNATed to the node, for {client}"),
                );
                e.rewrite
                    .push(format!("destination {} -> {client} (un-SNAT)", flow.dst));
                return e.end("dnat", "un-SNATed back to the client");
            }
        }
    }

    // 2. The frontend: exact, else the NodePort wildcard on a node address.
    let master_key = |vip_be| ServiceKey {
        vip_be,
        port_be: dport_be,
        slot: 0,
        proto: flow.proto,
        _pad: [0; 3],
    };
    // The datapath looks up only what the filter lets through: an entry
    // whose bit is clear is not there for it (an agent bug, which `service
    // list` reports).
    let lookup = |e: &mut Explanation, vip_be: u32| {
        let master = snap.services.get(&master_key(vip_be))?;
        if snap.in_filter(FILTER_FRONTENDS, vip_be, dport_be, flow.proto) {
            return Some(*master);
        }
        e.step(
            "filter",
            format!(
                "{}:{}/{} is in the service map but not in the filter: the datapath never \
                 looks it up (see `lbctl service list`)",
                Ipv4Addr::from(u32::from_be(vip_be)),
                flow.dst.port(),
                Proto(flow.proto)
            ),
        );
        None
    };
    let (master, wildcard) = match lookup(&mut e, daddr) {
        Some(m) => (m, false),
        None if snap.node_addrs.get(&daddr) == Some(&lb_common::NODE_ADDR_LOCAL) => {
            match lookup(&mut e, 0) {
                Some(m) => (m, true),
                None => {
                    e.step(
                        "frontend",
                        format!(
                            "{} is a node address, but no NodePort {} is served",
                            flow.dst.ip(),
                            flow.dst.port()
                        ),
                    );
                    return e.end("pass", "not a Service: passes untouched (pass_no_service)");
                }
            }
        }
        None => {
            e.step(
                "frontend",
                format!("no frontend {}/{}", flow.dst, Proto(flow.proto)),
            );
            return e.end("pass", "not a Service: passes untouched (pass_no_service)");
        }
    };
    // A pod uses every endpoint of a Local external frontend (see
    // `ServiceValue::internal_count`).
    let internal = flow.via == Via::Pod && master.internal_count > master.count;
    let master = match flow.via {
        Via::Pod => master.for_internal_clients(),
        Via::Uplink => master,
    };
    let vip_be = if wildcard { 0 } else { daddr };
    e.frontend = Some(Endpoint {
        ip: Ipv4Addr::from(u32::from_be(vip_be)),
        port: flow.dst.port(),
        proto: Proto(flow.proto),
    });
    e.service = snap
        .svc_names
        .get(&master.rev_nat_id)
        .map(|n| n.as_str().to_owned());
    e.step(
        "frontend",
        format!(
            "{}{} (Service {}): {} backend(s){}, rev-NAT id {}, flags {}",
            if wildcard { "NodePort " } else { "" },
            e.frontend.expect("just set"),
            e.service.as_deref().unwrap_or("unknown"),
            master.count,
            if internal {
                " for this node's pods (the traffic policy Local holds for traffic from outside)"
            } else {
                ""
            },
            master.rev_nat_id,
            flags(&master)
        ),
    );

    // 3. An existing flow stays with its backend.
    if let Some(sport) = flow.sport {
        let key = CtKey::new(
            saddr,
            daddr,
            sport.to_be(),
            dport_be,
            flow.proto,
            CT_DIR_FORWARD,
        );
        if let Some(entry) = snap.ct.get(&key) {
            let backend = IpPort::from_be(entry.backend_addr_be, entry.backend_port_be);
            let alive = snap.backends.get(&entry.backend_id).is_some_and(|b| {
                b.addr_be == entry.backend_addr_be && b.port_be == entry.backend_port_be
            });
            if alive || flow.proto == IPPROTO_TCP {
                let idle = snap.now_ns.saturating_sub(entry.last_seen_ns) as f64 / 1e9;
                e.step(
                    "conntrack",
                    format!(
                        "tracked flow to {backend}{}, idle {idle:.0} s",
                        if alive {
                            ""
                        } else {
                            " (backend gone; TCP keeps it until it ends)"
                        }
                    ),
                );
                return dnat(e, flow, backend, "conntrack", false);
            }
            e.step(
                "conntrack",
                format!("tracked to {backend}, which left the Service: balanced again"),
            );
        } else {
            e.step("conntrack", "no entry: a new flow");
        }
    } else {
        e.step(
            "conntrack",
            "no source port given: any new flow of this client",
        );
    }

    // 4. Admission.
    if master.flags & SVC_F_SOURCE_RANGES != 0 {
        if !source_allowed(snap, master.rev_nat_id, saddr) {
            e.step(
                "loadBalancerSourceRanges",
                format!("{} is outside them", flow.src),
            );
            return e.end("drop", "dropped (drop_source_range)");
        }
        e.step(
            "loadBalancerSourceRanges",
            format!("{} is inside them", flow.src),
        );
    }
    if master.count == 0 {
        if master.flags & SVC_F_LOCAL_ONLY != 0 {
            e.step(
                "backends",
                "none on this node, and the traffic policy is Local",
            );
            return e.end(
                "drop",
                "dropped (drop_no_local_backends), as kube-proxy does",
            );
        }
        e.step("backends", "none");
        let answer = if flow.proto == IPPROTO_TCP {
            "a SYN is answered with a TCP RST (reject_tcp_rst); other TCP is dropped"
        } else {
            "answered with ICMP port unreachable (reject_icmp_unreachable)"
        };
        return e.end("reject", answer);
    }

    // 5. The backend: affinity, else the flow hash.
    if master.affinity_timeout_s > 0 {
        let key = lb_common::AffinityKey {
            rev_nat_id: master.rev_nat_id,
            client_addr_be: saddr,
        };
        let fresh = snap.affinity.get(&key).filter(|a| {
            snap.now_ns.saturating_sub(a.last_used_ns)
                < master.affinity_timeout_s as u64 * 1_000_000_000
        });
        if let Some(backend) = fresh.and_then(|a| snap.backends.get(&a.backend_id)) {
            e.step(
                "sessionAffinity",
                format!(
                    "ClientIP, {} s: this client's last backend",
                    master.affinity_timeout_s
                ),
            );
            return dnat_backend(e, flow, &master, backend, "affinity");
        }
        e.step(
            "sessionAffinity",
            "ClientIP: no recent choice for this client",
        );
    }
    let Some(sport) = flow.sport else {
        e.step(
            "choice",
            format!(
                "a hash of the 5-tuple: one of {} backends, by source port",
                master.count
            ),
        );
        e.verdict = "dnat";
        e.step(
            "verdict",
            "DNATed to one of the frontend's backends (give a source port for which)",
        );
        return e;
    };
    let hash = flow_hash(saddr, daddr, sport.to_be(), dport_be, flow.proto);
    let slot = (hash % u32::from(master.count)) as u16 + 1;
    let slot_key = ServiceKey {
        slot,
        ..master_key(vip_be)
    };
    let backend = snap
        .services
        .get(&slot_key)
        .and_then(|s| snap.backends.get(&s.backend_id));
    e.step(
        "choice",
        format!("flow hash {hash:#010x}: slot {slot} of {}", master.count),
    );
    match backend {
        Some(b) => dnat_backend(e, flow, &master, b, "hash"),
        None => e.end("drop", format!("slot {slot} or its backend is missing (drop_backend_missing): run `lbctl service list`")),
    }
}

fn dnat_backend(
    e: Explanation,
    flow: &Flow,
    master: &ServiceValue,
    b: &Backend,
    why: &'static str,
) -> Explanation {
    let backend = IpPort::from_be(b.addr_be, b.port_be);
    let snat = match flow.via {
        Via::Uplink => b.flags & BACKEND_F_REMOTE != 0 && master.flags & SVC_F_LOCAL_ONLY == 0,
        Via::Pod => b.addr_be == u32::from_ne_bytes(flow.src.octets()),
    };
    dnat(e, flow, backend, why, snat)
}

fn dnat(
    mut e: Explanation,
    flow: &Flow,
    backend: IpPort,
    why: &'static str,
    snat: bool,
) -> Explanation {
    e.backend = Some(backend);
    e.chosen_by = Some(why);
    // Where the forward rewrite runs: uplinks are XDP; pod veths TC
    // ingress by default (XDP only with `--pod-hook xdp`).
    let hook = match flow.via {
        Via::Uplink => "XDP",
        Via::Pod => "the pod veth's ingress hook",
    };
    e.rewrite.push(format!(
        "destination {} -> {backend} (DNAT at {hook})",
        flow.dst
    ));
    if snat {
        let reason = match flow.via {
            Via::Uplink => "the backend is on another node",
            Via::Pod => "the pod reaches itself (hairpin)",
        };
        e.rewrite.push(format!(
            "source {} -> the node's SNAT address and a port from its SNAT range, at TC egress ({reason})",
            flow.src
        ));
    }
    e.rewrite.push(format!(
        "replies: source {backend} -> {} (at TC egress)",
        flow.dst
    ));
    e.end("dnat", format!("DNATed to {backend} (chosen by {why})"))
}

/// The LPM match the datapath makes: (rev-NAT id, client) within a range.
fn source_allowed(snap: &Snapshot, rev_nat_id: lb_common::RevNatId, saddr_be: u32) -> bool {
    snap.source_ranges.iter().any(|(prefix_len, r)| {
        let bits = prefix_len.saturating_sub(32);
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        u32::from_be(r.rev_nat_id_be) == rev_nat_id
            && u32::from_be(r.addr_be) & mask == u32::from_be(saddr_be) & mask
    })
}

fn flags(master: &ServiceValue) -> String {
    let mut names = Vec::new();
    if master.flags & SVC_F_LOCAL_ONLY != 0 {
        names.push("traffic-policy-local");
    }
    if master.flags & SVC_F_SOURCE_RANGES != 0 {
        names.push("source-ranges");
    }
    if master.affinity_timeout_s > 0 {
        names.push("affinity");
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

impl Report for Explanation {
    fn table(&self) -> String {
        let mut out = format!(
            "{} -> {} {} (via {:?})\n",
            self.flow.src, self.flow.dst, self.flow.proto, self.flow.via
        );
        for s in &self.steps {
            out += &format!("  {:<26} {}\n", s.check, s.found);
        }
        for r in &self.rewrite {
            out += &format!("  rewrite                    {r}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{filter_slot, FILTER_VALID, FILTER_VALID_WORD};

    use super::*;
    use crate::testutil::*;

    fn flow_to(dst: &str) -> Flow {
        Flow {
            src: "10.244.0.9".parse().unwrap(),
            sport: Some(40000),
            dst: dst.parse().unwrap(),
            proto: IPPROTO_TCP,
            via: Via::Pod,
        }
    }

    #[test]
    fn a_frontend_missing_from_a_valid_filter_passes_as_the_datapath_does() {
        let mut s = Snapshot::default();
        add_service(&mut s, "10.96.0.10", 80, 1, &[7]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        let flow = flow_to("10.96.0.10:80");
        // A filter not yet valid says nothing.
        s.filter = vec![0; FILTER_VALID_WORD as usize + 1];
        assert_eq!(explain(&s, &flow).verdict, "dnat");

        s.filter[FILTER_VALID_WORD as usize] = FILTER_VALID;
        let e = explain(&s, &flow);
        assert_eq!(e.verdict, "pass");
        assert_eq!(e.steps[0].check, "filter");
        assert!(e.steps[0].found.contains("10.96.0.10:80/tcp"), "{e:?}");

        let (w, mask) = filter_slot(FILTER_FRONTENDS, ip_be("10.96.0.10"), 80u16.to_be(), 6);
        s.filter[w as usize] |= mask;
        let e = explain(&s, &flow);
        assert_eq!(e.verdict, "dnat");
        assert!(e.steps.iter().all(|step| step.check != "filter"));
    }
}
