//! A throwaway cgroup v2 directory: the agent's socket-level programs are
//! attached to it instead of the host's root, so that a test's "node
//! processes" (hostNetwork clients) are the only sockets they see.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// A child cgroup of the root; removed on drop once its processes are gone.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn create() -> Result<TestCgroup> {
        let path = lb_agent::ebpf::sock_lb::cgroup2_mount()?.join(super::unique_tag());
        fs::create_dir(&path).with_context(|| format!("creating the cgroup {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s process join this cgroup before it runs its program.
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        let procs = self.path.join("cgroup.procs");
        // Converted before the fork: the child must not allocate.
        let procs = std::ffi::CString::new(procs.into_os_string().into_encoded_bytes())
            .expect("no NUL in a cgroup path");
        // SAFETY: the hook only makes raw system calls on a path prepared
        // beforehand (no allocation, no locks), as required after fork.
        unsafe {
            cmd.pre_exec(move || join(&procs));
        }
    }
}

/// Runs in the forked child: writes "0" (this process) to cgroup.procs.
fn join(procs: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain system calls on a valid path and buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes that just exited may take a moment to leave it.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("warning: removing {}: {e}", self.path.display());
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
