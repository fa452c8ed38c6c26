//! A client's outbound queue: bounded in bytes, written with vectored writes straight
//! from the queued buffers, and holding nothing on the heap while empty.
//!
//! Most clients of a gateway are idle most of the time, so what an empty queue costs is
//! what a gateway costs per client; and a broadcast pushes the same [`Bytes`] (one
//! encoding per protocol) to every recipient, so a queued message is a reference, never
//! a copy. The queue keeps its first message inline (no allocation for a client that
//! has one message waiting, the usual case) and the rest in a `VecDeque` whose buffer
//! is kept while the client is busy and given back by [`Outbound::trim`] once it is
//! idle, so that steady traffic allocates nothing per message.
//!
//! One task owns the connection ([`super::client`]); everything that wants something
//! of it — data to write, a close, a cut-off, room again in its event queue — changes
//! the state here and wakes that task through one [`AtomicWaker`]. Data wakes it only
//! when it finds the queue empty: a queue with something in it is already the task's
//! business (it is writing it, waiting for the socket to take more, or holding it back
//! for `gateway.min_write_interval`), so a backlog of a thousand messages costs one
//! wake-up, not a thousand. And data pushed by a link's reader to a plain TCP client
//! wakes nobody: the reader writes it itself when its batch ends, or hands it to the
//! pacer ([`Outbound::write_now`], [`super::direct`], [`super::pacer`]); the queue
//! keeps the socket's descriptor for that, and when the client was last written to.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU16, AtomicU32, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::task::AtomicWaker;
use tokio::io::AsyncWrite;
use triomphe::Arc;

use super::direct;
use super::pacer::Pacer;
use crate::metrics::gateway::{self as metrics, CloseReason};

/// Buffers gathered into one vectored write.
const MAX_SLICES: usize = 64;

/// Bytes queued for a client that go out at once, whatever `gateway.min_write_interval`
/// says.
pub const FULL_WRITE: usize = 64 << 10;

/// No socket to write to from outside the connection's task.
const NO_FD: RawFd = -1;

/// What became of an [`Outbound::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for writing.
    Queued,
    /// Over the limit: the client has just been cut off as a slow consumer.
    CutOff,
    /// The client is already gone, cut off or closing.
    Gone,
}

/// The client was cut off for not reading: its socket is dropped at once.
const KILLED: u8 = 1;
/// A close was asked for: write what is queued, then close.
const CLOSING: u8 = 1 << 1;
/// With [`CLOSING`]: write the protocol's goodbye (a WebSocket close frame) first.
const GOODBYE: u8 = 1 << 2;
/// With [`GOODBYE`]: the server is going away (WebSocket code 1001, not 1000).
const GOING_AWAY: u8 = 1 << 3;
/// The client's event queue has room again (a reader that stopped may go on).
const DRAINED: u8 = 1 << 4;
/// The connection has ended: nothing is accepted any more.
const ENDED: u8 = 1 << 5;

/// How the connection is to be closed, once a close was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// Write the protocol's goodbye before closing.
    pub goodbye: bool,
    /// The goodbye says the server is going away.
    pub going_away: bool,
}

/// What [`Outbound::poll_write`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing was queued.
    Idle,
    /// Everything queued has been written.
    Drained,
    /// The socket takes no more now; the task is woken when it does.
    Blocked,
}

#[derive(Default)]
struct Queue {
    /// The first message waiting, inline.
    head: Option<Bytes>,
    /// The ones after it (boxed: an idle client pays a pointer for it, not the
    /// `VecDeque`'s four words; the extra allocation happens once per backlog, and
    /// the box is kept while the client is busy).
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
}

