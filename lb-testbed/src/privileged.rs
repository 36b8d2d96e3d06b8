//! Whether this process may build testbeds: namespaces and veths need root,
//! the agent needs a bpffs at /sys/fs/bpf for its pins.

use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

/// Set to `1` to skip privileged tests instead of failing them.
pub const SKIP_ENV: &str = "LB_SKIP_PRIVILEGED";

/// `Err` with the reason when this process cannot build testbeds.
pub fn check() -> Result<(), String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    match statfs("/sys/fs/bpf") {
        Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => Ok(()),
        _ => Err("no bpffs mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)".into()),
    }
}

/// For privileged tests: true if the test can run. Otherwise it returns false
/// when `LB_SKIP_PRIVILEGED=1` (the test should return early), and panics
/// when not, so a privileged test never passes silently without running.
pub fn require_privileged(test_name: &str) -> bool {
    let Err(why) = check() else {
        return true;
    };
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!("skipping {test_name}: needs root ({SKIP_ENV}=1)");
        return false;
    }
    panic!(
        "{test_name} needs root and a bpffs at /sys/fs/bpf, but: {why}. \
         Run the tests as root (e.g. `sudo -E cargo test`), or set {SKIP_ENV}=1 to skip them."
    );
}
