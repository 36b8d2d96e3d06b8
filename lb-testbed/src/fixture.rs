//! The datapath without interfaces: the real object loaded with a private
//! pin dir, maps seeded directly, programs run on crafted packets through
//! BPF_PROG_TEST_RUN. Used by the datapath tests and the benchmarks.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
    },
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
    Ebpf,
};
use lb_common::{
    filter_slot, stats, Backend, CtKey, CtValue, FragKey, FragValue, MapId, MapSizes, NodeConfig,
    RevNat, RevNatId, ServiceKey, ServiceValue, SourceRange, StatsCounter, FILTER_BACKENDS,
    FILTER_FRONTENDS, FILTER_VALID, FILTER_VALID_WORD, PROG_TC_EGRESS, PROG_TC_INGRESS,
    PROG_TC_NODE_EGRESS, PROG_TC_POD_INGRESS, PROG_XDP_INGRESS, PROG_XDP_NODE, REJECT_BOUNCE_MARK,
};

use lb_agent::ebpf::{load, PodHook};

/// What a program did with a packet, whichever hook ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// On to the stack (rewritten or not).
    Pass,
    Drop,
    /// Back out of the interface it came in on (a refusal): TC's redirect,
    /// XDP's pass with the bounce mark, or XDP_TX.
    SentBack,
}

impl Verdict {
    /// What an XDP program's (verdict, output) amounts to, the output
    /// without the mark of a frame passed up for `lb_tc_ingress` to send
    /// back: metadata in front of it (BPF_PROG_TEST_RUN returns it there),
    /// or a trailer where the kernel refuses XDP metadata. No test frame's
    /// destination MAC starts, nor its payload ends, with the mark's bytes.
    pub fn of_xdp((verdict, mut out): (u32, Vec<u8>)) -> anyhow::Result<(Verdict, Vec<u8>)> {
        let mark = REJECT_BOUNCE_MARK.to_ne_bytes();
        let meta = out.get(..4) == Some(&mark[..]);
        let trailer = out.len() >= 4 && out[out.len() - 4..] == mark;
        let verdict = match verdict {
            XDP_PASS if meta => {
                out.drain(..4);
                Verdict::SentBack
            }
            XDP_PASS if trailer => {
                out.truncate(out.len() - 4);
                Verdict::SentBack
            }
            XDP_PASS => Verdict::Pass,
            XDP_DROP => Verdict::Drop,
            XDP_TX => Verdict::SentBack,
            other => anyhow::bail!("unexpected XDP verdict {other}"),
        };
        Ok((verdict, out))
    }
}

/// The verdicts BPF_PROG_TEST_RUN returns (the kernel's `xdp_action` and
/// `TC_ACT_*` values).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Room the program may grow a packet by (it never does today).
const OUT_SLACK: usize = 256;

pub struct DatapathFixture {
    ebpf: Ebpf,
    next_backend_id: u32,
    next_rev_nat_id: RevNatId,
    // Dropped last: the pins go once the maps are closed.
    _pins: PinDir,
}

