//! What `/proc` says about a process and the machine: resident memory, CPU time,
//! context switches and the machine's busy, softirq and steal time, so a run can tell
//! whether the server, the load generator or someone else was the limit. Every reader
//! gives 0 for a process that is gone.

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

/// Context switches of every thread of `pid` so far (`voluntary_ctxt_switches` plus
/// `nonvoluntary_ctxt_switches` of each `/proc/PID/task/*/status`; a process's own
/// `status` counts its first thread only); 0 if gone. Each is a thread that went to
/// sleep or was put aside: on this kind of machine the wake-up that ends it costs
/// more than most of what a message does.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| switches_of(&status))
        .sum()
}

/// The two context-switch counts of one `status` text, added.
fn switches_of(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        })
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// The whole machine's CPU time in seconds, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Machine {
    /// Everything but idle and iowait.
    pub busy: f64,
    /// Everything.
    pub total: f64,
    /// Interrupts and softirqs: charged to no process. On loopback this is most of the
    /// receiving side of TCP (both ends' on this machine), whoever sent.
    pub softirq: f64,
    /// Time the hypervisor gave the machine's virtual CPUs to someone else.
    pub steal: f64,
}

impl Machine {
    /// Reads `/proc/stat` now (zeros if it cannot).
    pub fn now() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// The machine's line of a `/proc/stat` text: user nice system idle iowait irq
    /// softirq steal, in clock ticks.
    fn parse(stat: &str) -> Self {
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let total: u64 = ticks.iter().take(8).sum();
        Self {
            busy: (total - at(3) - at(4)) as f64 / hz,
            total: total as f64 / hz,
            softirq: (at(5) + at(6)) as f64 / hz,
            steal: at(7) as f64 / hz,
        }
    }
}

/// Busy and total CPU time of the whole machine in seconds (first line of
/// `/proc/stat`; idle and iowait count as not busy).
pub fn machine_seconds() -> (f64, f64) {
    let m = Machine::now();
    (m.busy, m.total)
}

/// The one-minute load average (`/proc/loadavg`); `NaN` if it cannot be read.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
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
        // This test's thread has slept at least once to be started.
        let before = context_switches(me);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(context_switches(me) > before, "a sleep is a context switch");
        assert_eq!(context_switches(u32::MAX), 0);
        assert_eq!(rss_bytes(u32::MAX), 0);
        assert_eq!(pss_bytes(u32::MAX), 0);
    }

    #[test]
    fn a_threads_switches_are_its_voluntary_and_involuntary_ones() {
        let status = "Name:\tchat\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(switches_of(status), 127);
        assert_eq!(switches_of("Name:\tgone\n"), 0);
    }

    #[test]
    fn the_machines_line_splits_softirq_and_steal_out() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let m = Machine::parse("cpu  100 0 50 800 20 5 15 10 0 0\ncpu0 1 2 3\n");
        assert_eq!(m.total * hz, 1000.0);
        assert_eq!(m.busy * hz, 180.0);
        assert_eq!(m.softirq * hz, 20.0);
        assert_eq!(m.steal * hz, 10.0);
        assert_eq!(Machine::parse(""), Machine::default());
        assert!(Machine::now().total > 0.0);
    }

    #[test]
    fn the_load_average_is_read() {
        assert!(load_average() >= 0.0);
    }
}
