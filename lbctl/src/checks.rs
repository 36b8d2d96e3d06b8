//! Checks shared by `diagnose` (against the pinned maps) and `lint`
//! (against manifests): a pass/fail/warn line with a hint for each, the
//! troubleshooting checklist of the Service networking guide automated.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::Serialize;

use lb_core::net_config::NetConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not checked (missing input, e.g. no `--service-cidr`).
    Skip,
}

/// One line of a diagnosis. JSON: `{"check", "status", "detail", "hint"}`.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about a failure or warning; null when passing.
    pub hint: Option<String>,
}

impl Check {
    pub fn pass(check: &'static str, detail: impl Into<String>) -> Check {
        Check {
            check,
            status: Status::Pass,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            check,
            status: Status::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn warn(check: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            status: Status::Warn,
            ..Check::fail(check, detail, hint)
        }
    }

    pub fn skip(check: &'static str, detail: impl Into<String>) -> Check {
        Check {
            status: Status::Skip,
            ..Check::pass(check, detail)
        }
    }
}

/// The report of checks: a line each, failures counted as findings.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let status = match c.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        out += &format!("{status}  {:<28} {}\n", c.check, c.detail);
        if let Some(hint) = &c.hint {
            out += &format!("      {:<28} hint: {hint}\n", "");
        }
    }
    out
}

pub fn failures(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.status == Status::Fail).count()
}

/// Ports of well-known databases and caches: exposing them on every
/// node's address (a NodePort) is rarely meant and risky.
const DATABASE_PORTS: [(u16, &str); 10] = [
    (1433, "SQL Server"),
    (1521, "Oracle"),
    (3306, "MySQL"),
    (5432, "PostgreSQL"),
    (5984, "CouchDB"),
    (6379, "Redis"),
    (9042, "Cassandra"),
    (9200, "Elasticsearch"),
    (11211, "memcached"),
    (27017, "MongoDB"),
];

/// A NodePort inside `range`.
pub fn nodeport_range(what: &str, node_port: u16, range: (u16, u16)) -> Check {
    const CHECK: &str = "NodePort in range";
    if (range.0..=range.1).contains(&node_port) {
        Check::pass(
            CHECK,
            format!("{what}: {node_port} in {}-{}", range.0, range.1),
        )
    } else {
        Check::fail(
            CHECK,
            format!("{what}: {node_port} outside {}-{}", range.0, range.1),
            "the API server's --service-node-port-range and the agent's --nodeport-range must agree; pick a nodePort inside the range",
        )
    }
}

/// A NodePort whose Service or target port is a database's.
pub fn database_on_nodeport(what: &str, ports: &[u16]) -> Check {
    const CHECK: &str = "no database on a NodePort";
    match ports
        .iter()
        .find_map(|p| DATABASE_PORTS.iter().find(|(d, _)| d == p))
    {
        Some((port, db)) => Check::warn(
            CHECK,
            format!("{what} exposes port {port} ({db}) on every node's address"),
            "use a ClusterIP Service (and a NetworkPolicy) for databases; expose them outside the cluster only deliberately",
        ),
        None => Check::pass(CHECK, format!("{what}: no well-known database port")),
    }
}

/// The Service, Pod and node ranges do not overlap, and `vips` lie in the
/// Service range. `strict`: every vip is a cluster IP (from manifests);
/// otherwise (from the maps, where external and load-balancer IPs look the
/// same) one outside the range only warns.
pub fn cidrs(net: &NetConfig, vips: &[Ipv4Addr], strict: bool) -> Vec<Check> {
    const CHECK: &str = "Service CIDR";
    let mut checks = Vec::new();
    if net.service_cidrs.is_empty() {
        checks.push(Check::skip(
            CHECK,
            "no --service-cidr given (the API server's --service-cluster-ip-range)",
        ));
        return checks;
    }
    let overlaps = net.overlaps();
    if overlaps.is_empty() {
        checks.push(Check::pass(
            "CIDRs do not overlap",
            format!(
                "service {:?}, pod {:?}",
                net.service_cidrs, net.cluster_cidrs
            ),
        ));
    }
    for o in overlaps {
        checks.push(Check::fail(
            "CIDRs do not overlap",
            o.to_string(),
            "Service, Pod and node networks must be disjoint: change the Service or Pod range (a cluster rebuild for the Service range)",
        ));
    }
    for vip in vips {
        let inside = net
            .service_cidrs
            .iter()
            .any(|c: &IpNet| c.contains(&IpAddr::V4(*vip)));
        checks.push(if inside {
            Check::pass(CHECK, format!("{vip} is in the Service range"))
        } else if !strict {
            Check::warn(
                CHECK,
                format!("{vip} is outside --service-cidr {:?}", net.service_cidrs),
                "fine for an externalIP or load-balancer IP; a ClusterIP there was allocated from another range (the API server's --service-cluster-ip-range)",
            )
        } else {
            Check::fail(
                CHECK,
                format!("{vip} is outside --service-cidr {:?}", net.service_cidrs),
                "the ClusterIP was allocated from another range: check the API server's --service-cluster-ip-range",
            )
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_ports_and_ranges() {
        assert_eq!(
            nodeport_range("x", 30080, (30000, 32767)).status,
            Status::Pass
        );
        assert_eq!(
            nodeport_range("x", 8080, (30000, 32767)).status,
            Status::Fail
        );
        assert_eq!(database_on_nodeport("x", &[80, 5432]).status, Status::Warn);
        assert_eq!(database_on_nodeport("x", &[80]).status, Status::Pass);
        let net = NetConfig {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            cluster_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            nodeport_addresses: vec![],
        };
        let vips = ["10.96.0.10".parse().unwrap(), "10.200.0.1".parse().unwrap()];
        let checks = cidrs(&net, &vips, true);
        let statuses: Vec<Status> = checks.iter().map(|c| c.status).collect();
        assert_eq!(statuses, [Status::Fail, Status::Pass, Status::Fail]);
        assert_eq!(cidrs(&net, &vips, false)[2].status, Status::Warn);
        assert_eq!(
            cidrs(&NetConfig::default(), &[], true)[0].status,
            Status::Skip
        );
    }
}
