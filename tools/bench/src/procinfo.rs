//! What `/proc` says about a process: resident memory and CPU time, so a run can tell
//! whether the gateways, the workers or the load generator itself were the limit.

use std::collections::BTreeMap;
use std::time::Instant;

/// Resident memory of `pid` in bytes (`VmRSS` of `/proc/PID/status`); 0 if gone.
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// Resident anonymous memory of `pid` in bytes (`RssAnon`: the heap and stacks, not
/// the pages of the executable and libraries it has touched); 0 if gone.
pub fn rss_anon_bytes(pid: u32) -> u64 {
    status_bytes(pid, "RssAnon:")
}

/// Proportional resident memory of `pid` in bytes (`Pss` of
/// `/proc/PID/smaps_rollup`: each shared page divided among the processes that map
/// it), so that the sum over several processes of one executable counts its pages
/// once; 0 if gone.
pub fn pss_bytes(pid: u32) -> u64 {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// A `kB` field of `/proc/PID/status`, in bytes; 0 if gone.
fn status_bytes(pid: u32, field: &str) -> u64 {
    kb_field(&format!("/proc/{pid}/status"), field)
}

/// A `NAME: N kB` field of a `/proc` file, in bytes; 0 if gone.
fn kb_field(path: &str, field: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU time (user + system) of `pid` in seconds; 0 if gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may contain spaces; the fields after it are well-formed.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(14), ticks(15)) else {
        return 0.0;
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (user + system) as f64 / hz
}

/// Busy and total CPU time of the whole machine in seconds (first line of
/// `/proc/stat`; idle and iowait count as not busy).
pub fn machine_seconds() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ((total - idle) as f64 / hz, total as f64 / hz)
}

/// CPU time of groups of processes, between a start and a later reading.
pub struct CpuSample {
    at: Instant,
    groups: BTreeMap<String, (Vec<u32>, f64)>,
    machine: (f64, f64),
}

impl CpuSample {
    /// Reads the CPU time of every group (`name → pids`) now.
    pub fn start(groups: &[(&str, Vec<u32>)]) -> Self {
        let groups = groups
            .iter()
            .map(|(name, pids)| {
                let total = pids.iter().map(|p| cpu_seconds(*p)).sum();
                (name.to_string(), (pids.clone(), total))
            })
            .collect();
        Self {
            at: Instant::now(),
            groups,
            machine: machine_seconds(),
        }
    }

    /// CPU time (user + system) every group spent since `start`, in seconds, with
    /// `wall`: the seconds since `start`.
    pub fn seconds(&self) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = self
            .groups
            .iter()
            .map(|(name, (pids, before))| {
                let now: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
                (name.clone(), (now - before).max(0.0))
            })
            .collect();
        out.insert("wall".into(), self.at.elapsed().as_secs_f64());
        out
    }

    /// CPU use of every group since `start`, in percent of one core, with `machine`
    /// (every process of the machine) and `others` (the machine minus the groups: other
    /// people's work on a shared machine).
    pub fn percent(&self) -> BTreeMap<String, f64> {
        let wall = self.at.elapsed().as_secs_f64().max(0.001);
        let mut out: BTreeMap<String, f64> = self
            .groups
            .iter()
            .map(|(name, (pids, before))| {
                let now: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
                (name.clone(), 100.0 * (now - before).max(0.0) / wall)
            })
            .collect();
        let (busy, total) = machine_seconds();
        let cores = (total - self.machine.1) / wall;
        let machine = 100.0 * (busy - self.machine.0) / wall;
        let ours: f64 = out.values().sum();
        out.insert("machine".into(), machine.min(100.0 * cores.round()));
        out.insert("others".into(), (machine - ours).max(0.0));
        out
    }
}

/// `gateways 95%, workers 60%, ...` for a report.
pub fn format_cpu(cpu: &BTreeMap<String, f64>) -> String {
    cpu.iter()
        .map(|(k, v)| format!("{k} {v:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me) > 0);
        assert!(rss_anon_bytes(me) > 0 && rss_anon_bytes(me) <= rss_bytes(me));
        assert!(pss_bytes(me) > 0 && pss_bytes(me) <= rss_bytes(me) + (1 << 20));
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_seconds(me) >= 0.0);
        assert_eq!(rss_bytes(u32::MAX), 0);
        assert_eq!(pss_bytes(u32::MAX), 0);
    }
}
