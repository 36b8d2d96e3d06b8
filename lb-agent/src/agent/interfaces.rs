//! Which of the node's interfaces are pod interfaces (by glob).

use std::collections::BTreeMap;

use anyhow::Context as _;
use globset::{Glob, GlobSet, GlobSetBuilder};

pub struct InterfaceMatcher(GlobSet);

impl InterfaceMatcher {
    pub fn new(patterns: &[String]) -> anyhow::Result<Self> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p).with_context(|| format!("--pod-interfaces: bad pattern {p:?}"))?);
        }
        Ok(Self(b.build().context("--pod-interfaces")?))
    }

    /// Matching interfaces of this network namespace: name -> ifindex.
    pub fn present(&self) -> nix::Result<BTreeMap<String, u32>> {
        Ok(nix::net::if_::if_nameindex()?
            .iter()
            .filter_map(|i| {
                let name = i.name().to_str().ok()?;
                self.0.is_match(name).then(|| (name.to_string(), i.index()))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_plain_names() {
        let m = InterfaceMatcher::new(&["veth*".into(), "cali1234".into()]).unwrap();
        assert!(m.0.is_match("veth0a1b"));
        assert!(m.0.is_match("cali1234"));
        assert!(!m.0.is_match("eth0"));
        assert!(InterfaceMatcher::new(&["[".into()]).is_err());
    }
}
