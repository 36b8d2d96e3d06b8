//! The node's own addresses on its uplinks: where NodePorts answer (those
//! `--nodeport-addresses` selects) and the source of SNATed flows.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;

/// IPv4 addresses per interface, for the interfaces named in `names`.
pub fn of_interfaces(names: &BTreeSet<&str>) -> nix::Result<BTreeMap<String, Vec<Ipv4Addr>>> {
    let mut found: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        if !names.contains(ifa.interface_name.as_str()) {
            continue;
        }
        let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        found
            .entry(ifa.interface_name.clone())
            .or_default()
            .push(addr.ip());
    }
    Ok(found)
}

/// The addresses NodePorts answer on: all of them when `allowed` is empty
/// (kube-proxy's default), else those inside one of the CIDRs.
pub fn nodeport_addresses(
    by_interface: &BTreeMap<String, Vec<Ipv4Addr>>,
    allowed: &[IpNet],
) -> BTreeSet<Ipv4Addr> {
    by_interface
        .values()
        .flatten()
        .copied()
        .filter(|a| allowed.is_empty() || allowed.iter().any(|c| c.contains(&IpAddr::V4(*a))))
        .collect()
}

/// The SNAT source: the first address of the first uplink (by name), so
/// the choice is stable while the node's addressing is.
pub fn snat_address(by_interface: &BTreeMap<String, Vec<Ipv4Addr>>) -> Option<Ipv4Addr> {
    by_interface.values().flatten().next().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> BTreeMap<String, Vec<Ipv4Addr>> {
        BTreeMap::from([
            (
                "eth0".to_string(),
                vec![Ipv4Addr::new(192, 168, 1, 5), Ipv4Addr::new(10, 0, 0, 5)],
            ),
            ("eth1".to_string(), vec![Ipv4Addr::new(172, 16, 0, 5)]),
        ])
    }

    #[test]
    fn all_addresses_by_default_else_those_in_the_cidrs() {
        assert_eq!(nodeport_addresses(&plan(), &[]).len(), 3);
        let only: Vec<IpNet> = vec!["192.168.1.0/24".parse().unwrap()];
        assert_eq!(
            nodeport_addresses(&plan(), &only),
            BTreeSet::from([Ipv4Addr::new(192, 168, 1, 5)])
        );
    }

    #[test]
    fn snat_source_is_the_first_uplink_address() {
        assert_eq!(snat_address(&plan()), Some(Ipv4Addr::new(192, 168, 1, 5)));
        assert_eq!(snat_address(&BTreeMap::new()), None);
    }

    #[test]
    fn loopback_is_found_by_name() {
        let lo = of_interfaces(&BTreeSet::from(["lo"])).unwrap();
        // A namespace's lo may be down without addresses; if it has one, it
        // is 127.0.0.1.
        if let Some(addrs) = lo.get("lo") {
            assert!(addrs.contains(&Ipv4Addr::LOCALHOST), "{addrs:?}");
        }
    }
}
