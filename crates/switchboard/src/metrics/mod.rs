//! The runtime's own figures (Prometheus metrics), kept cheaply in each process and
//! served for the whole machine by the supervisor's admin listener (`GET /metrics`).
//!
//! ## How figures travel
//! Every gateway and worker keeps its metrics in process-global atomics (this module:
//! a counter is one relaxed `fetch_add`). Once a second, next to its stats file, each
//! process writes a [`Snapshot`] of them to `<data_dir>/run/metrics/<role>-<pid>.json`
//! ([`crate::stats::publish_loop`] does it, so no role has to remember). The supervisor
//! ([`merge`]) reads those files and sums them into one set of series for the machine:
//!
//! - **counters and histograms** are the sum over the live processes **plus the
//!   retired totals**: when a process is gone, the last figures its file held are added
//!   to a retired total (kept in the statistics database, in the same transaction that
//!   marks the file as folded), so a counter never goes back when a worker is restarted
//!   or reloaded, nor when the supervisor itself restarts;
//! - **gauges** are the sum over live processes only: a dead process's clients are no
//!   longer connected.
//!
//! So `/metrics` reads like one process per machine, with no `process` label; per
//! process figures are in the stats files and `status`.
//!
//! ## Cost
//! Everything on a per-message path is an atomic add on a static; labelled families
//! whose labels are known in advance (event kinds, close reasons, store operations) are
//! arrays indexed by an enum. Only connection-level calls (a client connected) look a
//! listener up in a small map. [`set_enabled`]`(false)` (config `metrics.enabled`)
//! turns every recording call into one relaxed load and a branch.

pub mod gateway;
pub mod merge;
pub mod store;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns recording on or off for this process (config `metrics.enabled`); on, the Db
/// module reports every statement (`switchboard_db_duration_seconds{instance}`,
/// `switchboard_db_errors_total{instance}`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
    if on {
        switchboard_db::set_observer(store::db_call);
    }
}