/// Where the next message pushed after the head will be stored, as far as the queue
/// can tell: the slot after the last one (wrong only when the buffer wraps around or
/// grows, one push in its capacity), or null without a buffer.
fn next_slot(q: &Queue) -> *mut Bytes {
    q.rest
        .as_deref()
        .and_then(VecDeque::back)
        .map_or(std::ptr::null_mut(), |last| {
            (last as *const Bytes).wrapping_add(1).cast_mut()
        })
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Queues `data`; returns whether the queue was empty before.
    fn push(&mut self, data: Bytes) -> bool {
        if self.head.is_none() {
            self.head = Some(data);
            true
        } else {
            self.rest.get_or_insert_with(Box::default).push_back(data);
            false
        }
    }

    /// The message after the head, moved up.
    fn pop_rest(&mut self) -> Option<Bytes> {
        self.rest.as_mut()?.pop_front()
    }

    /// The messages after the head, in order.
    fn rest_iter(&self) -> impl Iterator<Item = &Bytes> {
        self.rest.iter().flat_map(|r| r.iter())
    }

    /// Fills `slices` with the queued buffers, in order, as many as fit; returns how
    /// many (0: the queue is empty).
    fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let Some(head) = self.head.as_ref() else {
            return 0;
        };
        slices[0] = IoSlice::new(head);
        let mut n = 1;
        for b in self.rest_iter().take(MAX_SLICES - 1) {
            slices[n] = IoSlice::new(b);
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(head) = self.head.as_mut() else {
                return;
            };
            if n < head.len() {
                head.advance(n);
                return;
            }
            n -= head.len();
            self.head = self.pop_rest();
        }
        // Written buffers of length zero (never queued, but harmless) go too.
        while self.head.as_ref().is_some_and(|h| h.is_empty()) {
            self.head = self.pop_rest();
        }
    }
}

struct Inner {
    queue: Mutex<Queue>,
    /// Bytes queued and not yet written (at most the limit: 32 bits, like it).
    pending: AtomicU32,
    /// At most `u32::MAX` (4 GiB): kept in 32 bits, beside the flags, for a smaller
    /// queue per client.
    limit: u32,
    /// The socket that [`Outbound::write_now`] may write to from another task, or
    /// [`NO_FD`]. Set once the connection is up, cleared under the queue's lock before
    /// the socket is closed, and read only under that lock: a write never reaches a
    /// descriptor number that was closed and given to another connection.
    fd: AtomicI32,
    flags: AtomicU8,
    /// Why the server is closing the client (a [`CloseReason`] + 1; 0 for none), for
    /// the disconnect metric.
    closed_for: AtomicU8,
    /// When the client was last written to, with `gateway.min_write_interval` set: in
    /// milliseconds since the gateway's epoch, 16 wrapping bits (room the struct had
    /// spare; only differences within the interval, at most a second, are asked of it,
    /// so a client silent for a multiple of 65.5 s may be held once, at most the
    /// interval).
    last_write: AtomicU16,
    /// The task that owns the connection.
    waker: AtomicWaker,
    /// Where the next push will store its message ([`next_slot`], kept up to date
    /// under the queue's lock): readable without the lock, so that a fan-out can ask
    /// for that memory ahead ([`Outbound::prefetch_slot`]). Only ever an address to
    /// prefetch, never dereferenced. (Paid for by the `Arc` without a weak count:
    /// the queue's allocation is as large as before it.)
    slot_hint: AtomicPtr<Bytes>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Bytes never written leave the gateway-wide queue figure with the client.
        metrics::outbound_written(*self.pending.get_mut() as usize);
    }
}

/// One client's queue, shared by the routing state (which pushes) and the task that
/// owns the connection (which writes). Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("pending", &self.inner.pending.load(Ordering::Relaxed))
            .field("limit", &self.inner.limit)
            .field("flags", &self.inner.flags.load(Ordering::Relaxed))
            .finish()
    }
}

