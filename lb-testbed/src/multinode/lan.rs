//! The node network: a namespace holding nothing but a Linux bridge, and
//! veth pairs that plug other namespaces into it, like hosts into a switch.
//!
//! The bridge has no address and the namespace does not forward IP, so the
//! lan is a layer-2 segment only: it is never a routing hop, and a frame on
//! it can only reach the namespaces plugged in.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};

use super::plan::NODE_NETWORK;
use crate::netns::NetNs;

/// The bridge inside the lan namespace.
const BRIDGE: &str = "br0";

/// Creates the lan namespace `name` with its bridge up.
pub(super) fn create(name: String) -> Result<NetNs> {
    let lan = NetNs::create(name)?;
    // Said out loud too: a new namespace inherits the root namespace's IPv4
    // forwarding setting, and the lan must not route even by accident.
    lan.sysctl("net.ipv4.ip_forward", "0")?;
    // STP off (the default, said out loud): ports forward at once instead of
    // listening and learning for 2 × forward_delay first.
    lan.ip(["link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])
        .and_then(|_| lan.ip(["link", "set", BRIDGE, "up"]))
        .with_context(|| format!("creating the bridge in {}", lan.name()))?;
    Ok(lan)
}

/// Plugs `host` into the bridge: a veth created inside `lan`, port `port`
/// on the bridge, its peer `host_if` moved straight into `host` and given
/// `ip` on the node network. Neither end ever exists in the root namespace.
pub(super) fn plug(
    lan: &NetNs,
    port: &str,
    host: &NetNs,
    host_if: &str,
    ip: Ipv4Addr,
) -> Result<()> {
    let plug = || -> Result<()> {
        lan.ip([
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            host_if,
            "netns",
            host.name(),
        ])?;
        lan.ip(["link", "set", port, "master", BRIDGE])?;
        lan.ip(["link", "set", port, "up"])?;
        let prefix = NODE_NETWORK.prefix_len();
        host.ip(["addr", "add", &format!("{ip}/{prefix}"), "dev", host_if])?;
        host.ip(["link", "set", host_if, "up"])?;
        Ok(())
    };
    plug().with_context(|| format!("plugging {} ({ip}) into the lan", host.name()))
}
