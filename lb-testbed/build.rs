//! The bench anchors (`lb-ebpf`'s `lb-anchors` program) are built with the
//! datapath by lb-agent's build script; its `links` metadata says where.

fn main() {
    let dir = std::env::var("DEP_LB_EBPF_OUT_DIR")
        .expect("lb-agent's build script exports the BPF objects' directory");
    println!("cargo:rustc-env=LB_EBPF_OUT_DIR={dir}");
}
