//! `diagnose NAMESPACE/SERVICE`: the Service troubleshooting checklist run
//! against the live node: is the Service in the dataplane, does it have
//! ready endpoints, are the programs attached, are the maps consistent,
//! are the address ranges sane, is the agent healthy, is traffic dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use lb_common::SVC_F_LOCAL_ONLY;
use serde::Serialize;

use super::{
    checks::{self, Check},
    decode::{is_drop, reason_name},
    progs::ProgList,
    services::{service_list, Service},
    MapId, Report, Snapshot,
};
use lb_core::net_config::NetConfig;

/// The maps [`diagnose`] needs.
pub const READS: &[MapId] = &[
    MapId::Services,
    MapId::Backends,
    MapId::RevNat,
    MapId::SvcNames,
    MapId::SvcStats,
    MapId::Stats,
];

/// What the checks compare with, besides the maps.
pub struct Context {
    pub net: NetConfig,
    pub nodeport_range: (u16, u16),
    /// The agent's /healthz; None: not checked.
    pub healthz: Option<SocketAddr>,
}

/// JSON: `{"service": "ns/name", "checks": [Check, ...]}`.
#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub service: String,
    pub checks: Vec<Check>,
}

impl Report for Diagnosis {
    fn table(&self) -> String {
        format!("Service {}\n{}", self.service, checks::render(&self.checks))
    }

    fn findings(&self) -> usize {
        checks::failures(&self.checks)
    }
}

