//! §8 UDP conntrack (conntrack.go, and loadbalancer.go's UDP cases).
//!
//! Upstream's client is `echo hostname | nc -u -w 5 -p 12345 <ip> <port>`
//! in a loop: every try a new socket, connected, from the fixed source
//! port 12345, so every try is the same 5-tuple and a stale conntrack entry
//! would keep it on a deleted backend. Ours does the same (a fresh
//! connected socket bound to the fixed port per try, waiting up to `-w`
//! for the answer), only faster: a try every 200 ms instead of every few
//! seconds. Backends are "replaced" through the EndpointSlice only: the old
//! pod's server keeps running and answering, so a flow left on it (a stale
//! entry) is seen at once instead of passing as a timeout.
//!
//! The hostNetwork client is balanced by the agent's cgroup programs at
//! `connect()`, so each of nc's fresh sockets gets a live backend; a single
//! connected UDP socket kept across the change would stay on backend1 until
//! it reconnects (the documented limit of socket-level balancing), which
//! is not what upstream's client does.

use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

use super::policies::{route_lb, with_ingress};
use crate::conformance::objects::{dns, service, slice, Endpoint, DNS};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};
use crate::netns::NsThread;
use crate::topology::Pod;

const SECTION: &str = "8 UDP conntrack";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 8, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 208);
const NODE_PORT: u16 = 30810;
/// Upstream's fixed client source ports.
const NC_PORT: u16 = 12345;
const LB_PORT_DIFFERENT_NODES: u16 = 54321;
const LB_PORT_SAME_NODE: u16 = 54322;
/// Upstream: each backend must be seen within 1 min (LB: the LB lag, 2 min).
const UPSTREAM_BOUND: Duration = Duration::from_secs(60);
/// Ours: seconds.
const OUR_BOUND: Duration = Duration::from_secs(10);
/// Between tries.
const TRY_GAP: Duration = Duration::from_millis(200);

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "udp_nodeport_backend_replaced",
            section: SECTION,
            upstream: "should be able to preserve UDP traffic when server pod cycles for a NodePort service (fixed src port; backend2 seen within 1 min)",
            speed: Speed::Fast,
            run: |b| backend_replaced(b, Frontend::NodePort),
        },
        Case {
            id: "udp_clusterip_backend_replaced",
            section: SECTION,
            upstream: "should be able to preserve UDP traffic when server pod cycles for a ClusterIP service (fixed src port; backend2 seen within 1 min)",
            speed: Speed::Fast,
            run: |b| backend_replaced(b, Frontend::ClusterIp),
        },
        Case {
            id: "udp_clusterip_host_network_client_backend_replaced",
            section: SECTION,
            upstream: "should be able to preserve UDP traffic when server pod cycles for a ClusterIP service and client is hostNetwork (backend2 seen within 1 min)",
            speed: Speed::Fast,
            run: |b| backend_replaced(b, Frontend::ClusterIpFromHost),
        },
        Case {
            id: "udp_clusterip_itp_local_backend_replaced",
            section: SECTION,
            upstream: "should be able to preserve UDP traffic when server pod cycles for a ClusterIP service with InternalTrafficPolicy set to Local (regression 126934; local backend3 seen within 1 min)",
            speed: Speed::Fast,
            run: itp_local,
        },
        Case {
            id: "udp_unready_endpoint_becomes_ready",
            section: SECTION,
            upstream: "should be able to preserve UDP traffic when initial unready endpoints get ready (regression 105657; 15 s init container, here 5 s; backend seen within 1 min)",
            speed: Speed::Fast,
            run: |b| unready_then_ready(b, Duration::from_secs(5)),
        },
        Case {
            id: "udp_unready_endpoint_becomes_ready_15s",
            section: SECTION,
            upstream: "should be able to preserve UDP traffic when initial unready endpoints get ready (regression 105657; upstream's 15 s unready)",
            speed: Speed::Slow,
            run: |b| unready_then_ready(b, Duration::from_secs(15)),
        },
        Case {
            id: "udp_lb_server_cycles_different_nodes",
            section: SECTION,
            upstream: "LoadBalancers should be able to preserve UDP traffic when server pod cycles for a LoadBalancer service on different nodes (src port 54321; each hostname within the LB lag)",
            speed: Speed::Fast,
            run: |b| lb_cycles(b, true),
        },
        Case {
            id: "udp_lb_server_cycles_same_node",
            section: SECTION,
            upstream: "LoadBalancers should be able to preserve UDP traffic when server pod cycles for a LoadBalancer service on the same nodes (src port 54322; each hostname within the LB lag)",
            speed: Speed::Fast,
            run: |b| lb_cycles(b, false),
        },
    ]
}

