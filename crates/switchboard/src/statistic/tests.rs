//! Aggregation tests with a paused Tokio clock: counts, percentiles, minute
//! boundaries, retention, a guard dropped unreported, overflow counted.

use std::sync::Arc;
use std::time::Duration;

use super::db::{FailureFilter, Filter, StatDb};
use super::*;

/// 2026-12-01 00:00:00 UTC, a minute boundary.
const T0: u64 = 1_795_996_800_000;

fn collector(limits: Limits) -> Arc<Collector> {
    Arc::new(Collector::new("host-a", Clock::at(T0), limits))
}

#[tokio::test(start_paused = true)]
async fn guards_measure_their_time_and_fill_minute_buckets() {
    let c = collector(Limits::default());
    for _ in 0..99 {
        let g = c.start("chat", "say");
        tokio::time::advance(Duration::from_millis(10)).await;
        g.success();
    }
    let g = c.start("chat", "say");
    tokio::time::advance(Duration::from_millis(100)).await;
    g.fail(500, "db down");
    // Clock is now T0 + 1.09 s: still minute 0. Cross into the next minute.
    tokio::time::advance(Duration::from_secs(60)).await;
    c.start("chat", "say").success();

    let batch = c.take_batch();
    assert_eq!(batch.minutes.len(), 2, "{batch:#?}");
    let m0 = &batch.minutes[0];
    assert_eq!(m0.minute, T0 / 60_000);
    assert_eq!((m0.agg.ok, m0.agg.fail), (99, 1));
    assert_eq!(m0.agg.ok_us, 99 * 10_000);
    assert_eq!(m0.agg.fail_us, 100_000);
    assert_eq!(m0.agg.codes.get(&0), Some(&99));
    assert_eq!(m0.agg.codes.get(&500), Some(&1));
    let p99 = m0.agg.hist.quantile_ms(0.99);
    assert!((10.0..11.9).contains(&p99), "p99 {p99}");
    assert!(m0.agg.hist.quantile_ms(1.0) >= 100.0);
    assert_eq!(batch.minutes[1].minute, T0 / 60_000 + 1);
    assert_eq!(batch.minutes[1].agg.ok, 1);
    assert_eq!(batch.failures.len(), 1);
    let f = &batch.failures[0];
    assert_eq!(
        (f.code, f.message.as_str(), f.module.as_str()),
        (500, "db down", "chat")
    );
    assert_eq!(f.at_ms, T0 + 99 * 10 + 100);
    // Everything went out: the next batch is empty, the totals stay.
    assert!(c.take_batch().is_empty());
    let calls: Vec<_> = c
        .series()
        .into_iter()
        .filter(|s| s.name == "switchboard_statistic_calls")
        .collect();
    assert_eq!(calls.len(), 2);
    assert!(calls
        .iter()
        .any(|s| s.labels[2].1 == "true" && s.value == metrics::Value::Counter { value: 100.0 }));
}

#[tokio::test(start_paused = true)]
async fn a_guard_dropped_unreported_is_a_failure_with_its_own_code() {
    let c = collector(Limits::default());
    {
        let _g = c.start("chat", "login");
        tokio::time::advance(Duration::from_millis(5)).await;
    }
    let batch = c.take_batch();
    assert_eq!(batch.minutes[0].agg.fail, 1);
    assert_eq!(batch.failures[0].code, UNREPORTED);
    assert!(batch.failures[0].message.contains("dropped"));
    assert_eq!(batch.failures[0].took_us, 5_000);
}

#[tokio::test(start_paused = true)]
async fn a_guard_dropped_by_a_panic_is_a_failure_with_the_panicked_code() {
    let c = collector(Limits::default());
    let guard = c.start("chat", "say");
    tokio::time::advance(Duration::from_millis(7)).await;
    // The guard is dropped while the closure unwinds, as in a handler that panics
    // between `statistic(..)` and its report.
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _held = guard;
        panic!("the handler panics before reporting");
    }));
    assert!(unwound.is_err());
    // A guard dropped without a panic, for contrast, keeps the other code.
    drop(c.start("chat", "say"));
    let batch = c.take_batch();
    assert_eq!(batch.minutes[0].agg.fail, 2);
    assert_eq!(batch.minutes[0].agg.codes.get(&PANICKED), Some(&1));
    assert_eq!(batch.minutes[0].agg.codes.get(&UNREPORTED), Some(&1));
    let panicked = &batch.failures[0];
    assert_eq!(panicked.code, PANICKED, "{batch:#?}");
    assert!(panicked.message.contains("panicked"), "{panicked:?}");
    assert_eq!(panicked.took_us, 7_000);
    assert_eq!(batch.failures[1].code, UNREPORTED);
}

