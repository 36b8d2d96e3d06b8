//! Socket-level balancing of the node's own sockets (node processes,
//! hostNetwork pods): the four cgroup sock_addr programs attached to a
//! cgroup v2 directory (`--cgroup`, the host's root by default), their
//! links pinned under `<pin dir>/sock-links/`, and the cookie of the
//! agent's network namespace, which gates them (see `lb-ebpf/src/sock.rs`).

use std::{
    fs::{self, File},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::Array,
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};
use lb_common::{
    MapId, PROG_SOCK_CONNECT4, PROG_SOCK_GETPEERNAME4, PROG_SOCK_RECVMSG4, PROG_SOCK_SENDMSG4,
};

pub use lb_core::pins::SOCK_LINKS;

const PROGRAMS: [&str; 4] = [
    PROG_SOCK_CONNECT4,
    PROG_SOCK_SENDMSG4,
    PROG_SOCK_RECVMSG4,
    PROG_SOCK_GETPEERNAME4,
];

/// The attached programs; their pinned links keep them attached after the
/// agent exits, like the interface programs.
pub struct SockBalancer {
    _links: Vec<FdLink>,
    /// Where the links are pinned.
    dir: PathBuf,
}

impl SockBalancer {
    /// Balances the sockets of this process's network namespace created in
    /// `cgroup` or below it. Links a previous agent pinned are replaced once
    /// ours are attached (both run meanwhile; the second finds an address
    /// that is already a backend's and leaves it), so no `connect()` goes
    /// unbalanced across a restart.
    pub fn attach(ebpf: &mut Ebpf, cgroup: &Path, pin_dir: &Path) -> anyhow::Result<Self> {
        set_netns(ebpf, this_netns_cookie()?)?;
        let cgroup_dir = File::open(cgroup)
            .with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
        let dir = pin_dir.join(SOCK_LINKS);
        super::private_dir::create(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut links = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()
                .context(name)?;
            // Loaded once; attached again after a detach behind our back.
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("verifying {name}"))?;
            }
            // A bpf_link: links of several programs (ours, a previous
            // agent's, other tools') coexist on a cgroup whatever the mode,
            // and link_create refuses the multi flag.
            let id = prog
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
            let link = FdLink::try_from(prog.take_link(id)?).context("not an fd link")?;
            let pin = dir.join(name);
            // Detaches the previous agent's link (ours is already running).
            let _ = fs::remove_file(&pin);
            let pinned = link
                .pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
            links.push(pinned.into());
        }
        Ok(Self { _links: links, dir })
    }

    /// Whether any of the links was detached behind our back.
    pub fn severed(&self) -> bool {
        PROGRAMS
            .iter()
            .any(|name| lb_core::pins::is_severed(&self.dir.join(name)).unwrap_or(true))
    }

    /// Detaches the programs (removes the pins; our fds go with `self`).
    pub fn detach(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Turns socket balancing off for sockets of any namespace, and detaches
/// what a previous agent attached (`--cgroup ""`, `--cleanup`).
pub fn disable(ebpf: Option<&mut Ebpf>, pin_dir: &Path) -> anyhow::Result<()> {
    if let Some(ebpf) = ebpf {
        set_netns(ebpf, 0)?;
    }
    let dir = pin_dir.join(SOCK_LINKS);
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on a unified
/// system, /sys/fs/cgroup/unified on a hybrid one (systemd's v1 layout).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    cgroup2_in(&mounts).ok_or_else(|| anyhow!("no cgroup2 file system is mounted"))
}

fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(path))
    })
}

fn set_netns(ebpf: &mut Ebpf, cookie: u64) -> anyhow::Result<()> {
    let map = ebpf
        .map_mut(MapId::SockNetns.name())
        .ok_or_else(|| anyhow!("map {} missing from the object", MapId::SockNetns.name()))?;
    let mut array: Array<_, u64> = Array::try_from(map).context(MapId::SockNetns.name())?;
    array
        .set(0, cookie, 0)
        .with_context(|| format!("writing {}", MapId::SockNetns.name()))
}

/// The cookie of this thread's network namespace (`SO_NETNS_COOKIE`, the
/// value `bpf_get_netns_cookie` gives a socket in it).
fn this_netns_cookie() -> anyhow::Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("a socket to ask")?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an out buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_NETNS_COOKIE (kernel >= 5.14)");
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_hierarchy_in_both_layouts() {
        let unified = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_in(unified), Some("/sys/fs/cgroup".into()));
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_in(hybrid), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(cgroup2_in("tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"), None);
    }
}
