//! One chat client of the load generator: connects from a chosen loopback source
//! address (over TLS and WebSocket if the run says so, see [`crate::wire`]), reads
//! messages, logs in — as a telnet user (`text`: lines) or as a browser (`websocket`:
//! the browser chat's JSON messages, in room [`ROOM`]).
//!
//! Client sockets are spread over source addresses 127.0.1.1, 127.0.1.2, … so that no
//! single source address runs out of ephemeral ports (about 28,000 per address).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::procs::Share;
use crate::wire::{self, Conn, Cut, Framing, Protocol, ReadHalf, WriteHalf};

/// The prompt the chat sends on connect (to telnet users).
pub const PROMPT: &str = "type in your name:";
/// The room the browser clients log in to.
pub const ROOM: &str = "bench";
/// How long connecting, or waiting for one expected line, may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a login may wait for one of its answers: in a crowded room the server
/// works through a queue of logins, each costing it more than the last.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the login of client `index` may wait for each of its answers:
/// [`STEP_TIMEOUT`] and 2 ms for every client that may have logged in before it (the
/// room it joins is that big), at most [`LOGIN_TIMEOUT`]. A small run that loses a
/// line fails in seconds, not in ten minutes.
pub fn login_timeout(index: usize) -> Duration {
    let per_client = Duration::from_millis(2).saturating_mul(index.min(1 << 20) as u32);
    (STEP_TIMEOUT + per_client).min(LOGIN_TIMEOUT)
}

/// Source address of the client with global index `index`, over `sources` addresses.
pub fn source_ip(index: usize, sources: usize) -> IpAddr {
    let n = index % sources.clamp(1, 250);
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + n as u8))
}

pub use loadkit::now_micros;

/// Connects to `addr` from `source` (port chosen by the kernel), within [`STEP_TIMEOUT`].
pub async fn connect(addr: SocketAddr, source: IpAddr) -> anyhow::Result<TcpStream> {
    loadkit::connect_from(addr, source, STEP_TIMEOUT).await
}

