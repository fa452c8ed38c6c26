//! The supervisor's view of the machine's metrics: every live process's latest
//! snapshot, plus the retired totals of processes that are gone, rendered in the
//! Prometheus text format by `prometheus-client`.
//!
//! Counters and histograms of a process that has exited are folded into the retired
//! totals (kept in the statistics database, with the snapshot file's name in the same
//! transaction, so a fold happens once even if the supervisor dies in the middle), and
//! its file is deleted. Gauges of dead processes are dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Series, Snapshot, Value, DURATION_BOUNDS};
use crate::statistic::db::StatDb;

/// Adds `b` into `a` (counters and histograms; gauges add too, for summing live ones).
fn add(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Counter { value: x }, Value::Counter { value: y })
        | (Value::Gauge { value: x }, Value::Gauge { value: y }) => *x += y,
        (
            Value::Histogram {
                counts: c1,
                sum: s1,
            },
            Value::Histogram {
                counts: c2,
                sum: s2,
            },
        ) => {
            if c1.len() < c2.len() {
                c1.resize(c2.len(), 0);
            }
            for (x, y) in c1.iter_mut().zip(c2) {
                *x += y;
            }
            *s1 += s2;
        }
        _ => {}
    }
}

/// The machine's metrics as the supervisor keeps them.
#[derive(Default)]
pub struct Merger {
    /// Totals of processes that are gone, by series key.
    retired: BTreeMap<String, Series>,
    /// Latest snapshot of each live process, by file name.
    live: BTreeMap<String, Snapshot>,
}

impl Merger {
    /// A merger starting from the retired totals saved in `db`.
    pub fn load(db: &StatDb) -> Self {
        let mut m = Merger::default();
        if let Ok(rows) = db.retired() {
            for (k, json) in rows {
                if let Ok(s) = serde_json::from_str::<Series>(&json) {
                    m.retired.insert(k, s);
                }
            }
        }
        m
    }

    /// Reads the snapshot files in `dir`: live processes replace their previous
    /// snapshot; files of processes that are gone are folded into the retired totals
    /// and removed. `alive` tells whether a pid runs (a parameter for tests).
    pub fn poll(&mut self, dir: &Path, db: &mut StatDb, now_ms: u64, alive: impl Fn(u32) -> bool) {
        let mut seen = std::collections::BTreeSet::new();
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for path in files {
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let snap: Snapshot = match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(s) => s,
                None => continue,
            };
            if alive(snap.pid) {
                seen.insert(name.clone());
                self.live.insert(name, snap);
            } else {
                self.retire(&name, &snap, db, now_ms);
                let _ = std::fs::remove_file(&path);
            }
        }
        self.live.retain(|k, _| seen.contains(k));
    }

    fn retire(&mut self, name: &str, snap: &Snapshot, db: &mut StatDb, now_ms: u64) {
        let mut next = self.retired.clone();
        let mut changed = Vec::new();
        for s in &snap.series {
            if matches!(s.value, Value::Gauge { .. }) {
                continue;
            }
            let key = s.key();
            match next.get_mut(&key) {
                Some(r) => add(&mut r.value, &s.value),
                None => {
                    next.insert(key.clone(), s.clone());
                }
            }
            changed.push(key);
        }
        let rows: Vec<(String, String)> = changed
            .iter()
            .filter_map(|k| {
                next.get(k)
                    .map(|s| (k.clone(), serde_json::to_string(s).unwrap_or_default()))
            })
            .collect();
        match db.save_retired(name, &rows, now_ms) {
            Ok(true) => self.retired = next,
            Ok(false) => {} // folded before a restart; its totals are in `retired` already
            Err(e) => tracing::warn!(file = name, error = %e, "cannot save retired metric totals"),
        }
    }

    /// Adds `n` to a counter of the supervisor itself (restarts, reloads), kept in the
    /// retired totals so that it survives a restart of the supervisor.
    pub fn bump(&mut self, db: &mut StatDb, series: Series, now_ms: u64, event: &str) {
        let snap = Snapshot {
            role: "supervisor".into(),
            pid: std::process::id(),
            started: 0,
            series: vec![series],
        };
        self.retire(event, &snap, db, now_ms);
    }

    /// Every series of the machine: retired totals plus live processes.
    pub fn merged(&self, extra: &[Series]) -> Vec<Series> {
        let mut out: BTreeMap<String, Series> = BTreeMap::new();
        for s in self
            .retired
            .values()
            .chain(self.live.values().flat_map(|s| s.series.iter()))
            .chain(extra.iter())
        {
            match out.get_mut(&s.key()) {
                Some(o) => add(&mut o.value, &s.value),
                None => {
                    out.insert(s.key(), s.clone());
                }
            }
        }
        out.into_values().collect()
    }

    /// Live snapshots (for the dashboard's per-process view).
    pub fn live(&self) -> impl Iterator<Item = &Snapshot> {
        self.live.values()
    }
}

