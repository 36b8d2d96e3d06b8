//! The short differential fuzzing run of `cargo xtask test` (issue 9):
//! 60 000 seeded random and mutated frames through the five packet
//! programs, every property held (see `lb_testbed::fuzz`). The long run
//! is `cargo xtask fuzz --packets N`. `LB_FUZZ_SEED` replays another seed.

use lb_testbed::{fuzz, privileged::require_privileged};

const FRAMES: u64 = 60_000;
const SEED: u64 = 0x1b_f022;

#[test]
fn fuzzed_frames_keep_every_datapath_property() {
    if !require_privileged("fuzzed_frames_keep_every_datapath_property") {
        return;
    }
    let seed = std::env::var("LB_FUZZ_SEED")
        .ok()
        .map_or(SEED, |s| s.parse().expect("LB_FUZZ_SEED: a number"));
    let report = fuzz::run(FRAMES, seed).unwrap();
    println!("{report}");
    assert!(report.clean(), "{report}");
    // The run reached every kind of outcome, or it proves little.
    for (i, t) in report.tallies.iter().enumerate() {
        assert!(t.unchanged > 0 && t.rewritten > 0, "program {i}: {t:?}");
    }
    // The forward programs (TC pod ingress, XDP pod, XDP uplink).
    let forward = &report.tallies[..3];
    assert!(
        forward.iter().all(|t| t.refused > 0 || t.dropped > 0),
        "{forward:?}"
    );
}
