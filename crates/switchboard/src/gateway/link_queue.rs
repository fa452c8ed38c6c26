//! The queue of frames waiting to be written to one internal link (events to a
//! worker, replies to an API client), bounded in bytes: a peer that does not read
//! cannot make the gateway grow (`gateway.link_queue_limit`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

/// What both ends share: the bytes queued and whether the bound was hit.
struct Bound {
    bytes: AtomicUsize,
    limit: usize,
    over: AtomicBool,
    notify: Notify,
}

/// A new queue holding at most `limit` bytes.
pub fn channel(limit: usize) -> (LinkTx, LinkRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let bound = Arc::new(Bound {
        bytes: AtomicUsize::new(0),
        limit,
        over: AtomicBool::new(false),
        notify: Notify::new(),
    });
    (
        LinkTx {
            tx,
            bound: bound.clone(),
        },
        LinkRx { rx, bound },
    )
}

/// The sending end; cheap to clone.
#[derive(Clone)]
pub struct LinkTx {
    tx: mpsc::UnboundedSender<Bytes>,
    bound: Arc<Bound>,
}

impl LinkTx {
    /// Queues a frame. `false` when the link is gone, or when the frame would take the
    /// queue over its bound: the frame is dropped then, and [`overflowed`](Self::overflowed)
    /// completes so the link task closes the link (whatever was in flight on it is
    /// re-dispatched, so nothing the peer acknowledged is lost).
    pub fn send(&self, frame: Bytes) -> bool {
        let len = frame.len();
        let before = self.bound.bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > self.bound.limit {
            self.bound.bytes.fetch_sub(len, Ordering::AcqRel);
            if !self.bound.over.swap(true, Ordering::AcqRel) {
                self.bound.notify.notify_one();
            }
            return false;
        }
        if self.tx.send(frame).is_err() {
            self.bound.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Completes once a frame has been refused for the bound.
    pub async fn overflowed(&self) {
        if self.bound.over.load(Ordering::Acquire) {
            return;
        }
        // `notify_one` leaves a permit when nobody waits yet: no wake-up is missed.
        self.bound.notify.notified().await;
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> usize {
        self.bound.limit
    }
}

/// The receiving end, read by the link's writer.
pub struct LinkRx {
    rx: mpsc::UnboundedReceiver<Bytes>,
    bound: Arc<Bound>,
}

impl LinkRx {
    /// The next frame; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.recv().await?;
        self.bound.bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Bytes, mpsc::error::TryRecvError> {
        let frame = self.rx.try_recv()?;
        self.bound.bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_over_the_bound_are_refused_and_the_overflow_told() {
        let (tx, mut rx) = channel(10);
        assert!(tx.send(Bytes::from_static(b"123456")));
        assert!(!tx.send(Bytes::from_static(b"123456")), "12 bytes over 10");
        tokio::time::timeout(std::time::Duration::from_secs(1), tx.overflowed())
            .await
            .expect("the overflow is told");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"123456"[..]));
        assert!(
            tx.send(Bytes::from_static(b"1234567890")),
            "room again once read"
        );
        assert_eq!(rx.try_recv().map(|b| b.len()), Ok(10));
        assert!(rx.try_recv().is_err());
        drop(rx);
        assert!(
            !tx.send(Bytes::from_static(b"1")),
            "a closed link takes nothing"
        );
    }
}
