//! `gateway.min_write_interval` for the clients written from the routing task: what is
//! held back waits here, and one task writes it when it is due.
//!
//! With the interval set, each connection's task used to hold its own queue back with
//! its own timer. A broadcast wrote to every recipient at the same moment, so their
//! timers fired together, and each tick of the pace woke every recipient's task: on a
//! runtime with a thread per core, a thousand tasks queued on the thread that fired
//! the timers and the other thread unparked to steal some (BENCHMARKS, *Runtime shape
//! after the prefetch*: a quarter of the gateway in the scheduler). Now a client that
//! the routing task writes to ([`super::direct`]) and that was written to less than
//! the interval ago is held here, keyed by when it is due; one task sleeps until the
//! earliest, then writes every client due — one wake-up per tick, whatever the number
//! of recipients. A connection's task still paces what it writes itself (TLS clients,
//! and whatever it finds queued when woken for something else).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::outbound::Outbound;

/// Clients held until they are due, and the task that writes them.
pub struct Pacer {
    /// `gateway.min_write_interval`, in milliseconds (at most 1,000).
    interval: u16,
    /// What the times count from.
    epoch: Instant,
    held: Mutex<Held>,
    /// Wakes the task for a client due before what it sleeps until.
    earlier: Notify,
}

#[derive(Default)]
struct Held {
    /// Clients by the millisecond (since the epoch) they are due at.
    due: BTreeMap<u64, Vec<Outbound>>,
    /// What the task sleeps until, if it sleeps on a deadline.
    armed: Option<u64>,
}

impl Pacer {
    /// A pacer for `interval` (from 1 ms to 1 s, as the configuration allows; longer is
    /// taken as 1 s) counting from `epoch`.
    pub fn new(interval: Duration, epoch: Instant) -> Self {
        let ms = interval.as_millis().clamp(1, 1000) as u16;
        Self {
            interval: ms,
            epoch,
            held: Mutex::new(Held::default()),
            earlier: Notify::new(),
        }
    }

    /// The interval, in milliseconds.
    pub fn interval_ms(&self) -> u16 {
        self.interval
    }

    /// Milliseconds since the epoch.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // Every change leaves the map whole: a poisoned lock is still usable.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `out` until `due` (milliseconds since the epoch), when the task writes it.
    pub fn hold(&self, out: Outbound, due: u64) {
        let mut held = self.held();
        held.due.entry(due).or_default().push(out);
        if held.armed.is_none_or(|armed| due < armed) {
            held.armed = Some(due);
            drop(held);
            self.earlier.notify_one();
        }
    }

    /// Clients held now (tests).
    #[cfg(test)]
    pub fn held_count(&self) -> usize {
        self.held().due.values().map(Vec::len).sum()
    }

    /// Writes every held client when it is due, until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let mut due = Vec::new();
        loop {
            let next = {
                let mut held = self.held();
                held.armed = held.due.keys().next().copied();
                held.armed
            };
            let deadline = next.map(|ms| self.epoch + Duration::from_millis(ms));
            tokio::select! {
                _ = stop.cancelled() => return,
                // Something is due sooner: sleep again.
                _ = self.earlier.notified() => continue,
                _ = sleep_until(deadline) => {}
            }
            let now = self.now();
            {
                let mut held = self.held();
                let later = held.due.split_off(&(now + 1));
                for (_, clients) in std::mem::replace(&mut held.due, later) {
                    due.extend(clients);
                }
            }
            // Last held first: a fan-out running meanwhile on another thread pushes to
            // the clients in the order they were held, and walking the same order
            // would meet it at every client's lock (each push waiting out a write).
            for out in due.drain(..).rev() {
                out.write_now(Some(self));
            }
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Waker};

    use bytes::Bytes;

    use super::*;
    use crate::gateway::direct::tests::{client, read_now, woken};
    use crate::gateway::direct::Batch;
    use crate::gateway::outbound::{Push, FULL_WRITE};

    const INTERVAL: Duration = Duration::from_millis(20);

    /// A pacer of [`INTERVAL`] and its task.
    fn pacer() -> (Arc<Pacer>, CancellationToken) {
        let pacer = Arc::new(Pacer::new(INTERVAL, Instant::now()));
        let stop = CancellationToken::new();
        let (p, s) = (pacer.clone(), stop.clone());
        tokio::spawn(async move { p.run(s).await });
        (pacer, stop)
    }

