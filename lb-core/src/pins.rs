//! Where the program links of each interface are pinned, so that they
//! outlive the agent: a `kill -9`, a crash or an upgrade leaves the datapath
//! attached and serving from the pinned maps until the next agent adopts
//! the links (and swaps its freshly loaded programs into them).
//!
//! Layout: `<pin dir>/links/<ifindex>-<ifname>/{xdp-native|xdp-generic,
//! tc-egress, tc-ingress}`; with netlink TC filters (no links to pin), a
//! pinned copy of each filter's program instead: `tc-egress-nl`,
//! `tc-ingress-nl` (see `attach.rs`).
//! The ifindex is part of the name because a deleted interface's name can
//! come back with a new index, and the old link (defunct once its device
//! is gone) must not be taken for the new one.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Directory (under the pin directory) of the pod interfaces' links.
pub const POD_LINKS: &str = "links";
/// Directory of the node uplinks' links.
pub const NODE_LINKS: &str = "node-links";
/// Directory of the cgroup socket programs' links.
pub const SOCK_LINKS: &str = "sock-links";

/// File name of the pinned TC egress link.
pub const TC_EGRESS: &str = "tc-egress";
/// File name of the pinned TC ingress link.
pub const TC_INGRESS: &str = "tc-ingress";
/// File name prefix of the pinned XDP link; the mode follows (`xdp-native`).
const XDP_PREFIX: &str = "xdp-";
/// Suffix of the program pins that mark our netlink TC filters.
const NETLINK_SUFFIX: &str = "-nl";

/// A TC hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcDir {
    Ingress,
    Egress,
}

/// The pin directory of one interface's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePins {
    pub ifindex: u32,
    pub ifname: String,
    pub dir: PathBuf,
}

impl InterfacePins {
    pub fn new(links_dir: &Path, ifindex: u32, ifname: &str) -> Self {
        Self {
            ifindex,
            ifname: ifname.to_string(),
            dir: links_dir.join(format!("{ifindex}-{ifname}")),
        }
    }

    /// Path of the XDP link pinned in `mode` ("native" or "generic").
    pub fn xdp(&self, mode: &str) -> PathBuf {
        self.dir.join(format!("{XDP_PREFIX}{mode}"))
    }

    pub fn tc(&self) -> PathBuf {
        self.dir.join(TC_EGRESS)
    }

    pub fn tc_ingress(&self) -> PathBuf {
        self.dir.join(TC_INGRESS)
    }

    /// Path of the pinned tcx link of a TC hook.
    pub fn tc_dir(&self, dir: TcDir) -> PathBuf {
        match dir {
            TcDir::Ingress => self.tc_ingress(),
            TcDir::Egress => self.tc(),
        }
    }

    /// Path of the program pin marking our netlink filter on a TC hook.
    pub fn tc_netlink(&self, dir: TcDir) -> PathBuf {
        let name = match dir {
            TcDir::Ingress => TC_INGRESS,
            TcDir::Egress => TC_EGRESS,
        };
        self.dir.join(format!("{name}{NETLINK_SUFFIX}"))
    }

    /// The XDP link pinned here and its mode, if any.
    pub fn pinned_xdp(&self) -> Option<(PathBuf, String)> {
        let entries = fs::read_dir(&self.dir).ok()?;
        entries.flatten().find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mode = name.strip_prefix(XDP_PREFIX)?.to_string();
            Some((e.path(), mode))
        })
    }

    /// Removes the pins (which detaches the links once no fd holds them).
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Every interface with pinned links under `links_dir`. Entries whose name
/// does not parse are skipped (they are not ours to touch).
pub fn scan(links_dir: &Path) -> Vec<InterfacePins> {
    let Ok(entries) = fs::read_dir(links_dir) else {
        return Vec::new();
    };
    let mut found: Vec<InterfacePins> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (ifindex, ifname) = parse_dir_name(&name)?;
            Some(InterfacePins::new(links_dir, ifindex, ifname))
        })
        .collect();
    found.sort_by_key(|p| p.ifindex);
    found
}

