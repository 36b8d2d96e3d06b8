//! Random desired states for the property tests: frontends sharing a small
//! pool of pods (some on other nodes), some Local, some with source ranges
//! drawn from a small pool (overlapping, one with host bits set), so that
//! changes of each kind come up often.

use super::*;

/// xorshift64: a deterministic pseudo-random sequence without a dependency.
pub(super) struct Rng(pub u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(super) fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

pub(super) fn random_desired(rng: &mut Rng) -> Desired {
    let mut desired = Desired::default();
    // Which of the pods 1..=6 run on another node.
    let remote: Vec<bool> = (0..=6).map(|_| rng.one_in(3)).collect();
    for vip in 1..=3 {
        for port in [53, 80] {
            for proto in [Proto::Tcp, Proto::Udp] {
                if rng.one_in(2) {
                    continue;
                }
                let pool = (1..=6).flat_map(|n| [pod(n, 8080), pod(n, 9090)]);
                let backends: Vec<_> = (pool.filter(|_| rng.one_in(3)))
                    .map(|addr| BackendAddr {
                        remote: remote[usize::from(addr.ip.octets()[2])],
                        ..addr
                    })
                    .collect();
                let frontend = Frontend {
                    vip: Ipv4Addr::new(10, 96, 0, vip),
                    port,
                    proto,
                };
                let (internal, backends): (BTreeSet<_>, BTreeSet<_>) =
                    backends.into_iter().partition(|_| rng.one_in(4));
                let mut wanted = wanted(backends);
                wanted.local_only = rng.one_in(4);
                // Backends for the node's own clients only (a Local
                // external frontend's others), sometimes.
                if wanted.local_only && rng.one_in(2) {
                    wanted.internal_backends = internal;
                }
                wanted.source_ranges = some_ranges(rng);
                desired.frontends.insert(frontend, wanted);
            }
        }
    }
    desired
}

/// No ranges half of the time, else some of a small overlapping pool.
pub(super) fn some_ranges(rng: &mut Rng) -> Vec<Ipv4Net> {
    const POOL: [&str; 5] = [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.3/16",
        "192.168.7.0/24",
        "0.0.0.0/0",
    ];
    if rng.one_in(2) {
        return Vec::new();
    }
    (POOL.iter())
        .filter(|_| rng.one_in(3))
        .map(|net| net.parse().unwrap())
        .collect()
}
