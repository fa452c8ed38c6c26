//! Per-process statistics files, read by the `status` command.
//!
//! Every gateway and worker rewrites `<data_dir>/run/stats/<role>-<pid>.json` once a
//! second (write to a temporary file, then rename, so a reader never sees half a file).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One process's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// `gateway` or `worker`.
    pub role: String,
    /// Process id.
    pub pid: u32,
    /// Unix time the process started.
    pub started: u64,
    /// Clients connected (gateways) or gateways connected (workers).
    pub clients: u64,
    /// Events handled (workers) or dispatched (gateways) since start.
    pub events: u64,
    /// Events per second over the last second.
    pub events_per_sec: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Role-specific details (gateway number, addresses, counters).
    #[serde(default)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// Directory of stats files.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("stats")
}

/// Writes one process's stats atomically.
pub fn write(run_dir: &Path, stats: &ProcessStats) -> std::io::Result<()> {
    let dir = dir(run_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}-{}.json", stats.role, stats.pid));
    let tmp = dir.join(format!(".{}-{}.tmp", stats.role, stats.pid));
    std::fs::write(&tmp, serde_json::to_vec_pretty(stats).unwrap_or_default())?;
    std::fs::rename(tmp, path)
}

/// Removes a process's stats file (clean exit).
pub fn remove(run_dir: &Path, role: &str, pid: u32) {
    let _ = std::fs::remove_file(dir(run_dir).join(format!("{role}-{pid}.json")));
}

/// Reads every stats file whose process is still alive.
pub fn read_all(run_dir: &Path) -> Vec<ProcessStats> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir(run_dir)) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        match serde_json::from_slice::<ProcessStats>(&bytes) {
            Ok(s) if crate::process::alive(s.pid) => out.push(s),
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "skipping unreadable stats file")
            }
        }
    }
    out.sort_by(|a, b| a.role.cmp(&b.role).then(a.pid.cmp(&b.pid)));
    out
}

/// The clients connected to every gateway of `all` and the events per second they
/// dispatch, summed (what `status` and the dashboard's headline show).
///
/// ```
/// use switchboard::stats::{gateway_totals, ProcessStats};
/// let gateway = |clients, events_per_sec| ProcessStats {
///     role: "gateway".into(),
///     clients,
///     events_per_sec,
///     ..ProcessStats::default()
/// };
/// let worker = ProcessStats { role: "worker".into(), clients: 2, ..ProcessStats::default() };
/// assert_eq!(gateway_totals(&[gateway(3, 1.5), worker, gateway(4, 2.0)]), (7, 3.5));
/// ```
pub fn gateway_totals(all: &[ProcessStats]) -> (u64, f64) {
    all.iter()
        .filter(|s| s.role == "gateway")
        .fold((0, 0.0), |(clients, eps), s| {
            (clients + s.clients, eps + s.events_per_sec)
        })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Resident memory of this process in bytes (Linux `/proc/self/statm`; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// Resident memory of a process in bytes.
pub fn rss_of(pid: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/statm")) else {
        return 0;
    };
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// What a process reports each second: clients (or gateways, for a worker), the event
/// counter, and role-specific details.
pub struct Sample {
    /// Clients connected (gateways) or gateways connected (workers).
    pub clients: u64,
    /// Events since start.
    pub events: u64,
    /// Role-specific figures.
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// Writes this process's stats file once a second until `stop`, computing the event
/// rate from consecutive samples.
///
/// Beside it, the process's metric snapshot goes to `run/metrics/` (see
/// [`crate::metrics`]): everything recorded through the metrics module, the
/// statistics totals, and for a gateway the counters of its sample. A last snapshot is
/// written when `stop` fires, so the supervisor retires final totals.
pub async fn publish_loop(
    run_dir: PathBuf,
    role: &'static str,
    stop: tokio_util::sync::CancellationToken,
    mut sample: impl FnMut() -> Sample,
) {
    let started = unix_now();
    let mut last = (std::time::Instant::now(), 0u64);
    loop {
        let sampled = sample();
        write_metrics(&run_dir, role, started, &sampled);
        let Sample {
            clients,
            events,
            detail,
        } = sampled;
        let now = std::time::Instant::now();
        let rate = events.saturating_sub(last.1) as f64 / (now - last.0).as_secs_f64().max(0.001);
        last = (now, events);
        let s = ProcessStats {
            role: role.into(),
            pid: std::process::id(),
            started,
            clients,
            events,
            events_per_sec: rate,
            rss_bytes: rss_bytes(),
            detail,
        };
        if let Err(e) = write(&run_dir, &s) {
            tracing::debug!(error = %e, "cannot write stats file");
        }
        tokio::select! {
            _ = stop.cancelled() => {
                write_metrics(&run_dir, role, started, &sample());
                return;
            }
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Writes this process's metric snapshot (nothing when metrics are off).
fn write_metrics(run_dir: &Path, role: &str, started: u64, sample: &Sample) {
    if !crate::metrics::enabled() {
        return;
    }
    let mut series = crate::metrics::collect();
    series.extend(crate::statistic::process_series());
    match role {
        "gateway" => crate::metrics::gateway::from_stats(sample, &mut series),
        "worker" => series.push(crate::metrics::Series::gauge(
            "switchboard_worker_gateways",
            &[],
            sample.clients as f64,
        )),
        _ => {}
    }
    let snap = crate::metrics::Snapshot {
        role: role.into(),
        pid: std::process::id(),
        started,
        series,
    };
    if let Err(e) = crate::metrics::write_snapshot(run_dir, &snap) {
        tracing::debug!(error = %e, "cannot write metrics snapshot");
    }
}
