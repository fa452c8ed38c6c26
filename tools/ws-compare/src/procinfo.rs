//! What `/proc` says about a process and the machine: resident memory, CPU time, and
//! how busy everything else is (the machine is shared).

use std::time::Instant;

/// Resident memory of `pid` in bytes (`VmRSS` of `/proc/PID/status`); 0 if gone.
pub fn rss_bytes(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// CPU time (utime + stime of `/proc/PID/stat`) of `pid` in seconds; 0 if gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may contain spaces; the fields after the last ')' do not.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(u), Some(s)) => (u + s) as f64 / clock_ticks(),
        _ => 0.0,
    }
}

/// Busy (without softirq), softirq and total CPU seconds of the whole machine (first
/// line of `/proc/stat`; idle and iowait count as not busy). Softirq is apart because
/// loopback TCP is processed there: it is mostly the benchmark's own traffic.
fn machine_seconds() -> (f64, f64, f64) {
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
    let softirq = ticks.get(6).copied().unwrap_or(0);
    let hz = clock_ticks();
    (
        total.saturating_sub(idle + softirq) as f64 / hz,
        softirq as f64 / hz,
        total as f64 / hz,
    )
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU use of the server, the load generator and everything else over one window.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUse {
    /// CPU seconds the server process spent.
    pub server_s: f64,
    /// Percent of one core: the server.
    pub server_pct: f64,
    /// Percent of one core: the load-generator processes.
    pub clients_pct: f64,
    /// Percent of one core: the rest of the machine (other people's work), softirq
    /// excluded.
    pub others_pct: f64,
    /// Percent of one core: softirq of the whole machine (loopback TCP: mostly ours).
    pub softirq_pct: f64,
}

/// CPU readings at the start of a window.
pub struct CpuSample {
    at: Instant,
    server: u32,
    clients: Vec<u32>,
    server_s: f64,
    clients_s: f64,
    machine: (f64, f64, f64),
}

impl CpuSample {
    pub fn start(server: u32, clients: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            server,
            clients: clients.to_vec(),
            server_s: cpu_seconds(server),
            clients_s: clients.iter().map(|p| cpu_seconds(*p)).sum(),
            machine: machine_seconds(),
        }
    }

    /// CPU use since [`CpuSample::start`].
    pub fn finish(&self) -> CpuUse {
        let wall = self.at.elapsed().as_secs_f64().max(0.001);
        let server_s = (cpu_seconds(self.server) - self.server_s).max(0.0);
        let clients_s =
            (self.clients.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - self.clients_s).max(0.0);
        let (busy, softirq, _) = machine_seconds();
        let machine_s = busy - self.machine.0;
        CpuUse {
            server_s,
            server_pct: 100.0 * server_s / wall,
            clients_pct: 100.0 * clients_s / wall,
            others_pct: (100.0 * (machine_s - server_s - clients_s) / wall).max(0.0),
            softirq_pct: 100.0 * (softirq - self.machine.1) / wall,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me) > 0);
        assert!(cpu_seconds(me) >= 0.0);
        assert_eq!(rss_bytes(u32::MAX), 0);
        let s = CpuSample::start(me, &[]);
        assert!(s.finish().server_pct >= 0.0);
    }
}
