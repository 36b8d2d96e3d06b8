//! The node's address plan, as a kube-proxy operator states it with
//! `--cluster-cidr`, `--service-cidr` and `--nodeport-addresses`, checked
//! before anything is programmed: Service, Pod and node ranges that overlap
//! make traffic go to the wrong place in ways no dataplane can fix, so the
//! agent refuses to start on them (the seed's rule).

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

/// The ranges the agent was told about. Empty lists mean "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Pod network(s) (`--cluster-cidr`).
    pub cluster_cidrs: Vec<IpNet>,
    /// Service ClusterIP range(s) (`--service-cidr`).
    pub service_cidrs: Vec<IpNet>,
    /// Node addresses NodePorts answer on (`--nodeport-addresses`); empty
    /// means all of the node's addresses.
    pub nodeport_addresses: Vec<IpNet>,
}

/// Two ranges that must be disjoint are not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag_a} {a} overlaps --{flag_b} {b}: Service, Pod and node networks must be separate (traffic to the overlap would be load-balanced or routed wrongly); fix the flags")]
pub struct Overlap {
    pub flag_a: &'static str,
    pub a: IpNet,
    pub flag_b: &'static str,
    pub b: IpNet,
}

/// A node address inside a Service or Pod range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node} address {addr} is inside --{flag} {cidr}: node, Service and Pod networks must be separate")]
pub struct NodeAddressOverlap {
    pub node: String,
    pub addr: IpAddr,
    pub flag: &'static str,
    pub cidr: IpNet,
}

impl NetConfig {
    /// Every pair of ranges that must be disjoint and is not: Service vs
    /// Pod, and NodePort (node) addresses vs either.
    pub fn overlaps(&self) -> Vec<Overlap> {
        let groups: [(&'static str, &[IpNet]); 3] = [
            ("service-cidr", &self.service_cidrs),
            ("cluster-cidr", &self.cluster_cidrs),
            ("nodeport-addresses", &self.nodeport_addresses),
        ];
        let mut found = Vec::new();
        for (i, (flag_a, a_list)) in groups.iter().enumerate() {
            for (flag_b, b_list) in &groups[i + 1..] {
                for a in *a_list {
                    for b in *b_list {
                        if overlap(a, b) {
                            found.push(Overlap {
                                flag_a,
                                a: *a,
                                flag_b,
                                b: *b,
                            });
                        }
                    }
                }
            }
        }
        found
    }

    /// The node's own addresses that fall inside a Service or Pod range.
    pub fn node_address_overlaps(&self, node: &str, addrs: &[IpAddr]) -> Vec<NodeAddressOverlap> {
        let ranges = self
            .service_cidrs
            .iter()
            .map(|c| ("service-cidr", c))
            .chain(self.cluster_cidrs.iter().map(|c| ("cluster-cidr", c)));
        ranges
            .flat_map(|(flag, cidr)| {
                addrs
                    .iter()
                    .filter(|a| cidr.contains(*a))
                    .map(move |addr| NodeAddressOverlap {
                        node: node.to_string(),
                        addr: *addr,
                        flag,
                        cidr: *cidr,
                    })
            })
            .collect()
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |l: &[IpNet]| {
            if l.is_empty() {
                "-".to_string()
            } else {
                l.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        write!(
            f,
            "cluster-cidr {} service-cidr {} nodeport-addresses {}",
            list(&self.cluster_cidrs),
            list(&self.service_cidrs),
            if self.nodeport_addresses.is_empty() {
                "all".to_string()
            } else {
                list(&self.nodeport_addresses)
            }
        )
    }
}

/// CIDRs overlap iff one contains the other's network address.
fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses a flag's value: a CIDR, or a plain address (a /32 or /128), with
/// the flag named in the error.
pub fn parse_cidr(flag: &str, s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("--{flag}: {s:?} is not a CIDR (e.g. 10.96.0.0/12)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn seed_plan() -> NetConfig {
        // The seed's example: pods 10.244.0.0/16, Services 10.96.0.0/12,
        // nodes 192.168.1.0/24.
        NetConfig {
            cluster_cidrs: vec![net("10.244.0.0/16")],
            service_cidrs: vec![net("10.96.0.0/12")],
            nodeport_addresses: vec![net("192.168.1.0/24")],
        }
    }

    #[test]
    fn the_seed_example_is_accepted() {
        assert_eq!(seed_plan().overlaps(), vec![]);
    }

    #[test]
    fn service_and_pod_overlap_is_refused_naming_both_flags() {
        let mut plan = seed_plan();
        plan.cluster_cidrs.push(net("10.100.0.0/16")); // inside 10.96.0.0/12
        let found = plan.overlaps();
        assert_eq!(found.len(), 1, "{found:?}");
        let msg = found[0].to_string();
        assert!(msg.contains("--service-cidr 10.96.0.0/12"), "{msg}");
        assert!(msg.contains("--cluster-cidr 10.100.0.0/16"), "{msg}");
    }

    #[test]
    fn nodeport_addresses_inside_the_pod_range_are_refused() {
        let mut plan = seed_plan();
        plan.nodeport_addresses = vec![net("10.244.3.0/24")];
        let found = plan.overlaps();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].flag_b, "nodeport-addresses");
    }

    #[test]
    fn adjacent_ranges_do_not_overlap() {
        assert!(!overlap(&net("10.0.0.0/9"), &net("10.128.0.0/9")));
        assert!(overlap(&net("10.0.0.0/8"), &net("10.128.0.0/9")));
        assert!(!overlap(&net("fd00::/64"), &net("10.0.0.0/8")));
    }

    #[test]
    fn node_addresses_inside_service_or_pod_ranges_are_reported() {
        let plan = seed_plan();
        let addrs: Vec<IpAddr> = vec!["192.168.1.5".parse().unwrap(), "10.96.0.7".parse().unwrap()];
        let found = plan.node_address_overlaps("node-a", &addrs);
        assert_eq!(found.len(), 1);
        assert!(found[0]
            .to_string()
            .contains("node node-a address 10.96.0.7"));
    }

    #[test]
    fn flag_values_parse_with_clear_errors() {
        assert_eq!(
            parse_cidr("service-cidr", "10.96.0.0/12"),
            Ok(net("10.96.0.0/12"))
        );
        assert_eq!(
            parse_cidr("nodeport-addresses", "192.168.1.5"),
            Ok(net("192.168.1.5/32"))
        );
        let err = parse_cidr("cluster-cidr", "10.244.0.0/33").unwrap_err();
        assert!(
            err.contains("--cluster-cidr") && err.contains("10.244.0.0/33"),
            "{err}"
        );
    }
}
