//! The iptables rules kube-proxy's iptables proxier writes (Kubernetes
//! 1.28–1.33, `pkg/proxy/iptables/proxier.go`), as `iptables-restore` input
//! of a full sync, for the Services of a [`Cluster`].
//!
//! Mirrored: the jump chain per Service port (KUBE-SERVICES ->
//! KUBE-SVC-<hash> -> KUBE-SEP-<hash>), the `-m statistic --mode random
//! --probability 1/n` cascade over the endpoints, masquerade marking for
//! traffic from outside the cluster CIDR and for hairpin traffic
//! (KUBE-MARK-MASQ, KUBE-POSTROUTING), NodePorts through KUBE-NODEPORTS and
//! KUBE-EXT-<hash> as the last rule of KUBE-SERVICES, the filter table's
//! KUBE-FORWARD, and "large cluster mode" (no comments on endpoint rules
//! once the cluster has more than 1000 endpoints). Left out, since no
//! benchmarked Service needs them: REJECT rules for Services without
//! endpoints, session affinity (`-m recent`), externalTrafficPolicy Local,
//! load-balancer source ranges, and the health-check and firewall chains
//! (empty for these Services).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::names::hash;
use crate::bench::frontends::{Cluster, Frontend};

/// The iptables flavour kube-proxy drives: the one the node's other rules
/// use (its image's iptables-wrapper picks it). Debian's default `iptables`
/// is iptables-nft, which translates the rules to nftables in the kernel;
/// iptables-legacy loads them as one x_tables blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn iptables(self) -> &'static str {
        match self {
            Backend::Nft => "iptables",
            Backend::Legacy => "iptables-legacy",
        }
    }

    pub fn restore(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
}

/// kube-proxy's `largeClusterEndpointsThreshold`.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;
/// kube-proxy's default `--iptables-masquerade-bit` 14.
const MASQ_MARK: &str = "0x4000";

/// The chain a Service port's ClusterIP rule jumps to.
pub fn svc_chain(f: &Frontend) -> String {
    format!(
        "KUBE-SVC-{}",
        hash(&format!("{}{}", f.port_name(), f.proto.lower()), 16)
    )
}

/// The chain that DNATs to one endpoint of a Service port.
pub fn sep_chain(f: &Frontend, endpoint: Ipv4Addr) -> String {
    let key = format!(
        "{}{}{endpoint}:{}",
        f.port_name(),
        f.proto.lower(),
        f.target_port
    );
    format!("KUBE-SEP-{}", hash(&key, 16))
}

/// The chain a NodePort rule jumps to (externalTrafficPolicy Cluster).
fn ext_chain(f: &Frontend) -> String {
    format!(
        "KUBE-EXT-{}",
        hash(&format!("{}{}", f.port_name(), f.proto.lower()), 16)
    )
}

/// The jumps from the built-in chains into kube-proxy's, which kube-proxy
/// keeps with `iptables -I` outside of its restores: `(table, built-in
/// chain, rule)`. Adding them turns the rule set on, deleting them off.
pub const HOOKS: [(&str, &str, &str); 4] = [
    (
        "nat",
        "PREROUTING",
        "-m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment kubernetes-postrouting-rules -j KUBE-POSTROUTING",
    ),
    (
        "filter",
        "FORWARD",
        "-m comment --comment kubernetes-forwarding-rules -j KUBE-FORWARD",
    ),
];

/// The input of one full-sync `iptables-restore --noflush`: both tables,
/// every kube-proxy chain declared (which flushes it) and refilled.
/// `stale` chains (of endpoints gone since the last sync) are declared and
/// deleted, as kube-proxy does.
pub fn restore_input(cluster: &Cluster, stale: &[String]) -> String {
    let endpoints: usize = cluster.frontends.iter().map(|f| f.endpoints.len()).sum();
    let comments = endpoints <= LARGE_CLUSTER_ENDPOINTS;
    // About 100 bytes per line, 3 lines per endpoint.
    let mut out = String::with_capacity(400 * endpoints + 4096);
    out.push_str("*filter\n:KUBE-FORWARD - [0:0]\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT"
    );

    out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    for f in &cluster.frontends {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(f));
        if f.node_port.is_some() {
            let _ = writeln!(out, ":{} - [0:0]", ext_chain(f));
        }
        for &ep in &f.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(f, ep));
        }
    }
    for chain in stale {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"
    );
    for f in &cluster.frontends {
        write_service(&mut out, cluster, f, comments);
    }
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" \
         -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    for chain in stale {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

