//! Opening pinned maps read-only. lbctl only ever reads; asking the
//! kernel for a read-only map fd (`BPF_OBJ_GET` with `BPF_F_RDONLY`)
//! makes that a property of the fd, not of lbctl's code: an update
//! through it fails with EPERM. aya's `MapData::from_pin` always asks for
//! read-write, so the syscall is made here and the fd handed to aya.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// `BPF_OBJ_GET`, from the kernel's `enum bpf_cmd`.
const BPF_OBJ_GET: libc::c_long = 7;
/// `BPF_F_RDONLY`: the fd may look up, not update or delete.
const BPF_F_RDONLY: u32 = 1 << 3;

/// The `BPF_OBJ_*` part of `union bpf_attr`. The kernel refuses (EINVAL)
/// any nonzero byte after the last field it knows, so the tail padding is
/// an explicit, zeroed field.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// A read-only fd of the map pinned at `path`.
pub fn open_map(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: BPF_F_RDONLY,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: the kernel reads `attr` (and the path it points to, alive
    // until the call returns) and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjAttr,
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
