//! The fast conformance scenarios (see `lb_userspace::conformance`), one
//! test each; `cargo xtask conformance` runs them all and writes the
//! table. Needs root, a bpffs and cgroup v2; LB_SKIP_PRIVILEGED=1 skips.

use lb_userspace::conformance::{self, Binaries, Speed};
use lb_userspace::testbed::privileged::require_privileged;

fn bins() -> Binaries {
    Binaries {
        agent: env!("CARGO_BIN_EXE_lb-agent").into(),
        testbed: env!("CARGO_BIN_EXE_lb-testbed").into(),
    }
}

fn run(id: &str) {
    if !require_privileged(id) {
        return;
    }
    let catalogue = conformance::catalogue();
    let case = catalogue
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no scenario {id}"));
    let ran = conformance::run(case, &bins());
    match ran.result {
        Ok(outcome) => println!("{id}: {} ({:.1} s)", outcome.figure, ran.took.as_secs_f64()),
        Err(e) => panic!("{id} ({}): {e}", case.upstream),
    }
}

macro_rules! scenarios {
    ($($id:ident),* $(,)?) => {
        $(
            #[test]
            fn $id() {
                run(stringify!($id));
            }
        )*

        /// Every fast scenario of the catalogue has its test above.
        #[test]
        fn every_fast_scenario_is_tested() {
            let tested = [$(stringify!($id)),*];
            for case in conformance::catalogue() {
                if case.speed == Speed::Fast {
                    assert!(tested.contains(&case.id), "add {} to scenarios!", case.id);
                }
            }
        }
    };
}

scenarios!(clusterip_basic_endpoint_churn, reject_without_endpoints);