/// Whether this process records metrics.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        if enabled() {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Zero.
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }
    /// Adds `n` (negative to subtract).
    #[inline]
    pub fn add(&self, n: i64) {
        if enabled() {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }
    /// Sets the value.
    #[inline]
    pub fn set(&self, n: i64) {
        if enabled() {
            self.0.store(n, Ordering::Relaxed);
        }
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the duration histograms: 100 µs to 10 s, Prometheus'
/// usual spread. Anything slower lands in `+Inf`.
pub const DURATION_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram of durations with [`DURATION_BOUNDS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// One count per bound, plus `+Inf`; not cumulative.
    counts: [AtomicU64; DURATION_BOUNDS.len() + 1],
    /// Sum of the observations in nanoseconds (u64 ns: 584 years of total time).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; DURATION_BOUNDS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        if !enabled() {
            return;
        }
        let secs = d.as_secs_f64();
        let i = DURATION_BOUNDS.partition_point(|b| *b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// The histogram as a snapshot value.
    pub fn value(&self) -> Value {
        Value::Histogram {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// One figure in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Value {
    /// A counter's total.
    Counter {
        /// The total.
        value: f64,
    },
    /// A gauge's value.
    Gauge {
        /// The value.
        value: f64,
    },
    /// A duration histogram with [`DURATION_BOUNDS`] (seconds).
    Histogram {
        /// One count per bound plus `+Inf`, not cumulative.
        counts: Vec<u64>,
        /// Sum of observations, seconds.
        sum: f64,
    },
}

/// One series: a metric name and its labels, with a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Full Prometheus name without the `_total` suffix of counters (the encoder adds
    /// it), e.g. `switchboard_events`.
    pub name: String,
    /// Label pairs, in a fixed order.
    pub labels: Vec<(String, String)>,
    /// The figure.
    #[serde(flatten)]
    pub value: Value,
}

impl Series {
    /// A counter series.
    pub fn counter(name: &str, labels: &[(&str, &str)], value: u64) -> Self {
        Self::new(
            name,
            labels,
            Value::Counter {
                value: value as f64,
            },
        )
    }
    /// A gauge series.
    pub fn gauge(name: &str, labels: &[(&str, &str)], value: f64) -> Self {
        Self::new(name, labels, Value::Gauge { value })
    }
    /// Any series.
    pub fn new(name: &str, labels: &[(&str, &str)], value: Value) -> Self {
        Self {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }
    /// The key series are summed under: name and labels.
    pub fn key(&self) -> String {
        let mut k = self.name.clone();
        k.push('{');
        for (i, (n, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                k.push(',');
            }
            k.push_str(n);
            k.push('=');
            k.push_str(&v.replace('\\', "\\\\").replace(',', "\\,"));
        }
        k.push('}');
        k
    }
}

/// Every figure of one process at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `gateway`, `worker` or `api`.
    pub role: String,
    /// Process id.
    pub pid: u32,
    /// Unix time the process started (with the pid, names the process uniquely).
    pub started: u64,
    /// The figures.
    pub series: Vec<Series>,
}

/// What each metric means, for `# HELP` (and its type when no process reported it).
pub struct Descriptor {
    /// Name as in [`Series::name`].
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// Help text of every metric Switchboard exports.
pub const DESCRIPTORS: &[Descriptor] = &[
    Descriptor { name: "switchboard_clients", help: "Clients connected now, by listener and protocol." },
    Descriptor { name: "switchboard_connections_accepted", help: "Client connections accepted, by listener and protocol." },
    Descriptor { name: "switchboard_connections", help: "Client connections ended (or refused before they became clients), by listener and reason: client_closed, heartbeat, slow_consumer, limit, protocol_error (also a failed TLS handshake or upgrade request), server_close, refused (a WebSocket upgrade refused)." },
    Descriptor { name: "switchboard_connections_refused", help: "Client connections closed at accept by a limit, by listener and limit: max_clients, max_connections and max_connect_rate (the listener's), max_connections_per_ip, max_connect_rate_per_ip." },
    Descriptor { name: "switchboard_internal_refused", help: "Internal connections refused before they authenticated, by reason: limit (max_unauthenticated), auth (wrong answer), version, protocol_error, timeout, tls, closed." },
    Descriptor { name: "switchboard_received_bytes", help: "Bytes read from clients." },
    Descriptor { name: "switchboard_sent_bytes", help: "Bytes written to clients." },
    Descriptor { name: "switchboard_outbound_queue_bytes", help: "Bytes queued for clients and not yet written." },
    Descriptor { name: "switchboard_events_held", help: "Events waiting in gateways for a worker." },
    Descriptor { name: "switchboard_gateway_events_dispatched", help: "Events gateways sent to workers (re-sends included)." },
    Descriptor { name: "switchboard_events_redispatched", help: "Events re-sent to another worker after a worker link was lost." },
    Descriptor { name: "switchboard_events_rejected", help: "Events rejected by gateways (no worker in time, queue full)." },
    Descriptor { name: "switchboard_slow_consumers", help: "Clients cut off for not reading their outbound queue." },
    Descriptor { name: "switchboard_gateway_links", help: "Workers linked to each gateway and taking events (draining workers and API clients are not counted)." },
    Descriptor { name: "switchboard_worker_events_in_flight", help: "Events gateways sent to each worker (by its name, worker-PID) that it has not acknowledged yet: one that stays up while the worker handles nothing is held up." },
    Descriptor { name: "switchboard_worker_gateways", help: "Gateways each worker is connected to, summed over workers." },
    Descriptor { name: "switchboard_events", help: "Events handled by workers, by kind (connect, message, close, websocket_connect)." },
    Descriptor { name: "switchboard_commands", help: "Commands and queries sent by workers to gateways, by kind." },
    Descriptor { name: "switchboard_handler_duration_seconds", help: "Time business handlers took, by event kind." },
    Descriptor { name: "switchboard_handler_errors", help: "Handlers that returned an error." },
    Descriptor { name: "switchboard_handler_panics", help: "Handlers that panicked (caught; the worker went on)." },
    Descriptor { name: "switchboard_store_duration_seconds", help: "Store calls, by backend and operation." },
    Descriptor { name: "switchboard_store_errors", help: "Store calls that failed, by backend and operation." },
    Descriptor { name: "switchboard_db_duration_seconds", help: "Database calls made through the Gateway's Db, by instance." },
    Descriptor { name: "switchboard_db_errors", help: "Database calls that failed, by instance." },
    Descriptor { name: "switchboard_child_restarts", help: "Children the supervisor restarted after they died, by role." },
    Descriptor { name: "switchboard_worker_reloads", help: "Reloads (every worker replaced) the supervisor performed." },
    Descriptor { name: "switchboard_processes", help: "Running child processes, by role." },
    Descriptor { name: "switchboard_statistic_calls", help: "Calls reported by business code (StatisticClient), by module, interface and success." },
    Descriptor { name: "switchboard_statistic_duration_seconds", help: "Time of the calls reported by business code, by module and interface." },
    Descriptor { name: "switchboard_statistic_dropped", help: "Statistic reports not recorded, by what overflowed: interfaces (too many distinct module/interface pairs), failure_log (too many failures in one flush), spool (the spool directory was full)." },
];

/// The help line of a metric.
pub fn help(name: &str) -> &'static str {
    DESCRIPTORS
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.help)
        .unwrap_or("")
}

/// Labelled gauges whose labels are only known at run time (listener names).
#[derive(Default)]
pub struct DynGauges(Mutex<BTreeMap<Vec<String>, i64>>);

impl DynGauges {
    /// Empty.
    pub const fn new() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }
    /// Adds `n` to the gauge with these label values.
    pub fn add(&self, labels: &[&str], n: i64) {
        if !enabled() {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        *m.entry(key).or_insert(0) += n;
    }
    /// Every gauge.
    pub fn values(&self) -> Vec<(Vec<String>, i64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Labelled counters whose labels are only known at run time.
#[derive(Default)]
pub struct DynCounters(Mutex<BTreeMap<Vec<String>, u64>>);

impl DynCounters {
    /// Empty.
    pub const fn new() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }
    /// Adds `n` to the counter with these label values.
    pub fn add(&self, labels: &[&str], n: u64) {
        if !enabled() {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        *m.entry(key).or_insert(0) += n;
    }
    /// Every counter.
    pub fn values(&self) -> Vec<(Vec<String>, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Everything this process recorded, as series.
pub fn collect() -> Vec<Series> {
    let mut out = Vec::new();
    gateway::collect(&mut out);
    worker::collect(&mut out);
    store::collect(&mut out);
    out
}

/// Directory of the per-process metric snapshots.
pub fn dir(run_dir: &std::path::Path) -> std::path::PathBuf {
    run_dir.join("metrics")
}

/// Writes a snapshot atomically (temporary file, then rename) to
/// `run/metrics/<role>-<pid>-<started>.json`.
pub fn write_snapshot(run_dir: &std::path::Path, snap: &Snapshot) -> std::io::Result<()> {
    let dir = dir(run_dir);
    std::fs::create_dir_all(&dir)?;
    let name = format!("{}-{}-{}.json", snap.role, snap.pid, snap.started);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(snap).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = Histogram::new();
        h.observe(std::time::Duration::from_micros(100)); // exactly the first bound
        h.observe(std::time::Duration::from_millis(3));
        h.observe(std::time::Duration::from_secs(60));
        let Value::Histogram { counts, sum } = h.value() else {
            unreachable!()
        };
        assert_eq!(counts[0], 1);
        assert_eq!(counts[5], 1, "3 ms is under the 5 ms bound");
        assert_eq!(counts[16], 1, "a minute is +Inf");
        assert!((sum - 60.0031).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn series_keys_tell_labels_apart() {
        let a = Series::counter("m", &[("a", "x,b=y")], 1);
        let b = Series::counter("m", &[("a", "x"), ("b", "y")], 1);
        assert_ne!(a.key(), b.key());
    }
}
