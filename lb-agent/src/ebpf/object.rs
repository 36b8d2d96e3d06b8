//! The eBPF object built by build.rs, embedded so that `lb-agent` is one
//! self-contained file.

use std::path::Path;

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};
use lb_common::{MapId, MapSizes};

/// The compiled `lb-ebpf` object (ELF, BPF target).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Loads the object with every map pinned under `pin_dir` (created mode
/// 0700: the maps steer all Service traffic, only root may touch them). Maps
/// already pinned there are reused, which is how a restarted agent adopts
/// the running state. Maps are sized by the registry's rules under `sizes`
/// (a pinned map keeps its size).
pub fn load(pin_dir: &Path, sizes: &MapSizes) -> anyhow::Result<Ebpf> {
    super::private_dir::create(pin_dir)
        .with_context(|| format!("creating pin dir {} (mode 0700)", pin_dir.display()))?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    for &map in MapId::ALL {
        loader.map_max_entries(map.name(), map.max_entries(sizes));
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

#[cfg(test)]
mod tests {
    use aya_obj::generated::bpf_map_type as kernel;
    use lb_common::{MapId, MapSizes, MapType};

    use super::EBPF_OBJECT;

    fn kernel_type(map_type: MapType) -> u32 {
        (match map_type {
            MapType::Hash => kernel::BPF_MAP_TYPE_HASH,
            MapType::LruHash => kernel::BPF_MAP_TYPE_LRU_HASH,
            MapType::LpmTrie => kernel::BPF_MAP_TYPE_LPM_TRIE,
            MapType::Array => kernel::BPF_MAP_TYPE_ARRAY,
            MapType::PerCpuArray => kernel::BPF_MAP_TYPE_PERCPU_ARRAY,
            MapType::PerCpuHash => kernel::BPF_MAP_TYPE_PERCPU_HASH,
        }) as u32
    }

    /// The object's maps are exactly the registry's, with its types, key
    /// and value sizes, default sizes and flags: what userspace reads and
    /// sizes by the registry is what the kernel programs declared.
    #[test]
    fn the_objects_maps_are_the_registrys() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let mut ours: Vec<&str> = (object.maps.keys())
            .map(String::as_str)
            .filter(|name| name.starts_with("lb_"))
            .collect();
        ours.sort_unstable();
        let mut registry: Vec<&str> = MapId::ALL.iter().map(|map| map.name()).collect();
        registry.sort_unstable();
        assert_eq!(ours, registry);
        for &id in MapId::ALL {
            let map = &object.maps[id.name()];
            let (key, value) = id.key_value_sizes();
            assert_eq!(map.map_type(), kernel_type(id.map_type()), "{}", id.name());
            assert_eq!(map.key_size() as usize, key, "{} key size", id.name());
            assert_eq!(map.value_size() as usize, value, "{} value size", id.name());
            let default = id.max_entries(&MapSizes::DEFAULT);
            assert_eq!(map.max_entries(), default, "{} max entries", id.name());
            assert_eq!(map.map_flags(), id.flags(), "{} flags", id.name());
        }
    }
}
