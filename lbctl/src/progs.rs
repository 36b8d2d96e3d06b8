//! `prog list`: our programs as the kernel runs them: every link the agent
//! pinned (per interface, per cgroup hook), the program behind it, and its
//! run count and time when `kernel.bpf_stats_enabled` is on.

use std::path::Path;

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs, ProgramInfo,
};
use serde::Serialize;
use std::path::PathBuf;

use super::{
    table::{or_dash, Table},
    Report,
};
use lb_core::pins::{self as link_pins, TcDir, NODE_LINKS, POD_LINKS, SOCK_LINKS};

/// JSON: `{"stats_enabled": bool, "programs": [Attachment, ...]}`.
#[derive(Debug, Serialize)]
pub struct ProgList {
    /// `kernel.bpf_stats_enabled`: without it the kernel counts no runs.
    pub stats_enabled: bool,
    pub programs: Vec<Attachment>,
}

/// One pinned link and the program it runs.
#[derive(Debug, Serialize)]
pub struct Attachment {
    /// `xdp`, `tc_egress`, `tc_ingress` or the cgroup hook
    /// (`cgroup_connect4`, ...).
    pub hook: String,
    /// `native` or `generic` for XDP; null otherwise.
    pub xdp_mode: Option<String>,
    /// `tcx` (a link) or `netlink` (a cls_bpf filter) for TC; null
    /// otherwise.
    pub tc_attach: Option<String>,
    /// `pod` or `node` interfaces, or `cgroup`.
    pub role: &'static str,
    /// The interface (null for cgroup hooks).
    pub interface: Option<String>,
    pub ifindex: Option<u32>,
    pub link_id: Option<u32>,
    /// The program's kernel id and name (names are cut at 15 bytes).
    pub prog_id: Option<u32>,
    pub prog_name: Option<String>,
    pub run_count: Option<u64>,
    pub run_time_ns: Option<u64>,
    /// Why the link could not be read, if it could not.
    pub error: Option<String>,
}

/// Reads every link pinned under `dir`.
pub fn prog_list(dir: &Path) -> ProgList {
    let programs: Vec<ProgramInfo> = loaded_programs().filter_map(Result::ok).collect();
    let mut list = Vec::new();
    for (role, links_subdir) in [("pod", POD_LINKS), ("node", NODE_LINKS)] {
        for pins in link_pins::scan(&dir.join(links_subdir)) {
            let mut hooks: Vec<(String, Option<String>, Option<String>, Hook)> = Vec::new();
            match pins.pinned_xdp() {
                Some((path, mode)) => {
                    hooks.push(("xdp".into(), Some(mode), None, Hook::Link(path)))
                }
                // Pods' default hook is TC: no XDP there. On an uplink it
                // reads as a missing pin: the interface lost its XDP program.
                None if role == "pod" => {}
                None => hooks.push(("xdp".into(), None, None, Hook::Link(pins.xdp("native")))),
            }
            for (name, dir) in [("tc_egress", TcDir::Egress), ("tc_ingress", TcDir::Ingress)] {
                let netlink = pins.tc_netlink(dir);
                let (mode, hook) = if netlink.exists() {
                    ("netlink", Hook::Filter(netlink))
                } else {
                    ("tcx", Hook::Link(pins.tc_dir(dir)))
                };
                hooks.push((name.into(), None, Some(mode.into()), hook));
            }
            for (hook, xdp_mode, tc_attach, pin) in hooks {
                let mut a = match pin {
                    Hook::Link(path) => read_link(&path, &programs),
                    Hook::Filter(path) => read_filter(&path),
                };
                a.hook = hook;
                a.xdp_mode = xdp_mode;
                a.tc_attach = tc_attach;
                a.role = role;
                a.interface = Some(pins.ifname.clone());
                a.ifindex = Some(pins.ifindex);
                list.push(a);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join(SOCK_LINKS)) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let mut a = read_link(&path, &programs);
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            a.hook = format!("cgroup_{}", name.trim_start_matches("lb_sock_"));
            a.role = "cgroup";
            list.push(a);
        }
    }
    ProgList {
        stats_enabled: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|s| s.trim() == "1"),
        programs: list,
    }
}

/// What marks an attachment in the pin directory.
enum Hook {
    /// A pinned link.
    Link(PathBuf),
    /// A netlink filter, marked by a pinned copy of its program.
    Filter(PathBuf),
}

/// A netlink TC filter, read through the program pinned beside it (a
/// filter has no link id).
fn read_filter(path: &Path) -> Attachment {
    let mut a = empty_attachment();
    match ProgramInfo::from_pin(path) {
        Ok(p) => {
            a.prog_id = Some(p.id());
            a.prog_name = p.name_as_str().map(str::to_owned);
            a.run_count = Some(p.run_count());
            a.run_time_ns = Some(p.run_time().as_nanos() as u64);
        }
        Err(e) => a.error = Some(format!("{}: {e}", path.display())),
    }
    a
}

fn empty_attachment() -> Attachment {
    Attachment {
        hook: String::new(),
        xdp_mode: None,
        tc_attach: None,
        role: "",
        interface: None,
        ifindex: None,
        link_id: None,
        prog_id: None,
        prog_name: None,
        run_count: None,
        run_time_ns: None,
        error: None,
    }
}

fn read_link(path: &Path, programs: &[ProgramInfo]) -> Attachment {
    let mut a = empty_attachment();
    let info = PinnedLink::from_pin(path)
        .map_err(|e| e.to_string())
        .and_then(|pinned| FdLink::from(pinned).info().map_err(|e| e.to_string()));
    match info {
        Ok(info) => {
            a.link_id = Some(info.id());
            a.prog_id = Some(info.program_id());
            if let Some(p) = programs.iter().find(|p| p.id() == info.program_id()) {
                a.prog_name = p.name_as_str().map(str::to_owned);
                a.run_count = Some(p.run_count());
                a.run_time_ns = Some(p.run_time().as_nanos() as u64);
            }
        }
        Err(e) => a.error = Some(format!("{}: {e}", path.display())),
    }
    a
}

impl Report for ProgList {
    fn table(&self) -> String {
        let header = [
            "HOOK",
            "MODE",
            "INTERFACE",
            "PROGRAM",
            "PROG ID",
            "LINK ID",
            "RUNS",
            "AVG NS",
        ];
        let mut table = Table::new(header).right_align(&[4, 5, 6, 7]);
        for a in &self.programs {
            let avg = match (a.run_count, a.run_time_ns) {
                (Some(n), Some(t)) if n > 0 => Some(t / n),
                _ => None,
            };
            table.row(vec![
                a.hook.clone(),
                or_dash(a.xdp_mode.as_deref().or(a.tc_attach.as_deref())),
                match &a.interface {
                    Some(i) => format!("{i} ({})", a.role),
                    None => a.role.to_string(),
                },
                or_dash(a.prog_name.as_deref()),
                or_dash(a.prog_id),
                or_dash(a.link_id),
                or_dash(a.run_count),
                or_dash(avg),
            ]);
        }
        let mut out = table.render();
        if !self.stats_enabled {
            out.push_str(
                "\nRun counts need `sysctl kernel.bpf_stats_enabled=1` (off by default: it costs a few ns per run).\n",
            );
        }
        for a in self.programs.iter().filter(|a| a.error.is_some()) {
            out.push_str(&format!("! {}\n", a.error.as_deref().unwrap_or_default()));
        }
        out
    }

    /// A pin that cannot be read is a detached or broken attachment.
    fn findings(&self) -> usize {
        self.programs.iter().filter(|a| a.error.is_some()).count()
    }
}
