//! The floor servers `--floor` starts: the telnet chat's login, private and public
//! lines, on one thread each, straight on epoll (mio) — no routing state, no async
//! runtime, no statistics, no sessions.
//!
//! - `--floor alone`: one process reads a line, answers it and writes the answers —
//!   what the socket calls of a private message (one read from the sender, a write to
//!   the recipient, a write of the echo to the sender) and the wake-ups they cause cost
//!   on this machine: the floor under any server of this protocol with a socket per
//!   client on this kernel, whatever it is written in.
//! - `--floor split`: the same, split as Switchboard is: a gateway process holds the
//!   clients and forwards each line over one TCP link to a worker process, which
//!   answers with commands ("send these bytes to that client", "… to everybody");
//!   both sides write everything a round of events produced in one write. The floor
//!   under any gateway and worker pair of this shape.
//!
//! `bench private|broadcast --floor …` reports the gateway process's CPU as the
//! gateway's and the worker's as the workers'; `bench connect --floor …` its connects
//! per second and its memory per idle client (its socket and a slot of a few dozen
//! bytes). With `SWITCHBOARD__GATEWAY__MIN_WRITE_INTERVAL` set (as for the chat), what
//! is sent to a client waits, and the clients with something waiting are written
//! together once an interval — a simpler pacer than the gateway's, which writes a
//! client not written to lately at once.
//!
//! Not servers to use: ids are slot numbers, everybody logged in is in one room, and the
//! only limits keep them bounded (a line of at most [`MAX_LINE`] bytes and at most
//! [`MAX_PENDING`] bytes waiting to be written per client).

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// The listener's token.
const LISTENER: Token = Token(0);
/// The link's token (split); a client's is its slot + [`FIRST_CLIENT`].
const LINK: Token = Token(1);
/// The first client's token.
const FIRST_CLIENT: usize = 2;
/// The longest line a client may send; a longer one closes it.
pub const MAX_LINE: usize = 64 * 1024;
/// Bytes that may wait for a client that does not read; more close it.
pub const MAX_PENDING: usize = 1 << 20;
/// Bytes that may wait on the link; more end the server (its peer is stuck).
const MAX_LINK_PENDING: usize = 256 << 20;

/// The two shapes of the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// One process: reads, answers, writes.
    Alone,
    /// A gateway process and a worker process on one TCP link.
    Split,
}

/// Link frame kinds: events (gateway to worker), then commands (worker to gateway):
/// send to a client, make a client a member of the room (it gets the public lines), send
/// to every member.
const CONNECT: u8 = 1;
const MESSAGE: u8 = 2;
const CLOSE: u8 = 3;
const SEND: u8 = 4;
const JOIN: u8 = 5;
const TO_ALL: u8 = 6;
/// A frame's header: the length of what follows it (u32 LE: kind, slot, payload), the
/// kind (u8), the client's slot (u32 LE).
const HEADER: usize = 9;

/// Appends one link frame to `out`.
fn frame(out: &mut Vec<u8>, kind: u8, slot: usize, payload: &[u8]) {
    let len = (5 + payload.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(slot as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A link frame: its kind, the client's slot, the payload.
type Frame<'a> = (u8, usize, &'a [u8]);

/// The whole frames at the front of `buf` and the bytes they take; an error for a frame
/// too large to be one of ours.
fn frames(buf: &[u8]) -> anyhow::Result<(Vec<Frame<'_>>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER {
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if !(5..=MAX_LINE + 4096).contains(&len) {
            bail!("a link frame of {len} bytes");
        }
        if buf.len() - at < 4 + len {
            break;
        }
        let kind = buf[at + 4];
        let slot = u32::from_le_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]);
        out.push((kind, slot as usize, &buf[at + HEADER..at + 4 + len]));
        at += 4 + len;
    }
    Ok((out, at))
}

/// A client's id as the chat shows it: 20 hex digits (its slot).
fn id_of(slot: usize) -> String {
    format!("{slot:020x}")
}

/// The slot of an id written by [`id_of`].
fn slot_of(id: &str) -> Option<usize> {
    (id.len() == 20)
        .then(|| usize::from_str_radix(id, 16).ok())
        .flatten()
}

