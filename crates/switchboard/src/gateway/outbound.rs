//! A client's outbound queue: bounded in bytes, and free of allocations while empty.
//!
//! Most clients of a gateway are idle most of the time, so what an empty queue costs is
//! what a gateway costs per client. A `VecDeque` behind a mutex with a `Notify` for the
//! single writer holds nothing on the heap when empty (the writer releases the deque's
//! buffer whenever it drains it), where a channel keeps its first block allocated.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::metrics::gateway::{self as metrics, CloseReason};

/// What a client's writer takes from the queue.
#[derive(Debug)]
pub enum Outgoing {
    /// Bytes already in the client's wire format.
    Data(Bytes),
    /// Write everything before this, then close the connection; with `goodbye`, the
    /// protocol's own closing bytes first (a WebSocket close frame).
    Close {
        /// Whether to write the protocol's goodbye (not when a close frame was already
        /// queued, as after a protocol error or the client's own close).
        goodbye: bool,
    },
}

/// What the writer is to do after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterBatch {
    /// Keep going.
    Continue,
    /// Close the connection (after the protocol's goodbye, if `goodbye`).
    Close {
        /// See [`Outgoing::Close`].
        goodbye: bool,
    },
}

/// What became of an [`Outbound::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for writing.
    Queued,
    /// Over the limit: the client has just been cut off as a slow consumer.
    CutOff,
    /// The client is already gone or cut off.
    Gone,
}

struct Inner {
    items: Mutex<VecDeque<Outgoing>>,
    /// Bytes queued and not yet taken by the writer.
    pending: AtomicUsize,
    limit: usize,
    /// Wakes the writer; `notify_one` keeps a permit, so no wake-up is ever lost.
    notify: Notify,
    /// Set to cut the client off (slow consumer); `kill_notify` wakes the reader.
    killed: AtomicBool,
    kill_notify: Notify,
    /// Wakes a reader that stopped reading because the client's event queue was full.
    /// Kept here (one allocation per client for all three) rather than in its own `Arc`.
    drained: Notify,
    /// Why the server is closing the client (a [`CloseReason`] + 1; 0 for none), for
    /// the disconnect metric: the reader only sees the writer end.
    closed_for: AtomicU8,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Bytes never written leave the gateway-wide queue figure with the client.
        metrics::outbound_written(*self.pending.get_mut());
    }
}

/// Both ends of one client's queue (cheap to clone).
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("pending", &self.inner.pending.load(Ordering::Relaxed))
            .field("limit", &self.inner.limit)
            .finish()
    }
}

