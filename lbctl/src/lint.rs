//! `lint DIR`: the static part of the checklist over a directory of
//! Service and EndpointSlice manifests, before they are applied: every
//! object the agent would refuse (with the field at fault), ClusterIPs and
//! ranges, NodePorts, databases on NodePorts, Services without endpoints.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::{
    checks::{self, Check},
    Report,
};
use lb_core::manifest;
use lb_core::model::{ObjectRef, NODE_PORT_VIP};
use lb_core::net_config::NetConfig;

/// JSON: `{"dir": "...", "checks": [Check, ...]}`.
#[derive(Debug, Serialize)]
pub struct Lint {
    pub dir: String,
    pub checks: Vec<Check>,
}

impl Report for Lint {
    fn table(&self) -> String {
        format!("{}\n{}", self.dir, checks::render(&self.checks))
    }

    fn findings(&self) -> usize {
        checks::failures(&self.checks)
    }
}

pub fn lint(dir: &Path, net: &NetConfig, nodeport_range: (u16, u16)) -> Lint {
    let loaded = manifest::load_dir(dir);
    let desired = loaded.desired_state(None);
    let mut checks = Vec::new();
    for e in loaded.errors.iter().chain(&desired.errors) {
        checks.push(Check::fail(
            "object accepted",
            e.to_string(),
            "the agent skips this object (or port) and serves the others; fix the field named",
        ));
    }
    if checks.is_empty() {
        checks.push(Check::pass(
            "object accepted",
            format!(
                "{} Service(s), {} EndpointSlice(s), no error",
                loaded.services.len(),
                loaded.slices.len()
            ),
        ));
    }
    let cluster_ips: BTreeSet<_> = desired
        .frontends
        .iter()
        .filter(|(f, w)| !w.external && f.vip != NODE_PORT_VIP)
        .map(|(f, _)| f.vip)
        .collect();
    let cluster_ips: Vec<_> = cluster_ips.into_iter().collect();
    checks.extend(checks::cidrs(net, &cluster_ips, true));
    for (frontend, wanted) in &desired.frontends {
        if frontend.vip != NODE_PORT_VIP {
            continue;
        }
        let what = format!("{} NodePort {}", wanted.service, frontend.port);
        checks.push(checks::nodeport_range(&what, frontend.port, nodeport_range));
        // The Service port (its cluster IP frontend's) and the target ports.
        let mut ports: Vec<u16> = desired
            .frontends
            .iter()
            .filter(|(_, w)| w.service == wanted.service && w.port_name == wanted.port_name)
            .map(|(f, _)| f.port)
            .collect();
        ports.extend(wanted.backends.iter().map(|b| b.port));
        checks.push(checks::database_on_nodeport(&what, &ports));
    }
    let empty: BTreeSet<&ObjectRef> = desired
        .frontends
        .values()
        .filter(|w| w.backends.is_empty())
        .map(|w| &w.service)
        .collect();
    for service in empty {
        checks.push(Check::warn(
            "endpoints ready",
            format!("Service {service} has no ready endpoint in {}", dir.display()),
            "its EndpointSlice is missing, lists no ready endpoint, or names no port the Service's targetPort resolves to; in a cluster, check that the selector matches the pods' labels",
        ));
    }
    Lint {
        dir: dir.display().to_string(),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Status;

    #[test]
    fn finds_bad_fields_ranges_databases_and_missing_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("db.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.200.0.30\n  ports: [{name: pg, port: 5432, nodePort: 8432}, {name: bad, port: 70000}]\n",
        )
        .unwrap();
        let net = NetConfig {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            ..NetConfig::default()
        };
        let lint = lint(dir.path(), &net, (30000, 32767));
        let found: Vec<(&str, Status)> = lint.checks.iter().map(|c| (c.check, c.status)).collect();
        assert_eq!(
            found,
            [
                ("object accepted", Status::Fail),
                ("CIDRs do not overlap", Status::Pass),
                ("Service CIDR", Status::Fail),
                ("NodePort in range", Status::Fail),
                ("no database on a NodePort", Status::Warn),
                ("endpoints ready", Status::Warn),
            ]
        );
        assert!(
            lint.checks[0].detail.contains("spec.ports[1].port"),
            "{:?}",
            lint.checks[0]
        );
        assert_eq!(lint.findings(), 3);
    }
}