/// Where the chat's answers go: the clients themselves (one process) or the link (the
/// split floor's worker).
trait Out {
    /// Sends `bytes` to the client in `slot`.
    fn send(&mut self, slot: usize, bytes: &[u8]);
    /// The client in `slot` logged in: it gets the public lines from now on.
    fn join(&mut self, slot: usize);
    /// Sends `bytes` to every client logged in.
    fn to_all(&mut self, bytes: &[u8]);
}

/// The split floor worker's answers: commands on the link.
struct Commands<'a>(&'a mut Vec<u8>);

impl Out for Commands<'_> {
    fn send(&mut self, slot: usize, bytes: &[u8]) {
        frame(self.0, SEND, slot, bytes);
    }
    fn join(&mut self, slot: usize) {
        frame(self.0, JOIN, slot, b"");
    }
    fn to_all(&mut self, bytes: &[u8]) {
        frame(self.0, TO_ALL, 0, bytes);
    }
}

/// The chat's part: names by slot, and what to send whom for a connect or a line.
#[derive(Default)]
struct Chat {
    names: Vec<Option<String>>,
}

impl Chat {
    /// A new client: the name prompt.
    fn connect(&mut self, slot: usize, out: &mut impl Out) {
        self.close(slot);
        out.send(slot, format!("{}\n", crate::client::PROMPT).as_bytes());
    }

    /// A client gone.
    fn close(&mut self, slot: usize) {
        if let Some(name) = self.names.get_mut(slot) {
            *name = None;
        }
    }

    /// Answers one line from the client in `slot`, as the telnet chat does: the first
    /// is its name, `ID:words` goes to that client only, anything else to everybody.
    fn line(&mut self, slot: usize, line: &[u8], out: &mut impl Out) {
        let text = String::from_utf8_lossy(line);
        let me = id_of(slot);
        let Some(Some(name)) = self.names.get(slot) else {
            let name = text.trim().to_string();
            out.send(
                slot,
                format!(
                    "Hello {name}[{me}]! Your client_id is {me}.\n\
                     Type client_id:words to say words to that client only.\n"
                )
                .as_bytes(),
            );
            out.join(slot);
            if self.names.len() <= slot {
                self.names.resize(slot + 1, None);
            }
            self.names[slot] = Some(name);
            return;
        };
        let private = text
            .split_once(':')
            .and_then(|(to, words)| Some((to, slot_of(to)?, words)));
        let Some((to, to_slot, words)) = private else {
            return out.to_all(format!("{name}[{me}] said :{text}\n").as_bytes());
        };
        if matches!(self.names.get(to_slot), Some(Some(_))) {
            out.send(
                to_slot,
                format!("{name}[{me}] said to You :{words}\n").as_bytes(),
            );
            out.send(
                slot,
                format!("{name}[{me}] said to [{to}] :{words}\n").as_bytes(),
            );
        } else {
            out.send(
                slot,
                format!("[{to}] is not online; nothing was sent\n").as_bytes(),
            );
        }
    }
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet a whole line.
    input: Vec<u8>,
    /// Bytes the socket did not take yet (written when it is writable), or that wait
    /// for the next paced write.
    output: Vec<u8>,
    /// Logged in: gets the public lines.
    joined: bool,
    /// Waits for the next paced write (in `Clients::due`).
    due: bool,
}

/// The clients by slot; free slots are reused by the one-process floor only: the split
/// one's worker may still send to a slot after its client closed, and a new client in
/// it would get the old one's lines (a floor server lives for one run, so its slots
/// are bounded by the run's connections).
#[derive(Default)]
struct Clients {
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Whether closed slots go to `free`.
    reuse: bool,
    /// `gateway.min_write_interval`, read from the environment as the chat does: what
    /// is sent to a client waits, and the clients with something waiting are written
    /// together once an interval.
    interval: Option<Duration>,
    /// Clients with output waiting for the next paced write.
    due: Vec<usize>,
    /// Slots to close once the events at hand are handled.
    doomed: Vec<usize>,
}

