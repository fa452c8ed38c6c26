//! StatisticClient: business code reports each call it makes — module, interface, time
//! taken, success, code, message — as the brief's `Lib/StatisticClient.php` does.
//!
//! ```text
//! handler ──guard.success()──▶ Collector (this process: per-minute aggregates, bounded)
//!                                  │ every statistic.flush_interval (1 s)
//!                                  ▼
//!                     <data_dir>/run/spool/<ms>-<pid>-<seq>.json   (atomic rename)
//!                                  │ supervisor, every second
//!                                  ▼
//!                     <data_dir>/statistics.sqlite   (1-minute buckets, failure log)
//!                                  │
//!                     admin listener: dashboard, /metrics, `status`
//! ```
//!
//! - [`Statistic`] is the guard business code holds: it measures its own elapsed time
//!   and reports on [`Statistic::success`] or [`Statistic::fail`]; dropped without
//!   either it reports a failure with code [`UNREPORTED`] (or [`PANICKED`] while a
//!   panic unwinds), so a forgotten report shows in the failure log.
//! - Reporting never blocks or fails the handler: [`Collector::record`] takes a mutex
//!   for a few hash-map updates. Its memory is bounded: at most
//!   `statistic.max_interfaces` distinct (module, interface) pairs and
//!   `statistic.max_failures` failure-log entries per flush; anything past either is
//!   counted (`switchboard_statistic_dropped_total`, shown on the dashboard) and lost.
//! - The spool files are the hand-over to the supervisor. They are on disk before the
//!   supervisor reads them, so a supervisor restart (or one not running yet) loses
//!   nothing already flushed; the supervisor records each file it ingests in the same
//!   SQLite transaction as its figures, so a crash between the two never counts a file
//!   twice.

pub mod db;
pub mod hist;
pub mod spool;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::{self, Series};

/// Code of a guard dropped without [`Statistic::success`] or [`Statistic::fail`].
pub const UNREPORTED: i32 = -1;
/// Code of a guard dropped while its task panicked.
pub const PANICKED: i32 = -2;
/// Code [`Statistic::time`] reports for an `Err`.
pub const ERROR: i32 = 1;
/// Code of a success (Workerman's convention).
pub const OK: i32 = 0;

/// Longest failure message kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_MESSAGE: usize = 1024;

/// Wall-clock time derived from Tokio's clock, so that a test with a paused clock
/// moves minute buckets deterministically (`tokio::time::advance`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_unix_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    /// Now.
    pub fn new() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::at(unix)
    }

    /// A clock that reads `unix_ms` now.
    pub fn at(unix_ms: u64) -> Self {
        Self {
            base_unix_ms: unix_ms,
            base: tokio::time::Instant::now(),
        }
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(tokio::time::Instant::now())
    }

    /// Unix time in milliseconds at `at` (saves a clock read when the caller has one).
    pub fn ms_at(&self, at: tokio::time::Instant) -> u64 {
        self.base_unix_ms + at.saturating_duration_since(self.base).as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Bounds of a [`Collector`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Distinct (module, interface) pairs; reports for a new pair past it are dropped.
    pub max_interfaces: usize,
    /// Failure-log entries kept between two flushes; more are dropped (the failure
    /// itself is still counted).
    pub max_failures: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_interfaces: 1000,
            max_failures: 1000,
        }
    }
}

/// One minute of one interface, as flushed and as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinuteAgg {
    /// Successful calls.
    pub ok: u64,
    /// Their total time, µs.
    pub ok_us: u64,
    /// Failed calls.
    pub fail: u64,
    /// Their total time, µs.
    pub fail_us: u64,
    /// Calls per code (successes count under [`OK`] unless they said otherwise).
    pub codes: BTreeMap<i32, u64>,
    /// Time histogram of every call ([`hist`] buckets).
    pub hist: hist::Hist,
}

