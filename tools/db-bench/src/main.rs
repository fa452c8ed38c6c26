//! Benchmarks for `switchboard-db`.
//!
//! 1. **Builder overhead**: the same primary-key select, one at a time, run
//!    through the builder (`select().from().where_().bind().row_as()`) and
//!    through raw sqlx (`sqlx::query(..).bind(..).fetch_optional(..)` plus
//!    `try_get` per column) on identically configured pools. Rounds
//!    alternate between the two so machine noise hits both alike; the median
//!    of the rounds is reported. Run on MariaDB and on an SQLite file.
//! 2. **Builder CPU cost alone**: building the statement (quoting,
//!    `:name` → `?`, bind checks) with no I/O.
//! 3. **Primary-key selects per second** against MariaDB from several
//!    concurrent tasks sharing one instance.
//!
//! Everything targets 127.0.0.1 (or the URL given) and stops by itself.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use sqlx::Row as _;
use switchboard_db::{Instance, InstanceConfig};

#[derive(Parser, Debug)]
#[command(about = "switchboard-db benchmarks")]
struct Args {
    /// MariaDB/MySQL to benchmark against.
    #[arg(
        long,
        env = "SWITCHBOARD_TEST_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306/test"
    )]
    url: String,
    /// Queries per round (per side) in the overhead benchmark.
    #[arg(long, default_value_t = 4000)]
    iters: u32,
    /// Rounds per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Seconds per round of the throughput benchmark.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Concurrent tasks for the throughput benchmark (comma separated).
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    tasks: Vec<usize>,
    /// Pool size for the throughput benchmark.
    #[arg(long, default_value_t = 8)]
    pool: u32,
    /// `query_timeout` of the benchmarked instances, seconds (0 = none).
    #[arg(long, default_value_t = 30.0)]
    query_timeout: f64,
    /// Skip MariaDB (SQLite and CPU benchmarks only).
    #[arg(long)]
    no_mysql: bool,
}

const ROWS: i64 = 1000;
const TABLE: &str = "sbdb_bench_persons";

