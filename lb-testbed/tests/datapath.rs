//! Datapath unit tests through BPF_PROG_TEST_RUN, Katran-style: an input
//! frame, maps seeded by the test, the expected verdict and the expected
//! output bytes (built by etherparse, whose checksums are computed from
//! scratch, so a byte-exact match also proves the incremental updates).

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_agent::ebpf::PodHook;
use lb_common::{
    stats, FragKey, FragValue, NodeConfig, BACKEND_F_REMOTE, CT_DIR_FORWARD, CT_DIR_REPLY,
    CT_F_CLOSING, IPPROTO_TCP, IPPROTO_UDP, REJECT_BOUNCE_MARK, SVC_F_LOCAL_ONLY,
    SVC_F_SOURCE_RANGES,
};
use lb_testbed::{
    fixture::{be_addr, DatapathFixture, Verdict, TC_ACT_OK, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS},
    packets::{
        decode, fragments, frame, icmp_port_unreachable_frame, ipv4_checksum_ok, rst_frame, L4,
    },
    privileged::require_privileged,
};

/// The pod-side forward path's hooks: every pod-side test runs on both.
const HOOKS: [PodHook; 2] = [PodHook::Tc, PodHook::Xdp];

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 4, 2), 40000);
const FRONTEND: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 8080);

/// A fixture with one TCP and one UDP frontend on VIP, one backend each.
fn one_backend() -> Option<DatapathFixture> {
    if !require_privileged("datapath") {
        return None;
    }
    let mut f = DatapathFixture::new().expect("loading the datapath");
    f.add_service(VIP, 80, IPPROTO_TCP, &[(*BACKEND.ip(), 8080)])
        .unwrap();
    f.add_service(VIP, 53, IPPROTO_UDP, &[(*BACKEND.ip(), 5353)])
        .unwrap();
    Some(f)
}

#[test]
fn tcp_to_frontend_is_dnated_with_valid_checksums() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        let input = frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b"");
        let (verdict, out) = f.run_pod(hook, &input).unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            out,
            frame(L4::TcpSyn, CLIENT, BACKEND, &[], b""),
            "byte-exact DNAT"
        );
        assert!(decode(&out).unwrap().checksums_ok);
        assert_eq!(f.count(stats::Reason::DnatNewFlow.index()).unwrap(), 1);

        // The next packet of the flow hits conntrack and goes to the same backend.
        let ack = frame(L4::TcpAck, CLIENT, FRONTEND, &[], b"GET / HTTP/1.0\r\n\r\n");
        let (verdict, out) = f.run_pod(hook, &ack).unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            out,
            frame(L4::TcpAck, CLIENT, BACKEND, &[], b"GET / HTTP/1.0\r\n\r\n")
        );
        assert_eq!(f.count(stats::Reason::DnatEstablished.index()).unwrap(), 1);

        // Both directions are tracked, with the backend and frontend ids.
        let ct = f.conntrack().unwrap();
        assert_eq!(ct.len(), 2, "{ct:?}");
        let fwd = ct
            .iter()
            .find(|(k, _)| k.dir == CT_DIR_FORWARD)
            .expect("forward entry");
        assert_eq!(
            (fwd.0.saddr_be, fwd.0.daddr_be),
            (be_addr(*CLIENT.ip()), be_addr(VIP))
        );
        let reply = ct
            .iter()
            .find(|(k, _)| k.dir == CT_DIR_REPLY)
            .expect("reply entry");
        assert_eq!(
            (reply.0.saddr_be, reply.0.daddr_be),
            (be_addr(*BACKEND.ip()), be_addr(*CLIENT.ip()))
        );
        assert_eq!(
            (reply.0.sport_be, reply.0.dport_be),
            (8080u16.to_be(), 40000u16.to_be())
        );
    }
}

#[test]
fn udp_to_frontend_is_dnated_and_zero_checksum_stays_zero() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        let dns = SocketAddrV4::new(VIP, 53);
        let backend = SocketAddrV4::new(*BACKEND.ip(), 5353);
        let (verdict, out) = f
            .run_pod(hook, &frame(L4::Udp, CLIENT, dns, &[], b"query"))
            .unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(out, frame(L4::Udp, CLIENT, backend, &[], b"query"));

        let other_client = SocketAddrV4::new(*CLIENT.ip(), 40001);
        let (verdict, out) = f
            .run_pod(
                hook,
                &frame(L4::UdpNoChecksum, other_client, dns, &[], b"query"),
            )
            .unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            out,
            frame(L4::UdpNoChecksum, other_client, backend, &[], b"query")
        );
        assert!(decode(&out).unwrap().udp_no_checksum);
    }
}

/// `f` as a pod sends it with checksum offload (CHECKSUM_PARTIAL): the L4
/// checksum field holds only the folded pseudo-header sum, from which the
/// NIC (or the kernel, for a device without offload) computes the checksum.
/// No IP options.
fn partial(mut f: Vec<u8>) -> Vec<u8> {
    let word = |b: &[u8]| u32::from_ne_bytes(b.try_into().unwrap());
    let (saddr, daddr, proto) = (word(&f[26..30]), word(&f[30..34]), f[23]);
    let seed = lb_common::csum::fold(lb_common::csum::pseudo_header(
        saddr,
        daddr,
        proto,
        (f.len() - 34) as u16,
    ));
    let off = 34 + if proto == IPPROTO_TCP { 16 } else { 6 };
    f[off..off + 2].copy_from_slice(&seed.to_ne_bytes());
    f
}

/// A partial checksum must stay exactly the pseudo-header sum of the new
/// addresses (the ports are not in it): updated as a complete checksum, it
/// becomes a seed from which the NIC computes a wrong checksum, and the
/// packet is dropped as soon as it leaves through a device that computes
/// checksums (e2e: `checksums_hold_when_the_node_computes_them`).
#[test]
fn offloaded_checksums_stay_pseudo_header_sums() {
    let Some(f) = one_backend() else { return };
    let (verdict, out) = f
        .run_xdp(&partial(frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b"")))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, partial(frame(L4::TcpSyn, CLIENT, BACKEND, &[], b"")));
    let data = partial(frame(L4::TcpAck, CLIENT, FRONTEND, &[], b"some data"));
    let (verdict, out) = f.run_xdp(&data).unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        out,
        partial(frame(L4::TcpAck, CLIENT, BACKEND, &[], b"some data"))
    );
    let dns = SocketAddrV4::new(VIP, 53);
    let backend = SocketAddrV4::new(*BACKEND.ip(), 5353);
    let (verdict, out) = f
        .run_xdp(&partial(frame(L4::Udp, CLIENT, dns, &[], b"query")))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, partial(frame(L4::Udp, CLIENT, backend, &[], b"query")));
}

#[test]
fn ip_options_are_skipped_correctly() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        // Four NOPs and an end-of-options list padded to 8 bytes: IHL 7.
        let options = [1, 1, 1, 1, 0, 0, 0, 0];
        let (verdict, out) = f
            .run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &options, b""))
            .unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(out, frame(L4::TcpSyn, CLIENT, BACKEND, &options, b""));
    }
}

