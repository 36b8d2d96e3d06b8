//! Builds the kernel programs (`lb-ebpf`) with the nightly toolchain and
//! bpf-linker, and leaves the objects in OUT_DIR so the agent embeds the
//! datapath; dependents' build scripts learn the directory through the
//! `links` metadata (lb-testbed embeds the bench anchors from there).
//! `cargo xtask setup` installs what this needs.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // The kernel programs compile lb-common too: rebuild when it changes.
    println!("cargo:rerun-if-changed=../lb-common/src");
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR is set by cargo")?;
    println!("cargo::metadata=out_dir={out_dir}");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: "../lb-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building lb-ebpf (run `cargo xtask setup` to install nightly rust-src and bpf-linker)",
    )
}