pub fn not_run() -> Vec<NotRun> {
    vec![NotRun {
        section: SECTION,
        upstream: "Conntrack proxy implementation should drop INVALID conntrack entries [Privileged] (regression 74839)",
        reason: "It checks a netfilter rule, not Service forwarding: pod-to-pod TCP with no Service in the path, where a boom server injects an out-of-window segment; kube-proxy's fix is a `-m conntrack --ctstate INVALID -j DROP` rule in FORWARD, without which nf_nat skips the INVALID packet and the client answers its un-NATed copy with a RST. lb-agent installs no netfilter rules, and its reverse NAT is keyed on its own BPF conntrack entry, not on netfilter's state, so the bug's mechanism does not exist in its datapath. Our node namespaces carry that same INVALID-drop rule from the testbed itself (lb_testbed::topology::drop_invalid, as a CNI or node setup would install it on a node without kube-proxy), so a scenario here would measure the testbed's rule, not the agent.",
    }]
}

/// What the client saw: each try's time and the pod that answered (None:
/// no answer within the wait, or an error such as ICMP port unreachable).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Try>>>);

/// When a try was made, and who answered it.
type Try = (Instant, Option<String>);

impl Log {
    fn push(&self, answer: Option<String>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Instant::now(), answer));
    }

    /// When `backend` first answered at or after `since`.
    fn first(&self, backend: &str, since: Instant) -> Option<Instant> {
        let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter()
            .find(|(t, a)| *t >= since && a.as_deref() == Some(backend))
            .map(|(t, _)| *t)
    }

    /// Waits until `backend` answers (at or after `since`); how long after
    /// `since`, or an error after `within`.
    fn wait_for(&self, backend: &str, since: Instant, within: Duration) -> Result<Duration> {
        loop {
            if let Some(t) = self.first(backend, since) {
                return Ok(t - since);
            }
            if since.elapsed() > within {
                bail!(
                    "{backend} not seen within {within:?}; last tries: {:?}",
                    self.last(10)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The answers of the tries since `since`.
    fn since(&self, since: Instant) -> Vec<Option<String>> {
        let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, a)| a.clone())
            .collect()
    }

    fn last(&self, n: usize) -> Vec<Option<String>> {
        let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter()
            .rev()
            .take(n)
            .rev()
            .map(|(_, a)| a.clone())
            .collect()
    }
}

/// The answering pod's name from `"<pod> <peer>\n"`.
fn pod_name(answer: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(answer);
    text.split_whitespace().next().map(str::to_string)
}

/// A UDP client in a pod sending from a fixed source port; stops on drop.
struct PodClient {
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<()>>,
    log: Log,
}

impl PodClient {
    /// `fresh`: a new connected socket per try (upstream's nc loop); else
    /// one connected socket for the whole run (upstream's LB client).
    fn start(
        pod: &Pod,
        to: SocketAddr,
        src_port: u16,
        wait: Duration,
        fresh: bool,
    ) -> Result<PodClient> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Log::default();
        let (flag, out) = (Arc::clone(&stop), log.clone());
        let connect = move || -> std::io::Result<UdpSocket> {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, src_port))?;
            socket.connect(to)?;
            socket.set_read_timeout(Some(wait))?;
            Ok(socket)
        };
        let thread = pod.ns.enter_thread(move || {
            let mut kept: Option<UdpSocket> = None;
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                let socket = match kept.take() {
                    Some(s) => Ok(s),
                    None => connect(),
                };
                let answer = match socket {
                    Ok(socket) => {
                        let answer = match socket
                            .send(b"hostname\n")
                            .and_then(|_| socket.recv(&mut buf))
                        {
                            Ok(len) => pod_name(&buf[..len]),
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) =>
                            {
                                None
                            }
                            Err(_) => None,
                        };
                        if !fresh {
                            kept = Some(socket);
                        }
                        answer
                    }
                    Err(_) => None,
                };
                out.push(answer);
                std::thread::sleep(TRY_GAP);
            }
        })?;
        Ok(PodClient {
            stop,
            thread: Some(thread),
            log,
        })
    }
}

impl Drop for PodClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join();
        }
    }
}