#[test]
fn reply_is_reverse_nated_at_tc_egress() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        f.run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
            .unwrap();
        let reply = frame(L4::TcpAck, BACKEND, CLIENT, &[], b"pod-1");
        let (verdict, out) = f.run_tc(&reply).unwrap();
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            out,
            frame(L4::TcpAck, FRONTEND, CLIENT, &[], b"pod-1"),
            "source restored to the frontend"
        );
        assert_eq!(f.count(stats::Reason::Revnat.index()).unwrap(), 1);

        // UDP too, zero checksum kept.
        let dns = SocketAddrV4::new(VIP, 53);
        let backend = SocketAddrV4::new(*BACKEND.ip(), 5353);
        f.run_pod(hook, &frame(L4::UdpNoChecksum, CLIENT, dns, &[], b"q"))
            .unwrap();
        let (_, out) = f
            .run_tc(&frame(L4::UdpNoChecksum, backend, CLIENT, &[], b"answer"))
            .unwrap();
        assert_eq!(out, frame(L4::UdpNoChecksum, dns, CLIENT, &[], b"answer"));
    }
}

/// The filter decides before the maps: a frontend without its bit is
/// passed as no Service, a reply from a backend without its bit is passed
/// without a conntrack lookup; a filter not yet written by the agent (not
/// valid) filters nothing.
#[test]
fn the_filter_answers_before_the_service_and_conntrack_maps() {
    for hook in HOOKS {
        let Some(mut f) = one_backend() else { return };
        let syn = frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b"");
        let reply = frame(L4::TcpAck, BACKEND, CLIENT, &[], b"pod-1");
        f.run_pod(hook, &syn).unwrap();
        f.reset_filter(true).unwrap();
        assert_eq!(f.run_tc(&reply).unwrap(), (TC_ACT_OK, reply.clone()));
        assert_eq!(f.count(stats::Reason::Revnat.index()).unwrap(), 0);
        assert_eq!(f.run_pod(hook, &syn).unwrap(), (Verdict::Pass, syn.clone()));
        assert_eq!(f.count(stats::Reason::PassNoService.index()).unwrap(), 1);
        f.reset_filter(false).unwrap();
        let (_, out) = f.run_pod(hook, &syn).unwrap();
        assert_eq!(out, frame(L4::TcpSyn, CLIENT, BACKEND, &[], b""));
        let (_, out) = f.run_tc(&reply).unwrap();
        assert_eq!(out, frame(L4::TcpAck, FRONTEND, CLIENT, &[], b"pod-1"));
    }
}

#[test]
fn lookalike_reply_without_conntrack_is_not_rewritten() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        // Source is a backend, but no flow was ever balanced to it.
        let reply = frame(L4::TcpAck, BACKEND, CLIENT, &[], b"pod-1");
        let (verdict, out) = f.run_tc(&reply).unwrap();
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, reply);
        assert_eq!(f.count(stats::Reason::TcPassNotReply.index()).unwrap(), 1);
        // And the XDP side leaves it alone too (not addressed to a frontend).
        let (verdict, out) = f.run_pod(hook, &reply).unwrap();
        assert_eq!((verdict, out), (Verdict::Pass, reply));
    }
}

#[test]
fn miss_non_ipv4_fragments_and_truncation_pass_untouched() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "other port",
                frame(L4::TcpSyn, CLIENT, SocketAddrV4::new(VIP, 81), &[], b""),
                stats::Reason::PassNoService.index(),
            ),
            (
                "other address",
                frame(
                    L4::TcpSyn,
                    CLIENT,
                    SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80),
                    &[],
                    b"",
                ),
                stats::Reason::PassNoService.index(),
            ),
            (
                "wrong protocol",
                frame(L4::Udp, CLIENT, FRONTEND, &[], b""),
                stats::Reason::PassNoService.index(),
            ),
            (
                "ipv6 ethertype",
                ether_type(frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""), 0x86dd),
                stats::Reason::PassNotIpv4.index(),
            ),
            (
                "arp ethertype",
                ether_type(frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""), 0x0806),
                stats::Reason::PassNotIpv4.index(),
            ),
            (
                "icmp",
                ip_proto(frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""), 1),
                stats::Reason::PassNotTcpUdp.index(),
            ),
            // A first fragment is balanced like a whole datagram (see the
            // fragment tests below); a later one of an unknown datagram is not.
            (
                "later fragment",
                fragment(
                    frame(L4::Udp, CLIENT, SocketAddrV4::new(VIP, 53), &[], b"x"),
                    0x0010,
                ),
                stats::Reason::PassFragment.index(),
            ),
            (
                "ihl below 5",
                ihl(frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""), 4),
                stats::Reason::PassTruncated.index(),
            ),
        ];
        for (name, input, reason) in cases {
            let before = f.count(reason).unwrap();
            let (verdict, out) = f.run_pod(hook, &input).unwrap();
            assert_eq!(verdict, Verdict::Pass, "{name}");
            assert_eq!(out, input, "{name}: untouched");
            assert_eq!(
                f.count(reason).unwrap(),
                before + 1,
                "{name}: counted as {}",
                stats::Reason::from_index(reason).map_or("?", |r| r.name())
            );
        }
        // Cut a frontend-bound SYN at every length short of its full headers
        // (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header,
        // and for TC, IPv4 frames shorter than an IPv4 header too).
        let full = frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b"");
        let shortest = if hook == PodHook::Tc { 34 } else { 14 };
        for len in shortest..full.len() {
            let (verdict, out) = f
                .run_pod(hook, &full[..len])
                .unwrap_or_else(|e| panic!("len {len}: {e:#}"));
            assert_eq!(
                (verdict, out.as_slice()),
                (Verdict::Pass, &full[..len]),
                "truncated at {len}"
            );
        }
        assert!(f.conntrack().unwrap().is_empty(), "nothing tracked");
    }
}

/// The frame of a rejection, sent back out of the interface it came in
/// on: redirected by TC, or (XDP) passed up behind the metadata that tells
/// `lb_tc_ingress` to send it back, or XDP_TX where the kernel refuses XDP
/// metadata (see `Verdict::of_xdp`).
fn bounced((verdict, out): (Verdict, Vec<u8>)) -> Vec<u8> {
    assert_eq!(verdict, Verdict::SentBack, "a rejection goes back");
    out
}

/// `lb_tc_ingress` lets every frame without the rejection mark through
/// untouched (the marked ones are covered end to end by e2e_reject).
#[test]
fn tc_ingress_passes_unmarked_frames_untouched() {
    let Some(f) = no_backends() else { return };
    for input in [
        frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""),
        rst_frame(FRONTEND, CLIENT, 1001),
    ] {
        assert_eq!(f.run_tc_ingress(&input).unwrap(), (TC_ACT_OK, input));
    }
}

/// On kernels that refuse XDP metadata, an XDP refusal carries its mark
/// as a trailer: `lb_tc_ingress` strips it and sends the refusal back.
/// Elsewhere it leaves such a frame alone (the mark is metadata there).
#[test]
fn tc_ingress_bounces_a_refusal_marked_by_its_trailer() {
    let Some(f) = no_backends() else { return };
    let rst = rst_frame(FRONTEND, CLIENT, 1001);
    let mut marked = rst.clone();
    marked.extend(REJECT_BOUNCE_MARK.to_ne_bytes());
    let got = f.run_tc_ingress(&marked).unwrap();
    if lb_agent::ebpf::probe::xdp_adjust_meta() {
        assert_eq!(
            got,
            (TC_ACT_OK, marked.clone()),
            "metadata kernel: untouched"
        );
    } else {
        assert_eq!(got, (TC_ACT_REDIRECT, rst), "trailer stripped, sent back");
    }
    // A frame of another length is never taken for one.
    let mut longer = marked.clone();
    longer.insert(54, 0);
    assert_eq!(f.run_tc_ingress(&longer).unwrap(), (TC_ACT_OK, longer));
}

