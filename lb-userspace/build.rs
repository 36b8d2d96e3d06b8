//! Builds the kernel programs (`lb-ebpf`) with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR so the binaries embed it.
//! `cargo xtask setup` installs what this needs.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // The kernel programs compile lb-common too: rebuild when it changes.
    println!("cargo:rerun-if-changed=../lb-common/src");
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