impl MinuteAgg {
    /// Adds another aggregate.
    pub fn merge(&mut self, o: &MinuteAgg) {
        self.ok += o.ok;
        self.ok_us += o.ok_us;
        self.fail += o.fail;
        self.fail_us += o.fail_us;
        for (c, n) in &o.codes {
            *self.codes.entry(*c).or_insert(0) += n;
        }
        self.hist.merge(&o.hist);
    }

    /// Calls.
    pub fn calls(&self) -> u64 {
        self.ok + self.fail
    }

    /// Mean time of every call, ms.
    pub fn mean_ms(&self) -> f64 {
        match self.calls() {
            0 => 0.0,
            n => (self.ok_us + self.fail_us) as f64 / n as f64 / 1000.0,
        }
    }

    /// Successes over calls, 0..=1 (1 with no call).
    pub fn success_rate(&self) -> f64 {
        match self.calls() {
            0 => 1.0,
            n => self.ok as f64 / n as f64,
        }
    }
}

/// One entry of the failure log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Unix time, ms.
    pub at_ms: u64,
    /// Machine the call was made on (`statistic.host`).
    #[serde(default)]
    pub host: String,
    /// Module.
    pub module: String,
    /// Interface.
    pub interface: String,
    /// Code.
    pub code: i32,
    /// Message.
    pub message: String,
    /// Time the call took, µs.
    #[serde(default)]
    pub took_us: u64,
}

/// Aggregates of one (module, interface).
#[derive(Default)]
struct Series1 {
    /// Minutes not yet flushed (usually one; two across a minute boundary).
    pending: Vec<Pending>,
    /// Since the process started, for `/metrics`.
    total_ok: u64,
    total_fail: u64,
    prom: metrics::Histogram,
}

/// One minute being collected: the aggregate, with its histogram dense (an index
/// increment per report) until it is flushed.
struct Pending {
    minute: u64,
    agg: MinuteAgg,
    hist: Box<[u64; hist::BUCKETS as usize]>,
}

impl Pending {
    fn new(minute: u64) -> Self {
        Self {
            minute,
            agg: MinuteAgg::default(),
            hist: Box::new([0; hist::BUCKETS as usize]),
        }
    }

    fn into_agg(self) -> (u64, MinuteAgg) {
        let mut agg = self.agg;
        for (i, n) in self.hist.iter().enumerate() {
            if *n > 0 {
                *agg.hist.0.entry(i as u16).or_insert(0) += n;
            }
        }
        (self.minute, agg)
    }
}

#[derive(Default)]
struct State {
    modules: HashMap<String, HashMap<String, Series1>>,
    interfaces: usize,
    failures: Vec<FailureRecord>,
}

/// What a process has not flushed yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Machine (`statistic.host`).
    pub host: String,
    /// Process that reported.
    pub pid: u32,
    /// Per-minute aggregates.
    pub minutes: Vec<MinuteRecord>,
    /// Failure-log entries.
    pub failures: Vec<FailureRecord>,
    /// Reports dropped since the last batch, by what overflowed.
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
}

impl Batch {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.failures.is_empty() && self.dropped.is_empty()
    }
}

/// One interface's minute in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteRecord {
    /// Module.
    pub module: String,
    /// Interface.
    pub interface: String,
    /// Unix minute (Unix seconds / 60).
    pub minute: u64,
    /// The figures (not flattened: serde cannot flatten maps with integer keys).
    pub agg: MinuteAgg,
}

/// The in-process side of the statistics: aggregates reports until they are flushed.
pub struct Collector {
    enabled: bool,
    host: String,
    clock: Clock,
    limits: Limits,
    state: Mutex<State>,
    /// Dropped because of `max_interfaces`.
    dropped_interfaces: AtomicU64,
    /// Failure-log entries dropped because of `max_failures`.
    dropped_failures: AtomicU64,
    /// Batches dropped because the spool was full (counted by the flusher).
    pub(crate) dropped_spool: AtomicU64,
    /// How much of the above has already gone out in a batch.
    flushed_dropped: Mutex<[u64; 3]>,
}