/// A fixture whose TCP and UDP frontends on VIP have no backends.
fn no_backends() -> Option<DatapathFixture> {
    if !require_privileged("datapath") {
        return None;
    }
    let mut f = DatapathFixture::new().expect("loading the datapath");
    f.add_service(VIP, 80, IPPROTO_TCP, &[]).unwrap();
    f.add_service(VIP, 53, IPPROTO_UDP, &[]).unwrap();
    Some(f)
}

#[test]
fn syn_to_frontend_without_backends_is_answered_with_a_rst() {
    for hook in HOOKS {
        let Some(f) = no_backends() else { return };
        let out = bounced(
            f.run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
                .unwrap(),
        );
        // The SYN's seq is 1000: the RST acknowledges 1001.
        assert_eq!(out, rst_frame(FRONTEND, CLIENT, 1001), "byte-exact RST");
        let decoded = decode(&out).unwrap();
        assert!(decoded.checksums_ok);
        assert_eq!((decoded.src, decoded.dst), (FRONTEND, CLIENT));
        assert_eq!(f.count(stats::Reason::RejectTcpRst.index()).unwrap(), 1);

        // TCP options are dropped (the packet shrinks), and data on the SYN is
        // acknowledged too.
        let out = bounced(
            f.run_pod(hook, &frame(L4::TcpSynMss, CLIENT, FRONTEND, &[], b"hello"))
                .unwrap(),
        );
        assert_eq!(
            out,
            rst_frame(FRONTEND, CLIENT, 1006),
            "RST without options"
        );
        assert_eq!(f.count(stats::Reason::RejectTcpRst.index()).unwrap(), 2);
        assert!(f.conntrack().unwrap().is_empty(), "nothing tracked");
    }
}

#[test]
fn udp_to_frontend_without_backends_is_answered_with_port_unreachable() {
    for hook in HOOKS {
        let Some(f) = no_backends() else { return };
        let dns = SocketAddrV4::new(VIP, 53);
        // Short and long datagrams: the reply grows or shrinks to 70 bytes.
        for payload in [&b"q"[..], &[7u8; 200][..]] {
            for l4 in [L4::Udp, L4::UdpNoChecksum] {
                let input = frame(l4, CLIENT, dns, &[], payload);
                let out = bounced(f.run_pod(hook, &input).unwrap());
                assert_eq!(
                    out,
                    icmp_port_unreachable_frame(VIP, &input),
                    "byte-exact ICMP for {} bytes of {l4:?}",
                    payload.len()
                );
            }
        }
        assert_eq!(
            f.count(stats::Reason::RejectIcmpUnreachable.index())
                .unwrap(),
            4
        );
    }
}

#[test]
fn frontend_without_backends_drops_what_it_does_not_answer() {
    for hook in HOOKS {
        let Some(f) = no_backends() else { return };
        let cases = [
            ("non-SYN", frame(L4::TcpAck, CLIENT, FRONTEND, &[], b"data")),
            (
                "IP options",
                frame(L4::TcpSyn, CLIENT, FRONTEND, &[1, 1, 1, 0], b""),
            ),
        ];
        for (i, (name, input)) in cases.iter().enumerate() {
            let (verdict, _) = f.run_pod(hook, input).unwrap();
            assert_eq!(verdict, Verdict::Drop, "{name}");
            assert_eq!(
                f.count(stats::Reason::DropNoBackends.index()).unwrap(),
                i as u64 + 1
            );
        }
        assert_eq!(f.count(stats::Reason::RejectTcpRst.index()).unwrap(), 0);
    }
}

#[test]
fn new_flows_spread_uniformly_and_stick() {
    for hook in HOOKS {
        if !require_privileged("datapath") {
            return;
        }
        let mut f = DatapathFixture::new().unwrap();
        let backends: Vec<(Ipv4Addr, u16)> = (1..=3)
            .map(|i| (Ipv4Addr::new(10, 244, i, 2), 8080))
            .collect();
        f.add_service(VIP, 80, IPPROTO_TCP, &backends).unwrap();
        let mut hits = [0u32; 3];
        for port in 10_000..13_000u16 {
            let client = SocketAddrV4::new(*CLIENT.ip(), port);
            let (_, out) = f
                .run_pod(hook, &frame(L4::TcpSyn, client, FRONTEND, &[], b""))
                .unwrap();
            let dst = decode(&out).unwrap().dst;
            let i = backends
                .iter()
                .position(|b| b.0 == *dst.ip())
                .expect("a backend");
            hits[i] += 1;
            // The same flow sticks to its backend.
            let (_, again) = f
                .run_pod(hook, &frame(L4::TcpAck, client, FRONTEND, &[], b""))
                .unwrap();
            assert_eq!(decode(&again).unwrap().dst, dst);
        }
        for h in hits {
            assert!(
                (850..=1150).contains(&h),
                "uniform spread over 3000 flows: {hits:?}"
            );
        }
    }
}

/// A connection whose conntrack entries are lost (a full map evicted them,
/// or they expired) keeps its backend: the choice is a hash of the
/// 5-tuple, so its next packet is balanced to the same backend, counted.
#[test]
fn a_connection_that_lost_its_conntrack_entry_keeps_its_backend() {
    for hook in HOOKS {
        if !require_privileged("datapath") {
            return;
        }
        let mut f = DatapathFixture::new().unwrap();
        // Not 10.244.4.2: that is the client, which would make it a hairpin.
        let backends: Vec<(Ipv4Addr, u16)> = (1..=5)
            .map(|i| (Ipv4Addr::new(10, 244, 10 + i, 2), 8080))
            .collect();
        f.add_service(VIP, 80, IPPROTO_TCP, &backends).unwrap();
        let mut spread = std::collections::BTreeSet::new();
        for port in 20_000..20_050u16 {
            let client = SocketAddrV4::new(*CLIENT.ip(), port);
            let (_, out) = f
                .run_pod(hook, &frame(L4::TcpSyn, client, FRONTEND, &[], b""))
                .unwrap();
            let first = decode(&out).unwrap().dst;
            // Userspace computes the same choice (what `lbctl explain` relies
            // on): slot 1 + hash % count, the fixture's slots in list order.
            let hash = lb_common::hash::flow_hash(
                be_addr(*client.ip()),
                be_addr(VIP),
                port.to_be(),
                80u16.to_be(),
                IPPROTO_TCP,
            );
            let slot = (hash % backends.len() as u32) as usize;
            assert_eq!(*first.ip(), backends[slot].0, "flow from port {port}");
            f.forget_conntrack().unwrap();
            let (verdict, again) = f
                .run_pod(hook, &frame(L4::TcpAck, client, FRONTEND, &[], b"data"))
                .unwrap();
            assert_eq!(verdict, Verdict::Pass);
            assert_eq!(decode(&again).unwrap().dst, first, "flow from port {port}");
            spread.insert(first);
        }
        assert_eq!(f.count(stats::Reason::CtMissMidflow.index()).unwrap(), 50);
        assert_eq!(spread.len(), 5, "50 flows over 5 backends: {spread:?}");
        let ct = f.conntrack().unwrap();
        assert_eq!(ct.len(), 2, "the last flow is tracked again: {ct:?}");
    }
}