impl Clients {
    /// Writes `bytes` to the client (paced: queues them for the next write), or queues
    /// what the socket does not take; a client that fails or has too much waiting is
    /// doomed.
    fn push(&mut self, slot: usize, bytes: &[u8]) {
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if self.interval.is_some() && !conn.due {
            conn.due = true;
            self.due.push(slot);
        }
        let written = if conn.output.is_empty() && self.interval.is_none() {
            match conn.stream.write(bytes) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(_) => {
                    self.doomed.push(slot);
                    return;
                }
            }
        } else {
            0
        };
        conn.output.extend_from_slice(&bytes[written..]);
        if conn.output.len() > MAX_PENDING {
            self.doomed.push(slot);
        }
    }

    /// The paced write: every client with something waiting.
    fn write_due(&mut self) {
        for slot in std::mem::take(&mut self.due) {
            if let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                conn.due = false;
            }
            if !self.flush(slot) {
                self.doomed.push(slot);
            }
        }
    }

    /// Writes what waits for the client; false if it must be closed.
    fn flush(&mut self, slot: usize) -> bool {
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        while !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(0) => return false,
                Ok(n) => {
                    conn.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads what the client sent and hands each whole line to `line`; false if the
    /// client must be closed (it closed, an error, a line too long).
    fn read(
        &mut self,
        slot: usize,
        buf: &mut [u8],
        mut line: impl FnMut(&mut Self, &[u8]),
    ) -> bool {
        loop {
            let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                return false;
            };
            let n = match conn.stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            conn.input.extend_from_slice(&buf[..n]);
            let mut input = std::mem::take(&mut conn.input);
            let mut start = 0;
            while let Some(end) = memchr::memchr(b'\n', &input[start..]) {
                if end > MAX_LINE {
                    return false;
                }
                let l = &input[start..start + end];
                line(self, l.strip_suffix(b"\r").unwrap_or(l));
                start += end + 1;
            }
            input.drain(..start);
            if input.len() > MAX_LINE {
                return false;
            }
            if let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                conn.input = input;
            }
            // A short read emptied the socket: the next byte brings a new event (the
            // gateway's reads stop at the same point).
            if n < buf.len() {
                return true;
            }
        }
    }
}

impl Out for Clients {
    fn send(&mut self, slot: usize, bytes: &[u8]) {
        self.push(slot, bytes);
    }
    fn join(&mut self, slot: usize) {
        if let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            conn.joined = true;
        }
    }
    fn to_all(&mut self, bytes: &[u8]) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(|c| c.joined) {
                self.push(slot, bytes);
            }
        }
    }
}

/// The gateway side of the split floor's link.
struct Link {
    stream: TcpStream,
    /// Frames not yet written.
    out: Vec<u8>,
    /// Bytes read and not yet a whole frame.
    input: Vec<u8>,
}

impl Link {
    /// Writes what it can of the frames waiting.
    fn flush(&mut self) -> anyhow::Result<()> {
        let mut written = 0;
        while written < self.out.len() {
            match self.stream.write(&self.out[written..]) {
                Ok(0) => bail!("the link closed"),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("write to the link"),
            }
        }
        self.out.drain(..written);
        if self.out.len() > MAX_LINK_PENDING {
            bail!("the worker does not read the link");
        }
        Ok(())
    }

    /// Reads the worker's commands and carries them out.
    fn read(&mut self, buf: &mut [u8], clients: &mut Clients) -> anyhow::Result<()> {
        loop {
            let n = match self.stream.read(buf) {
                Ok(0) => bail!("the worker closed the link"),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("read from the link"),
            };
            self.input.extend_from_slice(&buf[..n]);
            let (commands, used) = frames(&self.input)?;
            for (kind, slot, payload) in commands {
                match kind {
                    SEND => clients.send(slot, payload),
                    JOIN => clients.join(slot),
                    TO_ALL => clients.to_all(payload),
                    other => bail!("a command of unknown kind {other}"),
                }
            }
            self.input.drain(..used);
            if n < buf.len() {
                return Ok(());
            }
        }
    }
}