/// `<ifindex>-<ifname>` -> (ifindex, ifname).
fn parse_dir_name(name: &str) -> Option<(u32, &str)> {
    let (index, ifname) = name.split_once('-')?;
    let ifindex = index.parse().ok()?;
    (!ifname.is_empty()).then_some((ifindex, ifname))
}

/// Whether the link pinned at `pin` no longer has a target: its interface
/// or cgroup let go of it (`bpftool link detach`, an interface re-created
/// under the same index...). The kernel keeps such a link object alive for
/// its holders but its program no longer runs, and a program update on it
/// fails with ENOLINK; the only repair is a new link. Read from the link's
/// info: the XDP, tcx and cgroup variants all start with their target
/// (ifindex, or cgroup id) right after the common fields, and report 0
/// once detached.
pub fn is_severed(pin: &Path) -> io::Result<bool> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut get = [0u64; 2];
    get[0] = path.as_ptr() as u64;
    let fd = bpf(
        BPF_OBJ_GET,
        get.as_mut_ptr().cast(),
        std::mem::size_of_val(&get),
    )?;
    // SAFETY: a fresh fd the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct bpf_link_info: type, id, prog_id (u32 each), then the
    // per-type union at offset 16.
    let mut info = [0u8; 64];
    let mut by_fd = [0u32; 4];
    by_fd[0] = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32;
    by_fd[1] = info.len() as u32;
    let info_ptr = info.as_mut_ptr() as u64;
    by_fd[2] = info_ptr as u32;
    by_fd[3] = (info_ptr >> 32) as u32;
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        by_fd.as_mut_ptr().cast(),
        std::mem::size_of_val(&by_fd),
    )?;
    let target = u64::from_ne_bytes(info[16..24].try_into().expect("8 bytes"));
    let link_type = u32::from_ne_bytes(info[0..4].try_into().expect("4 bytes"));
    // XDP and tcx: a u32 ifindex (the next u32 is tcx's attach type);
    // cgroup: a u64 cgroup id.
    let target = if link_type == BPF_LINK_TYPE_CGROUP {
        target
    } else {
        target & 0xffff_ffff
    };
    Ok(target == 0)
}

/// Pins the BPF object behind `fd` (a program, for the netlink markers) at
/// `path` (BPF_OBJ_PIN).
pub fn pin_fd(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_PIN: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 2];
    attr[0] = path.as_ptr() as u64;
    attr[1] = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32 as u64;
    bpf(
        BPF_OBJ_PIN,
        attr.as_mut_ptr().cast(),
        std::mem::size_of_val(&attr),
    )?;
    Ok(())
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_CGROUP: u32 = 3;

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<i32> {
    // SAFETY: `attr` points at `size` bytes laid out as `cmd` expects.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_including_dashes_in_interface_names() {
        let dir = tempfile::tempdir().unwrap();
        let pins = InterfacePins::new(dir.path(), 12, "lbh-pod-1");
        fs::create_dir_all(&pins.dir).unwrap();
        fs::write(pins.xdp("generic"), b"").unwrap();
        fs::create_dir_all(dir.path().join("not-a-pin")).unwrap();
        assert_eq!(scan(dir.path()), vec![pins.clone()]);
        assert_eq!(
            pins.pinned_xdp(),
            Some((pins.xdp("generic"), "generic".to_string()))
        );
        pins.remove().unwrap();
        pins.remove().unwrap();
        assert!(scan(dir.path()).is_empty());
    }

    #[test]
    fn malformed_names_are_skipped() {
        assert_eq!(parse_dir_name("7-veth0"), Some((7, "veth0")));
        assert_eq!(parse_dir_name("x-veth0"), None);
        assert_eq!(parse_dir_name("7-"), None);
        assert_eq!(parse_dir_name("7"), None);
    }
}