fn ether_type(mut f: Vec<u8>, t: u16) -> Vec<u8> {
    f[12..14].copy_from_slice(&t.to_be_bytes());
    f
}

fn ip_proto(mut f: Vec<u8>, p: u8) -> Vec<u8> {
    f[23] = p;
    f
}

fn fragment(mut f: Vec<u8>, frag_off: u16) -> Vec<u8> {
    f[20..22].copy_from_slice(&frag_off.to_be_bytes());
    f
}

fn ihl(mut f: Vec<u8>, ihl: u8) -> Vec<u8> {
    f[14] = 0x40 | ihl;
    f
}

#[test]
fn established_tcp_keeps_a_removed_backend_but_new_flows_and_udp_move_on() {
    for hook in HOOKS {
        let Some(mut f) = one_backend() else { return };
        let next = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 8080);
        let dns = SocketAddrV4::new(VIP, 53);
        f.run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
            .unwrap();
        f.run_pod(hook, &frame(L4::Udp, CLIENT, dns, &[], b"q1"))
            .unwrap();

        // The backend leaves both Services (scale-down): they now point to
        // `next`, and the agent deletes the old backend entry.
        f.add_service(VIP, 80, IPPROTO_TCP, &[(*next.ip(), 8080)])
            .unwrap();
        f.add_service(VIP, 53, IPPROTO_UDP, &[(*next.ip(), 5353)])
            .unwrap();
        assert!(f.remove_backend(*BACKEND.ip(), 8080).unwrap());
        assert!(f.remove_backend(*BACKEND.ip(), 5353).unwrap());

        // The established connection still reaches its pod, as with kube-proxy.
        let data = frame(L4::TcpAck, CLIENT, FRONTEND, &[], b"more");
        let (verdict, out) = f.run_pod(hook, &data).unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(out, frame(L4::TcpAck, CLIENT, BACKEND, &[], b"more"));
        assert_eq!(f.count(stats::Reason::DnatEstablished.index()).unwrap(), 1);

        // A new connection reusing the tuple (a SYN) is balanced afresh.
        let (_, out) = f
            .run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
            .unwrap();
        assert_eq!(out, frame(L4::TcpSyn, CLIENT, next, &[], b""));

        // The next UDP datagram of the flow goes to a live backend.
        let (_, out) = f
            .run_pod(hook, &frame(L4::Udp, CLIENT, dns, &[], b"q2"))
            .unwrap();
        let live = SocketAddrV4::new(*next.ip(), 5353);
        assert_eq!(out, frame(L4::Udp, CLIENT, live, &[], b"q2"));
        assert_eq!(f.count(stats::Reason::DnatNewFlow.index()).unwrap(), 4);
    }
}

// ---- the node's uplinks: NodePort from outside ------------------------------

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const EXTERNAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 100), 50000);
const NODE_PORT: SocketAddrV4 = SocketAddrV4::new(NODE, 30080);
/// A pod on another node.
const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 8080);
const SNAT_PORTS: (u16, u16) = (61000, 61003);

fn node_fixture(backend: SocketAddrV4, flags: u8, svc_flags: u16) -> Option<DatapathFixture> {
    if !require_privileged("datapath") {
        return None;
    }
    let mut f = DatapathFixture::new().expect("loading the datapath");
    f.add_frontend(
        NODE,
        NODE_PORT.port(),
        IPPROTO_TCP,
        &[(*backend.ip(), backend.port(), flags)],
        svc_flags,
    )
    .unwrap();
    f.set_config(NodeConfig {
        snat_addr_be: be_addr(NODE),
        snat_port_first: SNAT_PORTS.0,
        snat_port_last: SNAT_PORTS.1,
    })
    .unwrap();
    Some(f)
}

#[test]
fn nodeport_to_a_local_backend_is_dnated_and_its_reply_reverse_nated() {
    let Some(f) = node_fixture(BACKEND, 0, 0) else {
        return;
    };
    let (verdict, out) = f
        .run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, NODE_PORT, &[], b""))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, frame(L4::TcpSyn, EXTERNAL, BACKEND, &[], b""));
    assert_eq!(f.count(stats::Reason::DnatNewFlow.index()).unwrap(), 1);
    // No SNAT: the client's address reaches the pod.
    assert_eq!(f.conntrack().unwrap().len(), 2);
    // The pod's reply leaves through the uplink as the NodePort's.
    let (verdict, out) = f
        .run_tc_node(&frame(L4::TcpAck, BACKEND, EXTERNAL, &[], b"hi"))
        .unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, frame(L4::TcpAck, NODE_PORT, EXTERNAL, &[], b"hi"));
}

#[test]
fn nodeport_to_a_remote_backend_is_snated_and_its_reply_restored() {
    let Some(f) = node_fixture(REMOTE, BACKEND_F_REMOTE, 0) else {
        return;
    };
    // In at the uplink: DNAT only (netfilter sees client -> pod).
    let (verdict, out) = f
        .run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, NODE_PORT, &[], b""))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, frame(L4::TcpSyn, EXTERNAL, REMOTE, &[], b""));
    assert_eq!(f.count(stats::Reason::DnatSnatNewFlow.index()).unwrap(), 1);

    // Out at the uplink, after routing: SNAT to the node and an SNAT port.
    let (verdict, out) = f
        .run_tc_node(&frame(L4::TcpSyn, EXTERNAL, REMOTE, &[], b""))
        .unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    let decoded = decode(&out).unwrap();
    assert!(decoded.checksums_ok);
    let snat = decoded.src;
    assert_eq!(*snat.ip(), NODE);
    assert!(
        (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&snat.port()),
        "{snat}"
    );
    assert_eq!(out, frame(L4::TcpSyn, snat, REMOTE, &[], b""));
    assert_eq!(f.count(stats::Reason::Snat.index()).unwrap(), 1);
    // A pod veth's egress SNATs only hairpins (source = destination): the
    // same packet into a pod is spared the lookup and passes as it came.
    let into_pod = frame(L4::TcpSyn, EXTERNAL, REMOTE, &[], b"");
    assert_eq!(f.run_tc(&into_pod).unwrap(), (TC_ACT_OK, into_pod));
    assert_eq!(f.count(stats::Reason::Snat.index()).unwrap(), 1);

    // The remote pod's reply to node:port comes in: back to the client.
    let (verdict, out) = f
        .run_xdp_node(&frame(L4::TcpAck, REMOTE, snat, &[], b"hi"))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, frame(L4::TcpAck, REMOTE, EXTERNAL, &[], b"hi"));
    assert_eq!(f.count(stats::Reason::Unsnat.index()).unwrap(), 1);
    // ... and leaves (after netfilter saw pod -> client) as the NodePort's.
    let (_, out) = f
        .run_tc_node(&frame(L4::TcpAck, REMOTE, EXTERNAL, &[], b"hi"))
        .unwrap();
    assert_eq!(out, frame(L4::TcpAck, NODE_PORT, EXTERNAL, &[], b"hi"));
}