    /// Routes `lines` to `out` in one batch.
    fn route(pacer: &Pacer, out: &Outbound, lines: &[&'static str]) {
        let _batch = Batch::open(Some(pacer)).expect("batch");
        for line in lines {
            assert_eq!(out.push(Bytes::from_static(line.as_bytes())), Push::Queued);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_written_to_within_the_interval_is_held_then_written_by_the_pacer() {
        let (pacer, stop) = pacer();
        let (out, wakes, _ours, mut theirs) = client(1 << 20);
        // Never written to (as a new connection starts).
        out.wrote_at((pacer.now() as u16).wrapping_sub(pacer.interval_ms()));

        route(&pacer, &out, &["one\n"]);
        assert_eq!(
            read_now(&mut theirs),
            b"one\n",
            "not written within the interval: at once"
        );

        tokio::time::sleep(Duration::from_millis(5)).await;
        route(&pacer, &out, &["two\n"]);
        route(&pacer, &out, &["three\n"]);
        assert!(read_now(&mut theirs).is_empty(), "held");
        assert_eq!(
            pacer.held_count(),
            1,
            "held once, whatever was queued after"
        );

        // Due 20 ms after the first write: not at 19 (the checks stay a millisecond
        // away from the pacer's deadline, which a paused clock reaches at once).
        tokio::time::sleep(Duration::from_millis(14)).await;
        assert!(read_now(&mut theirs).is_empty(), "held for the interval");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            read_now(&mut theirs),
            b"two\nthree\n",
            "in one write when due"
        );
        assert_eq!(pacer.held_count(), 0);
        assert_eq!(woken(&wakes), 0, "the connection's task never ran");

        // The interval counts from that write (at 20 ms; now 21).
        route(&pacer, &out, &["four\n"]);
        tokio::time::sleep(Duration::from_millis(18)).await;
        assert!(read_now(&mut theirs).is_empty());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(read_now(&mut theirs), b"four\n");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_write_or_a_close_is_not_held() {
        let (pacer, stop) = pacer();
        let (out, wakes, _ours, mut theirs) = client(1 << 20);
        out.wrote_at(pacer.now() as u16);
        let big = Bytes::from(vec![b'x'; FULL_WRITE]);
        {
            let _batch = Batch::open(Some(&pacer)).expect("batch");
            assert_eq!(out.push(big), Push::Queued);
        }
        assert_eq!(pacer.held_count(), 0);
        let mut got = read_now(&mut theirs);
        // What the socket pair did not take at once is the task's, woken for it.
        if got.len() < FULL_WRITE {
            assert_eq!(woken(&wakes), 1);
            while out.queued_bytes() > 0 {
                out.write_now(None);
                got.extend(read_now(&mut theirs));
            }
        }
        assert_eq!(got.len(), FULL_WRITE);

        // Held, then closed before it is due: the task writes it with the goodbye, and
        // the pacer leaves it alone.
        let (out, wakes, _ours, mut theirs) = client(1 << 20);
        out.wrote_at(pacer.now() as u16);
        route(&pacer, &out, &["last\n"]);
        assert_eq!(pacer.held_count(), 1);
        assert!(out.close());
        // The close woke the task, which polled and registered again.
        let before = woken(&wakes);
        out.register(&Context::from_waker(&Waker::from(wakes.clone())));
        tokio::time::sleep(INTERVAL * 2).await;
        assert_eq!(pacer.held_count(), 0);
        assert!(read_now(&mut theirs).is_empty());
        assert_eq!(out.queued_bytes(), 5, "left for the task");
        assert_eq!(woken(&wakes), before + 1, "the pacer wakes the task");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn one_tick_writes_every_client_due_and_a_sooner_one_wakes_the_pacer() {
        let (pacer, stop) = pacer();
        let clients: Vec<_> = (0..300).map(|_| client(1 << 20)).collect();
        let now = pacer.now() as u16;
        // One client was written 15 ms ago, the rest just now.
        for (i, (out, ..)) in clients.iter().enumerate() {
            out.wrote_at(if i == 0 { now.wrapping_sub(15) } else { now });
        }
        {
            let _batch = Batch::open(Some(&pacer)).expect("batch");
            for (out, ..) in clients.iter().rev() {
                assert_eq!(out.push(Bytes::from_static(b"x")), Push::Queued);
            }
        }
        assert_eq!(pacer.held_count(), 300, "a paced batch notes every client");
        tokio::time::sleep(Duration::from_millis(6)).await;
        assert_eq!(pacer.held_count(), 299, "the one due sooner went at 5 ms");
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert_eq!(pacer.held_count(), 0);
        for (_, wakes, _ours, mut theirs) in clients {
            assert_eq!(read_now(&mut theirs), b"x");
            assert_eq!(woken(&wakes), 0);
        }
        stop.cancel();
    }
}