/// Serves on `listen` until killed; prints the bound address on stdout first, followed
/// by the worker's pid when split.
pub fn serve(listen: SocketAddr, shape: Shape) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut listener = bind(listen).with_context(|| format!("bind {listen}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let (mut link, mut chat) = match shape {
        Shape::Alone => {
            println!("{}", listener.local_addr()?);
            (None, Some(Chat::default()))
        }
        Shape::Split => {
            let (mut stream, pid) = start_worker()?;
            poll.registry()
                .register(&mut stream, LINK, Interest::READABLE | Interest::WRITABLE)?;
            println!("{} {pid}", listener.local_addr()?);
            let link = Link {
                stream,
                out: Vec::new(),
                input: Vec::new(),
            };
            (Some(link), None)
        }
    };
    std::io::stdout().flush()?;
    let mut clients = Clients {
        reuse: shape == Shape::Alone,
        interval: write_interval()?,
        ..Clients::default()
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut next_write = Instant::now();
    loop {
        let timeout = match clients.interval {
            Some(_) if !clients.due.is_empty() => {
                Some(next_write.saturating_duration_since(Instant::now()))
            }
            _ => None,
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => accept(&poll, &mut listener, &mut clients, |clients, slot| {
                    match (&mut chat, &mut link) {
                        (Some(chat), _) => chat.connect(slot, clients),
                        (None, Some(link)) => frame(&mut link.out, CONNECT, slot, b""),
                        (None, None) => {}
                    }
                })?,
                LINK => {
                    if let Some(link) = &mut link {
                        link.read(&mut buf, &mut clients)?;
                    }
                }
                token => {
                    let slot = token.0 - FIRST_CLIENT;
                    let mut ok = true;
                    if event.is_writable() {
                        ok &= clients.flush(slot);
                    }
                    if ok && (event.is_readable() || event.is_read_closed()) {
                        ok &= clients.read(slot, &mut buf, |clients, line| {
                            match (&mut chat, &mut link) {
                                (Some(chat), _) => chat.line(slot, line, clients),
                                (None, Some(link)) => frame(&mut link.out, MESSAGE, slot, line),
                                (None, None) => {}
                            }
                        });
                    }
                    if !ok {
                        clients.doomed.push(slot);
                    }
                }
            }
        }
        for slot in std::mem::take(&mut clients.doomed) {
            if let Some(mut conn) = clients.slots.get_mut(slot).and_then(Option::take) {
                let _ = poll.registry().deregister(&mut conn.stream);
                if clients.reuse {
                    clients.free.push(slot);
                }
                match (&mut chat, &mut link) {
                    (Some(chat), _) => chat.close(slot),
                    (None, Some(link)) => frame(&mut link.out, CLOSE, slot, b""),
                    (None, None) => {}
                }
            }
        }
        // Everything this round of events produced, in one write.
        if let Some(link) = &mut link {
            link.flush()?;
        }
        if let Some(interval) = clients.interval {
            let now = Instant::now();
            if !clients.due.is_empty() && now >= next_write {
                clients.write_due();
                next_write = now + interval;
            }
        }
    }
}

/// A listener with the gateway's backlog (4,096 connections waiting to be accepted;
/// std and mio ask for less, and a burst of connects then waits for SYN retries).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind(addr)?;
    // SAFETY: listen on a socket this function owns; Linux takes a second listen() as
    // a new backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener))
}

/// Accepts every waiting connection; `opened` learns each one's slot.
fn accept(
    poll: &Poll,
    listener: &mut TcpListener,
    clients: &mut Clients,
    mut opened: impl FnMut(&mut Clients, usize),
) -> anyhow::Result<()> {
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("floor: accept failed: {e}");
                return Ok(());
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = clients.free.pop().unwrap_or(clients.slots.len());
        poll.registry().register(
            &mut stream,
            Token(slot + FIRST_CLIENT),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let conn = Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            joined: false,
            due: false,
        };
        if slot == clients.slots.len() {
            clients.slots.push(Some(conn));
        } else {
            clients.slots[slot] = Some(conn);
        }
        opened(clients, slot);
    }
}

/// `SWITCHBOARD__GATEWAY__MIN_WRITE_INTERVAL` as the bench passes it to the chat
/// (`0s`, `40ms`, `1s`): the floor paces its writes the same way; `None` for none.
fn write_interval() -> anyhow::Result<Option<Duration>> {
    let Ok(text) = std::env::var("SWITCHBOARD__GATEWAY__MIN_WRITE_INTERVAL") else {
        return Ok(None);
    };
    parse_interval(&text).with_context(|| {
        format!("SWITCHBOARD__GATEWAY__MIN_WRITE_INTERVAL={text:?}: use 0s, 40ms or 1s")
    })
}

/// `0`, `Nms` or `Ns`.
fn parse_interval(text: &str) -> Option<Option<Duration>> {
    let text = text.trim();
    let (number, unit) = match text.strip_suffix("ms") {
        Some(n) => (n, Duration::from_millis(1)),
        None => (
            text.strip_suffix('s').unwrap_or(text),
            Duration::from_secs(1),
        ),
    };
    let n: u32 = number.parse().ok()?;
    Some((n > 0).then(|| unit * n))
}

