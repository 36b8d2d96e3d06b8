//! The capabilities the agent needs (docs/security.md says why), and the
//! one a refused call most likely lacked: a bare "Operation not permitted"
//! from bpf() or netlink says nothing about which capability to grant.

use std::io;

/// A capability the agent needs, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// As capabilities(7) names it, e.g. `CAP_BPF`.
    pub name: &'static str,
    /// Its bit in the capability sets.
    pub bit: u32,
    pub needed_for: &'static str,
}

pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    needed_for: "bpf(): create, pin and open maps, load programs",
};
pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    needed_for: "load XDP, TC and cgroup socket programs and attach them",
};
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    needed_for: "the verifier accepts the datapath's pointer arithmetic only from a trusted loader",
};
pub const CAP_SYS_RESOURCE: Capability = Capability {
    name: "CAP_SYS_RESOURCE",
    bit: 24,
    needed_for: "raise RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF memory to",
};

/// Every capability the agent may need (on kernels from 5.11, the first
/// three: see [`needed`]).
pub const ALL: [Capability; 4] = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_RESOURCE];

/// The kernel accepts it in place of CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN.
const CAP_SYS_ADMIN_BIT: u32 = 21;

/// The capabilities the agent needs on this kernel: CAP_SYS_RESOURCE only
/// where BPF memory counts against RLIMIT_MEMLOCK.
pub fn needed(memlock_charged: bool) -> Vec<Capability> {
    (ALL.into_iter())
        .filter(|cap| memlock_charged || *cap != CAP_SYS_RESOURCE)
        .collect()
}

/// Those of `needed` that the capability set `effective` lacks.
pub fn missing(effective: u64, needed: &[Capability]) -> Vec<Capability> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    (needed.iter().copied())
        .filter(|cap| !has(cap.bit) && (*cap == CAP_SYS_RESOURCE || !has(CAP_SYS_ADMIN_BIT)))
        .collect()
}

/// This process's effective capability set.
pub fn effective() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = (status.lines())
        .find_map(|line| line.strip_prefix("CapEff:"))
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))?;
    u64::from_str_radix(hex.trim(), 16).map_err(io::Error::other)
}

/// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK
/// (newer ones to the memory cgroup).
pub fn memlock_charged() -> bool {
    let Ok(uts) = nix::sys::utsname::uname() else {
        return true;
    };
    let release = uts.release().to_string_lossy();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    let mut next = || numbers.next().and_then(|n| n.parse::<u32>().ok());
    match (next(), next()) {
        (Some(major), Some(minor)) => (major, minor) < (5, 11),
        _ => true,
    }
}

/// Lifts RLIMIT_MEMLOCK where the kernel charges BPF memory to it, so
/// that maps and programs load whatever the limit the agent inherited.
pub fn raise_memlock() -> io::Result<()> {
    if !memlock_charged() {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct passed by reference only.
    match unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// How a call was refused: EPERM (no capability, or a seccomp profile or
/// LSM said no), or EACCES (the verifier, among others, rejecting a
/// program it would accept from a more privileged loader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotPermitted,
    Denied,
}

fn refusal(error: &anyhow::Error) -> Option<Refusal> {
    error.chain().find_map(|cause| {
        let code = match cause.downcast_ref::<io::Error>() {
            Some(io) => io.raw_os_error(),
            // Errors that keep the io::Error only as text.
            None => {
                let text = cause.to_string();
                [libc::EPERM, libc::EACCES]
                    .into_iter()
                    .find(|code| text.contains(&format!("(os error {code})")))
            }
        };
        match code {
            Some(libc::EPERM) => Some(Refusal::NotPermitted),
            Some(libc::EACCES) => Some(Refusal::Denied),
            _ => None,
        }
    })
}

/// A line to head a startup error with when a call was refused: the
/// capabilities the agent lacks (`missing`), or, lacking none, the other
/// usual culprits. `None` when the error is no refusal, or is a verifier
/// rejection with every capability present (a bug, not a privilege).
pub fn explain(error: &anyhow::Error, missing: &[Capability]) -> Option<String> {
    let refusal = refusal(error)?;
    if missing.is_empty() {
        return (refusal == Refusal::NotPermitted).then(|| {
            "a call was refused although lb-agent has every capability it needs: \
             a seccomp profile or an LSM (SELinux, AppArmor) may forbid bpf() (see docs/security.md)"
                .to_string()
        });
    }
    let lacking: Vec<String> = (missing.iter())
        .map(|cap| format!("{} ({})", cap.name, cap.needed_for))
        .collect();
    Some(format!(
        "lb-agent lacks {}; grant it (see docs/security.md)",
        lacking.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |set, cap| set | 1 << cap.bit)
    }

    fn names(caps: &[Capability]) -> Vec<&str> {
        caps.iter().map(|cap| cap.name).collect()
    }

    #[test]
    fn missing_counts_cap_sys_admin_for_bpf_perfmon_and_net_admin() {
        let old_kernel = needed(true);
        assert_eq!(names(&missing(set(&ALL), &old_kernel)), Vec::<&str>::new());
        assert_eq!(
            names(&missing(set(&[CAP_BPF, CAP_PERFMON]), &old_kernel)),
            ["CAP_NET_ADMIN", "CAP_SYS_RESOURCE"]
        );
        let sys_admin = 1 << CAP_SYS_ADMIN_BIT;
        assert_eq!(
            names(&missing(sys_admin, &old_kernel)),
            ["CAP_SYS_RESOURCE"]
        );
        assert_eq!(
            names(&missing(
                set(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]),
                &needed(false)
            )),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn the_effective_set_is_read() {
        // Whatever this test runs with, the set parses.
        effective().unwrap();
    }

    #[test]
    fn refusals_name_what_is_missing_and_other_errors_get_no_hint() {
        let eperm = anyhow::Error::new(io::Error::from_raw_os_error(libc::EPERM))
            .context("failed to create map `lb_revnat_v2`");
        let hint = explain(&eperm, &[CAP_BPF]).unwrap();
        assert!(
            hint.starts_with("lb-agent lacks CAP_BPF (bpf(): create"),
            "{hint}"
        );
        let seccomp = explain(&eperm, &[]).unwrap();
        assert!(seccomp.contains("seccomp"), "{seccomp}");

        // aya's verifier error keeps the errno as text in its message.
        let verifier =
            anyhow::anyhow!("the BPF_PROG_LOAD syscall returned Permission denied (os error 13)")
                .context("verifying lb_xdp_ingress");
        let hint = explain(&verifier, &[CAP_PERFMON]).unwrap();
        assert!(hint.contains("CAP_PERFMON"), "{hint}");
        assert_eq!(
            explain(&verifier, &[]),
            None,
            "a verifier bug is no privilege problem"
        );

        let other = anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(explain(&other, &[CAP_BPF]), None);
    }
}
