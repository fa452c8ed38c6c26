//! Spool files: how a process hands its statistics to the supervisor of its machine.
//!
//! Each flush writes one JSON [`Batch`] to `<data_dir>/run/spool/` under a name that
//! sorts by time and never repeats (`<unix-ms>-<pid>-<seq>.json`), through a temporary
//! file and a rename, so the supervisor never reads half a file. The supervisor ingests
//! and deletes them; files left while it is down wait for the next one. The directory is
//! bounded (`statistic.max_spool_files`): past it a batch is dropped and counted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Batch, Collector};

/// The spool directory of a run directory.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("spool")
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes one batch; returns the file's path.
pub fn write(dir: &Path, batch: &Batch, now_ms: u64) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("{now_ms:013}-{}-{seq}.json", std::process::id());
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    std::fs::write(
        &tmp,
        serde_json::to_vec(batch).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Finished spool files, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    v
}

/// Flushes what `c` has collected into the spool: the final flush of a process, or one
/// tick of [`flush_loop`]. A batch that cannot be written is kept for the next try; one
/// that finds the spool full is dropped and counted.
pub fn flush(c: &Collector, dir: &Path, max_files: usize) {
    let batch = c.take_batch();
    if batch.is_empty() {
        return;
    }
    if list(dir).len() >= max_files {
        let calls: u64 = batch.minutes.iter().map(|m| m.agg.calls()).sum();
        c.dropped_spool.fetch_add(calls.max(1), Ordering::Relaxed);
        tracing::warn!(
            dir = %dir.display(),
            max_files,
            calls,
            "statistics spool is full (is the supervisor running?); dropping a batch"
        );
        return;
    }
    if let Err(e) = write(dir, &batch, c.clock().now_ms()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write a statistics spool file; retrying at the next flush");
        c.restore(batch);
    }
}

/// Flushes every `every` until `stop`, then once more.
pub async fn flush_loop(
    c: Arc<Collector>,
    dir: PathBuf,
    every: Duration,
    max_files: usize,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let (c2, d2) = (c.clone(), dir.clone());
        // File I/O off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || flush(&c2, &d2, max_files)).await;
    }
    flush(&c, &dir, max_files);
}
