//! CPU use of the server, the load generator and everything else over a run (the machine
//! is shared); the readers of `/proc` are loadkit's.

use std::time::Instant;

use loadkit::proc::{cpu_seconds, Machine};
pub use loadkit::proc::{load_average, rss_bytes};

/// Busy (without interrupts and softirq), interrupt and softirq, and total CPU seconds
/// of the whole machine. Softirq is apart because loopback TCP is processed there: it
/// is mostly the benchmark's own traffic.
fn machine_seconds() -> (f64, f64, f64) {
    let m = Machine::now();
    (m.busy - m.softirq, m.softirq, m.total)
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
    /// Percent of one core: interrupts and softirq of the whole machine (loopback TCP:
    /// mostly ours).
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
    fn a_window_of_its_own_process() {
        let me = std::process::id();
        let s = CpuSample::start(me, &[]);
        // Spin until the kernel has charged this process a tick more (10 ms at most,
        // with a bound should the clock not move).
        let at = cpu_seconds(me);
        let spinning = Instant::now();
        while cpu_seconds(me) <= at && spinning.elapsed() < std::time::Duration::from_secs(5) {
            std::hint::black_box(spinning.elapsed());
        }
        let used = s.finish();
        assert!(used.server_s > 0.0 && used.server_pct > 0.0, "{used:?}");
        assert_eq!(used.clients_pct, 0.0, "{used:?}");
        assert!(
            used.others_pct >= 0.0 && used.softirq_pct >= 0.0,
            "{used:?}"
        );
    }
}
