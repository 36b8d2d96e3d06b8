//! Batched map writes (BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH, Linux
//! 5.6): one syscall writes a run of entries in order, stopping at the
//! first that fails. aya has no wrapper for them. A first full sync at
//! 100k Services writes millions of entries; one `bpf()` call each spent
//! most of the agent's sync in syscall entry and per-call allocation.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd},
};

use aya::maps::MapData;
use bytemuck::Pod;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per call: bounds the buffers and a call's time in the kernel.
pub const CHUNK: usize = 4096;

/// The batch member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch that stopped early: `done` entries were written, the next one
/// failed with `error`.
#[derive(Debug)]
pub struct BatchError {
    pub done: usize,
    pub error: io::Error,
}

/// Writes `keys[i] -> values[i]` in order, whether the keys exist or not
/// (a batch takes no BPF_NOEXIST). `values` holds one value per key (for
/// a per-CPU map: one per possible CPU, per key, in a flat slice).
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), BatchError> {
    let per_key = values.len().checked_div(keys.len()).unwrap_or(0);
    assert_eq!(per_key * keys.len(), values.len(), "values per key");
    chunked(BPF_MAP_UPDATE_BATCH, map, keys, |first| {
        values[first * per_key..].as_ptr() as u64
    })
}

/// Deletes `keys` in order.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), BatchError> {
    chunked(BPF_MAP_DELETE_BATCH, map, keys, |_| 0)
}

/// `cmd` over `keys`, [`CHUNK`] at a time; `values_from(i)` points at the
/// values of the keys from the `i`-th on (0: none).
fn chunked<K: Pod>(
    cmd: libc::c_long,
    map: &MapData,
    keys: &[K],
    values_from: impl Fn(usize) -> u64,
) -> Result<(), BatchError> {
    for (n, piece) in keys.chunks(CHUNK).enumerate() {
        let first = n * CHUNK;
        let attr = BatchAttr {
            keys: piece.as_ptr() as u64,
            values: values_from(first),
            count: piece.len() as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        call(cmd, attr).map_err(|e| BatchError {
            done: first + e.done,
            error: e.error,
        })?;
    }
    Ok(())
}

/// One batch call.
fn call(cmd: libc::c_long, mut attr: BatchAttr) -> Result<(), BatchError> {
    let wanted = attr.count as usize;
    // SAFETY: `attr` is the batch layout of `union bpf_attr` (the kernel
    // zero-extends a shorter attr); keys and values point at live slices
    // of `count` entries, which the kernel only reads; `count` is written
    // back into `attr`, which we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(BatchError {
            done: (attr.count as usize).min(wanted),
            error: io::Error::last_os_error(),
        });
    }
    Ok(())
}