/// Starts the worker process of the split floor and takes its link: the stream and
/// the worker's pid.
fn start_worker() -> anyhow::Result<(TcpStream, u32)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("floor-worker")
        .arg("--link")
        .arg(listener.local_addr()?.to_string())
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().context("start the floor's worker")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("the floor's worker did not connect"),
        }
    };
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    Ok((TcpStream::from_std(stream), child.id()))
}

/// The split floor's worker: reads events from the link, answers them as the chat
/// does, and writes the commands of everything it read in one write. Blocking I/O on
/// one thread: it sleeps in `read` between batches.
pub fn work(link: SocketAddr) -> anyhow::Result<()> {
    let mut stream =
        std::net::TcpStream::connect(link).with_context(|| format!("connect to {link}"))?;
    stream.set_nodelay(true)?;
    let mut chat = Chat::default();
    let mut input = Vec::new();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read from the link"),
        };
        input.extend_from_slice(&buf[..n]);
        let (events, used) = frames(&input)?;
        let mut commands = Commands(&mut out);
        for (kind, slot, payload) in events {
            match kind {
                CONNECT => chat.connect(slot, &mut commands),
                MESSAGE => chat.line(slot, payload, &mut commands),
                CLOSE => chat.close(slot),
                other => bail!("an event of unknown kind {other}"),
            }
        }
        input.drain(..used);
        stream.write_all(&out)?;
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_slots_in_the_chats_shape() {
        assert_eq!(id_of(10), "0000000000000000000a");
        assert_eq!(slot_of(&id_of(12345)), Some(12345));
        assert_eq!(slot_of("a"), None);
        assert_eq!(slot_of("zzzzzzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn link_frames_round_trip_and_wait_for_their_end() {
        let mut out = Vec::new();
        frame(&mut out, MESSAGE, 7, b"hello");
        frame(&mut out, CLOSE, 8, b"");
        let (got, used) = frames(&out[..out.len() - 1]).unwrap();
        assert_eq!(got, vec![(MESSAGE, 7, &b"hello"[..])]);
        assert_eq!(used, HEADER + 5);
        let (got, used) = frames(&out).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(used, out.len());
        assert!(frames(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0]).is_err());
    }

    /// What the chat sent, in order: (to, text); `to_all` as `usize::MAX`, a join as
    /// its slot with no text.
    #[derive(Default)]
    struct Recorded(Vec<(usize, String)>);

    impl Out for Recorded {
        fn send(&mut self, slot: usize, bytes: &[u8]) {
            self.0.push((slot, String::from_utf8_lossy(bytes).into()));
        }
        fn join(&mut self, slot: usize) {
            self.0.push((slot, String::new()));
        }
        fn to_all(&mut self, bytes: &[u8]) {
            self.0
                .push((usize::MAX, String::from_utf8_lossy(bytes).into()));
        }
    }

    #[test]
    fn the_chat_answers_logins_private_and_public_lines() {
        let mut chat = Chat::default();
        let mut out = Recorded::default();
        chat.connect(0, &mut out);
        chat.connect(1, &mut out);
        chat.line(0, b"ann", &mut out);
        chat.line(1, b"bob", &mut out);
        let (a, b) = (id_of(0), id_of(1));
        assert_eq!(out.0[3], (0, String::new()), "ann joined");
        chat.line(0, format!("{b}:hi").as_bytes(), &mut out);
        chat.line(0, b"b 1 2", &mut out);
        chat.line(0, b"time: 10", &mut out);
        chat.close(1);
        chat.line(0, format!("{b}:hi").as_bytes(), &mut out);
        let tail: Vec<_> = out.0[6..].to_vec();
        let want = [
            (1, format!("ann[{a}] said to You :hi\n")),
            (0, format!("ann[{a}] said to [{b}] :hi\n")),
            (usize::MAX, format!("ann[{a}] said :b 1 2\n")),
            (usize::MAX, format!("ann[{a}] said :time: 10\n")),
            (0, format!("[{b}] is not online; nothing was sent\n")),
        ];
        assert_eq!(tail, want);
    }

    #[test]
    fn write_intervals_read_as_the_chat_takes_them() {
        assert_eq!(
            parse_interval("40ms"),
            Some(Some(Duration::from_millis(40)))
        );
        assert_eq!(parse_interval("1s"), Some(Some(Duration::from_secs(1))));
        assert_eq!(parse_interval("0s"), Some(None));
        assert_eq!(parse_interval("0"), Some(None));
        assert_eq!(parse_interval("fast"), None);
    }
}
