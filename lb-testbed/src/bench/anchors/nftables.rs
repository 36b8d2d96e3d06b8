//! The ruleset kube-proxy's nftables proxier writes (Kubernetes 1.31–1.33,
//! `pkg/proxy/nftables/proxier.go`), as `nft -f` input, for the Services of
//! a [`Cluster`], and the incremental transaction it sends when one
//! endpoint of a Service changes.
//!
//! Mirrored: `table ip kube-proxy` with the `service-ips` verdict map
//! (ClusterIP . protocol . port -> the Service's chain) looked up from the
//! `services` chain, the `service-nodeports` map behind `fib daddr type
//! local` and the `nodeport-ips` set, a `service-<hash>-<ns>/<name>/<proto>/<port>`
//! chain per Service port that marks traffic from outside the cluster CIDR
//! for masquerading and picks an endpoint with `numgen random mod n vmap`,
//! an `endpoint-<hash>-...__<ip>/<port>` chain per endpoint (hairpin mark,
//! DNAT), `external-...` chains for NodePorts (mark, then the Service's
//! chain), and the `masquerading` chain of nat postrouting. Left out, as in
//! [`super::iptables`]: rejections for Services without endpoints, session
//! affinity, externalTrafficPolicy Local, firewall and health-check parts.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::names::hash;
use crate::bench::frontends::{Cluster, Frontend};

pub const TABLE: &str = "ip kube-proxy";
const MASQ_MARK: &str = "0x4000";

/// `<ns>/<name>/<proto>/<port name>`, the readable tail of kube-proxy's
/// chain names.
fn tail(f: &Frontend) -> String {
    format!(
        "{}/{}/{}/{}",
        f.namespace,
        f.name,
        f.proto.lower(),
        f.port_name
    )
}

fn service_chain(f: &Frontend) -> String {
    let tail = tail(f);
    format!("service-{}-{tail}", hash(&tail, 8))
}

fn external_chain(f: &Frontend) -> String {
    let tail = tail(f);
    format!("external-{}-{tail}", hash(&tail, 8))
}

fn endpoint_chain(f: &Frontend, ep: Ipv4Addr) -> String {
    let tail = format!("{}__{ep}/{}", tail(f), f.target_port);
    format!("endpoint-{}-{tail}", hash(&tail, 8))
}

/// The whole table, without its base chains (see [`hooks`]): one `nft -f`
/// transaction, as kube-proxy's first full sync.
pub fn ruleset(cluster: &Cluster) -> String {
    let endpoints: usize = cluster.frontends.iter().map(|f| f.endpoints.len()).sum();
    let mut out = String::with_capacity(300 * endpoints + 4096);
    let _ = writeln!(
        out,
        "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}\n\
         add chain {TABLE} mark-for-masquerade\n\
         add rule {TABLE} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add chain {TABLE} masquerading\n\
         add rule {TABLE} masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule {TABLE} masquerading mark set mark xor {MASQ_MARK}\n\
         add rule {TABLE} masquerading masquerade fully-random\n\
         add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add chain {TABLE} services\n\
         add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {TABLE} services fib daddr type local ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
    );
    for ip in &cluster.node_ips {
        let _ = writeln!(out, "add element {TABLE} nodeport-ips {{ {ip} }}");
    }
    for f in &cluster.frontends {
        for &ep in &f.endpoints {
            write_endpoint(&mut out, f, ep);
        }
        write_service_chain(&mut out, cluster, f);
        let _ = writeln!(
            out,
            "add element {TABLE} cluster-ips {{ {} }}\n\
             add element {TABLE} service-ips {{ {} . {} . {} : goto {} }}",
            f.cluster_ip,
            f.cluster_ip,
            f.proto.lower(),
            f.port,
            service_chain(f)
        );
        if let Some(node_port) = f.node_port {
            let ext = external_chain(f);
            let _ = writeln!(
                out,
                "add chain {TABLE} {ext}\n\
                 add rule {TABLE} {ext} jump mark-for-masquerade\n\
                 add rule {TABLE} {ext} goto {}\n\
                 add element {TABLE} service-nodeports {{ {} . {node_port} : goto {ext} }}",
                service_chain(f),
                f.proto.lower(),
            );
        }
    }
    out
}

/// The base chains that hook the table into netfilter (nat prerouting,
/// output and postrouting), added (`on`) or deleted: deleting them turns
/// the rule set off without reloading it.
pub fn hooks(on: bool) -> String {
    let chains = [
        ("nat-prerouting", "prerouting", "-100", "jump services"),
        ("nat-output", "output", "-100", "jump services"),
        ("nat-postrouting", "postrouting", "100", "jump masquerading"),
    ];
    let mut out = String::new();
    for (chain, hook, priority, rule) in chains {
        if on {
            let _ = writeln!(
                out,
                "add chain {TABLE} {chain} {{ type nat hook {hook} priority {priority} ; }}\n\
                 add rule {TABLE} {chain} {rule}"
            );
        } else {
            let _ = writeln!(out, "delete chain {TABLE} {chain}");
        }
    }
    out
}