/// One Service port's rules: its ClusterIP and NodePort entries, its
/// KUBE-SVC chain (masquerade check, then the random cascade) and a
/// KUBE-SEP chain per endpoint.
fn write_service(out: &mut String, cluster: &Cluster, f: &Frontend, comments: bool) {
    let name = f.port_name();
    let (proto, svc) = (f.proto.lower(), svc_chain(f));
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {svc}",
        f.cluster_ip, f.port
    );
    if let Some(node_port) = f.node_port {
        let ext = ext_chain(f);
        let _ = writeln!(
            out,
            "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext}\n\
             -A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n\
             -A {ext} -j {svc}"
        );
    }
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} ! -s {} -j KUBE-MARK-MASQ",
        f.cluster_ip, f.port, cluster.cluster_cidr
    );
    let n = f.endpoints.len();
    for (i, &ep) in f.endpoints.iter().enumerate() {
        let sep = sep_chain(f, ep);
        let comment = if comments {
            format!("-m comment --comment \"{name} -> {ep}:{}\" ", f.target_port)
        } else {
            String::new()
        };
        // The last endpoint takes whatever the others did not.
        let statistic = if i + 1 < n {
            format!(
                "-m statistic --mode random --probability {:.10} ",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(out, "-A {svc} {comment}{statistic}-j {sep}");
        let comment = if comments {
            format!("-m comment --comment {name} ")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {sep} {comment}-s {ep}/32 -j KUBE-MARK-MASQ\n\
             -A {sep} {comment}-m {proto} -p {proto} -j DNAT --to-destination {ep}:{}",
            f.target_port
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::frontends::{synthetic, Proto};

    fn web() -> Frontend {
        Frontend {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            proto: Proto::Tcp,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            node_port: Some(30080),
            target_port: 8080,
            endpoints: (1..=3).map(|i| Ipv4Addr::new(10, 244, i, 2)).collect(),
        }
    }

    fn cluster(frontends: Vec<Frontend>) -> Cluster {
        Cluster {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            node_ips: vec![],
            frontends,
        }
    }

    #[test]
    fn service_chain_cascade() {
        let f = web();
        let text = restore_input(&cluster(vec![f.clone()]), &[]);
        let svc = svc_chain(&f);
        let cascade: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")) && l.contains("KUBE-SEP-"))
            .collect();
        assert_eq!(cascade.len(), 3);
        assert!(cascade[0].contains("--probability 0.3333333333"));
        assert!(cascade[1].contains("--probability 0.5000000000"));
        assert!(!cascade[2].contains("statistic"));
        assert!(cascade[0].contains("\"default/web:http -> 10.244.1.2:8080\""));
        let sep = sep_chain(&f, f.endpoints[1]);
        assert!(text.contains(&format!(
            "-A {sep} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.2.2:8080"
        )));
        assert!(text.contains("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));
        // NodePorts are reached last, through the EXT chain.
        assert!(text.contains("--dport 30080 -j KUBE-EXT-"));
        let nat = &text[text.find("*nat").unwrap()..];
        let last_rule = nat
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last_rule.ends_with("-j KUBE-NODEPORTS"), "{last_rule}");
        assert_eq!(text.matches("COMMIT").count(), 2);
    }

    #[test]
    fn large_clusters_drop_endpoint_comments_and_stale_chains_go() {
        let frontends: Vec<_> = synthetic(101).collect();
        let stale = sep_chain(&frontends[0], Ipv4Addr::new(10, 200, 0, 1));
        let text = restore_input(&cluster(frontends), std::slice::from_ref(&stale));
        assert!(
            !text.contains(" -> "),
            "endpoint comments in large cluster mode"
        );
        assert!(text.contains(&format!(":{stale} - [0:0]\n")));
        assert!(text.contains(&format!("-X {stale}\nCOMMIT\n")));
        // 101 Services x 10 endpoints: a chain per Service and per endpoint.
        assert_eq!(
            text.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count(),
            1011
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with(":KUBE-SVC-")).count(),
            101
        );
    }
}