#[test]
fn snat_ports_never_collide_and_run_out_with_a_counted_drop() {
    let Some(f) = node_fixture(REMOTE, BACKEND_F_REMOTE, 0) else {
        return;
    };
    let span = usize::from(SNAT_PORTS.1 - SNAT_PORTS.0 + 1);
    let mut ports = std::collections::BTreeSet::new();
    let mut clients = 0u16;
    // Random probing may fail before the range is full; keep opening flows
    // until it is, then one more must be refused.
    while ports.len() < span && clients < 200 {
        let client = SocketAddrV4::new(*EXTERNAL.ip(), 40000 + clients);
        clients += 1;
        let (verdict, _) = f
            .run_xdp_node(&frame(L4::TcpSyn, client, NODE_PORT, &[], b""))
            .unwrap();
        if verdict == XDP_DROP {
            continue;
        }
        let (_, out) = f
            .run_tc_node(&frame(L4::TcpSyn, client, REMOTE, &[], b""))
            .unwrap();
        let port = decode(&out).unwrap().src.port();
        assert!(ports.insert(port), "SNAT port {port} handed out twice");
    }
    assert_eq!(ports.len(), span, "the SNAT range was not used up");
    let late = SocketAddrV4::new(*EXTERNAL.ip(), 60000);
    let (verdict, _) = f
        .run_xdp_node(&frame(L4::TcpSyn, late, NODE_PORT, &[], b""))
        .unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert!(
        f.count(stats::Reason::DropSnatPortsExhausted.index())
            .unwrap()
            >= 1
    );
}

#[test]
fn local_policy_without_local_endpoints_drops_and_counts() {
    if !require_privileged("datapath") {
        return;
    }
    let mut f = DatapathFixture::new().unwrap();
    f.add_frontend(NODE, NODE_PORT.port(), IPPROTO_TCP, &[], SVC_F_LOCAL_ONLY)
        .unwrap();
    let (verdict, _) = f
        .run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, NODE_PORT, &[], b""))
        .unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(
        f.count(stats::Reason::DropNoLocalBackends.index()).unwrap(),
        1
    );
    // Not even UDP is answered: the client's load balancer should not have
    // sent it here, as with kube-proxy.
    f.add_frontend(NODE, NODE_PORT.port(), IPPROTO_UDP, &[], SVC_F_LOCAL_ONLY)
        .unwrap();
    let (verdict, _) = f
        .run_xdp_node(&frame(L4::Udp, EXTERNAL, NODE_PORT, &[], b"q"))
        .unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(
        f.count(stats::Reason::DropNoLocalBackends.index()).unwrap(),
        2
    );
    assert_eq!(
        f.count(stats::Reason::RejectIcmpUnreachable.index())
            .unwrap(),
        0
    );
}

#[test]
fn external_frontend_without_backends_rejects_at_the_uplink() {
    if !require_privileged("datapath") {
        return;
    }
    let mut f = DatapathFixture::new().unwrap();
    f.add_frontend(NODE, NODE_PORT.port(), IPPROTO_TCP, &[], 0)
        .unwrap();
    f.add_frontend(NODE, NODE_PORT.port(), IPPROTO_UDP, &[], 0)
        .unwrap();
    let out = bounced(
        Verdict::of_xdp(
            f.run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, NODE_PORT, &[], b""))
                .unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(out, rst_frame(NODE_PORT, EXTERNAL, 1001));
    let input = frame(L4::Udp, EXTERNAL, NODE_PORT, &[], b"q");
    let out = bounced(Verdict::of_xdp(f.run_xdp_node(&input).unwrap()).unwrap());
    assert_eq!(out, icmp_port_unreachable_frame(NODE, &input));
    let (verdict, _) = f
        .run_xdp_node(&frame(L4::TcpAck, EXTERNAL, NODE_PORT, &[], b""))
        .unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(f.count(stats::Reason::RejectTcpRst.index()).unwrap(), 1);
    assert_eq!(
        f.count(stats::Reason::RejectIcmpUnreachable.index())
            .unwrap(),
        1
    );
    assert_eq!(f.count(stats::Reason::DropNoBackends.index()).unwrap(), 1);
}

#[test]
fn load_balancer_source_ranges_admit_only_their_clients() {
    for hook in HOOKS {
        if !require_privileged("datapath") {
            return;
        }
        let mut f = DatapathFixture::new().unwrap();
        let lb_ip = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 200), 80);
        let id = f
            .add_frontend(
                *lb_ip.ip(),
                lb_ip.port(),
                IPPROTO_TCP,
                &[(*BACKEND.ip(), BACKEND.port(), 0)],
                SVC_F_SOURCE_RANGES,
            )
            .unwrap();
        f.allow_source(id, Ipv4Addr::new(192, 168, 50, 96), 30)
            .unwrap();
        // 192.168.50.100 is in 192.168.50.96/30? No: .96-.99. Refused, counted.
        let (verdict, _) = f
            .run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, lb_ip, &[], b""))
            .unwrap();
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(f.count(stats::Reason::DropSourceRange.index()).unwrap(), 1);
        // A client inside the range is balanced.
        let inside = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 97), 50000);
        let (verdict, out) = f
            .run_xdp_node(&frame(L4::TcpSyn, inside, lb_ip, &[], b""))
            .unwrap();
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame(L4::TcpSyn, inside, BACKEND, &[], b""));
        // Another frontend's ranges do not leak: widen id+1, still refused.
        f.allow_source(id + 1, Ipv4Addr::new(192, 168, 50, 0), 24)
            .unwrap();
        let (verdict, _) = f
            .run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, lb_ip, &[], b""))
            .unwrap();
        assert_eq!(verdict, XDP_DROP);
        // Pods reaching the load-balancer IP are held to the ranges too, as
        // with kube-proxy: outside them dropped, inside balanced.
        let (verdict, _) = f
            .run_pod(hook, &frame(L4::TcpSyn, CLIENT, lb_ip, &[], b""))
            .unwrap();
        assert_eq!(verdict, Verdict::Drop);
        assert_eq!(f.count(stats::Reason::DropSourceRange.index()).unwrap(), 3);
        f.allow_source(id, *CLIENT.ip(), 32).unwrap();
        let (verdict, out) = f
            .run_pod(hook, &frame(L4::TcpSyn, CLIENT, lb_ip, &[], b""))
            .unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(out, frame(L4::TcpSyn, CLIENT, BACKEND, &[], b""));
    }
}

#[test]
fn nodeport_answers_on_every_node_address_and_replies_from_the_one_used() {
    if !require_privileged("datapath") {
        return;
    }
    let mut f = DatapathFixture::new().unwrap();
    // The NodePort wildcard frontend, 0.0.0.0:30080.
    f.add_service(
        Ipv4Addr::UNSPECIFIED,
        30080,
        IPPROTO_TCP,
        &[(*BACKEND.ip(), 8080)],
    )
    .unwrap();
    let second = Ipv4Addr::new(172, 16, 0, 10);
    f.add_node_address(NODE).unwrap();
    f.add_node_address(second).unwrap();
    for node in [NODE, second] {
        let frontend = SocketAddrV4::new(node, 30080);
        let client = SocketAddrV4::new(*EXTERNAL.ip(), node.octets()[3].into());
        let (verdict, out) = f
            .run_xdp_node(&frame(L4::TcpSyn, client, frontend, &[], b""))
            .unwrap();
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame(L4::TcpSyn, client, BACKEND, &[], b""));
        let (_, out) = f
            .run_tc_node(&frame(L4::TcpAck, BACKEND, client, &[], b"hi"))
            .unwrap();
        assert_eq!(
            out,
            frame(L4::TcpAck, frontend, client, &[], b"hi"),
            "reply from {node}"
        );
    }
    // Not a node address: not a NodePort.
    let elsewhere = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 99), 30080);
    let (_, out) = f
        .run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, elsewhere, &[], b""))
        .unwrap();
    assert_eq!(out, frame(L4::TcpSyn, EXTERNAL, elsewhere, &[], b""));
    // A node address, but a port no Service has: left to the stack.
    let unused = SocketAddrV4::new(NODE, 30999);
    let (verdict, out) = f
        .run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, unused, &[], b""))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, frame(L4::TcpSyn, EXTERNAL, unused, &[], b""));
    assert_eq!(f.count(stats::Reason::PassNoService.index()).unwrap(), 2);
}