impl Outbound {
    /// An empty queue that accepts at most `limit` bytes waiting to be written.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                items: Mutex::new(VecDeque::new()),
                pending: AtomicUsize::new(0),
                limit,
                notify: Notify::new(),
                killed: AtomicBool::new(false),
                kill_notify: Notify::new(),
                drained: Notify::new(),
                closed_for: AtomicU8::new(0),
            }),
        }
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<Outgoing>> {
        // Pushes and pops are single deque operations: a poisoned lock is consistent.
        self.inner.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues bytes. When the client is not reading fast enough to stay under the
    /// limit, it is cut off instead ([`Push::CutOff`], reported once).
    pub fn push(&self, data: Bytes) -> Push {
        if self.is_killed() {
            return Push::Gone;
        }
        let len = data.len();
        let pending = self.inner.pending.fetch_add(len, Ordering::AcqRel) + len;
        if pending > self.inner.limit {
            self.inner.pending.fetch_sub(len, Ordering::AcqRel);
            if self.inner.killed.swap(true, Ordering::AcqRel) {
                return Push::Gone;
            }
            self.inner.kill_notify.notify_one();
            return Push::CutOff;
        }
        self.items().push_back(Outgoing::Data(data));
        self.inner.notify.notify_one();
        metrics::outbound_queued(len);
        Push::Queued
    }

    /// Like [`Outbound::close`], remembering why (the heartbeat, a limit) for the
    /// disconnect metric.
    pub fn close_for(&self, reason: CloseReason) {
        let _ = self.inner.closed_for.compare_exchange(
            0,
            reason as u8 + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.close();
    }

    /// Why the server closed the client, if it said ([`Outbound::close_for`]).
    pub fn closed_for(&self) -> Option<CloseReason> {
        CloseReason::from_index(
            self.inner
                .closed_for
                .load(Ordering::Acquire)
                .checked_sub(1)?,
        )
    }

    /// Asks the writer to close the connection after what is queued, saying goodbye
    /// in the client's protocol (a WebSocket close frame).
    pub fn close(&self) {
        self.items().push_back(Outgoing::Close { goodbye: true });
        self.inner.notify.notify_one();
    }

    /// Asks the writer to close the connection after what is queued, which already
    /// ends with the protocol's closing bytes.
    pub fn close_quietly(&self) {
        self.items().push_back(Outgoing::Close { goodbye: false });
        self.inner.notify.notify_one();
    }

    /// Whether the client has been cut off.
    pub fn is_killed(&self) -> bool {
        self.inner.killed.load(Ordering::Acquire)
    }

    /// Completes when the client is cut off. One task (the client's reader) waits.
    pub async fn killed(&self) {
        while !self.is_killed() {
            self.inner.kill_notify.notified().await;
        }
    }

    /// Tells the reader that the client's event queue has room again.
    pub fn notify_drained(&self) {
        self.inner.drained.notify_one();
    }

    /// Completes after the next [`Outbound::notify_drained`] (or at once if one came
    /// since the last wait).
    pub async fn drained(&self) {
        self.inner.drained.notified().await
    }

    /// The byte limit.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Writer side: waits for data, then moves up to about `max` bytes into `buf`, and
    /// says whether a close was asked for after those bytes.
    pub async fn next_batch(&self, buf: &mut BytesMut, max: usize) -> AfterBatch {
        loop {
            {
                let mut items = self.items();
                let mut after = AfterBatch::Continue;
                while buf.len() < max {
                    match items.pop_front() {
                        Some(Outgoing::Data(b)) => {
                            self.inner.pending.fetch_sub(b.len(), Ordering::AcqRel);
                            metrics::outbound_written(b.len());
                            buf.extend_from_slice(&b);
                        }
                        Some(Outgoing::Close { goodbye }) => {
                            after = AfterBatch::Close { goodbye };
                            break;
                        }
                        None => break,
                    }
                }
                if items.is_empty() && items.capacity() > 0 {
                    *items = VecDeque::new();
                }
                if after != AfterBatch::Continue || !buf.is_empty() {
                    return after;
                }
            }
            self.inner.notify.notified().await;
        }
    }

    /// Takes the next item without waiting (tests).
    #[cfg(test)]
    pub fn try_pop(&self) -> Option<Outgoing> {
        let item = self.items().pop_front();
        if let Some(Outgoing::Data(b)) = &item {
            self.inner.pending.fetch_sub(b.len(), Ordering::AcqRel);
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_close_and_limit() {
        let out = Outbound::new(10);
        assert_eq!(out.push("abc".into()), Push::Queued);
        assert_eq!(out.push("def".into()), Push::Queued);
        out.close();
        let mut buf = BytesMut::new();
        assert_eq!(
            out.next_batch(&mut buf, 1024).await,
            AfterBatch::Close { goodbye: true }
        );
        assert_eq!(&buf[..], b"abcdef");
        // Over the limit: cut off once, gone after.
        assert_eq!(out.push("12345678901".into()), Push::CutOff);
        assert!(out.is_killed());
        assert_eq!(out.push("x".into()), Push::Gone);
    }

    #[tokio::test]
    async fn the_writer_wakes_for_data_pushed_later() {
        let out = Outbound::new(1 << 20);
        let writer = out.clone();
        let task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let close = writer.next_batch(&mut buf, 1024).await;
            (close, buf)
        });
        tokio::task::yield_now().await;
        out.push("late".into());
        let (close, buf) = task.await.unwrap();
        assert_eq!(close, AfterBatch::Continue);
        assert_eq!(&buf[..], b"late");
    }
}