/// Upstream's nc loop as a node process (hostNetwork pod): perl, in the
/// node's namespace and the cgroup the agent balances; a fresh connected
/// socket from the fixed port per try. Killed on drop.
struct HostClient {
    child: Child,
    /// Kept open: perl's loop never reads it again, but must not see EOF
    /// before it started.
    _stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    log: Log,
}

const NC_LOOP: &str = r#"
use strict; use IO::Socket::INET; use IO::Select; use Time::HiRes qw(sleep);
$| = 1;
my ($host, $port, $sport, $wait, $gap) = @ARGV;
my $go = <STDIN>;
while (1) {
    my $s = IO::Socket::INET->new(Proto => 'udp', PeerAddr => $host, PeerPort => $port,
                                  LocalPort => $sport, ReuseAddr => 1);
    if (!$s) { print "none\n"; sleep $gap; next; }
    $s->send("hostname\n");
    my $buf;
    if (IO::Select->new($s)->can_read($wait) && defined $s->recv($buf, 2048) && length $buf) {
        $buf =~ s/\n.*//s; print "ok $buf\n";
    } else { print "none\n"; }
    close($s);
    sleep $gap;
}
"#;

impl HostClient {
    fn start(
        cluster: &mut Cluster,
        node: usize,
        to: SocketAddr,
        wait: Duration,
    ) -> Result<HostClient> {
        let cgroup = agent_cgroup(cluster.agent(node).pid())?;
        let mut child = cluster
            .topo
            .node(node)
            .command("/usr/bin/perl")?
            .args(["-e", NC_LOOP, "--"])
            .args([
                to.ip().to_string(),
                to.port().to_string(),
                NC_PORT.to_string(),
                wait.as_secs_f64().to_string(),
                TRY_GAP.as_secs_f64().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting perl as a node process")?;
        let (mut stdin, stdout) = (
            child.stdin.take().context("stdin")?,
            child.stdout.take().context("stdout")?,
        );
        let log = Log::default();
        let out = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                out.push(
                    line.strip_prefix("ok ")
                        .and_then(|a| pod_name(a.as_bytes())),
                );
            }
        });
        let mut client = HostClient {
            child,
            _stdin: None,
            reader: Some(reader),
            log,
        };
        // Into the agent's cgroup before its first socket: sockets belong to
        // the cgroup of the process that creates them.
        std::fs::write(cgroup.join("cgroup.procs"), client.child.id().to_string())
            .with_context(|| format!("moving perl into {}", cgroup.display()))?;
        stdin.write_all(b"go\n")?;
        client._stdin = Some(stdin);
        Ok(client)
    }
}

impl Drop for HostClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The agent's `--cgroup` directory, from its command line.
fn agent_cgroup(pid: u32) -> Result<std::path::PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .find(|w| w[0] == b"--cgroup")
        .map(|w| String::from_utf8_lossy(w[1]).into_owned().into())
        .filter(|p: &std::path::PathBuf| !p.as_os_str().is_empty())
        .context("the agent runs without --cgroup")
}

/// Where the client sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frontend {
    /// A pod on node-a to node-b's IP:nodePort (upstream: client pod on
    /// node0 -> node1 IP:nodePort, servers on node1).
    NodePort,
    /// A pod on node-a to the ClusterIP.
    ClusterIp,
    /// A node-a process (hostNetwork pod) to the ClusterIP.
    ClusterIpFromHost,
}

/// The UDP Service (port 53 -> the pods' 5353).
fn apply_service(cluster: &Cluster, type_: &str, extra: &str) -> Result<()> {
    let port = if type_ == "ClusterIP" {
        dns(53)
    } else {
        dns(53).node_port(NODE_PORT)
    };
    cluster.apply(&service("udp", type_, VIP, &[port], extra))
}

fn apply_endpoints(cluster: &Cluster, endpoints: &[Endpoint]) -> Result<()> {
    cluster.apply(&slice("udp-1", "udp", &[DNS], endpoints))
}

/// Either client, for the scenario's checks.
enum Client {
    Pod(PodClient),
    Host(HostClient),
}

impl Client {
    fn log(&self) -> &Log {
        match self {
            Client::Pod(c) => &c.log,
            Client::Host(c) => &c.log,
        }
    }
}

