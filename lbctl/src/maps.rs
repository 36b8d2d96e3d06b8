//! Reading the pinned maps: the only part of lbctl that needs root and a
//! kernel. Everything read lands in a [`Snapshot`] (or, for `map list`, a
//! [`MapList`]) that the other modules format.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError, MapInfo, MapType, PerCpuArray};
use lb_common::{NodeConfig, SourceRange, StatsCounter};

use super::{
    maplist::{MapList, MapMeta, MapStatus},
    read_only, MapId, Snapshot,
};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "pin directory {} does not exist: is lb-agent running? (pass --bpffs DIR if it pins its maps elsewhere)",
        .0.display()
    )]
    PinDirMissing(PathBuf),
    #[error(
        "{} is not pinned: is lb-agent running? (pass --bpffs DIR if it pins its maps elsewhere)",
        .0.display()
    )]
    NotPinned(PathBuf),
    #[error(
        "{ours} is not pinned but {pinned} is: the agent that pinned it writes another layout than this lbctl reads; use the lbctl of the agent's version"
    )]
    OtherVersion { ours: &'static str, pinned: String },
    #[error("permission denied on {}: lbctl needs root (CAP_BPF)", .0.display())]
    PermissionDenied(PathBuf),
    #[error("cannot access {}: {error}", path.display())]
    Access { path: PathBuf, error: io::Error },
    #[error("opening {}: {error}", path.display())]
    Open { path: PathBuf, error: MapError },
    #[error("reading {name}: {error}")]
    Read { name: &'static str, error: MapError },
    #[error(
        "{name} has {map_size}-byte {part}s, lb-common's are {ours}-byte: \
         was the layout changed without bumping the map's version?"
    )]
    Layout {
        name: &'static str,
        /// `key` or `value`.
        part: &'static str,
        map_size: usize,
        ours: usize,
    },
}

/// Reads the maps `kinds` pinned in `pin_dir`; the snapshot's other maps
/// stay empty.
pub fn read_snapshot(pin_dir: &Path, kinds: &[MapId]) -> Result<Snapshot, ReadError> {
    check_pin_dir(pin_dir)?;
    let mut snapshot = Snapshot::default();
    for &kind in kinds {
        let data = open(pin_dir, kind)?;
        read_into(&mut snapshot, kind, data).map_err(|e| read_error(kind, e))?;
    }
    snapshot.now_ns = monotonic_ns();
    Ok(snapshot)
}

/// Kernel metadata and entry count of each of our maps. A map that cannot
/// be opened or read is reported in its row; only a missing or
/// inaccessible pin directory is an error.
pub fn list_maps(pin_dir: &Path) -> Result<MapList, ReadError> {
    check_pin_dir(pin_dir)?;
    let maps = MapId::ALL
        .iter()
        .map(|&kind| map_status(pin_dir, kind))
        .collect();
    Ok(MapList { maps })
}

fn map_status(pin_dir: &Path, kind: MapId) -> MapStatus {
    let mut status = MapStatus {
        name: kind.name(),
        pin: pin_dir.join(kind.name()),
        meta: None,
        entries: None,
        error: None,
    };
    let data = match open(pin_dir, kind) {
        Ok(data) => data,
        Err(ReadError::NotPinned(_)) => {
            status.error = Some("not pinned".to_owned());
            return status;
        }
        Err(ReadError::OtherVersion { pinned, .. }) => {
            status.error = Some(format!("not pinned; {pinned} is (another agent version)"));
            return status;
        }
        Err(e) => {
            status.error = Some(e.to_string());
            return status;
        }
    };
    match data.info() {
        Ok(info) => status.meta = Some(meta(&info)),
        Err(e) => status.error = Some(format!("map info: {e}")),
    }
    // Reading the map through its lb-common types also checks its layout.
    match read_into(&mut Snapshot::default(), kind, data) {
        Ok(entries) => status.entries = Some(entries),
        Err(e) => status.error = Some(read_error(kind, e).to_string()),
    }
    status
}

fn meta(info: &MapInfo) -> MapMeta {
    MapMeta {
        id: info.id(),
        map_type: info
            .map_type()
            .map_or_else(|_| "unknown".to_owned(), type_name),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }
}

