//! Golden tests from objects to maps, after Cilium's txtar tests: each
//! `goldens/*.txtar` holds Services and EndpointSlices (`-- input.yaml --`)
//! and, per map, the `lbctl map dump` table the reconciler's writes make
//! of them on node `node-a`. No kernel: the maps are the in-memory fake,
//! read as lbctl reads pinned maps. `UPDATE_GOLDENS=1 cargo test -p lbctl
//! --test goldens` rewrites the expected tables.

use std::{fmt::Write as _, fs, path::Path};

use lb_core::reconcile::{FakeDataplane, Reconciler};
use lbctl::{dump::dump, MapId, Report, Snapshot};

const NODE: &str = "node-a";
const MAPS: [MapId; 4] = [
    MapId::Services,
    MapId::Backends,
    MapId::RevNat,
    MapId::SourceRanges,
];

/// `(name, content)` of each `-- name --` section, after the comment.
fn sections(txtar: &str) -> (String, Vec<(String, String)>) {
    let mut comment = String::new();
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in txtar.lines() {
        let header = (line.strip_prefix("-- ")).and_then(|l| l.strip_suffix(" --"));
        match (header, sections.last_mut()) {
            (Some(name), _) => sections.push((name.to_owned(), String::new())),
            (None, Some((_, body))) => writeln!(body, "{line}").unwrap(),
            (None, None) => writeln!(comment, "{line}").unwrap(),
        }
    }
    (comment, sections)
}

/// The dumps of `MAPS` after one sync of the objects in `yaml`.
fn dumps(yaml: &str) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("input.yaml"), yaml).unwrap();
    let loaded = lb_core::manifest::load_dir(dir.path());
    assert_eq!(loaded.errors, vec![], "the input loads");
    let desired = loaded.desired_state(Some(NODE));
    let mut dp = FakeDataplane::default();
    Reconciler::new().sync(&desired, &mut dp).expect("the sync");
    let snapshot = Snapshot::of_state(&dp.state);
    let dump_of = |map: MapId| (map.name().to_owned(), dump(&snapshot, map).table());
    MAPS.into_iter().map(dump_of).collect()
}

#[test]
fn objects_to_map_dumps() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens");
    let update = std::env::var_os("UPDATE_GOLDENS").is_some();
    let mut cases: Vec<_> = (fs::read_dir(&dir).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txtar"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    for case in cases {
        let (comment, sections) = sections(&fs::read_to_string(&case).unwrap());
        let input = (sections.iter())
            .find(|(name, _)| name == "input.yaml")
            .unwrap_or_else(|| panic!("{}: no input.yaml section", case.display()));
        let got = dumps(&input.1);
        if update {
            let mut out = comment;
            writeln!(out, "-- input.yaml --\n{}", input.1.trim_end()).unwrap();
            for (name, table) in &got {
                writeln!(out, "-- {name} --\n{}", table.trim_end()).unwrap();
            }
            fs::write(&case, out).unwrap();
            continue;
        }
        for (name, table) in &got {
            let want = (sections.iter())
                .find(|(n, _)| n == name)
                .map_or("", |(_, body)| body.as_str());
            assert_eq!(
                table.trim_end(),
                want.trim_end(),
                "{}: {name} (UPDATE_GOLDENS=1 rewrites it)",
                case.display()
            );
        }
    }
}