/// After `backend` was first seen at `since`, every later answer comes from
/// it (the deleted backend never answers again).
fn only_since(log: &Log, since: Instant, backend: &str) -> Result<usize> {
    std::thread::sleep(Duration::from_secs(1));
    let answers = log.since(since);
    let first = answers
        .iter()
        .position(|a| a.as_deref() == Some(backend))
        .context("never answered")?;
    let after = &answers[first..];
    ensure!(
        after.iter().all(|a| a.as_deref() == Some(backend)),
        "after {backend} answered, other answers followed: {after:?}"
    );
    Ok(after.len())
}

/// Upstream: the client sends from a fixed port; backend1 is created and
/// seen within 1 min; backend2 is created and backend1 deleted; backend2
/// must be seen within 1 min. Both backends on node-b, the client on node-a.
fn backend_replaced(bins: &Binaries, frontend: Frontend) -> Result<Outcome> {
    let mut cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let node_b = cluster.topo.node_name(1).to_string();
    let (b1, b2) = (
        cluster.topo.pods(1)[0].name.clone(),
        cluster.topo.pods(1)[1].name.clone(),
    );
    let (e1, e2) = (
        Endpoint::ready(&cluster.topo.pods(1)[0], &node_b),
        Endpoint::ready(&cluster.topo.pods(1)[1], &node_b),
    );
    let wait = Duration::from_secs(1);
    let (type_, to) = match frontend {
        Frontend::NodePort => (
            "NodePort",
            SocketAddr::from((cluster.topo.node_ip(1), NODE_PORT)),
        ),
        _ => ("ClusterIP", SocketAddr::from((VIP, 53))),
    };
    apply_service(&cluster, type_, "")?;
    let client = match frontend {
        Frontend::ClusterIpFromHost => Client::Host(HostClient::start(&mut cluster, 0, to, wait)?),
        _ => Client::Pod(PodClient::start(
            cluster.topo.client_pod(0),
            to,
            NC_PORT,
            wait,
            true,
        )?),
    };
    let log = client.log();
    let start = Instant::now();
    apply_endpoints(&cluster, std::slice::from_ref(&e1))?;
    let first = log.wait_for(&b1, start, UPSTREAM_BOUND)?;
    ensure!(first < OUR_BOUND, "backend1 seen only after {first:?}");
    // Upstream creates backend2, then deletes backend1.
    apply_endpoints(&cluster, &[e1, e2.clone()])?;
    std::thread::sleep(Duration::from_millis(500));
    let deleted = Instant::now();
    apply_endpoints(&cluster, &[e2])?;
    let second = log.wait_for(&b2, deleted, UPSTREAM_BOUND)?;
    ensure!(second < OUR_BOUND, "backend2 seen only after {second:?}");
    let after = only_since(log, deleted, &b2)?;
    Ok(Outcome::new(format!(
        "from fixed port {NC_PORT}: backend1 seen {:.2} s after its endpoint, backend2 {:.2} s after backend1's deletion (upstream: 1 min each), then {after}/{after} tries by backend2",
        first.as_secs_f64(),
        second.as_secs_f64()
    )))
}

/// Regression 126934: iTP=Local; a local backend1 and a remote backend2
/// (never used from node-a); backend1 deleted, 5 s later a local backend3
/// created: it must be seen within 1 min (`nc -w 1`).
fn itp_local(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let topo = &cluster.topo;
    let (a, b) = (topo.node_name(0), topo.node_name(1));
    let (b1, b3) = (&topo.pods(0)[0], &topo.pods(0)[1]);
    let e2 = Endpoint::ready(&topo.pods(1)[0], b);
    apply_service(&cluster, "ClusterIP", "  internalTrafficPolicy: Local\n")?;
    let client = PodClient::start(
        topo.client_pod(0),
        SocketAddr::from((VIP, 53)),
        NC_PORT,
        Duration::from_secs(1),
        true,
    )?;
    let start = Instant::now();
    apply_endpoints(&cluster, &[Endpoint::ready(b1, a), e2.clone()])?;
    let first = client.log.wait_for(&b1.name, start, UPSTREAM_BOUND)?;
    let local_only = only_since(&client.log, start, &b1.name)?;
    apply_endpoints(&cluster, std::slice::from_ref(&e2))?;
    std::thread::sleep(Duration::from_secs(5));
    let gap = client.log.since(Instant::now() - Duration::from_secs(3));
    ensure!(
        gap.iter().all(Option::is_none),
        "answers while node-a had no local endpoint: {gap:?}"
    );
    let created = Instant::now();
    apply_endpoints(&cluster, &[Endpoint::ready(b3, a), e2])?;
    let third = client.log.wait_for(&b3.name, created, UPSTREAM_BOUND)?;
    ensure!(third < OUR_BOUND, "backend3 seen only after {third:?}");
    let after = only_since(&client.log, created, &b3.name)?;
    Ok(Outcome::new(format!(
        "backend1 (local) seen in {:.2} s, {local_only}/{local_only} tries local only; nothing answered while no local endpoint (5 s); backend3 seen {:.2} s after it was created (upstream: 1 min), then {after}/{after} by it",
        first.as_secs_f64(),
        third.as_secs_f64()
    )))
}