/// bpftool's names for the types we use, aya's for the others.
fn type_name(map_type: MapType) -> String {
    match map_type {
        MapType::Hash => "hash".to_owned(),
        MapType::LruHash => "lru_hash".to_owned(),
        MapType::Array => "array".to_owned(),
        MapType::PerCpuArray => "percpu_array".to_owned(),
        other => format!("{other:?}"),
    }
}

fn check_pin_dir(pin_dir: &Path) -> Result<(), ReadError> {
    match std::fs::metadata(pin_dir) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(ReadError::PinDirMissing(pin_dir.to_owned()))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(ReadError::PermissionDenied(pin_dir.to_owned()))
        }
        Err(error) => Err(ReadError::Access {
            path: pin_dir.to_owned(),
            error,
        }),
    }
}

/// Opens the pinned map read-only (see [`read_only`]).
fn open(pin_dir: &Path, kind: MapId) -> Result<MapData, ReadError> {
    let name = kind.name();
    let path = pin_dir.join(name);
    let fd = match read_only::open_map(&path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(match other_version(pin_dir, name) {
                Some(pinned) => ReadError::OtherVersion { ours: name, pinned },
                None => ReadError::NotPinned(path),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(ReadError::PermissionDenied(path))
        }
        Err(error) => return Err(ReadError::Access { path, error }),
    };
    MapData::from_fd(fd).map_err(|error| ReadError::Open { path, error })
}

/// A pin of the same map under another layout version (`lb_svc_v2` for
/// `lb_svc_v4`): maps are versioned by name so that a reader of another
/// layout finds nothing to misread, and says why.
fn other_version(pin_dir: &Path, name: &str) -> Option<String> {
    let (base, _) = name.rsplit_once("_v")?;
    let prefix = format!("{base}_v");
    std::fs::read_dir(pin_dir).ok()?.flatten().find_map(|e| {
        let file = e.file_name().into_string().ok()?;
        let version = file.strip_prefix(&prefix)?;
        (version.chars().all(|c| c.is_ascii_digit()) && file != name).then_some(file)
    })
}

/// aya words a size mismatch from the reader's side ("invalid value size 8,
/// expected 12" for a 12-byte map): say which size is whose.
fn read_error(kind: MapId, error: MapError) -> ReadError {
    let name = kind.name();
    match error {
        MapError::InvalidKeySize { size, expected } => ReadError::Layout {
            name,
            part: "key",
            map_size: expected,
            ours: size,
        },
        MapError::InvalidValueSize { size, expected } => ReadError::Layout {
            name,
            part: "value",
            map_size: expected,
            ours: size,
        },
        error => ReadError::Read { name, error },
    }
}

/// Reads map `kind` into its field of `snapshot`; returns its entry count.
fn read_into(snapshot: &mut Snapshot, kind: MapId, data: MapData) -> Result<usize, MapError> {
    // The kernel restarts a hash map walk from the first key when the key at
    // the walk's cursor is deleted meanwhile (LRU eviction, agent updates),
    // so a busy map could be walked forever: stop after twice its capacity
    // (keys seen twice collapse in the BTreeMap).
    let limit = 2 * data.info()?.max_entries() as usize;
    let map = Map::from_map_data(data)?;
    Ok(match kind {
        MapId::Services => {
            snapshot.services = read_hash(map, limit)?;
            snapshot.services.len()
        }
        MapId::Backends => {
            snapshot.backends = read_hash(map, limit)?;
            snapshot.backends.len()
        }
        MapId::RevNat => {
            snapshot.revnat = read_hash(map, limit)?;
            snapshot.revnat.len()
        }
        MapId::Conntrack => {
            snapshot.ct = read_hash(map, limit)?;
            snapshot.ct.len()
        }
        MapId::Config => {
            let array = aya::maps::Array::<_, NodeConfig>::try_from(map)?;
            snapshot.config = Some(array.get(&0, 0)?);
            1
        }
        MapId::SourceRanges => {
            let trie = aya::maps::lpm_trie::LpmTrie::<_, SourceRange, u32>::try_from(map)?;
            snapshot.source_ranges = trie
                .keys()
                .take(limit)
                .map(|k| k.map(|k| (k.prefix_len(), k.data())))
                .collect::<Result<_, _>>()?;
            snapshot.source_ranges.len()
        }
        MapId::Affinity => {
            snapshot.affinity = read_hash(map, limit)?;
            snapshot.affinity.len()
        }
        MapId::Fragments => {
            snapshot.fragments = read_hash(map, limit)?;
            snapshot.fragments.len()
        }
        MapId::NodeAddrs => {
            snapshot.node_addrs = read_hash(map, limit)?;
            snapshot.node_addrs.len()
        }
        MapId::Stats => {
            snapshot.stats = read_stats(map)?;
            snapshot.stats.len()
        }
        MapId::SockNetns => {
            let array = aya::maps::Array::<_, u64>::try_from(map)?;
            snapshot.sock_netns = Some(array.get(&0, 0)?);
            1
        }
        MapId::SockRevNat => {
            snapshot.sock_revnat = read_hash(map, limit)?;
            snapshot.sock_revnat.len()
        }
        MapId::SvcStats => {
            snapshot.svc_stats = read_stats(map)?;
            snapshot.svc_stats.len()
        }
        MapId::BackendStats => {
            snapshot.backend_stats = read_per_cpu_hash(map, limit)?;
            snapshot.backend_stats.len()
        }
        MapId::SvcNames => {
            snapshot.svc_names = read_hash(map, limit)?;
            snapshot.svc_names.len()
        }
        MapId::Filter => {
            let array = aya::maps::Array::<_, u64>::try_from(map)?;
            snapshot.filter = array.iter().collect::<Result<_, _>>()?;
            snapshot.filter.len()
        }
    })
}

/// Fails on a map of another type or layout (key or value size).
fn read_hash<K, V>(map: Map, limit: usize) -> Result<BTreeMap<K, V>, MapError>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    HashMap::<_, K, V>::try_from(map)?
        .iter()
        .take(limit)
        .collect()
}

