//! The maps the fuzzed frames meet: every kind of frontend the agent
//! writes, and what the oracle needs to know of them (read from this
//! setup, never from the datapath).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;

use lb_common::{
    NodeConfig, BACKEND_F_REMOTE, IPPROTO_TCP, IPPROTO_UDP, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES,
};

use crate::fixture::{be_addr, DatapathFixture};

pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
pub const SNAT_PORTS: RangeInclusive<u16> = 61000..=61999;

/// Pod clients (one of them is also a backend: hairpin flows).
pub const POD_CLIENTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 4, 2),
    Ipv4Addr::new(10, 244, 4, 3),
    Ipv4Addr::new(10, 244, 4, 4),
];
/// Clients outside the node: inside and outside the load balancer's
/// source ranges.
pub const EXTERNAL_CLIENTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 168, 50, 100),
    Ipv4Addr::new(192, 168, 50, 101),
    Ipv4Addr::new(203, 0, 113, 7),
];

const LOCAL: u8 = 0;

/// A frontend of the scene: address, port, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub addr: SocketAddrV4,
    pub proto: u8,
}

pub struct Scene {
    pub fixture: DatapathFixture,
    /// Exact frontends (cluster IPs, load-balancer IPs).
    pub frontends: BTreeSet<Target>,
    /// NodePorts, answered on [`NODE`].
    pub node_ports: BTreeSet<(u16, u8)>,
    /// Every backend address.
    pub backends: Vec<SocketAddrV4>,
}

impl Scene {
    pub fn new() -> anyhow::Result<Self> {
        let mut f = DatapathFixture::new()?;
        let pod = |last, port| (Ipv4Addr::new(10, 244, 1, last), port, LOCAL);
        let remote = (Ipv4Addr::new(10, 244, 2, 2), 8080, BACKEND_F_REMOTE);
        let hairpin = (POD_CLIENTS[0], 8080, LOCAL);
        let cluster = Ipv4Addr::new(10, 96, 0, 10);
        let mut frontends = BTreeSet::new();
        let mut add = |f: &mut DatapathFixture,
                       addr: Ipv4Addr,
                       port: u16,
                       proto: u8,
                       backends: &[(Ipv4Addr, u16, u8)],
                       internal: &[(Ipv4Addr, u16, u8)],
                       flags: u16|
         -> anyhow::Result<u32> {
            if addr != Ipv4Addr::UNSPECIFIED {
                frontends.insert(Target {
                    addr: SocketAddrV4::new(addr, port),
                    proto,
                });
            }
            f.add_split_frontend(addr, port, proto, backends, internal, flags)
        };
        // ClusterIP, TCP with a hairpin backend, and UDP.
        add(
            &mut f,
            cluster,
            80,
            IPPROTO_TCP,
            &[pod(2, 8080), pod(3, 8080), hairpin],
            &[],
            0,
        )?;
        add(
            &mut f,
            cluster,
            53,
            IPPROTO_UDP,
            &[pod(2, 5353), pod(3, 5353)],
            &[],
            0,
        )?;
        // Without endpoints (rejections), and Local without local ones.
        let empty = Ipv4Addr::new(10, 96, 0, 11);
        add(&mut f, empty, 80, IPPROTO_TCP, &[], &[], 0)?;
        add(&mut f, empty, 53, IPPROTO_UDP, &[], &[], 0)?;
        let local = Ipv4Addr::new(10, 96, 0, 13);
        add(&mut f, local, 80, IPPROTO_TCP, &[], &[], SVC_F_LOCAL_ONLY)?;
        // Session affinity.
        let sticky = Ipv4Addr::new(10, 96, 0, 12);
        add(
            &mut f,
            sticky,
            80,
            IPPROTO_TCP,
            &[pod(2, 8080), pod(3, 8080)],
            &[],
            0,
        )?;
        f.set_affinity(sticky, 80, IPPROTO_TCP, 10_800)?;
        // NodePorts: a local and a remote backend (SNAT), and UDP.
        f.add_node_address(NODE)?;
        let any = Ipv4Addr::UNSPECIFIED;
        add(
            &mut f,
            any,
            30080,
            IPPROTO_TCP,
            &[pod(2, 8080), remote],
            &[],
            0,
        )?;
        add(&mut f, any, 30053, IPPROTO_UDP, &[pod(2, 5353)], &[], 0)?;
        // Load-balancer IPs: with source ranges, and Local with only
        // another node's endpoint (the node's pods may use it).
        let lb = Ipv4Addr::new(192, 168, 60, 1);
        let ranged = add(
            &mut f,
            lb,
            80,
            IPPROTO_TCP,
            &[pod(2, 8080)],
            &[],
            SVC_F_SOURCE_RANGES,
        )?;
        f.allow_source(ranged, Ipv4Addr::new(192, 168, 50, 0), 24)?;
        let lb_local = Ipv4Addr::new(192, 168, 60, 2);
        add(
            &mut f,
            lb_local,
            80,
            IPPROTO_TCP,
            &[],
            &[remote],
            SVC_F_LOCAL_ONLY,
        )?;
        f.set_config(NodeConfig {
            snat_addr_be: be_addr(NODE),
            snat_port_first: *SNAT_PORTS.start(),
            snat_port_last: *SNAT_PORTS.end(),
        })?;
        let backends = [
            pod(2, 8080),
            pod(3, 8080),
            pod(2, 5353),
            pod(3, 5353),
            remote,
            hairpin,
        ]
        .iter()
        .map(|&(ip, port, _)| SocketAddrV4::new(ip, port))
        .collect();
        Ok(Scene {
            fixture: f,
            frontends,
            node_ports: BTreeSet::from([(30080, IPPROTO_TCP), (30053, IPPROTO_UDP)]),
            backends,
        })
    }

    /// Whether a first fragment (or whole datagram) to `dst` may be a
    /// frontend's, a NodePort's or a reply to an SNATed flow.
    pub fn may_serve(&self, dst: SocketAddrV4, proto: u8) -> bool {
        self.frontends.contains(&Target { addr: dst, proto })
            || (*dst.ip() == NODE
                && (self.node_ports.contains(&(dst.port(), proto))
                    || SNAT_PORTS.contains(&dst.port())))
    }

    /// Whether a later fragment (no ports) to `dst` may be one of a
    /// datagram the datapath rewrote.
    pub fn may_serve_fragment(&self, dst: Ipv4Addr) -> bool {
        dst == NODE || self.frontends.iter().any(|t| *t.addr.ip() == dst)
    }

    /// Frontends to aim at, NodePorts included (as `NODE:port`).
    pub fn targets(&self) -> Vec<Target> {
        let node_ports = self.node_ports.iter().map(|&(port, proto)| Target {
            addr: SocketAddrV4::new(NODE, port),
            proto,
        });
        self.frontends.iter().copied().chain(node_ports).collect()
    }
}
