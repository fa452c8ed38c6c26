//! Writes to clients from the task that routed the messages, without waking the
//! clients' own tasks.
//!
//! A message from a worker to a client used to wake the client's task, which then
//! wrote it: on a runtime with a thread per core the woken task is often queued on
//! the other thread, and waking a parked thread costs a `futex`, an `eventfd` write
//! and two context switches — more than the write itself (docs/BENCHMARKS.md,
//! *Writes from the routing task*). A link's reader now handles the frames it has
//! buffered inside a [`Batch`]: a push that finds a plain TCP client's queue empty
//! notes the client in the batch instead of waking its task, and when the batch ends
//! (the frames read so far are routed, the state's lock is released) each noted
//! client's queue is written to its socket there and then ([`Outbound::write_now`]),
//! everything queued for it in the batch in one vectored write. The client's task is
//! woken only for what a write cannot finish: a socket that takes no more (it waits
//! for room), an error, a close.
//!
//! Not for TLS clients (the session's state belongs to the task). With
//! `gateway.min_write_interval` set, a noted client written to less than the interval
//! ago is handed to the gateway's [`Pacer`] instead, which writes it when it is due.
//! An unpaced batch notes at most [`MAX_NOTED`] clients: a fan-out to many more wakes
//! the rest as before, so that a large broadcast is still written by every thread of
//! the runtime.

use std::cell::RefCell;
use std::io::IoSlice;
use std::marker::PhantomData;
use std::os::fd::RawFd;

use super::outbound::Outbound;
use super::pacer::Pacer;

/// Clients one batch writes to itself; a push beyond them wakes the client's task.
pub const MAX_NOTED: usize = 128;

#[derive(Default)]
struct Noted {
    /// A batch is open on this thread.
    open: bool,
    /// Its clients are paced (`gateway.min_write_interval`): most are only handed to
    /// the pacer, so there is no bound on how many it notes.
    paced: bool,
    /// Clients to write to when it ends (the vector is kept for the next batch).
    clients: Vec<Outbound>,
}

thread_local! {
    static NOTED: RefCell<Noted> = RefCell::new(Noted::default());
}

/// While alive, pushes on this thread that find a direct-write client's queue empty
/// note the client instead of waking its task; dropping it writes to each noted
/// client. Not `Send`: a batch never spans an `.await`, so it ends on the thread that
/// opened it.
pub struct Batch<'a> {
    /// The gateway's pacer, with `gateway.min_write_interval` set.
    pacer: Option<&'a Pacer>,
    _one_thread: PhantomData<*const ()>,
}

impl<'a> Batch<'a> {
    /// Opens a batch on this thread; `None` when one is open already (the outer one
    /// writes). With a `pacer`, a client written to less than the interval ago is
    /// handed to it instead of written.
    pub fn open(pacer: Option<&'a Pacer>) -> Option<Self> {
        NOTED.with(|n| {
            let mut n = n.borrow_mut();
            if n.open {
                return None;
            }
            n.open = true;
            n.paced = pacer.is_some();
            Some(Self {
                pacer,
                _one_thread: PhantomData,
            })
        })
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let mut clients = NOTED.with(|n| {
            let mut n = n.borrow_mut();
            n.open = false;
            std::mem::take(&mut n.clients)
        });
        // Written with the batch closed: nothing written here is noted again.
        for out in clients.drain(..) {
            out.write_now(self.pacer);
        }
        NOTED.with(|n| {
            let mut n = n.borrow_mut();
            if n.clients.capacity() == 0 {
                n.clients = clients;
            }
        });
    }
}

/// Notes `out` (whose queue was empty before a push) for the open batch to write;
/// false when no batch is open, the client is not written to this way, or the batch
/// is full — then the caller wakes the client's task.
pub fn defer(out: &Outbound) -> bool {
    if !out.writes_directly() {
        return false;
    }
    NOTED.with(|n| {
        let Ok(mut n) = n.try_borrow_mut() else {
            return false;
        };
        if !n.open || (!n.paced && n.clients.len() >= MAX_NOTED) {
            return false;
        }
        n.clients.push(out.clone());
        true
    })
}

