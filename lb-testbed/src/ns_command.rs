//! Starting a long-running process (the agent) inside a namespace.
//!
//! `ip netns exec` would be the obvious tool, but it mounts a fresh sysfs on
//! /sys, and that hides the host's bpffs at /sys/fs/bpf: the agent's pins
//! would land in a private place that `lbctl` and our cleanup cannot see.
//! So the child does what `ip netns exec` does (enter the network namespace,
//! get a private mount namespace, mount a sysfs that lists the namespace's own
//! interfaces) and then puts the host's bpffs and cgroup2 mounts back on
//! /sys/fs/bpf and /sys/fs/cgroup.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Context as _, Result};

use super::netns::NetNs;

impl NetNs {
    /// A `Command` for `program` that runs inside this namespace, sees its
    /// interfaces under /sys/class/net, the host's bpffs at /sys/fs/bpf and
    /// its cgroups at /sys/fs/cgroup.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let ns = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        let mut cmd = Command::new(program);
        // SAFETY: the hook only makes raw system calls on values prepared
        // beforehand (no allocation, no locks), as required after fork.
        unsafe {
            cmd.pre_exec(move || enter(&ns));
        }
        Ok(cmd)
    }
}

/// Runs in the forked child, before exec.
fn enter(netns: &File) -> io::Result<()> {
    const ROOT: &CStr = c"/";
    const SYS: &CStr = c"/sys";
    const SYSFS: &CStr = c"sysfs";
    // The host's mounts under /sys the agent needs: its pins, and the
    // cgroup its socket programs attach to.
    const KEEP: [&CStr; 2] = [c"/sys/fs/bpf", c"/sys/fs/cgroup"];

    // SAFETY: plain system calls on valid, NUL-terminated strings and fds.
    unsafe {
        check(libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET))?;
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // Before mounting anything: keep our mounts from propagating to the host.
        check(libc::mount(
            std::ptr::null(),
            ROOT.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        // Detached copies of the host's mounts, to re-attach over the new sysfs.
        let mut kept = [-1 as libc::c_int; KEEP.len()];
        for (fd, path) in kept.iter_mut().zip(KEEP) {
            let tree = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::OPEN_TREE_CLONE
                    | libc::OPEN_TREE_CLOEXEC
                    | libc::AT_RECURSIVE as libc::c_uint,
            );
            if tree < 0 {
                return Err(io::Error::last_os_error());
            }
            *fd = tree as libc::c_int;
        }
        // A sysfs mounted from inside the namespace describes its devices.
        check(libc::mount(
            SYSFS.as_ptr(),
            SYS.as_ptr(),
            SYSFS.as_ptr(),
            0,
            std::ptr::null(),
        ))?;
        for (fd, path) in kept.into_iter().zip(KEEP) {
            let moved = libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            );
            if moved < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(fd);
        }
    }
    Ok(())
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