impl Collector {
    /// A collector for machine `host`.
    pub fn new(host: impl Into<String>, clock: Clock, limits: Limits) -> Self {
        Self {
            enabled: true,
            host: host.into(),
            clock,
            limits,
            state: Mutex::new(State::default()),
            dropped_interfaces: AtomicU64::new(0),
            dropped_failures: AtomicU64::new(0),
            dropped_spool: AtomicU64::new(0),
            flushed_dropped: Mutex::new([0; 3]),
        }
    }

    /// A collector that records nothing (`statistic.enabled = false`, or a process
    /// with no data directory).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::new("", Clock::new(), Limits::default())
        }
    }

    /// Whether reports are recorded.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The clock reports are timed with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A guard for one call of `module::interface`.
    pub fn start(
        self: &Arc<Self>,
        module: impl Into<Cow<'static, str>>,
        interface: impl Into<Cow<'static, str>>,
    ) -> Statistic {
        Statistic {
            collector: self.enabled.then(|| self.clone()),
            module: module.into(),
            interface: interface.into(),
            started: tokio::time::Instant::now(),
            done: false,
        }
    }

    /// Records one call.
    pub fn record(
        &self,
        module: &str,
        interface: &str,
        took: Duration,
        ok: bool,
        code: i32,
        message: &str,
    ) {
        self.record_at(
            tokio::time::Instant::now(),
            module,
            interface,
            took,
            ok,
            code,
            message,
        )
    }

    /// Records one call that ended at `at`.
    #[allow(clippy::too_many_arguments)]
    fn record_at(
        &self,
        at: tokio::time::Instant,
        module: &str,
        interface: &str,
        took: Duration,
        ok: bool,
        code: i32,
        message: &str,
    ) {
        if !self.enabled {
            return;
        }
        let now = self.clock.ms_at(at);
        let minute = now / 60_000;
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        let known = st
            .modules
            .get(module)
            .is_some_and(|m| m.contains_key(interface));
        if !known {
            if st.interfaces >= self.limits.max_interfaces {
                self.dropped_interfaces.fetch_add(1, Ordering::Relaxed);
                return;
            }
            st.interfaces += 1;
            st.modules
                .entry(module.to_owned())
                .or_default()
                .insert(interface.to_owned(), Series1::default());
        }
        let Some(series) = st
            .modules
            .get_mut(module)
            .and_then(|m| m.get_mut(interface))
        else {
            return;
        };
        let p = match series.pending.iter().rposition(|p| p.minute == minute) {
            Some(i) => &mut series.pending[i],
            None => {
                series.pending.push(Pending::new(minute));
                series.pending.last_mut().expect("just pushed")
            }
        };
        p.hist[hist::bucket(us) as usize] += 1;
        let agg = &mut p.agg;
        if ok {
            agg.ok += 1;
            agg.ok_us += us;
            series.total_ok += 1;
        } else {
            agg.fail += 1;
            agg.fail_us += us;
            series.total_fail += 1;
        }
        *agg.codes.entry(code).or_insert(0) += 1;
        series.prom.observe(took);
        if !ok {
            if st.failures.len() < self.limits.max_failures {
                st.failures.push(FailureRecord {
                    at_ms: now,
                    host: self.host.clone(),
                    module: module.to_owned(),
                    interface: interface.to_owned(),
                    code,
                    message: truncate(message, MAX_MESSAGE).to_owned(),
                    took_us: us,
                });
            } else {
                self.dropped_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes everything recorded since the last call.
    pub fn take_batch(&self) -> Batch {
        let mut batch = Batch {
            host: self.host.clone(),
            pid: std::process::id(),
            ..Batch::default()
        };
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for (module, ifaces) in st.modules.iter_mut() {
                for (interface, s) in ifaces.iter_mut() {
                    for (minute, agg) in s.pending.drain(..).map(Pending::into_agg) {
                        batch.minutes.push(MinuteRecord {
                            module: module.clone(),
                            interface: interface.clone(),
                            minute,
                            agg,
                        });
                    }
                }
            }
            batch.failures = std::mem::take(&mut st.failures);
        }
        let now = self.dropped();
        let mut seen = self
            .flushed_dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (i, what) in ["interfaces", "failure_log", "spool"].iter().enumerate() {
            let d = now[i].saturating_sub(seen[i]);
            if d > 0 {
                batch.dropped.insert((*what).to_owned(), d);
            }
        }
        *seen = now;
        batch.minutes.sort_by(|a, b| {
            (a.minute, &a.module, &a.interface).cmp(&(b.minute, &b.module, &b.interface))
        });
        batch
    }

    /// Puts a batch that could not be written back, so the next flush retries it.
    pub(crate) fn restore(&self, batch: Batch) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for r in batch.minutes {
            if let Some(s) = st
                .modules
                .get_mut(&r.module)
                .and_then(|m| m.get_mut(&r.interface))
            {
                match s.pending.iter_mut().find(|p| p.minute == r.minute) {
                    Some(p) => p.agg.merge(&r.agg),
                    None => s.pending.push(Pending {
                        minute: r.minute,
                        agg: r.agg,
                        hist: Box::new([0; hist::BUCKETS as usize]),
                    }),
                }
            }
        }
        let room = self.limits.max_failures.saturating_sub(st.failures.len());
        let mut failures = batch.failures;
        failures.truncate(room);
        st.failures.splice(0..0, failures);
        let mut seen = self
            .flushed_dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (i, what) in ["interfaces", "failure_log", "spool"].iter().enumerate() {
            seen[i] -= batch.dropped.get(*what).copied().unwrap_or(0).min(seen[i]);
        }
    }

    /// Reports dropped so far: `[interfaces, failure_log, spool]`.
    pub fn dropped(&self) -> [u64; 3] {
        [
            self.dropped_interfaces.load(Ordering::Relaxed),
            self.dropped_failures.load(Ordering::Relaxed),
            self.dropped_spool.load(Ordering::Relaxed),
        ]
    }

    /// Cumulative figures since the process started, for `/metrics`.
    pub fn series(&self) -> Vec<Series> {
        let mut out = Vec::new();
        if !self.enabled {
            return out;
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (module, ifaces) in &st.modules {
            for (interface, s) in ifaces {
                let l = [
                    ("module", module.as_str()),
                    ("interface", interface.as_str()),
                ];
                out.push(Series::counter(
                    "switchboard_statistic_calls",
                    &[l[0], l[1], ("success", "true")],
                    s.total_ok,
                ));
                out.push(Series::counter(
                    "switchboard_statistic_calls",
                    &[l[0], l[1], ("success", "false")],
                    s.total_fail,
                ));
                out.push(Series::new(
                    "switchboard_statistic_duration_seconds",
                    &l,
                    s.prom.value(),
                ));
            }
        }
        drop(st);
        let d = self.dropped();
        for (i, what) in ["interfaces", "failure_log", "spool"].iter().enumerate() {
            out.push(Series::counter(
                "switchboard_statistic_dropped",
                &[("what", what)],
                d[i],
            ));
        }
        out
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One call being measured: report it with [`success`](Statistic::success) or
/// [`fail`](Statistic::fail). Made by `ctx.statistic(module, interface)` or
/// `gateway.statistic(module, interface)`.
///
/// A guard dropped without either reports a failure with code [`UNREPORTED`] (or
/// [`PANICKED`] if its thread is unwinding from a panic), so a forgotten report shows
/// up in the failure log rather than vanishing.
#[must_use = "report the call with .success() or .fail(code, message)"]
pub struct Statistic {
    /// `None` when statistics are off: the guard then does nothing.
    collector: Option<Arc<Collector>>,
    module: Cow<'static, str>,
    interface: Cow<'static, str>,
    started: tokio::time::Instant,
    /// Set once reported, so `Drop` does not report again.
    done: bool,
}

impl Statistic {
    /// A guard that reports nowhere.
    pub fn noop() -> Self {
        Self {
            collector: None,
            module: Cow::Borrowed(""),
            interface: Cow::Borrowed(""),
            started: tokio::time::Instant::now(),
            done: true,
        }
    }

    /// Time since the guard was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reports the call as a success (code [`OK`]).
    pub fn success(mut self) {
        self.finish(true, OK, "");
    }

    /// Reports the call as a success with a code of its own.
    pub fn success_with(mut self, code: i32) {
        self.finish(true, code, "");
    }

    /// Reports the call as a failure with `code` and `message` (kept in the failure
    /// log, cut at 1 KiB).
    pub fn fail(mut self, code: i32, message: impl Display) {
        let message = if self.collector.is_some() {
            message.to_string()
        } else {
            String::new()
        };
        self.finish(false, code, &message);
    }

    /// Times `fut` (from the guard's creation to the future's end) and reports from its
    /// result: `Ok` is a success, `Err(e)` a failure with code [`ERROR`] and `e` as the
    /// message. Returns the result unchanged. The future returned holds `fut` once (an
    /// `async fn` would hold it twice: as its argument and while awaiting it); dropped
    /// before `fut` ends, it reports like a guard dropped unreported.
    pub fn time<T, E: Display, F: Future<Output = Result<T, E>>>(
        self,
        fut: F,
    ) -> impl Future<Output = Result<T, E>> {
        Timed {
            fut,
            call: Some(self),
        }
    }

    fn finish(&mut self, ok: bool, code: i32, message: &str) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(c) = &self.collector {
            let now = tokio::time::Instant::now();
            c.record_at(
                now,
                &self.module,
                &self.interface,
                now.saturating_duration_since(self.started),
                ok,
                code,
                message,
            );
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Statistic::time`]: `fut`, and the guard it reports to when
    /// `fut` ends.
    struct Timed<F> {
        #[pin]
        fut: F,
        call: Option<Statistic>,
    }
}

impl<T, E: Display, F: Future<Output = Result<T, E>>> Future for Timed<F> {
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.fut.poll(cx));
        if let Some(call) = this.call.take() {
            match &result {
                Ok(_) => call.success(),
                Err(e) => call.fail(ERROR, e),
            }
        }
        Poll::Ready(result)
    }
}

impl Drop for Statistic {
    fn drop(&mut self) {
        if !self.done {
            if std::thread::panicking() {
                self.finish(false, PANICKED, "the task panicked before reporting");
            } else {
                self.finish(
                    false,
                    UNREPORTED,
                    "dropped without success() or fail() (an early return or `?`)",
                );
            }
        }
    }
}

/// This machine's name for statistics: `statistic.host`, or the host name.
pub fn host_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_owned();
            }
        }
    }
    "localhost".into()
}

/// The collector of this process, once one was installed (for `/metrics`).
static PROCESS: std::sync::OnceLock<Arc<Collector>> = std::sync::OnceLock::new();

/// Makes `c` the collector whose figures this process's metric snapshots include.
pub(crate) fn install(c: Arc<Collector>) -> Arc<Collector> {
    PROCESS.get_or_init(|| c).clone()
}

/// Series of the installed collector (none if there is none).
pub(crate) fn process_series() -> Vec<Series> {
    PROCESS.get().map(|c| c.series()).unwrap_or_default()
}

/// A collector for `config`, installed for this process, with its flusher running
/// until `stop` (which flushes one last time). `None` when statistics are off.
pub(crate) fn start(
    config: &crate::Config,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<Collector>, Option<tokio::task::JoinHandle<()>>) {
    let s = &config.statistic;
    if !s.enabled {
        return (Arc::new(Collector::disabled()), None);
    }
    let c = install(Arc::new(Collector::new(
        host_name(&s.host),
        Clock::new(),
        Limits {
            max_interfaces: s.max_interfaces,
            max_failures: s.max_failures,
        },
    )));
    let task = tokio::spawn(spool::flush_loop(
        c.clone(),
        spool::dir(&config.run_dir()),
        s.flush_interval,
        s.max_spool_files,
        stop,
    ));
    (c, Some(task))
}

#[cfg(test)]
mod tests;