/// One vectored write to a connected, non-blocking socket, without `SIGPIPE` for a
/// peer that has gone: the bytes written, or the error (`WouldBlock` when the socket
/// takes no more now).
pub fn send(fd: RawFd, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
    // SAFETY: an all-zero `msghdr` is a valid one (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (its documented guarantee);
    // the kernel only reads through the pointer.
    msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = slices.len() as _;
    // SAFETY: `msg` points at `slices`, alive for the call; `fd` is the caller's open
    // socket (see `Outbound::write_now`).
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::{ErrorKind, Read};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Context, Waker};

    use bytes::Bytes;

    use super::*;
    use crate::gateway::outbound::tests::CountingWaker;
    use crate::gateway::outbound::Push;

    /// A queue whose task is a counter, writing directly to one end of a socket pair
    /// (both ends non-blocking); the other end is the client.
    pub(in crate::gateway) fn client(
        limit: usize,
    ) -> (Outbound, Arc<CountingWaker>, UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        theirs.set_nonblocking(true).expect("non-blocking");
        let out = Outbound::new(limit);
        out.write_directly(ours.as_raw_fd());
        let wakes = Arc::new(CountingWaker::default());
        let waker = Waker::from(wakes.clone());
        out.register(&Context::from_waker(&waker));
        (out, wakes, ours, theirs)
    }

    pub(in crate::gateway) fn woken(w: &CountingWaker) -> usize {
        w.0.load(Ordering::SeqCst)
    }

    /// Everything the client can read now.
    pub(in crate::gateway) fn read_now(s: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    #[test]
    fn a_batch_writes_what_it_routed_when_it_ends_without_waking_the_task() {
        let (out, wakes, _ours, mut theirs) = client(1 << 20);
        {
            let _batch = Batch::open(None).expect("no batch open yet");
            assert!(Batch::open(None).is_none(), "one batch per thread");
            assert_eq!(out.push(Bytes::from_static(b"hello")), Push::Queued);
            assert_eq!(out.push(Bytes::from_static(b" world")), Push::Queued);
            assert!(
                read_now(&mut theirs).is_empty(),
                "written when the batch ends"
            );
        }
        assert_eq!(read_now(&mut theirs), b"hello world");
        assert_eq!(out.queued_bytes(), 0);
        assert_eq!(woken(&wakes), 0, "the task had nothing to do");
        // A batch is open again on this thread afterwards.
        assert!(Batch::open(None).is_some());
    }

    #[test]
    fn without_a_batch_or_a_socket_the_task_is_woken_to_write() {
        let (out, wakes, _ours, mut theirs) = client(1 << 20);
        assert_eq!(out.push(Bytes::from_static(b"a")), Push::Queued);
        assert_eq!(woken(&wakes), 1);
        assert!(read_now(&mut theirs).is_empty(), "the task writes it");

        // TLS, or pacing: no socket given.
        let plain = Outbound::new(1 << 20);
        let counted = Arc::new(CountingWaker::default());
        plain.register(&Context::from_waker(&Waker::from(counted.clone())));
        {
            let _batch = Batch::open(None).expect("batch");
            assert_eq!(plain.push(Bytes::from_static(b"b")), Push::Queued);
        }
        assert_eq!(woken(&counted), 1);
        assert_eq!(plain.queued_bytes(), 1);
    }

    #[test]
    fn a_socket_that_takes_no_more_leaves_the_rest_to_the_task_in_order() {
        let (out, wakes, _ours, mut theirs) = client(8 << 20);
        let chunk = |i: u8| Bytes::from(vec![i; 4096]);
        {
            let _batch = Batch::open(None).expect("batch");
            for i in 0..=255u8 {
                assert_eq!(out.push(chunk(i)), Push::Queued);
            }
        }
        let left = out.queued_bytes();
        assert!(left > 0, "a socket pair does not take 1 MiB at once");
        assert_eq!(woken(&wakes), 1, "the task is woken to wait for room");
        // The client reads; what is left goes out (here by another direct write, as
        // the task's own write would do), in order, nothing twice.
        let mut got = read_now(&mut theirs);
        while out.queued_bytes() > 0 {
            out.write_now(None);
            got.extend(read_now(&mut theirs));
        }
        assert_eq!(got.len(), 256 * 4096);
        for (i, block) in got.chunks(4096).enumerate() {
            assert!(
                block.iter().all(|b| *b == i as u8),
                "block {i} out of order"
            );
        }
    }

    #[test]
    fn an_ended_or_closing_connection_is_not_written_to() {
        // Ended between the push and the batch's end: its socket may be closed and
        // its number given to another connection.
        let (out, wakes, _ours, mut theirs) = client(1 << 20);
        {
            let _batch = Batch::open(None).expect("batch");
            assert_eq!(out.push(Bytes::from_static(b"late")), Push::Queued);
            out.end();
        }
        assert!(read_now(&mut theirs).is_empty());
        assert!(!out.writes_directly());
        assert_eq!(woken(&wakes), 1);

        // Closing: the task writes the rest and the goodbye.
        let (out, wakes, _ours, mut theirs) = client(1 << 20);
        {
            let _batch = Batch::open(None).expect("batch");
            assert_eq!(out.push(Bytes::from_static(b"last")), Push::Queued);
            assert!(out.close());
        }
        assert!(read_now(&mut theirs).is_empty());
        assert_eq!(out.queued_bytes(), 4);
        assert!(woken(&wakes) >= 1);
    }

    #[test]
    fn a_batch_writes_to_a_bounded_number_of_clients_and_wakes_the_rest() {
        let clients: Vec<_> = (0..MAX_NOTED + 2).map(|_| client(1 << 20)).collect();
        {
            let _batch = Batch::open(None).expect("batch");
            for (out, ..) in &clients {
                assert_eq!(out.push(Bytes::from_static(b"x")), Push::Queued);
            }
        }
        let woken: Vec<usize> = clients.iter().map(|(_, w, ..)| woken(w)).collect();
        assert!(woken[..MAX_NOTED].iter().all(|w| *w == 0));
        assert_eq!(woken[MAX_NOTED..], [1, 1]);
        for (out, _, _, mut theirs) in clients.into_iter().take(MAX_NOTED) {
            assert_eq!(read_now(&mut theirs), b"x");
            assert_eq!(out.queued_bytes(), 0);
        }
    }

    #[test]
    fn a_client_gone_is_left_to_its_task() {
        let (out, wakes, _ours, theirs) = client(1 << 20);
        drop(theirs);
        {
            let _batch = Batch::open(None).expect("batch");
            assert_eq!(out.push(Bytes::from_static(b"x")), Push::Queued);
        }
        // No SIGPIPE (the test process would die), the bytes stay for the task, which
        // finds the error and closes.
        assert_eq!(out.queued_bytes(), 1);
        assert_eq!(woken(&wakes), 1);
    }
}
