//! The supervisor's statistics database (`<data_dir>/statistics.sqlite`, rusqlite):
//! one row per (minute, host, module, interface), the failure log, the spool files
//! already ingested, and the retired metric totals of processes that are gone.
//!
//! Only the supervisor writes it; `status` and the admin listener read it. Rows older
//! than `statistic.retention` (15 days) are deleted every minute, and the failure log
//! also keeps at most `statistic.failure_log` entries.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{Batch, FailureRecord, MinuteAgg};

/// Statistics database errors.
pub type Result<T> = std::result::Result<T, rusqlite::Error>;

/// The open database.
pub struct StatDb {
    conn: Connection,
}

/// Which rows a query covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// First minute (Unix minutes), inclusive.
    pub from_minute: u64,
    /// Last minute, inclusive.
    pub to_minute: u64,
    /// Only this module.
    pub module: Option<String>,
    /// Only this interface (with `module`).
    pub interface: Option<String>,
    /// Only this host.
    pub host: Option<String>,
}

/// One interface over a range: totals, for the tree.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceTotal {
    /// Module.
    pub module: String,
    /// Interface.
    pub interface: String,
    /// Figures over the range.
    #[serde(flatten)]
    pub summary: Summary,
}

/// Figures of an aggregate, ready for display.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Calls.
    pub calls: u64,
    /// Successes.
    pub ok: u64,
    /// Failures.
    pub fail: u64,
    /// Successes / calls (1 with no call).
    pub success_rate: f64,
    /// Mean time, ms.
    pub mean_ms: f64,
    /// Mean time of successes, ms.
    pub ok_mean_ms: f64,
    /// Mean time of failures, ms.
    pub fail_mean_ms: f64,
    /// 50th percentile, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Calls by code.
    pub codes: BTreeMap<i32, u64>,
}

impl Summary {
    /// The display figures of an aggregate.
    pub fn of(a: &MinuteAgg) -> Self {
        let div = |us: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                us as f64 / n as f64 / 1000.0
            }
        };
        Self {
            calls: a.calls(),
            ok: a.ok,
            fail: a.fail,
            success_rate: a.success_rate(),
            mean_ms: a.mean_ms(),
            ok_mean_ms: div(a.ok_us, a.ok),
            fail_mean_ms: div(a.fail_us, a.fail),
            p50_ms: a.hist.quantile_ms(0.5),
            p99_ms: a.hist.quantile_ms(0.99),
            codes: a.codes.clone(),
        }
    }
}

/// One minute of a series, for charts and the per-minute table.
#[derive(Debug, Clone, Serialize)]
pub struct MinutePoint {
    /// Unix minute.
    pub minute: u64,
    /// Figures of that minute.
    #[serde(flatten)]
    pub summary: Summary,
}

/// Which failures to list.
#[derive(Debug, Clone, Default)]
pub struct FailureFilter {
    /// Only this module.
    pub module: Option<String>,
    /// Only this interface.
    pub interface: Option<String>,
    /// Only this code.
    pub code: Option<i32>,
    /// Only this machine's (`statistic.host`).
    pub host: Option<String>,
    /// Only messages containing this text.
    pub text: Option<String>,
    /// Only failures at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// At most this many, newest first.
    pub limit: usize,
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl StatDb {
    /// Opens (and creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS minute (
                 minute INTEGER NOT NULL, host TEXT NOT NULL, module TEXT NOT NULL,
                 interface TEXT NOT NULL, ok INTEGER NOT NULL, ok_us INTEGER NOT NULL,
                 fail INTEGER NOT NULL, fail_us INTEGER NOT NULL, codes TEXT NOT NULL,
                 hist TEXT NOT NULL,
                 PRIMARY KEY (minute, host, module, interface));
             CREATE TABLE IF NOT EXISTS failure (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL,
                 host TEXT NOT NULL, module TEXT NOT NULL, interface TEXT NOT NULL,
                 code INTEGER NOT NULL, message TEXT NOT NULL, took_us INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS failure_at ON failure (at_ms);
             CREATE TABLE IF NOT EXISTS ingested (name TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS retired (key TEXT PRIMARY KEY, series TEXT NOT NULL);",
        )?;
        Ok(Self { conn })
    }