/// CPU time used so far by the calling thread, in µs (Linux
/// `/proc/thread-self/schedstat`), or `None` where that is not available.
/// With a current-thread runtime this is the client's whole cost per query
/// (builder, driver, socket syscalls), unaffected by other processes
/// competing for the cores, unlike wall-clock time.
fn thread_cpu_us() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn setup(db: &Instance) -> Result<()> {
    db.sql(&format!("DROP TABLE IF EXISTS {TABLE}"))
        .execute()
        .await?;
    db.sql(&format!(
        "CREATE TABLE {TABLE} (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, age INT NOT NULL)"
    ))
    .execute()
    .await?;
    let tx = db.begin().await?;
    for id in 0..ROWS {
        tx.insert(TABLE)
            .set("id", id)
            .set("name", format!("person {id}"))
            .set("age", id % 90)
            .query()
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Wall-clock and thread-CPU µs per query.
#[derive(Default, Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
}

impl Cost {
    fn since(start: Instant, cpu0: Option<f64>, iters: u32) -> Cost {
        let n = f64::from(iters);
        Cost {
            wall: start.elapsed().as_secs_f64() * 1e6 / n,
            cpu: match (cpu0, thread_cpu_us()) {
                (Some(a), Some(b)) => (b - a) / n,
                _ => f64::NAN,
            },
        }
    }
}

/// One round of builder queries.
async fn round_builder(db: &Instance, iters: u32) -> Result<Cost> {
    let cpu0 = thread_cpu_us();
    let start = Instant::now();
    for i in 0..iters {
        let id = i64::from(i) % ROWS;
        let row: Option<(i64, String, i32)> = db
            .select("id,name,age")
            .from(TABLE)
            .where_("id = :id")
            .bind("id", id)
            .row_as()
            .await?;
        let row = row.context("row missing")?;
        anyhow::ensure!(row.0 == id);
    }
    Ok(Cost::since(start, cpu0, iters))
}

/// The same query on raw sqlx; `sql` is what the builder generates for the
/// dialect, so both send identical statements.
async fn round_raw<DB>(pool: &sqlx::Pool<DB>, sql: &str, iters: u32) -> Result<Cost>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    i32: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let cpu0 = thread_cpu_us();
    let start = Instant::now();
    for i in 0..iters {
        let id = i64::from(i) % ROWS;
        // Acquire explicitly, as the builder does: the fastest raw usage.
        let mut conn = pool.acquire().await?;
        let row = sqlx::query::<DB>(sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .context("row missing")?;
        let got: (i64, String, i32) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        anyhow::ensure!(got.0 == id);
    }
    Ok(Cost::since(start, cpu0, iters))
}

struct Overhead {
    /// Medians over rounds.
    builder: Cost,
    raw: Cost,
    /// Fastest round of each: the least disturbed by other processes.
    builder_min: Cost,
    raw_min: Cost,
    /// Median over rounds of builder/raw - 1, each round's pair measured
    /// interleaved, so this is the most noise-resistant figure.
    paired_wall: f64,
    paired_cpu: f64,
}

async fn overhead<DB>(
    label: &str,
    db: &Instance,
    pool: &sqlx::Pool<DB>,
    args: &Args,
) -> Result<Overhead>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    i32: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let st = db
        .select("id,name,age")
        .from(TABLE)
        .where_("id = :id")
        .bind("id", 0)
        .statement()?;
    let sql = st.sql().to_string();
    // Warm up both: connections open, statements prepared and cached.
    round_builder(db, args.iters / 10 + 1).await?;
    round_raw(pool, &sql, args.iters / 10 + 1).await?;
    // Each round interleaves the two in small chunks, alternating which goes
    // first, so a slow patch of the (shared, noisy) machine hits both alike.
    const CHUNKS: u32 = 20;
    let per_chunk = (args.iters / CHUNKS).max(1);
    let (mut b, mut r) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let (mut bt, mut rt) = (Cost::default(), Cost::default());
        for chunk in 0..CHUNKS {
            let (x, y) = if chunk % 2 == 0 {
                let x = round_builder(db, per_chunk).await?;
                (x, round_raw(pool, &sql, per_chunk).await?)
            } else {
                let y = round_raw(pool, &sql, per_chunk).await?;
                (round_builder(db, per_chunk).await?, y)
            };
            bt.wall += x.wall / f64::from(CHUNKS);
            bt.cpu += x.cpu / f64::from(CHUNKS);
            rt.wall += y.wall / f64::from(CHUNKS);
            rt.cpu += y.cpu / f64::from(CHUNKS);
        }
        b.push(bt);
        r.push(rt);
    }
    let show = |v: &[Cost]| {
        v.iter()
            .map(|c| format!("{:.1}/{:.1}", c.wall, c.cpu))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "{label}: builder rounds wall/cpu µs per query: {}",
        show(&b)
    );
    eprintln!(
        "{label}: raw     rounds wall/cpu µs per query: {}",
        show(&r)
    );
    let med = |v: &[Cost]| Cost {
        wall: median(v.iter().map(|c| c.wall).collect()),
        cpu: median(v.iter().map(|c| c.cpu).collect()),
    };
    let min = |v: &[Cost]| Cost {
        wall: v.iter().map(|c| c.wall).fold(f64::INFINITY, f64::min),
        cpu: v.iter().map(|c| c.cpu).fold(f64::INFINITY, f64::min),
    };
    let paired = |f: fn(&Cost) -> f64| {
        median(
            b.iter()
                .zip(&r)
                .map(|(x, y)| (f(x) / f(y) - 1.0) * 100.0)
                .collect(),
        )
    };
    Ok(Overhead {
        builder: med(&b),
        raw: med(&r),
        builder_min: min(&b),
        raw_min: min(&r),
        paired_wall: paired(|c| c.wall),
        paired_cpu: paired(|c| c.cpu),
    })
}

fn cpu_only(args: &Args) -> Result<f64> {
    let db = Instance::new("cpu", InstanceConfig::default())?;
    let mut rounds = Vec::new();
    let n = 200_000u32;
    for _ in 0..args.runs {
        let start = Instant::now();
        for i in 0..n {
            let st = db
                .select("id,name,age")
                .from(TABLE)
                .where_("id = :id")
                .bind("id", i64::from(i))
                .statement()?;
            std::hint::black_box(st);
        }
        rounds.push(start.elapsed().as_secs_f64() * 1e9 / f64::from(n));
    }
    Ok(median(rounds))
}

