//! The rule sets kube-proxy would write for the benchmarked Services, in
//! its iptables and nftables modes: the anchors our datapath is compared
//! with. Each generator says which kube-proxy behaviour it mirrors; the
//! benchmarks load them with `iptables-restore` and `nft -f` inside a
//! topology's node namespace only.

mod names;

pub mod iptables;
pub mod nftables;