/// Opens client `index`'s connection as the run says: TCP from its source address,
/// then TLS, then the WebSocket upgrade. Returns the stream and the bytes already read
/// past the upgrade answer.
pub async fn open(share: &Share, index: usize) -> anyhow::Result<(Conn, Vec<u8>)> {
    let tcp = connect(share.addr, source_ip(index, share.sources)).await?;
    let step = async {
        let mut conn = wire::secure(tcp, share.tls, share.protocol).await?;
        let early = match share.protocol {
            Protocol::Text => Vec::new(),
            Protocol::Websocket => wire::upgrade(&mut conn, &share.addr.to_string()).await?,
        };
        anyhow::Ok((conn, early))
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .context("TLS handshake or upgrade timed out")?
}

/// The reading half of a client, message by message (lines or WebSocket frames).
pub struct Incoming {
    reader: ReadHalf,
    framing: Framing,
    buf: Vec<u8>,
    /// Bytes of `buf` already returned (dropped before the next read).
    used: usize,
    /// Where the message returned last starts (for [`Incoming::unread`]).
    last: usize,
    /// Calls of [`Incoming::next_or`] (for its deadline check).
    calls: u32,
}

/// Capacity a reading buffer keeps after a large message (a long member list).
const KEEP: usize = 64 << 10;

/// What [`Incoming::next_or`] found first.
pub enum Next<'a> {
    /// A message.
    Message(&'a [u8]),
    /// The timer fired before a message came.
    Timer,
    /// The stream ended, failed, or the deadline passed.
    End,
}

impl Incoming {
    /// Wraps a read half; `early` are bytes already read from it.
    pub fn new(reader: ReadHalf, framing: Framing, early: Vec<u8>) -> Self {
        let mut buf = early;
        buf.reserve(16 << 10);
        Self {
            reader,
            framing,
            buf,
            used: 0,
            last: 0,
            calls: 0,
        }
    }

    /// The next message (a line without its newline, or a frame's payload); `None` at
    /// the end of the stream or a close frame. Cancel-safe: a message whose read is
    /// cancelled (by a timeout) is completed by the next call.
    pub async fn next(&mut self) -> anyhow::Result<Option<&[u8]>> {
        loop {
            match self.framing.cut(&self.buf[self.used..])? {
                Cut::Message { start, end, used } => {
                    let at = self.used;
                    self.last = at;
                    self.used += used;
                    return Ok(Some(&self.buf[at + start..at + end]));
                }
                Cut::Skip(n) => self.used += n,
                Cut::Close => return Ok(None),
                Cut::More => {
                    // Drop what was returned, once per read rather than per message.
                    self.buf.drain(..self.used);
                    self.used = 0;
                    if self.buf.capacity() > 4 * KEEP && self.buf.len() < KEEP / 2 {
                        self.buf.shrink_to(KEEP);
                    }
                    if self.buf.capacity() - self.buf.len() < 4 << 10 {
                        self.buf.reserve(16 << 10);
                    }
                    if self.reader.read_buf(&mut self.buf).await? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Puts back the message [`Incoming::next`] returned last: the next call returns
    /// it again. Only right after that call.
    pub fn unread(&mut self) {
        self.used = self.last;
    }

    /// The next message, or [`Next::Timer`] if `timer` fires first. The timer is
    /// polled only when no message is ready (a timer per message, or one polled beside
    /// every message, costs the generator a fifth of its CPU, or 17 %, while it
    /// measures a server on the same cores), so a stream that never pauses is checked
    /// against `deadline` every 64 calls instead ([`Next::End`] once it has passed).
    pub async fn next_or(&mut self, timer: Pin<&mut Sleep>, deadline: Instant) -> Next<'_> {
        self.calls = self.calls.wrapping_add(1);
        if self.calls.is_multiple_of(64) && Instant::now() >= deadline {
            return Next::End;
        }
        tokio::select! {
            biased;
            message = self.next() => match message {
                Ok(Some(message)) => Next::Message(message),
                _ => Next::End,
            },
            () = timer => Next::Timer,
        }
    }

    /// The next message of a login dialogue, which must arrive within `timeout`
    /// ([`login_timeout`]).
    pub async fn expect(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match tokio::time::timeout(timeout, self.next()).await {
            Err(_) => bail!("no message within {timeout:?}"),
            Ok(Ok(None)) => bail!("connection closed"),
            Ok(Ok(Some(l))) => Ok(String::from_utf8_lossy(l).into_owned()),
            Ok(Err(e)) => Err(e),
        }
    }
}

/// The writing half of a client: frames each message as its protocol wants.
pub struct Writer {
    half: WriteHalf,
    framing: Framing,
    buf: Vec<u8>,
    mask: u32,
}

impl Writer {
    /// Wraps a write half.
    pub fn new(half: WriteHalf, framing: Framing, seed: u32) -> Self {
        Self {
            half,
            framing,
            buf: Vec::new(),
            mask: seed | 1,
        }
    }

    /// Sends one message (a line, or a WebSocket text frame).
    pub async fn send(&mut self, message: &str) -> std::io::Result<()> {
        self.buf.clear();
        let mask = wire::next_mask(&mut self.mask);
        self.framing.encode(message.as_bytes(), mask, &mut self.buf);
        self.half.write_all(&self.buf).await?;
        // A TLS stream may keep records until flushed; TCP's flush does nothing.
        self.half.flush().await
    }
}

/// A logged-in client: its id, and both halves of its connection.
pub struct Session {
    /// The client_id the chat assigned.
    pub id: String,
    /// Messages from the server (the welcome already read).
    pub lines: Incoming,
    /// Writing half.
    pub writer: Writer,
}

/// The text of a field `"key":"…"` in a JSON message (no escapes in it: ids, names).
pub fn json_str<'a>(message: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let pattern = format!("\"{key}\":\"");
    let at = memchr::memmem::find(message, pattern.as_bytes())? + pattern.len();
    let rest = &message[at..];
    Some(&rest[..memchr::memchr(b'"', rest)?])
}

/// Connects client `index` and logs it in as `name`: a telnet user answers the name
/// prompt and reads the welcome; a browser sends a `login` to [`ROOM`] and reads its
/// own `login` (the one with the member list).
pub async fn login(share: &Share, index: usize, name: &str) -> anyhow::Result<Session> {
    let (conn, early) = open(share, index).await?;
    let (read, write) = conn.split();
    let framing = Framing::from(share.protocol);
    let mut lines = Incoming::new(read, framing, early);
    let mut writer = Writer::new(write, framing, index as u32 ^ 0x9e37_79b9);
    let timeout = login_timeout(index);
    let id = match share.protocol {
        Protocol::Text => {
            // Lines sent to everybody (other clients' logins) may come before the prompt.
            while lines.expect(timeout).await? != PROMPT {}
            writer.send(name).await?;
            // Other clients' `come` lines may arrive before the welcome.
            loop {
                let line = lines.expect(timeout).await?;
                if let Some(rest) = line.strip_prefix(&format!("Hello {name}[")) {
                    break rest
                        .split_once(']')
                        .map(|(id, _)| id.to_string())
                        .context("client id in the welcome")?;
                }
            }
        }
        Protocol::Websocket => {
            writer
                .send(&format!(
                    r#"{{"type":"login","client_name":"{name}","room_id":"{ROOM}"}}"#
                ))
                .await?;
            let mine = format!(r#""client_name":"{name}""#);
            loop {
                let m = tokio::time::timeout(timeout, lines.next())
                    .await
                    .context("no login answer in time")??
                    .context("closed before the login answer")?;
                // The history is off unless --history: its error 105 is expected.
                if json_str(m, "type") == Some(b"error")
                    && memchr::memmem::find(m, b"\"code\":105").is_none()
                {
                    bail!("login refused: {}", String::from_utf8_lossy(m));
                }
                let has = |p: &[u8]| memchr::memmem::find(m, p).is_some();
                if has(b"\"client_list\"") && has(mine.as_bytes()) {
                    let id = json_str(m, "client_id").context("client_id in the login")?;
                    break String::from_utf8_lossy(id).into_owned();
                }
            }
        }
    };
    Ok(Session { id, lines, writer })
}

/// Clients logged in and reading (so that the room's traffic does not pile up at the
/// gateway for them) until [`Logins::sessions`] stops them.
pub struct Logins {
    /// Client ids, by position in this share.
    pub ids: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<(usize, anyhow::Result<Session>)>,
}

impl Logins {
    /// Stops the reading and hands over the sessions, in order.
    pub async fn sessions(mut self) -> anyhow::Result<Vec<Session>> {
        let _ = self.stop.send(true);
        let mut sessions = Vec::with_capacity(self.ids.len());
        while let Some(joined) = self.tasks.join_next().await {
            let (offset, session) = joined?;
            sessions.push((offset, session?));
        }
        sessions.sort_by_key(|(i, _)| *i);
        Ok(sessions.into_iter().map(|(_, s)| s).collect())
    }
}

/// Logs in `count` clients with global indices from `first`, the share's
/// `login_concurrency` at a time; returns
/// once all are in, while each keeps reading and dropping what it hears (other
/// clients' logins, which a browser room sends to everybody) until
/// [`Logins::sessions`] — except a message holding `marker`: the scenario's traffic,
/// which other generator processes, started by the same `go`, may send before this one
/// has stopped its readers. That message is kept for the scenario, and its reader stops
/// there.
pub async fn login_all(
    share: &Share,
    prefix: &str,
    first: usize,
    count: usize,
    marker: &'static [u8],
) -> anyhow::Result<Logins> {
    let permits = Arc::new(Semaphore::new(share.login_concurrency.max(1)));
    let (stop, stopped) = watch::channel(false);
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for offset in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let share = *share;
        let index = first + offset;
        let name = format!("{prefix}{index}");
        let (done_tx, mut stopped) = (done_tx.clone(), stopped.clone());
        tasks.spawn(async move {
            let result = login(&share, index, &name).await;
            drop(permit);
            let mut session = match result {
                Ok(s) => s,
                Err(e) => {
                    let _ = done_tx.send((offset, Err(format!("{e:#}"))));
                    return (offset, Err(e));
                }
            };
            let _ = done_tx.send((offset, Ok(session.id.clone())));
            let marker = memchr::memmem::Finder::new(marker);
            let mut scenario_began = false;
            while !scenario_began {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    m = session.lines.next() => match m {
                        Ok(Some(m)) => scenario_began = marker.find(m).is_some(),
                        Ok(None) => return (offset, Err(anyhow::anyhow!("closed after login"))),
                        Err(e) => return (offset, Err(e)),
                    },
                }
            }
            if scenario_began {
                session.lines.unread();
                // Until the scenario takes the session (an error: nobody will).
                let _ = stopped.wait_for(|s| *s).await;
            }
            (offset, Ok(session))
        });
    }
    drop(done_tx);
    let mut ids = vec![String::new(); count];
    for _ in 0..count {
        match done.recv().await {
            Some((offset, Ok(id))) => ids[offset] = id,
            Some((offset, Err(e))) => bail!("login of client {} failed: {e}", first + offset),
            None => bail!("a login task ended without a word"),
        }
    }
    Ok(Logins { ids, stop, tasks })
}

/// The text after `marker` in `message`, if it contains it.
pub fn after<'a>(message: &'a [u8], marker: &[u8]) -> Option<&'a [u8]> {
    memchr::memmem::find(message, marker).map(|i| &message[i + marker.len()..])
}