#[test]
fn client_ip_affinity_sticks_new_flows_and_can_be_switched_off() {
    for hook in HOOKS {
        if !require_privileged("datapath") {
            return;
        }
        let mut f = DatapathFixture::new().unwrap();
        let backends: Vec<_> = (1..=4)
            .map(|i| (Ipv4Addr::new(10, 244, i, 2), 8080))
            .collect();
        f.add_service(VIP, 80, IPPROTO_TCP, &backends).unwrap();
        let backend_of = |f: &DatapathFixture, client: SocketAddrV4| {
            let (_, out) = f
                .run_pod(hook, &frame(L4::TcpSyn, client, FRONTEND, &[], b""))
                .unwrap();
            decode(&out).unwrap().dst
        };
        let from = |port| SocketAddrV4::new(*CLIENT.ip(), port);
        f.set_affinity(VIP, 80, IPPROTO_TCP, 10).unwrap();
        let first = backend_of(&f, from(30000));
        for port in 30001..30040 {
            assert_eq!(
                backend_of(&f, from(port)),
                first,
                "new flow from port {port}"
            );
        }
        // Affinity off: new flows from the same client spread again.
        f.set_affinity(VIP, 80, IPPROTO_TCP, 0).unwrap();
        let seen: std::collections::BTreeSet<_> =
            (31000..31040).map(|p| backend_of(&f, from(p))).collect();
        assert!(seen.len() > 1, "still sticky with affinity off: {seen:?}");
    }
}

#[test]
fn internal_local_policy_without_local_endpoints_drops_pod_traffic() {
    for hook in HOOKS {
        if !require_privileged("datapath") {
            return;
        }
        let mut f = DatapathFixture::new().unwrap();
        f.add_frontend(VIP, 80, IPPROTO_TCP, &[], SVC_F_LOCAL_ONLY)
            .unwrap();
        let (verdict, _) = f
            .run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
            .unwrap();
        assert_eq!(verdict, Verdict::Drop);
        assert_eq!(
            f.count(stats::Reason::DropNoLocalBackends.index()).unwrap(),
            1
        );
    }
}

#[test]
fn pods_reach_a_local_policy_external_frontend_through_every_endpoint() {
    for hook in HOOKS {
        if !require_privileged("datapath") {
            return;
        }
        // A load-balancer IP with externalTrafficPolicy Local on a node without
        // a local endpoint: none for traffic from outside, the cluster's one
        // (on another node) for the node's pods, as with kube-proxy.
        let lb_ip = SocketAddrV4::new(Ipv4Addr::new(192, 168, 60, 1), 80);
        let mut f = DatapathFixture::new().unwrap();
        let remote = (*REMOTE.ip(), REMOTE.port(), BACKEND_F_REMOTE);
        f.add_split_frontend(
            *lb_ip.ip(),
            lb_ip.port(),
            IPPROTO_TCP,
            &[],
            &[remote],
            SVC_F_LOCAL_ONLY,
        )
        .unwrap();
        let (verdict, out) = f
            .run_pod(hook, &frame(L4::TcpSyn, CLIENT, lb_ip, &[], b""))
            .unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(out, frame(L4::TcpSyn, CLIENT, REMOTE, &[], b""));
        // The reply comes from the load-balancer IP.
        let (_, out) = f
            .run_tc(&frame(L4::TcpAck, REMOTE, CLIENT, &[], b""))
            .unwrap();
        assert_eq!(out, frame(L4::TcpAck, lb_ip, CLIENT, &[], b""));
        // From outside the node: dropped, as before.
        let (verdict, _) = f
            .run_xdp_node(&frame(L4::TcpSyn, EXTERNAL, lb_ip, &[], b""))
            .unwrap();
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(
            f.count(stats::Reason::DropNoLocalBackends.index()).unwrap(),
            1
        );
    }
}

#[test]
fn packets_forwarded_to_a_backend_are_counted_for_it() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        let syn = frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b"");
        let data = frame(L4::TcpAck, CLIENT, FRONTEND, &[], b"GET / HTTP/1.1\r\n\r\n");
        f.run_pod(hook, &syn).unwrap();
        f.run_pod(hook, &data).unwrap();
        // Not a Service: counted for no backend.
        let other = SocketAddrV4::new(*BACKEND.ip(), 9999);
        f.run_pod(hook, &frame(L4::TcpSyn, CLIENT, other, &[], b""))
            .unwrap();
        let counted = f.backend_counter(*BACKEND.ip(), BACKEND.port()).unwrap();
        assert_eq!(counted.packets, 2);
        assert_eq!(counted.bytes, (syn.len() + data.len()) as u64);
    }
}

#[test]
fn fin_and_rst_mark_their_conntrack_direction_closing() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        f.run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
            .unwrap();
        let closing = |dir| {
            f.conntrack()
                .unwrap()
                .iter()
                .find(|(k, _)| k.dir == dir)
                .map(|(_, v)| v.flags & CT_F_CLOSING != 0)
                .unwrap()
        };
        assert!(!closing(CT_DIR_FORWARD) && !closing(CT_DIR_REPLY));
        // The client's FIN marks the forward entry ...
        f.run_pod(hook, &frame(L4::TcpFin, CLIENT, FRONTEND, &[], b""))
            .unwrap();
        assert!(closing(CT_DIR_FORWARD) && !closing(CT_DIR_REPLY));
        // ... the backend's RST the reply entry (still reverse-NATed).
        let (_, out) = f
            .run_tc(&frame(L4::TcpRst, BACKEND, CLIENT, &[], b""))
            .unwrap();
        assert_eq!(out, frame(L4::TcpRst, FRONTEND, CLIENT, &[], b""));
        assert!(closing(CT_DIR_REPLY));
    }
}

/// A client that reuses a closed flow's tuple: through the frontend again,
/// the SYN reopens the flow and its SYN-ACK is reverse-NATed; straight to
/// the backend (another node's socket LB picked the same pod with the same
/// source port), the SYN-ACK is not ours and the stale entry goes.
#[test]
fn a_closed_flows_tuple_reused_by_a_new_connection() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        let close = || {
            f.run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
                .unwrap();
            f.run_pod(hook, &frame(L4::TcpFin, CLIENT, FRONTEND, &[], b""))
                .unwrap();
            let (_, out) = f
                .run_tc(&frame(L4::TcpFin, BACKEND, CLIENT, &[], b""))
                .unwrap();
            assert_eq!(out, frame(L4::TcpFin, FRONTEND, CLIENT, &[], b""));
        };
        let syn_ack = frame(L4::TcpSynAck, BACKEND, CLIENT, &[], b"");

        close();
        f.run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
            .unwrap();
        assert!(
            f.conntrack()
                .unwrap()
                .iter()
                .all(|(_, v)| v.flags & CT_F_CLOSING == 0),
            "the SYN reopened both entries"
        );
        let (_, out) = f.run_tc(&syn_ack).unwrap();
        assert_eq!(out, frame(L4::TcpSynAck, FRONTEND, CLIENT, &[], b""));

        close();
        // The backend answers a connection we never saw.
        let (verdict, out) = f.run_tc(&syn_ack).unwrap();
        assert_eq!((verdict, out), (TC_ACT_OK, syn_ack));
        let ack = frame(L4::TcpAck, BACKEND, CLIENT, &[], b"pod-1");
        let (_, out) = f.run_tc(&ack).unwrap();
        assert_eq!(out, ack, "the stale reply entry is gone");
        assert!(!f
            .conntrack()
            .unwrap()
            .iter()
            .any(|(k, _)| k.dir == CT_DIR_REPLY));
    }
}