/// Runs the checklist for `service` (`namespace/name`).
pub fn diagnose(snap: &Snapshot, progs: &ProgList, service: &str, ctx: &Context) -> Diagnosis {
    let mut checks = Vec::new();
    let all = service_list(snap);
    let ours: Vec<&Service> = all
        .services
        .iter()
        .filter(|s| {
            s.service.as_deref().is_some_and(|n| {
                n == service
                    || n.strip_prefix(service)
                        .is_some_and(|rest| rest.starts_with(':'))
            })
        })
        .collect();

    // 1. Known to the dataplane.
    if ours.is_empty() {
        checks.push(Check::fail(
            "known to the dataplane",
            format!("no frontend of {service} in the maps"),
            "check the name (`kubectl get svc -n NAMESPACE`); the agent skips headless and ExternalName Services and those with a service-proxy-name label, and logs every Service it cannot program with the field at fault",
        ));
    } else {
        let list: Vec<String> = ours.iter().map(|s| s.frontend.to_string()).collect();
        checks.push(Check::pass("known to the dataplane", list.join(", ")));
    }

    // 2. Endpoints.
    for s in &ours {
        let count = s.count.unwrap_or(0);
        let local = s.flags.is_some_and(|f| f & SVC_F_LOCAL_ONLY != 0);
        checks.push(if count > 0 {
            Check::pass("endpoints ready", format!("{}: {count} backend(s)", s.frontend))
        } else if local {
            Check::fail(
                "endpoints ready",
                format!("{}: none on this node, and its traffic policy is Local: dropped", s.frontend),
                "Local policies only use this node's endpoints: schedule a ready pod here, or use the Cluster policy",
            )
        } else {
            Check::fail(
                "endpoints ready",
                format!("{}: no ready endpoint: connections are refused", s.frontend),
                format!("`kubectl get endpointslices -n NAMESPACE -l kubernetes.io/service-name=NAME -o wide`: empty means the Service's selector matches no pod (compare it with the pods' labels); listed but not ready means the pods fail their readiness probe; {service}'s targetPort must be a port the pods expose"),
            )
        });
    }

    // 3. Programs.
    let broken: Vec<&str> = progs
        .programs
        .iter()
        .filter_map(|a| a.error.as_deref())
        .collect();
    let pods = progs
        .programs
        .iter()
        // Every pod hook has a TC ingress program (the DNAT, or the
        // refusals beside XDP).
        .filter(|a| a.role == "pod" && a.hook == "tc_ingress")
        .count();
    let uplinks = progs
        .programs
        .iter()
        .filter(|a| a.role == "node" && a.hook == "xdp")
        .count();
    checks.push(if !broken.is_empty() {
        Check::fail(
            "programs attached",
            broken.join("; "),
            "a pinned link is unreadable or detached: restart the agent (it re-attaches every interface it matches)",
        )
    } else if pods == 0 {
        Check::fail(
            "programs attached",
            "no pod interface is attached",
            "the agent's --pod-interfaces matches none of this node's interfaces (`ip -br link`); pods' traffic reaches no Service",
        )
    } else {
        Check::pass(
            "programs attached",
            format!("{pods} pod interface(s), {uplinks} uplink(s)"),
        )
    });

    // 4. Maps.
    let problems: Vec<String> = ours
        .iter()
        .flat_map(|s| {
            s.problems
                .iter()
                .map(move |p| format!("{}: {p}", s.frontend))
        })
        .collect();
    checks.push(if problems.is_empty() {
        Check::pass("maps consistent", "every slot names an existing backend")
    } else {
        Check::fail(
            "maps consistent",
            problems.join("; "),
            "the agent repairs entries changed behind its back at its next full resync (--resync-interval-secs); if this persists, the agent's log says why",
        )
    });

    // 5. Address ranges, NodePorts.
    let vips: Vec<Ipv4Addr> = ours
        .iter()
        .map(|s| s.frontend.ip)
        .filter(|ip| !ip.is_unspecified())
        .collect();
    checks.extend(checks::cidrs(&ctx.net, &vips, false));
    for s in ours.iter().filter(|s| s.frontend.ip.is_unspecified()) {
        let what = format!("NodePort {}", s.frontend.port);
        checks.push(checks::nodeport_range(
            &what,
            s.frontend.port,
            ctx.nodeport_range,
        ));
        let mut ports = vec![s.frontend.port];
        ports.extend(
            s.slots
                .iter()
                .filter_map(|slot| slot.backend.map(|b| b.port)),
        );
        checks.push(checks::database_on_nodeport(&what, &ports));
    }

    // 6. The agent.
    if let Some(addr) = ctx.healthz {
        checks.push(match healthz(addr) {
            Ok(200) => Check::pass("agent healthy", format!("http://{addr}/healthz: 200")),
            Ok(code) => Check::fail(
                "agent healthy",
                format!("http://{addr}/healthz: {code}"),
                "changes are not being programmed (first sync pending, or a sync failing): the agent's log says why",
            ),
            Err(e) => Check::fail(
                "agent healthy",
                format!("http://{addr}/healthz: {e}"),
                "the agent is not running here: the datapath keeps serving the last state, but no change reaches it (`kubectl -n kube-system get pods -l app.kubernetes.io/name=lb-agent`)",
            ),
        });
    }

    // 7. Drops: this Service's count, and the node's by reason.
    let refused: u64 = ours
        .iter()
        .filter_map(|s| s.rev_nat_id)
        .filter_map(|id| snap.svc_stats.get(id as usize * 2 + 1))
        .map(|c| c.packets)
        .sum();
    if refused > 0 {
        checks.push(Check::warn(
            "refused at this Service",
            format!("{refused} packet(s) dropped or refused at its frontends"),
            "no (local) endpoint, or a client outside loadBalancerSourceRanges: see the checks above and the node-wide reasons below",
        ));
    }
    let drops: Vec<String> = snap
        .stats
        .iter()
        .enumerate()
        .filter(|&(reason, c)| c.packets > 0 && is_drop(reason))
        .map(|(reason, c)| format!("{} {}", reason_name(reason as u32), c.packets))
        .collect();
    checks.push(if drops.is_empty() {
        Check::pass("drops", "no packet dropped on this node")
    } else {
        Check::warn(
            "drops",
            format!("node-wide: {}", drops.join(", ")),
            "`lbctl stats` over time shows which rise while the Service fails; docs/datapath.md explains each reason",
        )
    });

    Diagnosis {
        service: service.to_owned(),
        checks,
    }
}

/// The status code of `GET /healthz`.
fn healthz(addr: SocketAddr) -> std::io::Result<u16> {
    use std::io::{Read as _, Write as _};
    let timeout = Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))
}