/// `time` holds the future it times once: an `async fn` holds its argument and,
/// separately, the same future while awaiting it — twice the size, and a handler's
/// future (copied whole each time it is boxed or spawned) with it.
#[test]
fn the_timed_future_holds_the_future_once() {
    let big = async {
        let buffer = [0u8; 4096];
        tokio::task::yield_now().await;
        Ok::<_, String>(buffer.len())
    };
    let inner = std::mem::size_of_val(&big);
    let timed = std::mem::size_of_val(&Statistic::noop().time(big));
    assert!(
        timed <= inner + std::mem::size_of::<Statistic>() + 64,
        "timing a future of {inner} bytes takes {timed}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_closure_form_reports_from_the_result() {
    let c = collector(Limits::default());
    let ok: Result<u32, String> = c
        .start("m", "i")
        .time(async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Ok(7)
        })
        .await;
    assert_eq!(ok, Ok(7));
    let err: Result<(), String> = c.start("m", "i").time(async { Err("nope".into()) }).await;
    assert!(err.is_err());
    let b = c.take_batch();
    assert_eq!((b.minutes[0].agg.ok, b.minutes[0].agg.fail), (1, 1));
    assert_eq!(b.minutes[0].agg.ok_us, 3_000);
    assert_eq!(
        (b.failures[0].code, b.failures[0].message.as_str()),
        (ERROR, "nope")
    );
}

#[tokio::test(start_paused = true)]
async fn overflow_is_counted_not_fatal() {
    let c = collector(Limits {
        max_interfaces: 2,
        max_failures: 3,
    });
    for i in 0..5 {
        c.start("m", format!("i{i}")).success();
    }
    for _ in 0..5 {
        c.start("m", "i0").fail(9, "x");
    }
    let b = c.take_batch();
    assert_eq!(b.minutes.len(), 2, "only two interfaces are kept");
    assert_eq!(b.failures.len(), 3);
    assert_eq!(b.dropped.get("interfaces"), Some(&3));
    assert_eq!(b.dropped.get("failure_log"), Some(&2));
    // The failures beyond the log still count as failures.
    assert_eq!(b.minutes.iter().map(|m| m.agg.fail).sum::<u64>(), 5);
    // Dropped counts are sent once.
    c.start("m", "i0").success();
    assert!(c.take_batch().dropped.is_empty());
    assert_eq!(c.dropped(), [3, 2, 0]);
}

#[tokio::test(start_paused = true)]
async fn the_database_merges_batches_once_and_prunes_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = StatDb::open(&dir.path().join("s.sqlite")).unwrap();
    let c = collector(Limits::default());
    for _ in 0..10 {
        c.start("chat", "say").success();
    }
    c.start("chat", "say").fail(404, "not online");
    let b1 = c.take_batch();
    for _ in 0..5 {
        c.start("chat", "say").success();
    }
    c.start("chat", "history").success();
    let b2 = c.take_batch();
    assert!(db.ingest("a.json", &b1, T0).unwrap());
    assert!(!db.ingest("a.json", &b1, T0).unwrap(), "a file counts once");
    assert!(db.ingest("b.json", &b2, T0).unwrap());

    let m = T0 / 60_000;
    let f = Filter {
        from_minute: m - 2,
        to_minute: m,
        ..Filter::default()
    };
    let (points, total) = db.minutes(&f).unwrap();
    assert_eq!(points.len(), 3, "empty minutes are listed too");
    assert_eq!(points[2].summary.calls, 17);
    assert_eq!(total.ok, 16);
    assert_eq!(total.fail, 1);
    assert_eq!(total.codes.get(&404), Some(&1));
    let tree = db.tree(&f).unwrap();
    assert_eq!(
        tree.iter()
            .map(|t| (t.interface.as_str(), t.summary.calls))
            .collect::<Vec<_>>(),
        [("history", 1), ("say", 16)]
    );
    let fails = db
        .failures(&FailureFilter {
            code: Some(404),
            limit: 10,
            ..FailureFilter::default()
        })
        .unwrap();
    assert_eq!(fails.len(), 1);
    assert_eq!(fails[0].host, "host-a");
    // Another machine's failure, an hour later: the log filters by host and by time.
    let other = Arc::new(Collector::new(
        "host-b",
        Clock::at(T0 + 3_600_000),
        Limits::default(),
    ));
    other.start("chat", "say").fail(500, "db down");
    assert!(db.ingest("c.json", &other.take_batch(), T0).unwrap());
    let failures = |host: Option<&str>, since_ms: Option<u64>| {
        db.failures(&FailureFilter {
            host: host.map(str::to_owned),
            since_ms,
            limit: 10,
            ..FailureFilter::default()
        })
        .unwrap()
        .into_iter()
        .map(|f| format!("{}:{}", f.host, f.code))
        .collect::<Vec<_>>()
    };
    assert_eq!(failures(None, None), ["host-b:500", "host-a:404"]);
    assert_eq!(failures(Some("host-a"), None), ["host-a:404"]);
    assert_eq!(failures(Some("host-b"), None), ["host-b:500"]);
    assert!(failures(Some("host-c"), None).is_empty());
    assert_eq!(failures(None, Some(T0 + 60_000)), ["host-b:500"]);
    assert!(failures(Some("host-a"), Some(T0 + 60_000)).is_empty());

    // 15 days later (retention 15 days) the minute is still there one minute before
    // its time is up, and gone after.
    let retention = 15 * 86_400_000;
    db.prune(T0 + retention, retention, 100).unwrap();
    assert_eq!(db.minutes(&f).unwrap().1.calls, 17);
    db.prune(T0 + retention + 60_000, retention, 100).unwrap();
    assert_eq!(db.minutes(&f).unwrap().1.calls, 0);
    let all = FailureFilter {
        limit: 10,
        ..FailureFilter::default()
    };
    let left = db.failures(&all).unwrap();
    assert_eq!(left.len(), 1, "only the later failure is left: {left:?}");
    assert_eq!(left[0].host, "host-b");
    db.prune(T0 + 3_600_000 + retention + 60_000, retention, 100)
        .unwrap();
    assert!(db.failures(&all).unwrap().is_empty());
}