#[test]
fn hairpin_pod_reaches_itself_through_the_node() {
    for hook in HOOKS {
        if !require_privileged("datapath") {
            return;
        }
        let mut f = DatapathFixture::new().unwrap();
        // The client pod is the Service's only backend.
        let own = SocketAddrV4::new(*CLIENT.ip(), 8080);
        f.add_service(VIP, 80, IPPROTO_TCP, &[(*own.ip(), own.port())])
            .unwrap();
        f.set_config(NodeConfig {
            snat_addr_be: be_addr(NODE),
            snat_port_first: SNAT_PORTS.0,
            snat_port_last: SNAT_PORTS.1,
        })
        .unwrap();
        // In from the pod: DNAT to itself ...
        let (_, out) = f
            .run_pod(hook, &frame(L4::TcpSyn, CLIENT, FRONTEND, &[], b""))
            .unwrap();
        assert_eq!(out, frame(L4::TcpSyn, CLIENT, own, &[], b""));
        assert_eq!(f.count(stats::Reason::DnatSnatNewFlow.index()).unwrap(), 1);
        // ... back out to it SNATed to the node, so its answer leaves the pod.
        let (_, out) = f.run_tc(&frame(L4::TcpSyn, CLIENT, own, &[], b"")).unwrap();
        let snat = decode(&out).unwrap().src;
        assert_eq!(*snat.ip(), NODE);
        assert_eq!(out, frame(L4::TcpSyn, snat, own, &[], b""));
        // Its answer to the node is un-SNATed before netfilter ...
        let (_, out) = f
            .run_pod(hook, &frame(L4::TcpAck, own, snat, &[], b"hi"))
            .unwrap();
        assert_eq!(out, frame(L4::TcpAck, own, CLIENT, &[], b"hi"));
        // ... and reverse-NATed on the way back into the pod.
        let (_, out) = f
            .run_tc(&frame(L4::TcpAck, own, CLIENT, &[], b"hi"))
            .unwrap();
        assert_eq!(out, frame(L4::TcpAck, FRONTEND, CLIENT, &[], b"hi"));
    }
}

// ---- IPv4 fragments ---------------------------------------------------------

/// IP id of the fragmented datagrams below.
const FRAG_ID: u16 = 0x4d2;
/// Bytes of IP payload per fragment: what a 1500-byte MTU carries.
const FRAG_PIECE: usize = 1480;
const IP_PAYLOAD_OFF: usize = 14 + 20;

/// 3000 bytes that differ from one position to the next: three fragments.
fn big_payload() -> Vec<u8> {
    (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Runs `frames` in order through `run`, checking each verdict, and
/// returns the frames that came out.
fn run_all<V: PartialEq + std::fmt::Debug>(
    run: impl Fn(&[u8]) -> anyhow::Result<(V, Vec<u8>)>,
    frames: &[Vec<u8>],
    verdict: V,
) -> Vec<Vec<u8>> {
    frames
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let (got, out) = run(input).unwrap();
            assert_eq!(got, verdict, "fragment {i}");
            out
        })
        .collect()
}

/// Checks that each output fragment is the expected one byte for byte,
/// with a valid IP header checksum, and that a later fragment's bytes past
/// its IP header are the input's (no L4 header there to rewrite).
fn assert_fragments(inputs: &[Vec<u8>], outputs: &[Vec<u8>], expected: &[Vec<u8>], what: &str) {
    assert_eq!(outputs.len(), expected.len());
    for (i, ((input, out), want)) in inputs.iter().zip(outputs).zip(expected).enumerate() {
        assert_eq!(out, want, "{what}: fragment {i} byte-exact");
        assert!(ipv4_checksum_ok(out), "{what}: fragment {i} IP checksum");
        if i > 0 {
            assert_eq!(
                out[IP_PAYLOAD_OFF..],
                input[IP_PAYLOAD_OFF..],
                "{what}: fragment {i} payload untouched"
            );
        }
    }
}

#[test]
fn udp_fragments_follow_their_first_fragment_to_the_backend() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        let dns = SocketAddrV4::new(VIP, 53);
        let backend = SocketAddrV4::new(*BACKEND.ip(), 5353);
        let payload = big_payload();
        for (l4, client, id) in [
            (L4::Udp, CLIENT, FRAG_ID),
            // A datagram without a checksum keeps none.
            (
                L4::UdpNoChecksum,
                SocketAddrV4::new(*CLIENT.ip(), 40001),
                FRAG_ID + 1,
            ),
        ] {
            let input = fragments(l4, client, dns, id, &payload, FRAG_PIECE);
            assert_eq!(input.len(), 3);
            let out = run_all(|p| f.run_pod(hook, p), &input, Verdict::Pass);
            // The first fragment is DNATed with its L4 header (checksum over the
            // whole datagram updated); the later ones get the same destination.
            let expected = fragments(l4, client, backend, id, &payload, FRAG_PIECE);
            assert_fragments(&input, &out, &expected, &format!("{l4:?}"));
            if l4 == L4::UdpNoChecksum {
                let csum_off = IP_PAYLOAD_OFF + 6;
                assert_eq!(out[0][csum_off..csum_off + 2], [0, 0]);
            }
        }
        assert_eq!(f.count(stats::Reason::DnatNewFlow.index()).unwrap(), 2);
        assert_eq!(f.count(stats::Reason::FragRewritten.index()).unwrap(), 4);
        // One record per datagram: the ports as the first fragment arrived,
        // under its addresses before the rewrite.
        let mut recorded = f.fragments().unwrap();
        recorded.sort_by_key(|(k, _)| u16::from_be(k.id_be));
        let record = |id: u16, sport: u16| {
            let key = FragKey {
                saddr_be: be_addr(*CLIENT.ip()),
                daddr_be: be_addr(VIP),
                id_be: id.to_be(),
                proto: IPPROTO_UDP,
                _pad: 0,
            };
            let value = FragValue {
                sport_be: sport.to_be(),
                dport_be: 53u16.to_be(),
            };
            (key, value)
        };
        assert_eq!(
            recorded,
            [record(FRAG_ID, 40000), record(FRAG_ID + 1, 40001)]
        );
    }
}