/// A pin directory removed on drop, also when loading failed half-way.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl DatapathFixture {
    /// Loads the object with its maps pinned in a fresh directory under
    /// /sys/fs/bpf (removed on drop) and verifies both programs.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_sizes(MapSizes::DEFAULT)
    }

    /// Same, with the maps sized as the agent sizes them under `sizes`.
    pub fn with_sizes(sizes: MapSizes) -> anyhow::Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let pins = PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/lbfix-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )));
        let mut ebpf = load(&pins.0, &sizes)?;
        prog_mut::<SchedClassifier>(&mut ebpf, PROG_TC_POD_INGRESS)?
            .load()
            .context("verifying pod TC ingress")?;
        prog_mut::<Xdp>(&mut ebpf, PROG_XDP_INGRESS)?
            .load()
            .context("verifying XDP")?;
        prog_mut::<SchedClassifier>(&mut ebpf, PROG_TC_EGRESS)?
            .load()
            .context("verifying TC")?;
        prog_mut::<Xdp>(&mut ebpf, PROG_XDP_NODE)?
            .load()
            .context("verifying node XDP")?;
        prog_mut::<SchedClassifier>(&mut ebpf, PROG_TC_NODE_EGRESS)?
            .load()
            .context("verifying node TC")?;
        prog_mut::<SchedClassifier>(&mut ebpf, PROG_TC_INGRESS)?
            .load()
            .context("verifying TC ingress")?;
        let mut fixture = Self {
            ebpf,
            next_backend_id: 1,
            next_rev_nat_id: 1,
            _pins: pins,
        };
        // The frontend filter on, as the agent runs it: each frontend added
        // gets its bit.
        fixture.filter()?.set(FILTER_VALID_WORD, FILTER_VALID, 0)?;
        Ok(fixture)
    }

    /// Clears every bit of the frontend filter, and sets whether the
    /// datapath uses it (as before the agent's first write: unused).
    pub fn reset_filter(&mut self, valid: bool) -> anyhow::Result<()> {
        let mut filter = self.filter()?;
        for word in 0..FILTER_VALID_WORD {
            filter.set(word, 0, 0)?;
        }
        filter.set(FILTER_VALID_WORD, if valid { FILTER_VALID } else { 0 }, 0)?;
        Ok(())
    }

    fn filter(&mut self) -> anyhow::Result<Array<&mut MapData, u64>> {
        let map = self
            .ebpf
            .map_mut(MapId::Filter.name())
            .ok_or_else(|| anyhow!("{} missing", MapId::Filter.name()))?;
        Ok(Array::try_from(map)?)
    }

    /// Adds a frontend with `backends` (ids and rev-NAT id allocated here).
    pub fn add_service(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        backends: &[(Ipv4Addr, u16)],
    ) -> anyhow::Result<()> {
        let backends: Vec<_> = backends.iter().map(|&(a, p)| (a, p, 0)).collect();
        self.add_frontend(vip, port, proto, &backends, 0)?;
        Ok(())
    }

    /// Sets the sessionAffinity ClientIP timeout of a frontend (0: off).
    pub fn set_affinity(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        timeout_s: u32,
    ) -> anyhow::Result<()> {
        let mut services: HashMap<_, ServiceKey, ServiceValue> =
            self.map(MapId::Services.name())?;
        let key = ServiceKey {
            vip_be: be_addr(vip),
            port_be: port.to_be(),
            slot: 0,
            proto,
            _pad: [0; 3],
        };
        let mut master = services.get(&key, 0)?;
        master.affinity_timeout_s = timeout_s;
        services.insert(key, master, 0)?;
        Ok(())
    }

    /// Makes `addr` one of the node's NodePort addresses.
    pub fn add_node_address(&mut self, addr: Ipv4Addr) -> anyhow::Result<()> {
        let mut map: HashMap<_, u32, u32> = self.map(MapId::NodeAddrs.name())?;
        map.insert(be_addr(addr), lb_common::NODE_ADDR_LOCAL, 0)?;
        Ok(())
    }

    /// Makes `addr` another node's address (its NodePorts balanced by the
    /// node's own sockets).
    pub fn add_peer_address(&mut self, addr: Ipv4Addr) -> anyhow::Result<()> {
        let mut map: HashMap<_, u32, u32> = self.map(MapId::NodeAddrs.name())?;
        map.insert(be_addr(addr), lb_common::NODE_ADDR_PEER, 0)?;
        Ok(())
    }

    /// Admits clients in `addr/prefix` to the frontend with `rev_nat_id`
    /// (loadBalancerSourceRanges).
    pub fn allow_source(
        &mut self,
        rev_nat_id: RevNatId,
        addr: Ipv4Addr,
        prefix: u32,
    ) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut(MapId::SourceRanges.name())
            .ok_or_else(|| anyhow!("{} missing", MapId::SourceRanges.name()))?;
        let mut trie: LpmTrie<_, SourceRange, u32> = LpmTrie::try_from(map)?;
        let data = SourceRange {
            rev_nat_id_be: rev_nat_id.to_be(),
            addr_be: be_addr(addr),
        };
        trie.insert(&Key::new(32 + prefix, data), 1, 0)?;
        Ok(())
    }

    /// Adds a frontend whose backends carry `BACKEND_F_*` flags, with
    /// `SVC_F_*` flags on its master entry.
    pub fn add_frontend(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        backends: &[(Ipv4Addr, u16, u8)],
        flags: u16,
    ) -> anyhow::Result<RevNatId> {
        self.add_split_frontend(vip, port, proto, backends, &[], flags)
    }

    /// [`Self::add_frontend`] with backends after `backends` that only the
    /// node's own clients use (an external frontend with a Local policy:
    /// `internal_count` covers them, `count` does not).
    pub fn add_split_frontend(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        backends: &[(Ipv4Addr, u16, u8)],
        internal_only: &[(Ipv4Addr, u16, u8)],
        flags: u16,
    ) -> anyhow::Result<RevNatId> {
        let rev_nat_id = self.next_rev_nat_id;
        self.next_rev_nat_id += 1;
        let vip_be = be_addr(vip);
        let port_be = port.to_be();
        let mut revnat: HashMap<_, RevNatId, RevNat> = self.map(MapId::RevNat.name())?;
        revnat.insert(
            rev_nat_id,
            RevNat {
                addr_be: vip_be,
                port_be,
                _pad: 0,
            },
            0,
        )?;
        let mut ids = Vec::new();
        for (addr, bport, backend_flags) in backends.iter().chain(internal_only) {
            let id = self.next_backend_id;
            self.next_backend_id += 1;
            let mut backend_map: HashMap<_, u32, Backend> = self.map(MapId::Backends.name())?;
            backend_map.insert(
                id,
                Backend {
                    addr_be: be_addr(*addr),
                    port_be: bport.to_be(),
                    proto,
                    flags: *backend_flags,
                },
                0,
            )?;
            self.add_backend_counters(id)?;
            ids.push(id);
        }
        let mut services: HashMap<_, ServiceKey, ServiceValue> =
            self.map(MapId::Services.name())?;
        let key = |slot: u16| ServiceKey {
            vip_be,
            port_be,
            slot,
            proto,
            _pad: [0; 3],
        };
        for (i, id) in ids.iter().enumerate() {
            services.insert(
                key(i as u16 + 1),
                ServiceValue {
                    backend_id: *id,
                    rev_nat_id,
                    ..Default::default()
                },
                0,
            )?;
        }
        let mut filter = self.filter()?;
        let backend_slots = backends
            .iter()
            .chain(internal_only)
            .map(|(addr, bport, _)| (FILTER_BACKENDS, be_addr(*addr), bport.to_be()));
        for (region, addr_be, port) in
            std::iter::once((FILTER_FRONTENDS, vip_be, port_be)).chain(backend_slots)
        {
            let (word, mask) = filter_slot(region, addr_be, port, proto);
            let bits = filter.get(&word, 0)?;
            filter.set(word, bits | mask, 0)?;
        }
        let mut services: HashMap<_, ServiceKey, ServiceValue> =
            self.map(MapId::Services.name())?;
        services.insert(
            key(0),
            ServiceValue {
                count: backends.len() as u16,
                internal_count: ids.len() as u16,
                rev_nat_id,
                flags,
                ..Default::default()
            },
            0,
        )?;
        Ok(rev_nat_id)
    }

    /// Runs the pod-side forward path at `hook` once: what it did, and the
    /// packet after it (for XDP, behind no metadata).
    pub fn run_pod(&self, hook: PodHook, packet: &[u8]) -> anyhow::Result<(Verdict, Vec<u8>)> {
        match hook {
            PodHook::Tc => {
                let (verdict, out) = self.run_pod_tc(packet)?;
                let verdict = match verdict {
                    TC_ACT_OK => Verdict::Pass,
                    TC_ACT_SHOT => Verdict::Drop,
                    TC_ACT_REDIRECT => Verdict::SentBack,
                    other => anyhow::bail!("unexpected TC verdict {other}"),
                };
                Ok((verdict, out))
            }
            PodHook::Xdp => Verdict::of_xdp(self.run_xdp(packet)?),
        }
    }

    /// Runs the pod TC ingress program once: (verdict, packet after it).
    pub fn run_pod_tc(&self, packet: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        Prog::Tc(prog(&self.ebpf, PROG_TC_POD_INGRESS)?).run(packet)
    }

    /// Average time per run of the pod TC ingress program.
    pub fn time_pod_tc(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        Prog::Tc(prog(&self.ebpf, PROG_TC_POD_INGRESS)?).time(packet, repeat)
    }

    /// Runs the XDP program once: (verdict, packet after the program).
    pub fn run_xdp(&self, packet: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        Prog::Xdp(prog(&self.ebpf, PROG_XDP_INGRESS)?).run(packet)
    }

    /// Writes the node's datapath settings (SNAT address and ports).
    pub fn set_config(&mut self, config: NodeConfig) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut(MapId::Config.name())
            .ok_or_else(|| anyhow!("{} missing", MapId::Config.name()))?;
        let mut array: Array<_, NodeConfig> = Array::try_from(map)?;
        array.set(0, config, 0)?;
        Ok(())
    }

    /// Runs the uplink XDP program once.
    pub fn run_xdp_node(&self, packet: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        Prog::Xdp(prog(&self.ebpf, PROG_XDP_NODE)?).run(packet)
    }

    /// Runs the uplink TC egress program once.
    pub fn run_tc_node(&self, packet: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        Prog::Tc(prog(&self.ebpf, PROG_TC_NODE_EGRESS)?).run(packet)
    }

    /// Average time per run of the uplink XDP program.
    pub fn time_xdp_node(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        Prog::Xdp(prog(&self.ebpf, PROG_XDP_NODE)?).time(packet, repeat)
    }

    /// Average time per run of the uplink TC egress program.
    pub fn time_tc_node(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        Prog::Tc(prog(&self.ebpf, PROG_TC_NODE_EGRESS)?).time(packet, repeat)
    }

    /// Runs the TC ingress program (rejections back out) once.
    /// BPF_PROG_TEST_RUN gives a TC program no XDP metadata, so this only
    /// shows what every other frame gets.
    pub fn run_tc_ingress(&self, packet: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        Prog::Tc(prog(&self.ebpf, PROG_TC_INGRESS)?).run(packet)
    }

    /// Average time per run of the TC ingress program.
    pub fn time_tc_ingress(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        Prog::Tc(prog(&self.ebpf, PROG_TC_INGRESS)?).time(packet, repeat)
    }

    /// Runs the TC egress program once: (verdict, packet after the program).
    pub fn run_tc(&self, packet: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        Prog::Tc(prog(&self.ebpf, PROG_TC_EGRESS)?).run(packet)
    }

    /// Average time per run of the XDP program over `repeat` runs of the
    /// same input, as the kernel measures it.
    pub fn time_xdp(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        Prog::Xdp(prog(&self.ebpf, PROG_XDP_INGRESS)?).time(packet, repeat)
    }

    /// Average time per run of the TC egress program.
    pub fn time_tc(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        Prog::Tc(prog(&self.ebpf, PROG_TC_EGRESS)?).time(packet, repeat)
    }

    /// Counters summed over CPUs, by reason.
    pub fn stats(&self) -> anyhow::Result<Vec<StatsCounter>> {
        let map: PerCpuArray<_, StatsCounter> = PerCpuArray::try_from(
            self.ebpf
                .map(MapId::Stats.name())
                .ok_or_else(|| anyhow!("{} missing", MapId::Stats.name()))?,
        )?;
        (0..stats::COUNT)
            .map(|i| {
                let per_cpu = map.get(&i, 0)?;
                Ok(StatsCounter::total(per_cpu.iter()))
            })
            .collect()
    }

    /// Zeroed per-backend counters for backend `id`, as the agent adds
    /// them with each backend.
    fn add_backend_counters(&mut self, id: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let map = (self.ebpf.map_mut(MapId::BackendStats.name()))
            .ok_or_else(|| anyhow!("{} missing", MapId::BackendStats.name()))?;
        let mut counters: PerCpuHashMap<_, u32, StatsCounter> = PerCpuHashMap::try_from(map)?;
        let zeroes = PerCpuValues::try_from(vec![StatsCounter::default(); cpus])?;
        counters.insert(id, zeroes, 0)?;
        Ok(())
    }

    /// What the backend `addr:port` was counted, summed over CPUs.
    pub fn backend_counter(&self, addr: Ipv4Addr, port: u16) -> anyhow::Result<StatsCounter> {
        let map = (self.ebpf.map(MapId::Backends.name()))
            .ok_or_else(|| anyhow!("{} missing", MapId::Backends.name()))?;
        let backends: HashMap<_, u32, Backend> = HashMap::try_from(map)?;
        let id = (backends.iter().filter_map(Result::ok))
            .find(|(_, b)| b.addr_be == be_addr(addr) && b.port_be == port.to_be())
            .map(|(id, _)| id)
            .ok_or_else(|| anyhow!("no backend {addr}:{port}"))?;
        let map = (self.ebpf.map(MapId::BackendStats.name()))
            .ok_or_else(|| anyhow!("{} missing", MapId::BackendStats.name()))?;
        let counters: PerCpuHashMap<_, u32, StatsCounter> = PerCpuHashMap::try_from(map)?;
        let per_cpu = counters.get(&id, 0)?;
        Ok(StatsCounter::total(per_cpu.iter()))
    }

    /// Packets counted under `reason`.
    pub fn count(&self, reason: u32) -> anyhow::Result<u64> {
        Ok(self.stats()?[reason as usize].packets)
    }

    /// Deletes the backend `addr:port` from the backend map, as the agent
    /// does once no Service uses it any more. Returns whether it was there.
    pub fn remove_backend(&mut self, addr: Ipv4Addr, port: u16) -> anyhow::Result<bool> {
        let mut backends: HashMap<_, u32, Backend> = self.map(MapId::Backends.name())?;
        let ids: Vec<u32> = backends
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, b)| b.addr_be == be_addr(addr) && b.port_be == port.to_be())
            .map(|(id, _)| id)
            .collect();
        for id in &ids {
            backends.remove(id)?;
        }
        Ok(!ids.is_empty())
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> anyhow::Result<Vec<(CtKey, CtValue)>> {
        // aya's HashMap covers LRU hash maps too.
        let map: HashMap<_, CtKey, CtValue> = HashMap::try_from(
            self.ebpf
                .map(MapId::Conntrack.name())
                .ok_or_else(|| anyhow!("{} missing", MapId::Conntrack.name()))?,
        )?;
        Ok(map.iter().collect::<Result<_, _>>()?)
    }

    /// Empties the conntrack map, as a full map's evictions or the agent's
    /// expiry would, flow by flow.
    pub fn forget_conntrack(&mut self) -> anyhow::Result<()> {
        let mut map: HashMap<_, CtKey, CtValue> = HashMap::try_from(
            self.ebpf
                .map_mut(MapId::Conntrack.name())
                .ok_or_else(|| anyhow!("{} missing", MapId::Conntrack.name()))?,
        )?;
        let keys: Vec<CtKey> = map.keys().collect::<Result<_, _>>()?;
        for key in keys {
            map.remove(&key)?;
        }
        Ok(())
    }

    /// Every entry of the fragment map.
    pub fn fragments(&self) -> anyhow::Result<Vec<(FragKey, FragValue)>> {
        let map: HashMap<_, FragKey, FragValue> = HashMap::try_from(
            self.ebpf
                .map(MapId::Fragments.name())
                .ok_or_else(|| anyhow!("{} missing", MapId::Fragments.name()))?,
        )?;
        Ok(map.iter().collect::<Result<_, _>>()?)
    }

    fn map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> anyhow::Result<HashMap<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("{name} missing"))?;
        HashMap::try_from(map).with_context(|| name.to_string())
    }
}

/// An IPv4 address as the datapath stores it (network byte order).
pub fn be_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn prog<'a, P>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a P>
where
    &'a P: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program(name)
        .ok_or_else(|| anyhow!("program {name} missing"))?;
    Ok(p.try_into()?)
}

fn prog_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing"))?;
    Ok(p.try_into()?)
}

/// The two program types BPF_PROG_TEST_RUN runs for us.
enum Prog<'a> {
    Xdp(&'a Xdp),
    Tc(&'a SchedClassifier),
}

impl Prog<'_> {
    fn test_run(&self, opts: TestRunOptions<'_>) -> anyhow::Result<TestRunResult> {
        let res = match self {
            Prog::Xdp(p) => p.test_run(opts),
            Prog::Tc(p) => p.test_run(opts),
        };
        res.context("BPF_PROG_TEST_RUN")
    }

    /// One run: (verdict, packet after the program).
    fn run(&self, packet: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; packet.len() + OUT_SLACK];
        let res = self.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Average time per run over `repeat` runs of the same input.
    fn time(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        Ok(self
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..Default::default()
            })?
            .duration)
    }
}
