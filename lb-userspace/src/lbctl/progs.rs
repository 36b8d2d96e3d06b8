//! `prog list`: our programs as the kernel runs them: every link the agent
//! pinned (per interface, per cgroup hook), the program behind it, and its
//! run count and time when `kernel.bpf_stats_enabled` is on.

use std::path::Path;

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs, ProgramInfo,
};
use serde::Serialize;

use super::{
    table::{or_dash, Table},
    Report,
};
use crate::ebpf::{link_pins, sock_lb::SOCK_LINKS, NODE_INTERFACES, POD_INTERFACES};

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
    for (role, links_subdir) in [
        ("pod", POD_INTERFACES.links_subdir),
        ("node", NODE_INTERFACES.links_subdir),
    ] {
        for pins in link_pins::scan(&dir.join(links_subdir)) {
            let mut hooks = Vec::new();
            match pins.pinned_xdp() {
                Some((path, mode)) => hooks.push(("xdp".to_string(), Some(mode), path)),
                // Reads as a missing pin: the interface lost its XDP program.
                None => hooks.push(("xdp".to_string(), None, pins.xdp("native"))),
            }
            hooks.push(("tc_egress".into(), None, pins.tc()));
            hooks.push(("tc_ingress".into(), None, pins.tc_ingress()));
            for (hook, xdp_mode, path) in hooks {
                let mut a = read_link(&path, &programs);
                a.hook = hook;
                a.xdp_mode = xdp_mode;
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

fn read_link(path: &Path, programs: &[ProgramInfo]) -> Attachment {
    let mut a = Attachment {
        hook: String::new(),
        xdp_mode: None,
        role: "",
        interface: None,
        ifindex: None,
        link_id: None,
        prog_id: None,
        prog_name: None,
        run_count: None,
        run_time_ns: None,
        error: None,
    };
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
                or_dash(a.xdp_mode.as_deref()),
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