/// Regression 105657: the client sends while the only endpoint is unready
/// (upstream: a 15 s init container); once it is ready it must be seen
/// within 1 min: nothing from the no-endpoint period may blackhole it.
fn unready_then_ready(bins: &Binaries, unready_for: Duration) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let topo = &cluster.topo;
    let (pod, node) = (&topo.pods(1)[0], topo.node_name(1));
    apply_service(&cluster, "ClusterIP", "")?;
    apply_endpoints(&cluster, &[Endpoint::ready(pod, node).unready()])?;
    let client = PodClient::start(
        topo.client_pod(0),
        SocketAddr::from((VIP, 53)),
        NC_PORT,
        Duration::from_secs(1),
        true,
    )?;
    std::thread::sleep(unready_for);
    let tries = client.log.last(usize::MAX);
    ensure!(
        !tries.is_empty() && tries.iter().all(Option::is_none),
        "answers while the endpoint was unready: {tries:?}"
    );
    let ready = Instant::now();
    apply_endpoints(&cluster, &[Endpoint::ready(pod, node)])?;
    let seen = client.log.wait_for(&pod.name, ready, UPSTREAM_BOUND)?;
    ensure!(seen < OUR_BOUND, "seen only after {seen:?}");
    Ok(Outcome::new(format!(
        "{} tries unanswered in {:.0} s unready; the backend seen {:.2} s after it turned ready (upstream: 1 min)",
        tries.len(),
        unready_for.as_secs_f64(),
        seen.as_secs_f64()
    )))
}

/// Upstream (loadbalancer.go): the runner sends to the LB IP every second
/// from a fixed port (one socket); pod1 serves, is deleted, pod2 is created
/// on another node (or the same); each hostname must show within the LB
/// lag (2 min). The cloud LB forwards to node-a; eTP=Cluster.
fn lb_cycles(bins: &Binaries, different_nodes: bool) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let topo = &cluster.topo;
    let pod1 = (&topo.pods(0)[0], topo.node_name(0));
    let pod2 = if different_nodes {
        (&topo.pods(1)[0], topo.node_name(1))
    } else {
        (&topo.pods(0)[1], topo.node_name(0))
    };
    cluster.apply(&with_ingress(
        &service(
            "udp",
            "LoadBalancer",
            VIP,
            &[dns(53).node_port(NODE_PORT)],
            "",
        ),
        LB_IP,
    ))?;
    route_lb(&cluster, LB_IP, 0)?;
    let port = if different_nodes {
        LB_PORT_DIFFERENT_NODES
    } else {
        LB_PORT_SAME_NODE
    };
    let client = PodClient::start(
        topo.external_client(),
        SocketAddr::from((LB_IP, 53)),
        port,
        Duration::from_secs(1),
        false,
    )?;
    let start = Instant::now();
    apply_endpoints(&cluster, &[Endpoint::ready(pod1.0, pod1.1)])?;
    let first = client.log.wait_for(&pod1.0.name, start, UPSTREAM_BOUND)?;
    ensure!(first < OUR_BOUND, "pod1 seen only after {first:?}");
    apply_endpoints(&cluster, &[])?;
    std::thread::sleep(Duration::from_secs(1));
    let created = Instant::now();
    apply_endpoints(&cluster, &[Endpoint::ready(pod2.0, pod2.1)])?;
    let second = client.log.wait_for(&pod2.0.name, created, UPSTREAM_BOUND)?;
    ensure!(second < OUR_BOUND, "pod2 seen only after {second:?}");
    let after = only_since(&client.log, created, &pod2.0.name)?;
    Ok(Outcome::new(format!(
        "one socket from port {port}: pod1 ({}) seen {:.2} s after its endpoint, pod2 ({}) {:.2} s after its endpoint (upstream: 2 min each), then {after}/{after} by pod2",
        pod1.1,
        first.as_secs_f64(),
        pod2.1,
        second.as_secs_f64()
    )))
}