fn read_stats(map: Map) -> Result<Vec<StatsCounter>, MapError> {
    let array = PerCpuArray::<_, StatsCounter>::try_from(map)?;
    array
        .iter()
        .map(|per_cpu| Ok(StatsCounter::total(per_cpu?.iter())))
        .collect()
}

/// A per-CPU hash of counters, each summed over CPUs.
fn read_per_cpu_hash(map: Map, limit: usize) -> Result<BTreeMap<u32, StatsCounter>, MapError> {
    let hash = aya::maps::PerCpuHashMap::<_, u32, StatsCounter>::try_from(map)?;
    hash.iter()
        .take(limit)
        .map(|entry| {
            let (key, per_cpu) = entry?;
            Ok((key, StatsCounter::total(per_cpu.iter())))
        })
        .collect()
}

/// CLOCK_MONOTONIC in ns (through libc: lbctl does not depend on nix).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pin_dir_names_it_and_hints() {
        let dir = Path::new("/nonexistent/lbctl-test");
        let err = read_snapshot(dir, MapId::ALL).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ReadError::PinDirMissing(_)), "{msg}");
        assert!(
            msg.contains("/nonexistent/lbctl-test") && msg.contains("--bpffs"),
            "{msg}"
        );
        assert!(matches!(list_maps(dir), Err(ReadError::PinDirMissing(_))));
    }

    #[test]
    fn missing_pin_is_reported_per_map() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_snapshot(dir.path(), &[MapId::Services]).unwrap_err();
        // Without root the bpf syscall refuses before looking at the path.
        assert!(
            matches!(
                err,
                ReadError::NotPinned(_) | ReadError::PermissionDenied(_)
            ),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains(&*dir.path().join("lb_svc_v4").to_string_lossy()));
        let list = list_maps(dir.path()).unwrap();
        assert_eq!(list.maps.len(), lb_common::MapId::ALL.len());
        assert!(list
            .maps
            .iter()
            .all(|m| m.error.is_some() && m.meta.is_none()));
    }

    #[test]
    fn another_layout_version_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lb_svc_v2"), b"").unwrap();
        std::fs::write(dir.path().join("lb_svc_v4x"), b"").unwrap();
        assert_eq!(
            other_version(dir.path(), "lb_svc_v4").as_deref(),
            Some("lb_svc_v2")
        );
        assert_eq!(other_version(dir.path(), "lb_backend_v1"), None);
    }
}