/// The transaction of a partial sync after endpoint `old` of `after`'s
/// Service was replaced (`after` holds the new list): the new endpoint's
/// chain, the Service chain rewritten, the stale endpoint chain flushed and
/// deleted.
pub fn endpoint_change(cluster: &Cluster, after: &Frontend, old: Ipv4Addr) -> String {
    let mut out = String::new();
    for &ep in after.endpoints.iter().filter(|&&ep| ep != old) {
        write_endpoint(&mut out, after, ep);
    }
    let _ = writeln!(out, "flush chain {TABLE} {}", service_chain(after));
    write_service_rules(&mut out, cluster, after);
    let stale = endpoint_chain(after, old);
    let _ = writeln!(
        out,
        "flush chain {TABLE} {stale}\ndelete chain {TABLE} {stale}"
    );
    out
}

/// An endpoint's chain. `add chain` of an existing chain is a no-op and
/// the flush makes rewriting it idempotent, as kube-proxy does.
fn write_endpoint(out: &mut String, f: &Frontend, ep: Ipv4Addr) {
    let chain = endpoint_chain(f, ep);
    let _ = writeln!(
        out,
        "add chain {TABLE} {chain}\n\
         flush chain {TABLE} {chain}\n\
         add rule {TABLE} {chain} ip saddr {ep} jump mark-for-masquerade\n\
         add rule {TABLE} {chain} meta l4proto {} dnat to {ep}:{}",
        f.proto.lower(),
        f.target_port
    );
}

fn write_service_chain(out: &mut String, cluster: &Cluster, f: &Frontend) {
    let _ = writeln!(out, "add chain {TABLE} {}", service_chain(f));
    write_service_rules(out, cluster, f);
}

/// The masquerade check, then the random pick over the endpoints.
fn write_service_rules(out: &mut String, cluster: &Cluster, f: &Frontend) {
    let chain = service_chain(f);
    let picks: Vec<String> = f
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, &ep)| format!("{i} : goto {}", endpoint_chain(f, ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {TABLE} {chain} ip daddr {} {} dport {} ip saddr != {} jump mark-for-masquerade\n\
         add rule {TABLE} {chain} numgen random mod {} vmap {{ {} }}",
        f.cluster_ip,
        f.proto.lower(),
        f.port,
        cluster.cluster_cidr,
        f.endpoints.len(),
        picks.join(" , ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::frontends::{synthetic, Proto};

    fn cluster() -> Cluster {
        let mut frontends: Vec<_> = synthetic(2).collect();
        frontends.push(Frontend {
            namespace: "default".into(),
            name: "flood".into(),
            port_name: "udp".into(),
            proto: Proto::Udp,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 12),
            port: 9000,
            node_port: Some(30090),
            target_port: 9000,
            endpoints: vec![Ipv4Addr::new(10, 244, 17, 2)],
        });
        Cluster {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            node_ips: vec![Ipv4Addr::new(192, 168, 50, 10)],
            frontends,
        }
    }

    #[test]
    fn service_ips_map_and_numgen_pick() {
        let c = cluster();
        let text = ruleset(&c);
        let f = &c.frontends[0];
        let chain = service_chain(f);
        assert!(chain.starts_with("service-") && chain.ends_with("-default/svc-000000/tcp/http"));
        assert!(text.contains(&format!(
            "add element ip kube-proxy service-ips {{ 10.100.0.1 . tcp . 80 : goto {chain} }}"
        )));
        let pick = text
            .lines()
            .find(|l| l.starts_with(&format!("add rule ip kube-proxy {chain} numgen")))
            .unwrap();
        assert!(pick.contains("numgen random mod 10 vmap { 0 : goto endpoint-"));
        assert!(pick.contains("__10.128.0.10/8080 }"), "{pick}");
        assert!(text.contains("ip saddr != 10.244.0.0/16 jump mark-for-masquerade"));
        assert!(text.contains(
            "add element ip kube-proxy service-nodeports { udp . 30090 : goto external-"
        ));
        assert!(text.contains("add element ip kube-proxy nodeport-ips { 192.168.50.10 }"));
        // No base chain: the table is hooked in separately.
        assert!(!text.contains("hook"));
        assert_eq!(hooks(true).matches("type nat hook").count(), 3);
        assert_eq!(hooks(false).matches("delete chain").count(), 3);
    }

    #[test]
    fn endpoint_change_rewrites_one_service() {
        let c = cluster();
        let mut after = c.frontends[1].clone();
        let old = after.endpoints[4];
        after.endpoints[4] = Ipv4Addr::new(10, 200, 0, 1);
        let text = endpoint_change(&c, &after, old);
        assert!(text.contains(&format!(
            "flush chain ip kube-proxy {}",
            service_chain(&after)
        )));
        assert!(text.contains("dnat to 10.200.0.1:8080"));
        assert!(text.contains(&format!(
            "delete chain ip kube-proxy {}",
            endpoint_chain(&after, old)
        )));
        // Nothing of the other Services.
        assert!(!text.contains("svc-000000"));
    }
}
