//! `cargo xtask setup`: checks (and where possible installs) everything the
//! build and the tests need. Idempotent; one line per item.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Debian packages the end-to-end tests, the demo and the benchmarks use
/// (fonts-dejavu-core: the font of the benchmark plots).
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "ethtool",
    "bpftool",
    "iperf3",
    "wrk",
    "fonts-dejavu-core",
];

/// bpf-linker release line whose `llvm-<major>` features we build against.
const BPF_LINKER_VERSION: &str = "^0.13";

const BPFFS: &str = "/sys/fs/bpf";

fn report(item: &str, status: &str) {
    println!("setup: {item:<22} {status}");
}

pub fn run() -> Result<()> {
    let root = cmd::is_root();
    let mut skipped = Vec::new();

    check_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_apt_packages(root, &mut skipped)?;
    ensure_bpffs(root, &mut skipped)?;

    if !root {
        if skipped.is_empty() {
            println!("setup: not root; no privileged step was needed");
        } else {
            println!(
                "setup: not root; skipped privileged steps: {} (rerun `cargo xtask setup` as root)",
                skipped.join("; ")
            );
        }
    }
    Ok(())
}

/// The nightly toolchain builds lb-ebpf; it cannot be downloaded here.
fn check_nightly() -> Result<()> {
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("listing rustup toolchains (is rustup installed?)")?;
    if !list.lines().any(is_nightly_toolchain) {
        bail!(
            "the nightly toolchain is not installed (`rustup toolchain list` does not show it).\n\
             It is needed to build lb-ebpf and setup cannot download it; install it where the \
             network allows with `rustup toolchain install nightly --component rust-src`."
        );
    }
    report("nightly toolchain", "ok");
    Ok(())
}

/// Whether a `rustup toolchain list` line names the toolchain `+nightly`
/// selects (`nightly` or `nightly-<host>`, not a dated `nightly-YYYY-MM-DD`).
fn is_nightly_toolchain(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or("");
    match name.strip_prefix("nightly") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit())),
        None => false,
    }
}

fn ensure_rust_src() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("listing the nightly toolchain's components")?;
    let present = installed.lines().any(|l| {
        let name = l.split_whitespace().next().unwrap_or("");
        name == "rust-src" || name.starts_with("rust-src-")
    });
    if present {
        report("rust-src (nightly)", "ok");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("adding rust-src to the nightly toolchain")?;
    report("rust-src (nightly)", "installed");
    Ok(())
}

/// `Some(version line)` when `bpf-linker --version` runs successfully.
fn bpf_linker_version() -> Result<Option<String>> {
    let out = cmd::try_output(Command::new("bpf-linker").arg("--version"))?;
    Ok(out
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()))
}

fn ensure_bpf_linker() -> Result<()> {
    if let Some(version) = bpf_linker_version()? {
        report("bpf-linker", &format!("ok ({version})"));
        return Ok(());
    }

    // Missing, or present but unable to run (typically its libLLVM symlinks
    // were removed by `cargo clean` or the nightly was updated).
    let llvm = NightlyLlvm::detect()?;
    let prefix = llvm.prepare_prefix()?;
    if let Some(version) = bpf_linker_version()? {
        report(
            "bpf-linker",
            &format!("ok ({version}; restored libLLVM links)"),
        );
        return Ok(());
    }

    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {} (about a minute)",
        llvm.llvm_version
    );
    let feature = format!("llvm-{}", llvm.major);
    cmd::run(
        cmd::cargo()?
            // cargo install builds in a temporary directory of its own.
            .env_remove("CARGO_TARGET_DIR")
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--force", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--no-default-features", "--features"])
            .arg(&feature),
    )
    .context("installing bpf-linker")?;

    match bpf_linker_version()? {
        Some(version) => report("bpf-linker", &format!("installed ({version})")),
        None => bail!(
            "bpf-linker was installed but `bpf-linker --version` does not run: \
             is the cargo bin directory (usually ~/.cargo/bin) on PATH?"
        ),
    }
    Ok(())
}

/// What building bpf-linker against the nightly toolchain's own LLVM needs.
#[derive(Debug, PartialEq, Eq)]
struct NightlyLlvm {
    /// `release:` of `rustc +nightly -vV`, e.g. `1.97.0-nightly`.
    release: String,
    /// `LLVM version:`, e.g. `22.1.4`.
    llvm_version: String,
    /// e.g. `22`.
    major: String,
    /// e.g. `22.1`.
    major_minor: String,
}

