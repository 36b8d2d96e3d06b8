//! CPU time the whole machine spent, from /proc/stat: the stream's packets
//! are forwarded in softirq context on whichever core sent or received
//! them, so only the machine-wide busy time sees all of it.

use anyhow::{Context as _, Result};

/// Busy time (everything but idle and iowait) of all cores, in clock ticks.
pub fn busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_busy(&stat).context("no cpu line in /proc/stat")
}

/// Nanoseconds per clock tick of /proc/stat.
pub fn ns_per_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / hz.max(1) as f64
}

fn parse_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  10 1 20 1000 5 3 7 0 0 0\ncpu0 5 0 10 500 2 1 3 0 0 0\n";
        assert_eq!(parse_busy(stat), Some(10 + 1 + 20 + 3 + 7));
    }
}