#[tokio::test]
async fn the_spool_hands_batches_over_and_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let c = collector(Limits::default());
    c.start("m", "i").success();
    spool::flush(&c, &spool, 1);
    assert_eq!(spool::list(&spool).len(), 1);
    c.start("m", "i").success();
    spool::flush(&c, &spool, 1); // full: dropped and counted
    assert_eq!(spool::list(&spool).len(), 1);
    assert_eq!(c.dropped()[2], 1);
    let mut db = StatDb::open(&dir.path().join("s.sqlite")).unwrap();
    assert_eq!(db.ingest_dir(&spool, T0), 1);
    assert!(spool::list(&spool).is_empty());
}

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`): a measurement that time
/// spent waiting for a core on a busy machine does not inflate.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Thread CPU time per iteration of `f(n)`.
fn per_iteration(n: u32, f: impl FnOnce(u32)) -> Duration {
    let t = thread_cpu();
    f(n);
    (thread_cpu() - t) / n
}

/// The hot-path cost of a report, of the worker's per-event metrics and of the
/// gateway's per-message metrics, in thread CPU time per call:
/// `cargo test --release -p switchboard --lib cost_of_a_report -- --ignored --nocapture`
/// (docs/BENCHMARKS.md compares it with the CPU a private message costs).
#[test]
#[ignore = "a measurement, run by hand in release mode"]
fn cost_of_a_report() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Arc::new(Collector::new("h", Clock::new(), Limits::default()));
        let n = 2_000_000u32;
        let report = per_iteration(n, |n| {
            for _ in 0..n {
                c.start("chat", "private").success();
            }
        });
        let event = per_iteration(n, |n| {
            for _ in 0..n {
                let began = std::time::Instant::now();
                crate::metrics::worker::event_handled(
                    crate::metrics::worker::EventKind::Message,
                    began.elapsed(),
                    false,
                    false,
                );
                crate::metrics::worker::command(crate::metrics::worker::CommandKind::SendToClient);
            }
        });
        // Keep the figures honest: everything was recorded.
        assert_eq!(
            c.take_batch().minutes.iter().map(|m| m.agg.ok).sum::<u64>(),
            u64::from(n)
        );
        println!(
            "statistic report (guard + success): {report:?}; worker metrics per event: {event:?}"
        );
    });

    // The gateway's calls for one message to one client (commit 195c19c): the read
    // that brought it (`bytes_in`), the message put on the client's outbound queue
    // and taken off it (`outbound_queued`, `outbound_written`: the queue gauge) and
    // the write (`bytes_out`). A private message is one read and two of the rest (the
    // recipient's copy and the sender's echo); the gateway's threads share the
    // counters, so they are timed on one thread and on two at once.
    use crate::metrics::gateway as gw;
    let message = |n: u32| {
        for _ in 0..n {
            let len = std::hint::black_box(64);
            gw::bytes_in(len);
            gw::outbound_queued(len);
            gw::outbound_written(len);
            gw::bytes_out(len);
        }
    };
    let bytes_in = |series: &[crate::metrics::Series]| {
        series
            .iter()
            .find(|s| s.name == "switchboard_received_bytes")
            .map(|s| s.value.clone())
    };
    let n = 10_000_000u32;
    let alone = per_iteration(n, message);
    let shared: Vec<Duration> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|_| s.spawn(|| per_iteration(n, message)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(
        bytes_in(&crate::metrics::collect()),
        Some(metrics::Value::Counter {
            value: (3 * u64::from(n) * 64) as f64
        }),
        "every byte counted"
    );
    println!(
        "gateway metrics per message to one client: {alone:?} on one thread; {shared:?} on two threads at once"
    );
}