async fn throughput(db: &Instance, tasks: usize, secs: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut id = (t as i64 * 97) % ROWS;
            while Instant::now() < deadline {
                let name: Option<String> = db
                    .select("name")
                    .from(TABLE)
                    .where_("id = :id")
                    .bind("id", id)
                    .single_as()
                    .await?;
                anyhow::ensure!(name.is_some());
                n += 1;
                id = (id + 1) % ROWS;
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64().max(secs))
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The overhead runs on one thread (so its CPU clock covers the whole
    // client side); the throughput runs on all cores.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(overhead_benchmarks(&args))?;
    if args.no_mysql {
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(throughput_benchmarks(&args))
}

async fn overhead_benchmarks(args: &Args) -> Result<()> {
    println!("# switchboard-db benchmarks");
    println!(
        "iters/round {}, rounds {}, medians reported; machine: {} cores; load average at start: {}",
        args.iters,
        args.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!();

    let cpu_ns = cpu_only(args)?;
    println!("builder CPU alone (select + from + where + bind → Statement): {cpu_ns:.0} ns per statement");
    println!();

    // SQLite file.
    let dir = std::env::temp_dir().join(format!("db-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench.sqlite3");
    let mut cfg = InstanceConfig::sqlite(&path);
    cfg.pool_size = 1;
    cfg.query_timeout = args.query_timeout;
    let sdb = Instance::new("bench-sqlite", cfg)?;
    setup(&sdb).await?;
    // Raw sqlx runs on the instance's own pool, so both sides use the same
    // connection (and the same SQLite worker thread / server thread): other
    // processes' load then hits both alike.
    let raw_sqlite = sdb.sqlite_pool().context("sqlite pool")?;
    let s = overhead("sqlite", &sdb, &raw_sqlite, args).await?;
    sdb.close().await;
    let _ = std::fs::remove_dir_all(&dir);

    println!("| backend | builder wall µs/q median (min) | raw sqlx wall µs/q median (min) | wall overhead, paired median | builder CPU µs/q median (min) | raw sqlx CPU µs/q median (min) | CPU overhead, paired median |");
    println!("|---|---|---|---|---|---|---|");
    let row = |name: &str, o: &Overhead| {
        println!(
            "| {name} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:+.1}% | {:.1} ({:.1}) | {:.1} ({:.1}) | {:+.1}% |",
            o.builder.wall,
            o.builder_min.wall,
            o.raw.wall,
            o.raw_min.wall,
            o.paired_wall,
            o.builder.cpu,
            o.builder_min.cpu,
            o.raw.cpu,
            o.raw_min.cpu,
            o.paired_cpu,
        )
    };
    row("SQLite file (pool 1)", &s);

    if args.no_mysql {
        return Ok(());
    }
    let mut cfg = InstanceConfig::mysql_url(&args.url)?;
    cfg.pool_size = 1;
    cfg.query_timeout = args.query_timeout;
    let mdb = Instance::new("bench-mysql", cfg.clone())?;
    mdb.ping()
        .await
        .with_context(|| format!("no MariaDB at {}", args.url))?;
    setup(&mdb).await?;
    let raw_mysql = mdb.mysql_pool().context("mysql pool")?;
    let m = overhead("mysql", &mdb, &raw_mysql, args).await?;
    row("MariaDB (pool 1)", &m);
    println!();
    Ok(())
}

async fn throughput_benchmarks(args: &Args) -> Result<()> {
    let mut cfg = InstanceConfig::mysql_url(&args.url)?;
    cfg.pool_size = args.pool;
    let mdb = Instance::new("bench-mysql", cfg.clone())?;
    let tdb = Instance::new("bench-mysql-tp", cfg)?;
    throughput(&tdb, args.tasks.iter().copied().max().unwrap_or(1), 0.5).await?; // warm the pool
    println!(
        "| tasks (pool {}) | PK selects/s (median of {}) |",
        args.pool, args.runs
    );
    println!("|---|---|");
    for &tasks in &args.tasks {
        let mut rounds = Vec::new();
        for _ in 0..args.runs {
            rounds.push(throughput(&tdb, tasks, args.secs).await?);
        }
        eprintln!("throughput {tasks} tasks: rounds {rounds:.0?}");
        println!("| {tasks} | {:.0} |", median(rounds));
    }
    mdb.sql(&format!("DROP TABLE IF EXISTS {TABLE}"))
        .execute()
        .await?;
    Ok(())
}