/// Parses `SEQ MICROS` (two decimal numbers separated by a space; whatever follows the
/// second, such as a JSON string's closing quote, is ignored).
pub fn parse_seq_time(text: &[u8]) -> Option<(u64, u64)> {
    let (seq, n) = leading_number(text)?;
    let rest = text.get(n..)?.strip_prefix(b" ")?;
    let (at, _) = leading_number(rest)?;
    Some((seq, at))
}

/// The decimal number `text` starts with and its length in bytes; `None` without a
/// digit or when it overflows a `u64`. (Read digit by digit: the generator parses two
/// numbers per received line, beside the server it measures.)
pub fn leading_number(text: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut digits = 0;
    for &b in text.iter().take_while(|b| b.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some((n, digits))
}

/// A public line to the client's room: `text` as a telnet line, or a browser `say` to
/// all.
pub fn say_all(protocol: Protocol, text: &str) -> String {
    match protocol {
        Protocol::Text => text.to_owned(),
        Protocol::Websocket => format!(
            r#"{{"type":"say","to_client_id":"all","to_client_name":"all","content":"{text}"}}"#
        ),
    }
}

/// A private line to client `to`: `TO:text`, or a browser `say` to that client.
pub fn say_to(protocol: Protocol, to: &str, text: &str) -> String {
    match protocol {
        Protocol::Text => format!("{to}:{text}"),
        Protocol::Websocket => format!(
            r#"{{"type":"say","to_client_id":"{to}","to_client_name":"","content":"{text}"}}"#
        ),
    }
}

/// Sends one message per `1 / per_second` seconds from `first_due` until `end`, on a
/// fixed open-loop schedule; `message(seq)` makes each. Returns the messages sent, the
/// worst lateness against the schedule in µs, and the writer (dropping it would
/// half-close the connection, which the gateway takes for a departing client).
pub async fn send_on_schedule(
    mut writer: Writer,
    first_due: tokio::time::Instant,
    per_second: f64,
    end: tokio::time::Instant,
    message: impl Fn(u64) -> String,
) -> (u64, u64, Writer) {
    let (mut seq, mut max_lag) = (0u64, 0u64);
    loop {
        // A division, not seq × (1 / rate): 3000 / 300.0 is exactly 10 s.
        let due = first_due + Duration::from_secs_f64(seq as f64 / per_second);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(due.elapsed().as_micros() as u64);
        if writer.send(&message(seq)).await.is_err() {
            break;
        }
        seq += 1;
    }
    (seq, max_lag, writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_put_back_comes_again() {
        let (reader, mut writer) = tokio::io::duplex(64);
        let mut lines = Incoming::new(Box::new(reader), Framing::Lines, b"a\n".to_vec());
        writer.write_all(b"b\nc\n").await.unwrap();
        assert_eq!(lines.next().await.unwrap(), Some(&b"a"[..]));
        assert_eq!(lines.next().await.unwrap(), Some(&b"b"[..]));
        lines.unread();
        assert_eq!(lines.next().await.unwrap(), Some(&b"b"[..]));
        assert_eq!(lines.next().await.unwrap(), Some(&b"c"[..]));
        drop(writer);
        assert_eq!(lines.next().await.unwrap(), None);
    }

    #[test]
    fn a_login_waits_longer_the_more_clients_came_before_it() {
        assert_eq!(login_timeout(0), STEP_TIMEOUT);
        assert_eq!(
            login_timeout(300),
            STEP_TIMEOUT + Duration::from_millis(600)
        );
        assert_eq!(login_timeout(100_000), Duration::from_secs(215));
        assert_eq!(login_timeout(1_000_000), LOGIN_TIMEOUT);
        assert_eq!(login_timeout(usize::MAX), LOGIN_TIMEOUT);
    }

    #[test]
    fn parses_payloads() {
        let line = b"p0_1[abc] said to You :p 12 1700000000000000";
        let rest = after(line, b" said to You :p ").unwrap();
        assert_eq!(parse_seq_time(rest), Some((12, 1_700_000_000_000_000)));
        assert_eq!(after(line, b" said :b "), None);
        assert_eq!(parse_seq_time(b"x 1"), None);
        assert_eq!(parse_seq_time(b"1 "), None);
        assert_eq!(
            parse_seq_time(b"18446744073709551615 0\""),
            Some((u64::MAX, 0))
        );
        assert_eq!(parse_seq_time(b"18446744073709551616 0"), None);
        assert_eq!(leading_number(b"042x"), Some((42, 3)));
        let json = br#"{"content":"<b>privately to you: </b>p 7 1700000000000001","time":"x"}"#;
        let rest = after(json, b"privately to you: </b>p ").unwrap();
        assert_eq!(parse_seq_time(rest), Some((7, 1_700_000_000_000_001)));
        assert_eq!(json_str(json, "time"), Some(&b"x"[..]));
        assert_eq!(json_str(json, "nope"), None);
    }

    #[test]
    fn sources_rotate() {
        assert_eq!(source_ip(0, 4).to_string(), "127.0.1.1");
        assert_eq!(source_ip(5, 4).to_string(), "127.0.1.2");
    }
}