impl Outbound {
    /// An empty queue that accepts at most `limit` bytes waiting to be written (a
    /// limit over 4 GiB is 4 GiB).
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue::default()),
                pending: AtomicU32::new(0),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                fd: AtomicI32::new(NO_FD),
                flags: AtomicU8::new(0),
                closed_for: AtomicU8::new(0),
                last_write: AtomicU16::new(0),
                waker: AtomicWaker::new(),
                slot_hint: AtomicPtr::new(std::ptr::null_mut()),
            }),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Pushes and writes leave the queue consistent at every step: a poisoned lock
        // is still usable.
        self.inner.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flags(&self) -> u8 {
        self.inner.flags.load(Ordering::Acquire)
    }

    /// Sets `bits`; returns the flags as they were.
    fn set(&self, bits: u8) -> u8 {
        let before = self.inner.flags.fetch_or(bits, Ordering::AcqRel);
        self.inner.waker.wake();
        before
    }

    /// Queues bytes. When the client is not reading fast enough to stay under the
    /// limit, it is cut off instead ([`Push::CutOff`], reported once).
    pub fn push(&self, data: Bytes) -> Push {
        if self.flags() & (KILLED | CLOSING | ENDED) != 0 {
            return Push::Gone;
        }
        let len = data.len();
        let limit = self.inner.limit;
        let counted = u32::try_from(len).ok().and_then(|len| {
            self.inner
                .pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                    p.checked_add(len).filter(|n| *n <= limit)
                })
                .ok()
        });
        if counted.is_none() {
            if self.set(KILLED) & KILLED != 0 {
                return Push::Gone;
            }
            return Push::CutOff;
        }
        let was_empty = {
            let mut q = self.queue();
            let was_empty = q.push(data);
            if !was_empty {
                self.inner.slot_hint.store(next_slot(&q), Ordering::Relaxed);
            }
            was_empty
        };
        metrics::outbound_queued(len);
        // A write to come from the routing task ([`direct`]) needs no wake-up.
        if was_empty && !direct::defer(self) {
            self.inner.waker.wake();
        }
        Push::Queued
    }

    /// Queues bytes of the connection's own (a pong, a close answer, a goodbye): only
    /// the connection's task calls it, also while closing, and the limit does not
    /// apply (they are small and answer the client's own frames).
    pub(super) fn push_own(&self, data: Bytes) {
        let len = data.len();
        // Beyond the limit's 32 bits only with a limit near 4 GiB: counted as full.
        let counted = u32::try_from(len).unwrap_or(u32::MAX);
        let _ = self
            .inner
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_add(counted))
            });
        // The connection's own task is the caller: nobody to wake.
        let _ = self.queue().push(data);
        metrics::outbound_queued(len);
    }

    /// Asks for the connection to be closed after what is queued — with the protocol's
    /// goodbye, or without it when what is queued already ends with the protocol's
    /// closing bytes — for `reason`. Returns whether this call started the close.
    pub fn close_with(&self, reason: CloseReason, goodbye: bool) -> bool {
        let _ = self.inner.closed_for.compare_exchange(
            0,
            reason as u8 + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let bits = if goodbye { CLOSING | GOODBYE } else { CLOSING };
        self.set(bits) & (CLOSING | ENDED) == 0
    }

    /// Asks for the connection to be closed after what is queued, with the protocol's
    /// goodbye, remembering why (the heartbeat, a limit) for the disconnect metric.
    /// Returns whether this call started the close (a client already closing is not
    /// closed twice).
    pub fn close_for(&self, reason: CloseReason) -> bool {
        self.close_with(reason, true)
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

    /// Asks for the connection to be closed after what is queued, saying goodbye in
    /// the client's protocol (a WebSocket close frame). Returns whether this call
    /// started the close.
    pub fn close(&self) -> bool {
        self.set(CLOSING | GOODBYE) & (CLOSING | ENDED) == 0
    }

    /// Like [`Outbound::close`], the server going away (the gateway stops).
    pub fn close_going_away(&self) -> bool {
        let _ = self.inner.closed_for.compare_exchange(
            0,
            CloseReason::ServerClose as u8 + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.set(CLOSING | GOODBYE | GOING_AWAY) & (CLOSING | ENDED) == 0
    }

    /// Whether the client has been cut off.
    pub fn is_killed(&self) -> bool {
        self.flags() & KILLED != 0
    }

    /// The close asked for, if any.
    pub fn closing(&self) -> Option<Closing> {
        let f = self.flags();
        (f & CLOSING != 0).then_some(Closing {
            goodbye: f & GOODBYE != 0,
            going_away: f & GOING_AWAY != 0,
        })
    }

    /// Tells the connection's task that the client's event queue has room again.
    pub fn notify_drained(&self) {
        if self.flags() & DRAINED == 0 {
            self.set(DRAINED);
        }
    }

    /// Whether room was signalled since the last call (and forgets it).
    pub(super) fn take_drained(&self) -> bool {
        self.inner.flags.fetch_and(!DRAINED, Ordering::AcqRel) & DRAINED != 0
    }

    /// The connection has ended: later pushes are refused, and nothing is written to
    /// its socket from outside its task any more (call it before the socket closes).
    pub(super) fn end(&self) {
        let _q = self.queue();
        self.inner.fd.store(NO_FD, Ordering::Relaxed);
        self.inner.flags.fetch_or(ENDED, Ordering::AcqRel);
    }

    /// Lets [`Outbound::write_now`] write to `fd`, the connection's plain TCP socket,
    /// from the routing task: the connection's task must call [`Outbound::end`]
    /// before the socket closes.
    pub(super) fn write_directly(&self, fd: RawFd) {
        let _q = self.queue();
        if self.flags() & ENDED == 0 {
            self.inner.fd.store(fd, Ordering::Relaxed);
        }
    }

    /// Whether [`Outbound::write_now`] may write to the client's socket (a hint: it
    /// checks again under the queue's lock).
    pub(super) fn writes_directly(&self) -> bool {
        self.inner.fd.load(Ordering::Relaxed) != NO_FD
    }

    /// Registers the connection's task to be woken by any change.
    pub(super) fn register(&self, cx: &Context<'_>) {
        self.inner.waker.register(cx.waker());
    }

    /// Asks the CPU to start loading the queue's state into its cache (see this
    /// module's `prefetch`).
    #[inline]
    pub fn prefetch(&self) {
        prefetch(&*self.inner);
    }

    /// Asks the CPU to start loading the memory the next push will store its message
    /// in, once the queue's state is in cache ([`Outbound::prefetch`] a little
    /// earlier). A backlogged recipient of a fan-out stores each message in a buffer
    /// slot last touched a round of recipients ago, out of cache by then; storing
    /// there under the queue's lock made the lock's release wait for that miss
    /// (docs/BENCHMARKS.md, *The fan-out's stores*).
    #[inline]
    pub fn prefetch_slot(&self) {
        let slot = self.inner.slot_hint.load(Ordering::Relaxed);
        if !slot.is_null() {
            prefetch_bytes(slot.cast::<u8>(), std::mem::size_of::<Bytes>());
        }
    }

    /// The byte limit.
    pub fn limit(&self) -> usize {
        self.inner.limit as usize
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire) as usize
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// Gives back the buffer of an idle client's queue (kept while the client is busy,
    /// so that steady traffic does not allocate per message).
    pub fn trim(&self) {
        let mut q = self.queue();
        if q.rest.as_ref().is_some_and(|r| r.is_empty()) {
            q.rest = None;
            self.inner
                .slot_hint
                .store(std::ptr::null_mut(), Ordering::Relaxed);
        }
    }

    /// Writes what is queued to `io`, as many buffers at once as the socket takes,
    /// until the queue is empty or the socket blocks (then `cx` is woken when it takes
    /// more). An error is the connection's.
    pub(super) fn poll_write<W: AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> std::io::Result<Written> {
        // The queue is locked while the socket takes the bytes: nothing is copied out
        // of it, and the only other users are pushers, which wait a syscall at most.
        let mut q = self.queue();
        let mut wrote = false;
        loop {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = q.slices(&mut slices);
            if n == 0 {
                return Ok(if wrote {
                    Written::Drained
                } else {
                    Written::Idle
                });
            }
            let written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(w)) => w,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(Written::Blocked),
            };
            wrote = true;
            self.written(&mut q, written);
        }
    }

    /// Writes what is queued straight to the client's socket, from the task that
    /// routed it (see [`direct`]) or from the `pacer` that held it, as far as the
    /// socket takes it without waiting. With a `pacer` (`gateway.min_write_interval`),
    /// a client written to less than the interval ago is held there until the
    /// interval has passed instead (unless [`FULL_WRITE`] bytes wait). The connection's
    /// task is woken for anything else: bytes left over (it waits for the socket to
    /// take them), an error (it closes), a close or a cut-off (it carries them out),
    /// or a socket not open to such writes.
    pub(super) fn write_now(&self, pacer: Option<&Pacer>) {
        let mut q = self.queue();
        let fd = self.inner.fd.load(Ordering::Relaxed);
        let mut done = false;
        if fd != NO_FD && self.flags() & (KILLED | CLOSING | ENDED) == 0 {
            let mut paced_at = None;
            if let Some(pacer) = pacer {
                let queued = self.queued_bytes();
                if queued == 0 {
                    return;
                }
                let now = pacer.now();
                let since = (now as u16).wrapping_sub(self.last_write());
                if queued < FULL_WRITE && since < pacer.interval_ms() {
                    drop(q);
                    let wait = u64::from(pacer.interval_ms() - since);
                    pacer.hold(self.clone(), now + wait);
                    return;
                }
                paced_at = Some(now as u16);
            }
            done = loop {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let n = q.slices(&mut slices);
                if n == 0 {
                    break true;
                }
                match direct::send(fd, &slices[..n]) {
                    Ok(0) => break false,
                    Ok(written) => self.written(&mut q, written),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The socket is full, or failed: the task waits or closes.
                    Err(_) => break false,
                }
            };
            if let Some(at) = paced_at.filter(|_| done) {
                // As the task does: the interval counts from a write that emptied the
                // queue.
                self.wrote_at(at);
            }
        }
        drop(q);
        if !done {
            self.inner.waker.wake();
        }
    }

    /// When the client was last written to (`gateway.min_write_interval`: milliseconds
    /// since the gateway's epoch, 16 wrapping bits).
    pub(super) fn last_write(&self) -> u16 {
        self.inner.last_write.load(Ordering::Relaxed)
    }

    /// Notes a write at `at` (as [`Outbound::last_write`]).
    pub(super) fn wrote_at(&self, at: u16) {
        self.inner.last_write.store(at, Ordering::Relaxed);
    }

    /// Accounts for `n` bytes written from the front of the queue.
    fn written(&self, q: &mut Queue, n: usize) {
        q.advance(n);
        // At most what was queued, which the counter holds in 32 bits.
        self.inner.pending.fetch_sub(n as u32, Ordering::AcqRel);
        metrics::outbound_written(n);
        metrics::bytes_out(n);
    }

    /// Takes the next buffer without writing it (tests).
    #[cfg(test)]
    pub fn try_pop(&self) -> Option<Bytes> {
        let mut q = self.queue();
        let item = q.head.take();
        q.head = q.pop_rest();
        if let Some(b) = &item {
            self.inner
                .pending
                .fetch_sub(b.len() as u32, Ordering::AcqRel);
        }
        item
    }
}