/// Renders series in the OpenMetrics text format (`# EOF` last), grouped by name.
pub fn render(series: Vec<Series>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(group(series))));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out = "# cannot encode metrics\n# EOF\n".into();
    }
    out
}

fn group(series: Vec<Series>) -> BTreeMap<String, Vec<Series>> {
    let mut by: BTreeMap<String, Vec<Series>> = BTreeMap::new();
    for s in series {
        by.entry(s.name.clone()).or_default().push(s);
    }
    by
}

#[derive(Debug)]
struct Families(BTreeMap<String, Vec<Series>>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, list) in &self.0 {
            let Some(first) = list.first() else { continue };
            let kind = match first.value {
                Value::Counter { .. } => MetricType::Counter,
                Value::Gauge { .. } => MetricType::Gauge,
                Value::Histogram { .. } => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(name, super::help(name), None, kind)?;
            if let [only] = list.as_slice() {
                if only.labels.is_empty() {
                    // No `{}` after the name.
                    Const(&only.value).encode(metric)?;
                    continue;
                }
            }
            for s in list {
                let labels: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let enc = metric.encode_family(&labels)?;
                Const(&s.value).encode(enc)?;
            }
        }
        Ok(())
    }
}

struct Const<'a>(&'a Value);

impl EncodeMetric for Const<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self.0 {
            Value::Counter { value } => encoder
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(
                    &(*value as u64),
                    None,
                ),
            Value::Gauge { value } => encoder.encode_gauge(&(*value as i64)),
            Value::Histogram { counts, sum } => {
                let mut buckets: Vec<(f64, u64)> = DURATION_BOUNDS
                    .iter()
                    .zip(counts.iter())
                    .map(|(b, c)| (*b, *c))
                    .collect();
                buckets.push((
                    f64::MAX,
                    counts.get(DURATION_BOUNDS.len()).copied().unwrap_or(0),
                ));
                let count = counts.iter().sum();
                encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    *sum, count, &buckets, None,
                )
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.0 {
            Value::Counter { .. } => MetricType::Counter,
            Value::Gauge { .. } => MetricType::Gauge,
            Value::Histogram { .. } => MetricType::Histogram,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pid: u32, events: u64, clients: f64) -> Snapshot {
        Snapshot {
            role: "worker".into(),
            pid,
            started: 1,
            series: vec![
                Series::counter("switchboard_events", &[("kind", "message")], events),
                Series::gauge(
                    "switchboard_clients",
                    &[("listener", "l"), ("protocol", "text")],
                    clients,
                ),
            ],
        }
    }

    fn value(series: &[Series], name: &str) -> f64 {
        series
            .iter()
            .filter(|s| s.name == name)
            .map(|s| match s.value {
                Value::Counter { value } | Value::Gauge { value } => value,
                _ => 0.0,
            })
            .sum()
    }

    #[test]
    fn counters_stay_monotonic_when_processes_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let mdir = dir.path().join("metrics");
        std::fs::create_dir_all(&mdir).unwrap();
        let mut db = StatDb::open(&dir.path().join("s.sqlite")).unwrap();
        let write = |s: &Snapshot| super::super::write_snapshot(dir.path(), s).unwrap();
        let mut m = Merger::load(&db);
        write(&snap(10, 5, 2.0));
        write(&snap(11, 7, 3.0));
        m.poll(&mdir, &mut db, 0, |_| true);
        let all = m.merged(&[]);
        assert_eq!(value(&all, "switchboard_events"), 12.0);
        assert_eq!(value(&all, "switchboard_clients"), 5.0);
        // Process 10 dies after one more event; a new process 12 starts from zero.
        write(&snap(10, 6, 2.0));
        write(&snap(12, 0, 0.0));
        m.poll(&mdir, &mut db, 0, |pid| pid != 10);
        let all = m.merged(&[]);
        assert_eq!(
            value(&all, "switchboard_events"),
            13.0,
            "6 retired + 7 live + 0"
        );
        assert_eq!(
            value(&all, "switchboard_clients"),
            3.0,
            "a dead process has no clients"
        );
        // A new supervisor starts from what was saved.
        let m2 = Merger::load(&db);
        assert_eq!(value(&m2.merged(&[]), "switchboard_events"), 6.0);
        let text = render(m.merged(&[]));
        assert!(
            text.contains("switchboard_events_total{kind=\"message\"} 13"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
