//! The eBPF object built by build.rs, embedded so that `lb-agent` is one
//! self-contained file.

use std::path::Path;

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};

/// The compiled `lb-ebpf` object (ELF, BPF target).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Loads the object with every map pinned under `pin_dir` (created mode
/// 0700: the maps steer all Service traffic, only root may touch them). Maps
/// already pinned there are reused, which is how a restarted agent adopts
/// the running state. `max_entries` overrides map sizes by name.
pub fn load(pin_dir: &Path, max_entries: &[(&str, u32)]) -> anyhow::Result<Ebpf> {
    super::private_dir::create(pin_dir)
        .with_context(|| format!("creating pin dir {} (mode 0700)", pin_dir.display()))?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    for (name, size) in max_entries {
        loader.map_max_entries(name, *size);
    }
    let meta = super::probe::xdp_adjust_meta() as u8;
    loader.override_global("XDP_META_SUPPORTED", &meta, true);
    loader.load(EBPF_OBJECT).with_context(|| {
        format!(
            "loading the eBPF object with maps pinned in {} (needs root, a kernel with BTF, and bpffs mounted)",
            pin_dir.display()
        )
    })
}