    /// Opens an existing database read-only (for `status`).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        Ok(Self { conn })
    }

    /// Adds one spool file's batch, once: a file already ingested (the supervisor died
    /// after committing and before deleting it) is skipped. Returns whether it was new.
    pub fn ingest(&mut self, name: &str, batch: &Batch, now_ms: u64) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let seen: Option<i64> = tx
            .query_row("SELECT 1 FROM ingested WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if seen.is_some() {
            return Ok(false);
        }
        for m in &batch.minutes {
            let old: Option<(u64, u64, u64, u64, String, String)> = tx
                .query_row(
                    "SELECT ok, ok_us, fail, fail_us, codes, hist FROM minute
                     WHERE minute = ?1 AND host = ?2 AND module = ?3 AND interface = ?4",
                    params![m.minute as i64, batch.host, m.module, m.interface],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    },
                )
                .optional()?;
            let mut agg = match old {
                Some((ok, ok_us, fail, fail_us, codes, hist)) => MinuteAgg {
                    ok,
                    ok_us,
                    fail,
                    fail_us,
                    codes: serde_json::from_str(&codes).unwrap_or_default(),
                    hist: serde_json::from_str(&hist).unwrap_or_default(),
                },
                None => MinuteAgg::default(),
            };
            agg.merge(&m.agg);
            tx.execute(
                "INSERT OR REPLACE INTO minute
                 (minute, host, module, interface, ok, ok_us, fail, fail_us, codes, hist)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    m.minute as i64,
                    batch.host,
                    m.module,
                    m.interface,
                    agg.ok as i64,
                    agg.ok_us as i64,
                    agg.fail as i64,
                    agg.fail_us as i64,
                    to_json(&agg.codes),
                    to_json(&agg.hist)
                ],
            )?;
        }
        for f in &batch.failures {
            let host = if f.host.is_empty() {
                &batch.host
            } else {
                &f.host
            };
            tx.execute(
                "INSERT INTO failure (at_ms, host, module, interface, code, message, took_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    f.at_ms as i64,
                    host,
                    f.module,
                    f.interface,
                    f.code,
                    f.message,
                    f.took_us as i64
                ],
            )?;
        }
        for (what, n) in &batch.dropped {
            tx.execute(
                "INSERT INTO counter (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                params![format!("dropped.{what}"), *n as i64],
            )?;
        }
        tx.execute(
            "INSERT INTO ingested (name, at_ms) VALUES (?1, ?2)",
            params![name, now_ms as i64],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Ingests every finished file of the spool directory and deletes it; returns how
    /// many were new. An unreadable file is moved aside (`.bad`), logged, never retried.
    pub fn ingest_dir(&mut self, dir: &Path, now_ms: u64) -> usize {
        let mut n = 0;
        for path in super::spool::list(dir) {
            let name = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let batch: Batch = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable statistics spool file; moving it aside");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                    continue;
                }
            };
            match self.ingest(&name, &batch, now_ms) {
                Ok(new) => {
                    n += usize::from(new);
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    // Kept on disk: the next round retries it.
                    tracing::warn!(file = %path.display(), error = %e, "cannot store a statistics batch; retrying later");
                    break;
                }
            }
        }
        n
    }

    /// Deletes what is older than `retention_ms` and failure-log entries past
    /// `max_failures`.
    pub fn prune(&mut self, now_ms: u64, retention_ms: u64, max_failures: usize) -> Result<()> {
        let cutoff_ms = now_ms.saturating_sub(retention_ms);
        let cutoff_minute = cutoff_ms / 60_000;
        self.conn.execute(
            "DELETE FROM minute WHERE minute < ?1",
            [cutoff_minute as i64],
        )?;
        self.conn
            .execute("DELETE FROM failure WHERE at_ms < ?1", [cutoff_ms as i64])?;
        self.conn.execute(
            "DELETE FROM failure WHERE id <= (SELECT id FROM failure ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            [max_failures as i64],
        )?;
        // Ingested names only guard against a crash between commit and delete.
        self.conn.execute(
            "DELETE FROM ingested WHERE at_ms < ?1",
            [now_ms.saturating_sub(86_400_000) as i64],
        )?;
        Ok(())
    }

    /// Rows of a range, one aggregate per (minute, module, interface), hosts summed
    /// unless the filter names one.
    fn rows(&self, f: &Filter) -> Result<Vec<(u64, String, String, MinuteAgg)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT minute, module, interface, ok, ok_us, fail, fail_us, codes, hist FROM minute
             WHERE minute >= ?1 AND minute <= ?2
               AND (?3 IS NULL OR module = ?3) AND (?4 IS NULL OR interface = ?4)
               AND (?5 IS NULL OR host = ?5)
             ORDER BY minute",
        )?;
        let rows = stmt.query_map(
            params![
                f.from_minute as i64,
                f.to_minute as i64,
                f.module,
                f.interface,
                f.host
            ],
            |r| {
                let codes: String = r.get(7)?;
                let hist: String = r.get(8)?;
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    MinuteAgg {
                        ok: r.get(3)?,
                        ok_us: r.get(4)?,
                        fail: r.get(5)?,
                        fail_us: r.get(6)?,
                        codes: serde_json::from_str(&codes).unwrap_or_default(),
                        hist: serde_json::from_str(&hist).unwrap_or_default(),
                    },
                ))
            },
        )?;
        rows.collect()
    }

    /// Every minute of the range (empty minutes included), with the totals.
    pub fn minutes(&self, f: &Filter) -> Result<(Vec<MinutePoint>, Summary)> {
        let mut by_minute: BTreeMap<u64, MinuteAgg> = BTreeMap::new();
        let mut total = MinuteAgg::default();
        for (minute, _, _, agg) in self.rows(f)? {
            total.merge(&agg);
            by_minute.entry(minute).or_default().merge(&agg);
        }
        let points = (f.from_minute..=f.to_minute)
            .map(|m| MinutePoint {
                minute: m,
                summary: by_minute
                    .get(&m)
                    .map(Summary::of)
                    .unwrap_or_else(|| Summary {
                        success_rate: 1.0,
                        ..Summary::default()
                    }),
            })
            .collect();
        Ok((points, Summary::of(&total)))
    }

    /// The module → interface tree of the range, with each interface's totals.
    pub fn tree(&self, f: &Filter) -> Result<Vec<InterfaceTotal>> {
        let mut by: BTreeMap<(String, String), MinuteAgg> = BTreeMap::new();
        for (_, module, interface, agg) in self.rows(f)? {
            by.entry((module, interface)).or_default().merge(&agg);
        }
        Ok(by
            .into_iter()
            .map(|((module, interface), agg)| InterfaceTotal {
                module,
                interface,
                summary: Summary::of(&agg),
            })
            .collect())
    }

    /// The failure log, newest first.
    pub fn failures(&self, f: &FailureFilter) -> Result<Vec<FailureRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at_ms, host, module, interface, code, message, took_us FROM failure
             WHERE (?1 IS NULL OR module = ?1) AND (?2 IS NULL OR interface = ?2)
               AND (?3 IS NULL OR code = ?3)
               AND (?4 IS NULL OR instr(message, ?4) > 0)
               AND (?5 IS NULL OR at_ms >= ?5)
               AND (?7 IS NULL OR host = ?7)
             ORDER BY id DESC LIMIT ?6",
        )?;
        let rows = stmt.query_map(
            params![
                f.module,
                f.interface,
                f.code,
                f.text,
                f.since_ms.map(|v| v as i64),
                f.limit.max(1) as i64,
                f.host
            ],
            |r| {
                Ok(FailureRecord {
                    at_ms: r.get::<_, i64>(0)? as u64,
                    host: r.get(1)?,
                    module: r.get(2)?,
                    interface: r.get(3)?,
                    code: r.get(4)?,
                    message: r.get(5)?,
                    took_us: r.get::<_, i64>(6)? as u64,
                })
            },
        )?;
        rows.collect()
    }

    /// Hosts that reported in the range.
    pub fn hosts(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT host FROM minute ORDER BY host")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    /// Reports dropped in the processes, by what overflowed (all time).
    pub fn dropped(&self) -> Result<BTreeMap<String, u64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT substr(name, 9), value FROM counter WHERE name LIKE 'dropped.%'",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    }

    /// The retired metric totals (key → series JSON).
    pub fn retired(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare("SELECT key, series FROM retired")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Replaces retired totals and marks a snapshot file as folded, in one transaction;
    /// returns false (and changes nothing) when `folded` was folded already.
    pub fn save_retired(
        &mut self,
        folded: &str,
        rows: &[(String, String)],
        now_ms: u64,
    ) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let name = format!("metrics:{folded}");
        let seen: Option<i64> = tx
            .query_row("SELECT 1 FROM ingested WHERE name = ?1", [&name], |r| {
                r.get(0)
            })
            .optional()?;
        if seen.is_some() {
            return Ok(false);
        }
        for (k, s) in rows {
            tx.execute(
                "INSERT OR REPLACE INTO retired (key, series) VALUES (?1, ?2)",
                params![k, s],
            )?;
        }
        tx.execute(
            "INSERT INTO ingested (name, at_ms) VALUES (?1, ?2)",
            params![name, now_ms as i64],
        )?;
        tx.commit()?;
        Ok(true)
    }
}