#[test]
fn later_fragments_of_datagrams_we_did_not_rewrite_pass_untouched() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        let dns = SocketAddrV4::new(VIP, 53);
        let payload = big_payload();
        let datagram = |id, dst| fragments(L4::Udp, CLIENT, dst, id, &payload, FRAG_PIECE);
        let untouched = |program: &str, input: &[u8]| {
            let before = f.count(stats::Reason::PassFragment.index()).unwrap();
            let out = match program {
                "pod" => {
                    let (got, out) = f.run_pod(hook, input).unwrap();
                    assert_eq!(got, Verdict::Pass, "{program}");
                    out
                }
                _ => {
                    let (got, out) = f.run_tc(input).unwrap();
                    assert_eq!(got, TC_ACT_OK, "{program}");
                    out
                }
            };
            assert_eq!(out.as_slice(), input, "{program}");
            assert_eq!(
                f.count(stats::Reason::PassFragment.index()).unwrap(),
                before + 1
            );
        };
        // Never saw the first fragment (lost, or reordered behind this one).
        let unknown = datagram(FRAG_ID, dns);
        untouched("pod", &unknown[1]);
        untouched("tc", &unknown[1]);
        // The first fragment arriving late is still balanced, but the fragment
        // that went ahead of it stays lost (Cilium does the same).
        let (_, first) = f.run_pod(hook, &unknown[0]).unwrap();
        assert_eq!(f.count(stats::Reason::DnatNewFlow.index()).unwrap(), 1);
        assert_ne!(first, unknown[0]);
        // Another id: another datagram.
        untouched("pod", &datagram(FRAG_ID + 1, dns)[1]);

        // A first fragment we leave alone (no Service on that port) forgets
        // an older datagram's record under the same addresses and id, so its
        // later fragments cannot follow that older choice.
        let no_service = datagram(FRAG_ID, SocketAddrV4::new(VIP, 54));
        let (verdict, out) = f.run_pod(hook, &no_service[0]).unwrap();
        assert_eq!((verdict, &out), (Verdict::Pass, &no_service[0]));
        assert!(f.fragments().unwrap().is_empty(), "record forgotten");
        untouched("pod", &no_service[1]);
        untouched("pod", &unknown[2]);
    }
}

#[test]
fn later_fragments_never_start_a_flow() {
    for hook in HOOKS {
        let Some(mut f) = one_backend() else { return };
        let dns = SocketAddrV4::new(VIP, 53);
        let input = fragments(L4::Udp, CLIENT, dns, FRAG_ID, &big_payload(), FRAG_PIECE);
        f.run_pod(hook, &input[0]).unwrap();
        let flows = f.conntrack().unwrap().len();
        // The backend leaves between the first fragment and the next: the
        // first fragment's flow is not continued, and no new one is started.
        f.add_service(
            VIP,
            53,
            IPPROTO_UDP,
            &[(Ipv4Addr::new(10, 244, 2, 2), 5353)],
        )
        .unwrap();
        assert!(f.remove_backend(*BACKEND.ip(), 5353).unwrap());
        let (verdict, out) = f.run_pod(hook, &input[1]).unwrap();
        assert_eq!((verdict, &out), (Verdict::Pass, &input[1]));
        assert_eq!(f.count(stats::Reason::PassFragment.index()).unwrap(), 1);
        assert_eq!(f.count(stats::Reason::DnatNewFlow.index()).unwrap(), 1);
        assert_eq!(f.conntrack().unwrap().len(), flows);
    }
}

#[test]
fn reply_fragments_are_reverse_nated_at_tc_egress() {
    for hook in HOOKS {
        let Some(f) = one_backend() else { return };
        let dns = SocketAddrV4::new(VIP, 53);
        let backend = SocketAddrV4::new(*BACKEND.ip(), 5353);
        f.run_pod(hook, &frame(L4::Udp, CLIENT, dns, &[], b"query"))
            .unwrap();
        // The backend's answer is larger than the MTU: its stack fragments it.
        let payload = big_payload();
        let reply_id = 0x7777;
        let input = fragments(L4::Udp, backend, CLIENT, reply_id, &payload, FRAG_PIECE);
        let out = run_all(|p| f.run_tc(p), &input, TC_ACT_OK);
        let expected = fragments(L4::Udp, dns, CLIENT, reply_id, &payload, FRAG_PIECE);
        assert_fragments(&input, &out, &expected, "reply");
        assert_eq!(f.count(stats::Reason::Revnat.index()).unwrap(), 1);
        assert_eq!(f.count(stats::Reason::FragRewritten.index()).unwrap(), 2);
    }
}

#[test]
fn nodeport_fragments_follow_dnat_snat_unsnat_and_reverse_nat() {
    if !require_privileged("datapath") {
        return;
    }
    let mut f = DatapathFixture::new().unwrap();
    let node_port = SocketAddrV4::new(NODE, 30053);
    let remote = SocketAddrV4::new(*REMOTE.ip(), 5353);
    f.add_frontend(
        NODE,
        node_port.port(),
        IPPROTO_UDP,
        &[(*remote.ip(), remote.port(), BACKEND_F_REMOTE)],
        0,
    )
    .unwrap();
    f.set_config(NodeConfig {
        snat_addr_be: be_addr(NODE),
        snat_port_first: SNAT_PORTS.0,
        snat_port_last: SNAT_PORTS.1,
    })
    .unwrap();
    let payload = big_payload();
    let cut = |src, dst, id| fragments(L4::Udp, src, dst, id, &payload, FRAG_PIECE);
    let (request_id, reply_id) = (0x1111, 0x2222);

    // In at the uplink: DNAT to the remote backend.
    let input = cut(EXTERNAL, node_port, request_id);
    let out = run_all(|p| f.run_xdp_node(p), &input, XDP_PASS);
    assert_fragments(&input, &out, &cut(EXTERNAL, remote, request_id), "DNAT");
    assert_eq!(f.count(stats::Reason::DnatSnatNewFlow.index()).unwrap(), 1);

    // Out at the uplink (the node reassembled and fragmented it again):
    // SNAT to the node and an SNAT port, read from the first fragment.
    let input = cut(EXTERNAL, remote, request_id);
    let out = run_all(|p| f.run_tc_node(p), &input, TC_ACT_OK);
    let snat_port = u16::from_be_bytes([out[0][IP_PAYLOAD_OFF], out[0][IP_PAYLOAD_OFF + 1]]);
    assert!((SNAT_PORTS.0..=SNAT_PORTS.1).contains(&snat_port));
    let snat = SocketAddrV4::new(NODE, snat_port);
    assert_fragments(&input, &out, &cut(snat, remote, request_id), "SNAT");
    assert_eq!(f.count(stats::Reason::Snat.index()).unwrap(), 1);

    // The remote backend's big answer comes back: un-SNAT ...
    let input = cut(remote, snat, reply_id);
    let out = run_all(|p| f.run_xdp_node(p), &input, XDP_PASS);
    assert_fragments(&input, &out, &cut(remote, EXTERNAL, reply_id), "un-SNAT");
    assert_eq!(f.count(stats::Reason::Unsnat.index()).unwrap(), 1);

    // ... and reverse NAT on the way out.
    let input = cut(remote, EXTERNAL, reply_id);
    let out = run_all(|p| f.run_tc_node(p), &input, TC_ACT_OK);
    assert_fragments(
        &input,
        &out,
        &cut(node_port, EXTERNAL, reply_id),
        "reverse NAT",
    );
    assert_eq!(f.count(stats::Reason::Revnat.index()).unwrap(), 1);
    assert_eq!(f.count(stats::Reason::FragRewritten.index()).unwrap(), 8);
    assert_eq!(f.fragments().unwrap().len(), 4, "one record per rewrite");
}
