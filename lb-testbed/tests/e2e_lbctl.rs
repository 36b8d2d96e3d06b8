//! lbctl against an agent's real pinned maps and links: `explain` for 100
//! flows with chosen source ports names, before the flow exists (the flow
//! hash, computed in userspace as the kernel does), the backend that then
//! answers, and afterwards the same one from conntrack; `service list`
//! names the Services; `prog list` shows every attachment. Needs root and
//! a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lb_testbed::{
    privileged::require_privileged,
    web_bed::{WebBed, WEB_YAML},
    WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP,
};
use socket2::{Domain, Socket, Type};

const FLOWS: u16 = 50;
const TIMEOUT: Duration = Duration::from_secs(1);

/// `lbctl --json <args>` as a JSON document.
fn lbctl_json(pin_dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(lb_testbed::bins::lbctl())
        .arg("--bpffs")
        .arg(pin_dir)
        .arg("--json")
        .args(args)
        .output()
        .expect("running lbctl");
    assert!(
        out.status.success(),
        "lbctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `lbctl explain`'s backend and reason for the flow.
fn explain(pin_dir: &Path, src: SocketAddrV4, dst: SocketAddrV4, proto: &str) -> (String, String) {
    let doc = lbctl_json(
        pin_dir,
        &["explain", &src.to_string(), &dst.to_string(), proto],
    );
    let backend = &doc["backend"];
    (
        format!(
            "{}:{}",
            backend["ip"].as_str().unwrap_or("-"),
            backend["port"]
        ),
        doc["chosen_by"].as_str().unwrap_or("-").to_owned(),
    )
}

/// The pod that answered one request from `src` (a bound source port).
fn request(src: SocketAddrV4, dst: SocketAddrV4, proto: &str) -> String {
    let answer = if proto == "udp" {
        let socket = UdpSocket::bind(src).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        socket.send_to(b"hello\n", dst).unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    } else {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&SocketAddr::from(src).into()).unwrap();
        socket
            .connect_timeout(&SocketAddr::from(dst).into(), TIMEOUT)
            .unwrap();
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(b"hello\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    answer.split(' ').next().unwrap_or_default().to_owned()
}

#[test]
fn explain_names_the_backend_real_traffic_reaches() {
    if !require_privileged("explain_names_the_backend_real_traffic_reaches") {
        return;
    }
    let bed = WebBed::start(lb_testbed::bins::agent(), &[("web.yaml", WEB_YAML)], &[]).unwrap();
    let client = bed.topo.client();
    let pin_dir = bed.agent.pin_dir();
    let name_of = |backend: &str| -> String {
        let ip: Ipv4Addr = backend.split(':').next().unwrap().parse().unwrap();
        let pod = bed.topo.backends().iter().find(|p| p.ip == ip);
        pod.unwrap_or_else(|| panic!("{backend} is no pod"))
            .name
            .clone()
    };
    let mut spread = std::collections::BTreeSet::new();
    // Flows per (protocol, backend address), for the per-backend counters.
    let mut flows = std::collections::BTreeMap::<(String, String), u64>::new();
    for (proto, port) in [("tcp", WEB_TCP_PORT), ("udp", WEB_UDP_PORT)] {
        let dst = SocketAddrV4::new(WEB_VIP, port);
        for sport in 41_000..41_000 + FLOWS {
            let src = SocketAddrV4::new(client.ip, sport);
            let (predicted, why) = explain(pin_dir, src, dst, proto);
            assert_eq!(why, "hash", "{proto} {src}: a new flow");
            let answered = client.ns.run(move || request(src, dst, proto)).unwrap();
            assert_eq!(name_of(&predicted), answered, "{proto} flow {src} -> {dst}");
            let (tracked, why) = explain(pin_dir, src, dst, proto);
            assert_eq!(
                (tracked.as_str(), why.as_str()),
                (predicted.as_str(), "conntrack")
            );
            spread.insert(answered);
            *flows.entry((proto.to_owned(), predicted)).or_default() += 1;
        }
    }
    assert_eq!(spread.len(), 3, "{} flows reached {spread:?}", 2 * FLOWS);

    // Per-backend counters: each UDP flow was one datagram, each TCP flow
    // at least its SYN, request and ACKs.
    let doc = lbctl_json(pin_dir, &["stats", "--backends"]);
    for b in doc["backends"].as_array().unwrap() {
        let (proto, addr) = (b["address"]["proto"].as_str().unwrap(), &b["address"]);
        let key = (
            proto.to_owned(),
            format!("{}:{}", addr["ip"].as_str().unwrap(), addr["port"]),
        );
        let sent = flows.get(&key).copied().unwrap_or(0);
        let packets = b["packets"].as_u64().unwrap();
        match proto {
            "udp" => assert_eq!(packets, sent, "{b}"),
            _ => assert!(
                packets >= 3 * sent && (packets > 0) == (sent > 0),
                "{sent} flows: {b}"
            ),
        }
        assert_eq!(b["services"].as_array().unwrap().len(), 1, "{b}");
    }

    // The frontends carry the Service they come from.
    let doc = lbctl_json(pin_dir, &["service", "list"]);
    let names: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(names, ["default/web:dns", "default/web:http"], "{doc}");

    // Every pod interface has its three programs, the cgroup its four.
    let doc = lbctl_json(pin_dir, &["prog", "list"]);
    let hooks: Vec<String> = doc["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert!(a["error"].is_null(), "{a}");
            assert!(
                a["prog_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("lb_")),
                "{a}"
            );
            format!(
                "{} {}",
                a["interface"].as_str().unwrap_or("cgroup"),
                a["hook"].as_str().unwrap()
            )
        })
        .collect();
    let mut expected = Vec::new();
    for pod in bed.topo.backends().iter().chain([client]) {
        // The default pod hook: TC both ways, no XDP.
        for hook in ["tc_egress", "tc_ingress"] {
            expected.push(format!("{} {hook}", pod.host_if));
        }
    }
    for hook in ["connect4", "getpeername4", "recvmsg4", "sendmsg4"] {
        expected.push(format!("cgroup cgroup_{hook}"));
    }
    let (mut hooks, mut expected) = (hooks, expected);
    hooks.sort();
    expected.sort();
    assert_eq!(hooks, expected, "{doc}");

    // `stats --watch` reports rates while traffic flows.
    let watching = std::thread::spawn({
        let pin_dir = pin_dir.to_owned();
        move || lbctl_json(&pin_dir, &["stats", "--watch", "1", "--count", "1"])
    });
    // New connections for as long as the watch runs, so that its window
    // sees traffic however slow a loaded machine is.
    let dst = SocketAddrV4::new(WEB_VIP, WEB_TCP_PORT);
    for sport in (42_000..43_000).take_while(|_| !watching.is_finished()) {
        let src = SocketAddrV4::new(client.ip, sport);
        client.ns.run(move || request(src, dst, "tcp")).unwrap();
    }
    let doc = watching.join().unwrap();
    let new_flows = doc["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "dnat_new_flow")
        .expect("dnat_new_flow");
    assert!(
        new_flows["pps"].as_f64().is_some_and(|pps| pps >= 1.0),
        "{new_flows}"
    );

    // Per frontend: every request above reached web's TCP or UDP port.
    let doc = lbctl_json(pin_dir, &["stats", "--services"]);
    let web_http = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "default/web:http")
        .expect("web's TCP frontend");
    // 50 explained connections and 20 more, a few packets each.
    assert!(
        web_http["packets"].as_u64().is_some_and(|n| n >= 70 * 3),
        "{web_http}"
    );
    assert_eq!(web_http["refused"], 0, "{web_http}");
}

/// `lbctl diagnose`'s checks for a Service, run in the node's namespace
/// (where the agent's /healthz is): status per check name.
fn diagnose(bed: &WebBed, service: &str, extra: &[&str]) -> (Vec<(String, String)>, i32) {
    let out = bed
        .topo
        .node()
        .command(lb_testbed::bins::lbctl())
        .unwrap()
        .arg("--bpffs")
        .arg(bed.agent.pin_dir())
        .args([
            "--json",
            "diagnose",
            service,
            "--service-cidr",
            "10.96.0.0/12",
        ])
        .args(extra)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let checks = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (checks, out.status.code().unwrap_or(-1))
}

fn status_of(checks: &[(String, String)], check: &str) -> Vec<String> {
    checks
        .iter()
        .filter(|(c, _)| c == check)
        .map(|(_, s)| s.clone())
        .collect()
}

/// A Service without endpoints, and one whose selector matches no pod (its
/// EndpointSlice, as the controller writes it then, is empty).
const BROKEN: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: nobody, namespace: default}\nspec:\n  clusterIP: 10.96.0.21\n  ports: [{name: http, port: 80}]\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: wrong-selector, namespace: default}\nspec:\n  clusterIP: 10.96.0.22\n  selector: {app: typo}\n  ports: [{name: http, port: 80}]\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: wrong-selector-1\n  namespace: default\n  labels: {kubernetes.io/service-name: wrong-selector}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: []\n";

#[test]
fn diagnose_names_what_is_broken() {
    if !require_privileged("diagnose_names_what_is_broken") {
        return;
    }
    let mut bed = WebBed::start(
        lb_testbed::bins::agent(),
        &[("web.yaml", WEB_YAML), ("broken.yaml", BROKEN)],
        &[],
    )
    .unwrap();
    // Names come with the sync; give the agent a moment to write them.
    std::thread::sleep(Duration::from_millis(500));

    let (healthy, code) = diagnose(&bed, "default/web", &[]);
    println!("default/web: {healthy:?}");
    assert_eq!(code, 0, "{healthy:?}");
    assert!(healthy.iter().all(|(_, s)| s == "pass"), "{healthy:?}");

    // A refused connection to each broken Service, counted at it.
    for vip in ["10.96.0.21", "10.96.0.22"] {
        let to: SocketAddr = format!("{vip}:80").parse().unwrap();
        let refused = bed
            .topo
            .client()
            .ns
            .run(move || TcpStream::connect_timeout(&to, TIMEOUT))
            .unwrap();
        assert!(refused.is_err(), "{vip} answered");
    }
    for service in ["default/nobody", "default/wrong-selector"] {
        let (checks, code) = diagnose(&bed, service, &[]);
        assert_eq!(
            status_of(&checks, "refused at this Service"),
            ["warn"],
            "{checks:?}"
        );
        assert_eq!(
            status_of(&checks, "endpoints ready"),
            ["fail"],
            "{service}: {checks:?}"
        );
        assert_eq!(status_of(&checks, "known to the dataplane"), ["pass"]);
        assert_eq!(code, 1);
    }
    let (checks, _) = diagnose(&bed, "default/missing", &[]);
    assert_eq!(status_of(&checks, "known to the dataplane"), ["fail"]);

    let (checks, code) = diagnose(&bed, "default/web", &["--cluster-cidr", "10.96.0.0/16"]);
    assert_eq!(
        status_of(&checks, "CIDRs do not overlap"),
        ["fail"],
        "{checks:?}"
    );
    assert_eq!(code, 1);

    // A program detached: the agent is gone (kill -9) and one interface's
    // DNAT link (TC ingress, the default pod hook) with it.
    bed.agent.kill9().unwrap();
    let pins = std::fs::read_dir(bed.agent.pin_dir().join("links")).unwrap();
    let first = pins.flatten().next().expect("an interface's pins").path();
    std::fs::remove_file(first.join("tc-ingress")).unwrap();
    let (checks, code) = diagnose(&bed, "default/web", &[]);
    assert_eq!(
        status_of(&checks, "programs attached"),
        ["fail"],
        "{checks:?}"
    );
    assert_eq!(status_of(&checks, "agent healthy"), ["fail"], "{checks:?}");
    assert_eq!(code, 1);
}

/// The Service names lbctl shows, in frontend order.
fn service_names(pin_dir: &Path) -> Vec<String> {
    let doc = lbctl_json(pin_dir, &["service", "list"]);
    doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["service"].as_str().map(str::to_owned))
        .collect()
}