/// Asks the CPU to start loading `value` (its first 128 bytes) into its cache,
/// so that a use of it a little later finds it there. A fan-out visits a queue per
/// recipient, each behind a pointer or two, and would otherwise wait for each one's
/// cache misses in turn (the queue lock's atomic instructions keep them from
/// overlapping): [`super::state`] asks for the recipients a few places ahead. Only a
/// hint; it changes nothing the program sees.
#[inline]
pub fn prefetch<T>(value: &T) {
    prefetch_bytes(
        (value as *const T).cast::<u8>(),
        std::mem::size_of::<T>().min(128),
    );
}

/// Asks the CPU to start loading the cache lines of `len` bytes at `at` (at most the
/// first 128: three lines, as an allocation is seldom aligned to one). `at` is only a
/// hint: it may be stale, freed or anything at all.
#[inline]
fn prefetch_bytes(at: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = at.cast::<i8>();
        let lines = ((at as usize) % 64 + len.clamp(1, 128)).div_ceil(64);
        for line in 0..lines {
            // SAFETY: a prefetch reads nothing the program sees and never faults,
            // whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(64 * line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, len);
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::AtomicUsize;
    // Wakers are made of the standard `Arc`.
    use std::sync::Arc;

    use super::*;

    /// A writer that takes at most `chunk` bytes per call, and nothing once `full`.
    struct Sink {
        got: Vec<u8>,
        chunk: usize,
        full: bool,
        calls: usize,
    }

    impl Sink {
        /// Takes at most `chunk` bytes per call.
        fn new(chunk: usize) -> Self {
            Self {
                got: Vec::new(),
                chunk,
                full: false,
                calls: 0,
            }
        }

        /// Takes nothing until told otherwise.
        fn full(chunk: usize) -> Self {
            Self {
                full: true,
                ..Self::new(chunk)
            }
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            if self.full {
                return Poll::Pending;
            }
            self.calls += 1;
            let mut left = self.chunk;
            for b in bufs {
                let take = b.len().min(left);
                self.got.extend_from_slice(&b[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.chunk - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write_all(out: &Outbound, sink: &mut Sink) -> Written {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        out.poll_write(&mut cx, sink).expect("write")
    }

    /// Every client has one queue, idle or not: its shared part (with the `Arc`'s
    /// count) is a 112-byte chunk of the allocator (136 bytes, a 144-byte chunk,
    /// before the buffer for the messages after the first was boxed and the limit
    /// made 32 bits; the slot hint came with an `Arc` without a weak count).
    #[test]
    fn an_idle_queue_stays_small() {
        let size = std::mem::size_of::<Inner>() + std::mem::size_of::<usize>();
        assert!(size <= 104, "{size} bytes");
    }

    /// The slot hint names the memory the next push stores its message in.
    #[test]
    fn the_slot_hint_is_where_the_next_message_goes() {
        let out = Outbound::new(1 << 20);
        let hint = || out.inner.slot_hint.load(Ordering::Relaxed).cast_const();
        let last = || {
            let q = out.queue();
            let last = q.rest.as_deref().and_then(VecDeque::back);
            last.map_or(std::ptr::null(), |b| b as *const Bytes)
        };
        assert!(hint().is_null(), "no buffer, no hint");
        out.push(Bytes::from_static(b"head"));
        assert!(hint().is_null(), "the head waits inline");
        // The buffer comes with the first message after the head and grows at the
        // fifth (capacity 4, then 8, moved or not as the allocator pleases): every
        // other message lands where the hint said.
        let mut hits = 0;
        for _ in 0..7 {
            let before = hint();
            out.push(Bytes::from_static(b"line\n"));
            hits += usize::from(before == last());
            assert_eq!(hint(), last().wrapping_add(1));
        }
        assert!(hits >= 5, "{hits} pushes of 7 where the hint said");
        // Drained, the buffer is kept, and the next message after the head goes
        // where the hint says.
        let mut sink = Sink::new(1 << 20);
        assert_eq!(write_all(&out, &mut sink), Written::Drained);
        out.push(Bytes::from_static(b"head"));
        let before = hint();
        out.push(Bytes::from_static(b"line\n"));
        assert_eq!(before, last(), "after a drain");
        write_all(&out, &mut sink);
        out.trim();
        assert!(
            hint().is_null(),
            "the buffer given back takes the hint with it"
        );
    }

    #[test]
    fn queued_buffers_go_out_in_order_in_partial_vectored_writes() {
        let out = Outbound::new(1 << 20);
        for part in ["abc", "defgh", "", "ij"] {
            assert_eq!(out.push(Bytes::from(part)), Push::Queued);
        }
        let mut sink = Sink::new(4);
        assert_eq!(write_all(&out, &mut sink), Written::Drained);
        assert_eq!(sink.got, b"abcdefghij");
        assert_eq!(sink.calls, 3, "4 + 4 + 2 bytes, several buffers per write");
        assert!(out.is_empty());
        assert_eq!(out.inner.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_blocked_socket_keeps_the_rest_for_later() {
        let out = Outbound::new(1 << 20);
        out.push(Bytes::from_static(b"hello"));
        let mut sink = Sink::full(2);
        assert_eq!(write_all(&out, &mut sink), Written::Blocked);
        sink.full = false;
        assert_eq!(write_all(&out, &mut sink), Written::Drained);
        assert_eq!(sink.got, b"hello");
    }

    #[test]
    fn the_limit_cuts_off_once_and_a_closing_queue_takes_nothing() {
        let out = Outbound::new(10);
        assert_eq!(out.push("abc".into()), Push::Queued);
        assert_eq!(out.push("12345678901".into()), Push::CutOff);
        assert!(out.is_killed());
        assert_eq!(out.push("x".into()), Push::Gone);

        let out = Outbound::new(10);
        assert!(
            out.close_for(CloseReason::Heartbeat),
            "the first close starts it"
        );
        assert!(!out.close(), "a second one does not");
        assert_eq!(out.closed_for(), Some(CloseReason::Heartbeat));
        assert_eq!(
            out.closing(),
            Some(Closing {
                goodbye: true,
                going_away: false
            })
        );
        assert_eq!(out.push("late".into()), Push::Gone);
        out.push_own("bye".into());
        assert_eq!(out.try_pop().as_deref(), Some(&b"bye"[..]));
    }

    #[test]
    fn an_idle_queue_gives_its_buffer_back_when_trimmed() {
        let out = Outbound::new(1 << 20);
        for _ in 0..10 {
            out.push(Bytes::from_static(b"x"));
        }
        let mut sink = Sink::new(1 << 20);
        write_all(&out, &mut sink);
        assert!(
            out.queue().rest.as_ref().is_some_and(|r| r.capacity() > 0),
            "kept while busy"
        );
        out.trim();
        assert!(out.queue().rest.is_none());
    }

    #[test]
    fn room_again_is_signalled_once() {
        let out = Outbound::new(10);
        assert!(!out.take_drained());
        out.notify_drained();
        out.notify_drained();
        assert!(out.take_drained());
        assert!(!out.take_drained());
    }

    /// A waker that counts its wake-ups.
    /// A task's waker that counts its wake-ups.
    #[derive(Default)]
    pub(in crate::gateway) struct CountingWaker(pub(in crate::gateway) AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn data_wakes_the_task_only_when_the_queue_was_empty() {
        let out = Outbound::new(1 << 20);
        let count = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        out.register(&Context::from_waker(&waker));
        for _ in 0..1000 {
            assert_eq!(out.push(Bytes::from_static(b"line\n")), Push::Queued);
            // The task polled meanwhile (say its socket is full, or it holds the
            // queue back for `min_write_interval`) and registered again.
            out.register(&Context::from_waker(&waker));
        }
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "a backlog is one wake-up"
        );
        let mut sink = Sink::new(1 << 20);
        assert_eq!(write_all(&out, &mut sink), Written::Drained);
        assert_eq!(write_all(&out, &mut sink), Written::Idle);
        out.register(&Context::from_waker(&waker));
        out.push(Bytes::from_static(b"again\n"));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            2,
            "written out, then data again"
        );
        // What is not data still wakes the task at once.
        out.register(&Context::from_waker(&waker));
        out.close();
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
    }
}
