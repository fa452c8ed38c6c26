//! `store-bench`: operations per second and p99 latency of each store backend.
//!
//! For every backend and operation (get, set, increment) it runs `--tasks` concurrent
//! tasks for `--seconds`, `--runs` times, and prints the median throughput and the
//! median p99 latency of the runs as a Markdown table.
//!
//! ```text
//! source scripts/services.sh
//! cargo run --release -p store-bench -- --runs 5 --seconds 3 --tasks 4
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use switchboard_store::{open, SharedStore, StoreConfig};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Benchmark the Switchboard store backends")]
struct Args {
    /// Backends to measure (memory, file, memcached, redis); default all that are set up.
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,
    /// Operations to measure.
    #[arg(long, value_delimiter = ',', default_value = "get,set,increment")]
    ops: Vec<String>,
    /// Concurrent tasks per measurement.
    #[arg(long, default_value_t = 4)]
    tasks: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Bytes per value for get and set.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys used by get and set.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Distinct counters shared by the increment tasks.
    #[arg(long, default_value_t = 4)]
    counters: usize,
    /// Path of the file store (a temporary file under /tmp by default).
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// memcached servers, comma-separated [env: SWITCHBOARD_TEST_MEMCACHED].
    #[arg(long, env = "SWITCHBOARD_TEST_MEMCACHED")]
    memcached: Option<String>,
    /// Redis URL [env: SWITCHBOARD_TEST_REDIS_URL].
    #[arg(
        long,
        env = "SWITCHBOARD_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
}

/// One run's result.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let prefix = format!(
        "bench:{}:",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let file_path = args.file.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("store-bench-{}.sqlite", std::process::id()))
    });
    let wanted: Vec<String> = if args.backends.is_empty() {
        ["memory", "file", "memcached", "redis"]
            .map(String::from)
            .to_vec()
    } else {
        args.backends.clone()
    };

    println!(
        "| backend | operation | ops/s (median of {}) | p50 µs | p99 µs |",
        args.runs
    );
    println!("|---|---|---:|---:|---:|");
    for backend in &wanted {
        let config = match backend.as_str() {
            "memory" => StoreConfig::Memory,
            "file" => StoreConfig::File {
                path: file_path.clone(),
            },
            "memcached" => match &args.memcached {
                Some(list) => StoreConfig::Memcached {
                    servers: list.split(',').map(|s| s.trim().to_owned()).collect(),
                },
                None => {
                    eprintln!("skipping memcached: set SWITCHBOARD_TEST_MEMCACHED or --memcached");
                    continue;
                }
            },
            "redis" => StoreConfig::Redis {
                url: args.redis.clone(),
            },
            other => bail!("unknown backend {other}"),
        };
        let store = open(&config)
            .await
            .with_context(|| format!("opening {backend}"))?;
        if let Err(e) = store.ping().await {
            eprintln!("skipping {backend}: {e}");
            continue;
        }
        for op in &args.ops {
            let mut samples = Vec::with_capacity(args.runs);
            for run in 0..args.runs {
                let run_prefix = format!("{prefix}{backend}:{op}:{run}:");
                samples.push(measure(&store, op, &run_prefix, &args).await?);
            }
            let ops = median(samples.iter().map(|s| s.ops_per_sec).collect());
            let p50 = median(samples.iter().map(|s| s.p50.as_secs_f64()).collect());
            let p99 = median(samples.iter().map(|s| s.p99.as_secs_f64()).collect());
            println!(
                "| {backend} | {op} | {ops:.0} | {:.1} | {:.1} |",
                p50 * 1e6,
                p99 * 1e6
            );
        }
    }
    if args.file.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file_path.display()));
        }
    }
    Ok(())
}

/// One run of one operation: `tasks` tasks for `seconds`.
async fn measure(
    store: &SharedStore,
    op: &str,
    prefix: &str,
    args: &Args,
) -> anyhow::Result<Sample> {
    let value = vec![b'v'; args.value_size];
    let keys: Arc<Vec<String>> =
        Arc::new((0..args.keys).map(|i| format!("{prefix}k{i}")).collect());
    let counters: Arc<Vec<String>> = Arc::new(
        (0..args.counters.max(1))
            .map(|i| format!("{prefix}c{i}"))
            .collect(),
    );
    if op == "get" {
        for k in keys.iter() {
            store.set(k, &value, None).await?;
        }
    }
    if !matches!(op, "get" | "set" | "increment") {
        bail!("unknown operation {op}");
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..args.tasks {
        let (store, keys, counters, value, counter) = (
            Arc::clone(store),
            Arc::clone(&keys),
            Arc::clone(&counters),
            value.clone(),
            Arc::clone(&counter),
        );
        let op = op.to_owned();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut i = task * 7919;
            while started.elapsed() < duration {
                i = i.wrapping_add(1);
                let t = Instant::now();
                match op.as_str() {
                    "get" => {
                        store.get(&keys[i % keys.len()]).await?;
                    }
                    "set" => store.set(&keys[i % keys.len()], &value, None).await?,
                    _ => {
                        store.increment(&counters[i % counters.len()], 1).await?;
                    }
                }
                latencies.push(t.elapsed());
                counter.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Sample {
        ops_per_sec: counter.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
