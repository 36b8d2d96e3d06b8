//! Detaching a pinned link behind the agent's back, as an operator running
//! `bpftool link detach pinned PATH` would, for the tests of its repair.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the link pinned at `pin` (the pin and the link object stay;
/// the program stops running).
pub fn detach_pinned(pin: &Path) -> io::Result<()> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut get = [path.as_ptr() as u64, 0u64];
    let fd = bpf(
        BPF_OBJ_GET,
        get.as_mut_ptr().cast(),
        std::mem::size_of_val(&get),
    )?;
    // SAFETY: a fresh fd the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut detach = [fd.as_raw_fd() as u32, 0u32];
    bpf(
        BPF_LINK_DETACH,
        detach.as_mut_ptr().cast(),
        std::mem::size_of_val(&detach),
    )?;
    Ok(())
}

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<i32> {
    // SAFETY: `attr` points at `size` bytes laid out as `cmd` expects.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}
