//! Spreading the clients over several load-generator processes.
//!
//! One process may hold at most about 19,900 sockets here, so the parent re-executes
//! itself as `bench child JSON` once per share. A child sets up its clients, prints
//! `ready JSON`, waits for `go` on its stdin (so every child starts the measured phase at
//! the same moment), runs it and prints `result JSON`. The parent aggregates.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::deploy::Deployment;
use crate::wire::Protocol;
use crate::Load;

/// Which part of the load one child process generates.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Share {
    /// This child's number, `0..procs`.
    pub index: usize,
    /// Children in all.
    pub procs: usize,
    /// Loopback source addresses to spread clients over.
    pub sources: usize,
    /// The deployment's client address.
    pub addr: SocketAddr,
    /// The clients' protocol.
    pub protocol: Protocol,
    /// Whether the clients connect over TLS.
    pub tls: bool,
    /// Logins in progress at once in this process.
    pub login_concurrency: usize,
    /// Threads of this process's runtime (0: one per core).
    pub threads: usize,
}

impl Share {
    /// This child's part of `total` items: `(first global index, count)`.
    pub fn part(&self, total: usize) -> (usize, usize) {
        let base = total / self.procs;
        let extra = total % self.procs;
        let count = base + usize::from(self.index < extra);
        let first = self.index * base + self.index.min(extra);
        (first, count)
    }
}

/// The running children of one run.
pub struct Children {
    kids: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Children {
    /// Starts `procs` children, each with the scenario `job` and its [`Share`] of the
    /// load on deployment `d`.
    pub fn spawn<J: Serialize>(
        job: &J,
        load: &Load,
        procs: usize,
        sources: usize,
        d: &Deployment,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut kids = Vec::with_capacity(procs);
        for index in 0..procs {
            let share = Share {
                index,
                procs,
                sources,
                addr: d.addr,
                protocol: d.protocol,
                tls: d.tls,
                login_concurrency: load.login_concurrency.max(1),
                threads: load.child_threads,
            };
            let spec = serde_json::json!({ "share": share, "job": job });
            let mut child = Command::new(&exe)
                .arg("child")
                .arg(spec.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("start a load-generator child")?;
            let stdin = child.stdin.take().context("child stdin")?;
            let stdout = child.stdout.take().context("child stdout")?;
            kids.push((child, stdin, BufReader::new(stdout).lines()));
        }
        Ok(Self { kids })
    }

    /// The children's pids (for CPU figures).
    pub fn pids(&self) -> Vec<u32> {
        self.kids.iter().filter_map(|(c, _, _)| c.id()).collect()
    }

    /// Reads one `tag JSON` line from every child, within `timeout`.
    pub async fn collect<T: DeserializeOwned>(
        &mut self,
        tag: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.kids.len());
        let deadline = tokio::time::Instant::now() + timeout;
        for (i, (_, _, lines)) in self.kids.iter_mut().enumerate() {
            let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Err(_) => bail!("child {i}: no {tag:?} within {timeout:?}"),
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => bail!("child {i} exited before {tag:?} (see its errors above)"),
                Ok(Err(e)) => return Err(e.into()),
            };
            let json = line
                .strip_prefix(tag)
                .map(str::trim_start)
                .with_context(|| format!("child {i}: expected {tag:?}, got {line:?}"))?;
            out.push(serde_json::from_str(json).with_context(|| format!("child {i}: {json}"))?);
        }
        Ok(out)
    }

    /// Tells every child to start its measured phase.
    pub async fn go(&mut self) -> anyhow::Result<()> {
        for (_, stdin, _) in &mut self.kids {
            stdin.write_all(b"go\n").await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Lets every child close its connections and exit: sent once every child's last
    /// result is in, so that no child's clients leave (every close is an event, and
    /// the chat announces each to the room) while another child still measures.
    pub async fn release(&mut self) {
        for (_, stdin, _) in &mut self.kids {
            // A child that is gone already has nothing to release.
            let _ = stdin.write_all(b"release\n").await;
            let _ = stdin.flush().await;
        }
    }

    /// Waits for every child to exit (they do after their result, or once released).
    pub async fn wait(mut self) {
        for (child, _, _) in &mut self.kids {
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
            }
        }
    }
}

/// Child side: prints `tag JSON` for the parent.
pub fn report<T: Serialize>(tag: &str, value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{tag} {}", serde_json::to_string(value)?)?;
    out.flush()?;
    Ok(())
}

/// Child side: waits for the parent's `go`.
pub async fn wait_go() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    match lines.next_line().await? {
        Some(l) if l.trim() == "go" => Ok(()),
        other => bail!("expected go from the parent, got {other:?}"),
    }
}

/// Child side: waits for [`Children::release`] (or the parent's end) before the
/// child closes its connections.
pub async fn wait_release() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "release" {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_everything_once() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for total in [0, 1, 7, 100, 101] {
            let mut next = 0;
            for index in 0..3 {
                let share = Share {
                    index,
                    procs: 3,
                    sources: 1,
                    addr,
                    protocol: Protocol::Text,
                    tls: false,
                    login_concurrency: 1,
                    threads: 1,
                };
                let (first, count) = share.part(total);
                assert_eq!(first, next);
                next += count;
            }
            assert_eq!(next, total);
        }
    }
}