/// A second Service's YAML: `other` on 10.96.0.50:80, one endpoint.
const OTHER_YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other-1
  namespace: default
  labels: {kubernetes.io/service-name: other}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: ["10.244.1.2"]
    conditions: {ready: true}
"#;

/// Syncs after the first touch only the frontends that changed (partial
/// syncs); the names lbctl reads must follow them: a new Service named,
/// a removed one's names gone, at once rather than on a later full pass.
#[test]
fn service_names_follow_services_added_and_removed() {
    if !require_privileged("service_names_follow_services_added_and_removed") {
        return;
    }
    let bed = WebBed::start(lb_testbed::bins::agent(), &[("web.yaml", WEB_YAML)], &[]).unwrap();
    let pin_dir = bed.agent.pin_dir();
    assert_eq!(
        service_names(pin_dir),
        ["default/web:dns", "default/web:http"]
    );

    let wait_for = |want: &[&str]| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let ok = lb_testbed::wait_until(deadline, || service_names(pin_dir) == want);
        assert!(ok, "names {:?}, wanted {want:?}", service_names(pin_dir));
    };
    bed.write("other.yaml", OTHER_YAML).unwrap();
    wait_for(&["default/web:dns", "default/web:http", "default/other:http"]);
    std::fs::remove_file(bed.scratch.path().join("web.yaml")).unwrap();
    wait_for(&["default/other:http"]);
}
