//! CPU use of groups of processes over a run, and how reports show it; the readers of
//! `/proc` are loadkit's (shared with ws-compare).

use std::collections::BTreeMap;
use std::time::Instant;

pub use loadkit::proc::{
    context_switches, cpu_seconds, machine_seconds, pss_bytes, rss_anon_bytes, rss_bytes, Machine,
};

/// CPU time (and context switches) of groups of processes, between a start and a
/// later reading.
pub struct CpuSample {
    at: Instant,
    groups: BTreeMap<String, Group>,
    machine: Machine,
}

/// One group's processes and what they had spent at the start.
struct Group {
    pids: Vec<u32>,
    cpu: f64,
    switches: u64,
}

impl Group {
    fn cpu_now(&self) -> f64 {
        self.pids.iter().map(|p| cpu_seconds(*p)).sum()
    }

    fn switches_now(&self) -> u64 {
        self.pids.iter().map(|p| context_switches(*p)).sum()
    }
}

impl CpuSample {
    /// Reads the CPU time and context switches of every group (`name → pids`) now.
    pub fn start(groups: &[(&str, Vec<u32>)]) -> Self {
        let groups = groups
            .iter()
            .map(|(name, pids)| {
                let mut group = Group {
                    pids: pids.clone(),
                    cpu: 0.0,
                    switches: 0,
                };
                group.cpu = group.cpu_now();
                group.switches = group.switches_now();
                (name.to_string(), group)
            })
            .collect();
        Self {
            at: Instant::now(),
            groups,
            machine: Machine::now(),
        }
    }

    /// Context switches of every group's threads since `start`.
    pub fn switches(&self) -> BTreeMap<String, u64> {
        self.groups
            .iter()
            .map(|(name, g)| (name.clone(), g.switches_now().saturating_sub(g.switches)))
            .collect()
    }

    /// CPU time (user + system) every group spent since `start`, in seconds, with
    /// `wall`: the seconds since `start`.
    pub fn seconds(&self) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = self
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), (g.cpu_now() - g.cpu).max(0.0)))
            .collect();
        out.insert("wall".into(), self.at.elapsed().as_secs_f64());
        out
    }

    /// CPU use of every group since `start`, in percent of one core, with `machine`
    /// (all of it), `softirq` (interrupts and softirqs, charged to no process: on
    /// loopback, most of TCP's receiving side), `steal` (the hypervisor's) and `others`
    /// (the rest: other people's processes on a shared machine).
    pub fn percent(&self) -> BTreeMap<String, f64> {
        let wall = self.at.elapsed().as_secs_f64().max(0.001);
        let mut out: BTreeMap<String, f64> = self
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), 100.0 * (g.cpu_now() - g.cpu).max(0.0) / wall))
            .collect();
        let now = Machine::now();
        let cores = (now.total - self.machine.total) / wall;
        let pct = |s: f64| 100.0 * s / wall;
        let machine = pct(now.busy - self.machine.busy);
        let softirq = pct(now.softirq - self.machine.softirq);
        let steal = pct(now.steal - self.machine.steal);
        let ours: f64 = out.values().sum();
        out.insert("machine".into(), machine.min(100.0 * cores.round()));
        out.insert("softirq".into(), softirq);
        out.insert("steal".into(), steal);
        out.insert("others".into(), (machine - ours - softirq - steal).max(0.0));
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

/// `count` per one of `of`, to three decimals (a figure near 1 or below it: context
/// switches per message); `of` 0 counts as 1.
pub fn per_count(count: u64, of: u64) -> f64 {
    (count as f64 / of.max(1) as f64 * 1000.0).round() / 1000.0
}
