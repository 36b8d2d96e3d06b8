//! lbctl as the tests run it: on an agent's pin directory (it reads the
//! pinned maps, so no namespace is needed), JSON out.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;

/// `lbctl --json <args>` on `pin_dir`; exit codes 0 (ok) and 1 (findings)
/// both carry a document.
pub fn json(lbctl: &Path, pin_dir: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new(lbctl)
        .arg("--bpffs")
        .arg(pin_dir)
        .arg("--json")
        .args(args)
        .output()
        .with_context(|| format!("running {}", lbctl.display()))?;
    ensure!(
        out.status.code().is_some_and(|c| c <= 1),
        "lbctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("lbctl {args:?}: not JSON"))
}

/// Packets by verdict reason (`lbctl stats --nonzero`), by name.
pub fn reason_counts(lbctl: &Path, pin_dir: &Path) -> Result<BTreeMap<String, u64>> {
    let doc = json(lbctl, pin_dir, &["stats", "--nonzero"])?;
    let reasons = doc["reasons"].as_array().context("no reasons")?;
    reasons
        .iter()
        .map(|r| {
            let name = r["name"].as_str().context("reason without a name")?;
            let packets = r["packets"].as_u64().context("reason without packets")?;
            Ok((name.to_owned(), packets))
        })
        .collect()
}