impl NightlyLlvm {
    fn detect() -> Result<Self> {
        let vv = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))
            .context("asking the nightly rustc for its version")?;
        Self::parse(&vv)
    }

    /// Parses `rustc -vV` output.
    fn parse(vv: &str) -> Result<Self> {
        let field = |name: &str| {
            vv.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .with_context(|| format!("no `{name}` line in `rustc +nightly -vV` output:\n{vv}"))
        };
        let release = field("release:")?;
        let llvm_version = field("LLVM version:")?;
        let mut parts = llvm_version.split('.');
        let major = parts.next().unwrap_or("");
        let minor = parts.next().unwrap_or("0");
        let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if !numeric(major) || !numeric(minor) {
            bail!("cannot read the LLVM major.minor version from `LLVM version: {llvm_version}`");
        }
        Ok(Self {
            major: major.to_string(),
            major_minor: format!("{major}.{minor}"),
            release,
            llvm_version,
        })
    }

    /// File name of the LLVM library shipped in the nightly sysroot.
    fn lib_name(&self) -> String {
        format!("libLLVM.so.{}-rust-{}", self.major_minor, self.release)
    }

    /// Creates `<target>/llvm-prefix/lib` with `libLLVM.so` and the versioned
    /// name both linking to the nightly sysroot's library; returns the prefix.
    fn prepare_prefix(&self) -> Result<PathBuf> {
        let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("asking the nightly rustc for its sysroot")?;
        let lib_dir = Path::new(sysroot.trim()).join("lib");
        let library = lib_dir.join(self.lib_name());
        if !library.is_file() {
            let found: Vec<String> = std::fs::read_dir(&lib_dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("libLLVM"))
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "the nightly toolchain has no {} (expected from its `rustc -vV`); \
                 LLVM libraries in {}: {}",
                library.display(),
                lib_dir.display(),
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            );
        }

        let prefix = cmd::target_dir()?.join("llvm-prefix");
        let link_dir = prefix.join("lib");
        std::fs::create_dir_all(&link_dir)
            .with_context(|| format!("creating {}", link_dir.display()))?;
        for name in ["libLLVM.so".to_string(), self.lib_name()] {
            let link = link_dir.join(&name);
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(&link)
                    .with_context(|| format!("removing the old {}", link.display()))?;
            }
            std::os::unix::fs::symlink(&library, &link)
                .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
        }
        Ok(prefix)
    }
}

fn ensure_apt_packages(root: bool, skipped: &mut Vec<String>) -> Result<()> {
    let mut missing = Vec::new();
    for &package in APT_PACKAGES {
        let Some(out) =
            cmd::try_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))?
        else {
            report(
                "apt packages",
                "skipped (no dpkg-query: not a Debian-like system)",
            );
            return Ok(());
        };
        let installed = out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed";
        if installed {
            report(&format!("apt: {package}"), "ok");
        } else {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !root {
        for package in &missing {
            report(&format!("apt: {package}"), "MISSING (needs root)");
        }
        skipped.push(format!("apt-get install {}", missing.join(" ")));
        return Ok(());
    }
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))
        .context("updating the apt package lists")?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&missing),
    )
    .with_context(|| format!("installing apt packages {}", missing.join(" ")))?;
    for package in &missing {
        report(&format!("apt: {package}"), "installed");
    }
    Ok(())
}

/// Whether /proc/mounts shows a bpf filesystem at `path`.
fn bpffs_mounted(mounts: &str, path: &str) -> bool {
    mounts.lines().any(|l| {
        let mut fields = l.split_whitespace();
        let _source = fields.next();
        fields.next() == Some(path) && fields.next() == Some("bpf")
    })
}

pub fn bpffs_is_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(bpffs_mounted(&mounts, BPFFS))
}

fn ensure_bpffs(root: bool, skipped: &mut Vec<String>) -> Result<()> {
    let item = format!("bpffs ({BPFFS})");
    if bpffs_is_mounted()? {
        report(&item, "ok");
        return Ok(());
    }
    if !root {
        report(&item, "NOT MOUNTED (needs root)");
        skipped.push(format!("mount -t bpf bpf {BPFFS}"));
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("mounting the BPF filesystem at {BPFFS}"))?;
    if !bpffs_is_mounted()? {
        bail!(
            "`mount -t bpf bpf {BPFFS}` succeeded but /proc/mounts shows no bpf filesystem there"
        );
    }
    report(&item, "installed (mounted)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIGHTLY_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)
binary: rustc
commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a
commit-date: 2026-05-19
host: x86_64-unknown-linux-gnu
release: 1.97.0-nightly
LLVM version: 22.1.4
";

    #[test]
    fn derives_llvm_names_from_rustc_vv() {
        let llvm = NightlyLlvm::parse(NIGHTLY_VV).unwrap();
        assert_eq!(
            llvm,
            NightlyLlvm {
                release: "1.97.0-nightly".into(),
                llvm_version: "22.1.4".into(),
                major: "22".into(),
                major_minor: "22.1".into(),
            }
        );
        assert_eq!(llvm.lib_name(), "libLLVM.so.22.1-rust-1.97.0-nightly");
    }

    #[test]
    fn llvm_version_without_patch() {
        let vv = NIGHTLY_VV.replace("22.1.4", "23.0");
        let llvm = NightlyLlvm::parse(&vv).unwrap();
        assert_eq!(
            (llvm.major.as_str(), llvm.major_minor.as_str()),
            ("23", "23.0")
        );
    }

    #[test]
    fn rejects_incomplete_rustc_vv() {
        assert!(NightlyLlvm::parse("release: 1.97.0-nightly\n").is_err());
        assert!(NightlyLlvm::parse("LLVM version: 22.1.4\n").is_err());
        assert!(NightlyLlvm::parse("release: x\nLLVM version: abc\n").is_err());
    }

    #[test]
    fn recognises_the_nightly_toolchain() {
        assert!(is_nightly_toolchain("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_nightly_toolchain(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
        assert!(is_nightly_toolchain("nightly"));
        assert!(!is_nightly_toolchain(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_nightly_toolchain(
            "stable-x86_64-unknown-linux-gnu (active, default)"
        ));
        assert!(!is_nightly_toolchain("no installed toolchains"));
    }

    #[test]
    fn finds_bpffs_in_proc_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(bpffs_mounted(mounts, "/sys/fs/bpf"));
        assert!(!bpffs_mounted("sysfs /sys sysfs rw 0 0\n", "/sys/fs/bpf"));
        assert!(!bpffs_mounted(
            "tmpfs /sys/fs/bpf tmpfs rw 0 0\n",
            "/sys/fs/bpf"
        ));
    }
}
