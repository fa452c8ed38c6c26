//! One chat client of the load generator: connects from a chosen loopback source
//! address, reads lines, logs in.
//!
//! Client sockets are spread over source addresses 127.0.1.1, 127.0.1.2, … so that no
//! single source address runs out of ephemeral ports (about 28,000 per address).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::procs::Share;

/// The prompt the chat sends on connect.
pub const PROMPT: &str = "type in your name:";
/// How long connecting, or waiting for one expected line, may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Source address of the client with global index `index`, over `sources` addresses.
pub fn source_ip(index: usize, sources: usize) -> IpAddr {
    let n = index % sources.clamp(1, 250);
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + n as u8))
}

/// Microseconds since the Unix epoch (comparable across processes of this machine).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Connects to `addr` from `source` (port chosen by the kernel).
pub async fn connect(addr: SocketAddr, source: IpAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    no_port_at_bind(&socket)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = tokio::time::timeout(STEP_TIMEOUT, socket.connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets the kernel pick the source port at connect time, from the whole 4-tuple:
/// without `IP_BIND_ADDRESS_NO_PORT`, binding to port 0 searches for a port unused by
/// any connection of that address, which grows with every client (tens of seconds of
/// system time for 20,000 clients).
fn no_port_at_bind(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The reading half of a client, line by line.
pub struct Lines {
    reader: BufReader<OwnedReadHalf>,
    buf: Vec<u8>,
    /// Whether `buf` holds a whole line already returned (cleared on the next call);
    /// otherwise it holds the start of a line whose read was cancelled.
    complete: bool,
}

impl Lines {
    /// Wraps a read half.
    pub fn new(read: OwnedReadHalf) -> Self {
        Self {
            reader: BufReader::with_capacity(16 << 10, read),
            buf: Vec::with_capacity(256),
            complete: false,
        }
    }

    /// The next line without its newline; `None` at end of stream. Cancel-safe: a
    /// line whose read is cancelled (by a timeout) is completed by the next call.
    pub async fn next(&mut self) -> anyhow::Result<Option<&[u8]>> {
        if self.complete {
            self.buf.clear();
            self.complete = false;
        }
        if self.reader.read_until(b'\n', &mut self.buf).await? == 0 {
            return Ok(None);
        }
        self.complete = true;
        let mut line = self.buf.as_slice();
        while let [rest @ .., b'\n' | b'\r'] = line {
            line = rest;
        }
        Ok(Some(line))
    }

    /// The next line, which must arrive within [`STEP_TIMEOUT`].
    pub async fn expect_line(&mut self) -> anyhow::Result<String> {
        match tokio::time::timeout(STEP_TIMEOUT, self.next()).await {
            Err(_) => bail!("no line within {STEP_TIMEOUT:?}"),
            Ok(Ok(None)) => bail!("connection closed"),
            Ok(Ok(Some(l))) => Ok(String::from_utf8_lossy(l).into_owned()),
            Ok(Err(e)) => Err(e),
        }
    }
}

/// A logged-in client: its id, and both halves of its connection.
pub struct Session {
    /// The client_id the chat assigned.
    pub id: String,
    /// Lines from the server (the welcome already read).
    pub lines: Lines,
    /// Writing half.
    pub writer: OwnedWriteHalf,
}

/// Connects, answers the name prompt with `name` and reads the welcome.
pub async fn login(addr: SocketAddr, source: IpAddr, name: &str) -> anyhow::Result<Session> {
    let stream = connect(addr, source).await?;
    let (read, mut writer) = stream.into_split();
    let mut lines = Lines::new(read);
    // Lines sent to everybody (other clients' logins) may come before the prompt.
    while lines.expect_line().await? != PROMPT {}
    writer.write_all(format!("{name}\n").as_bytes()).await?;
    // Other clients' `come` lines may arrive before the welcome.
    let id = loop {
        let line = lines.expect_line().await?;
        if let Some(rest) = line.strip_prefix(&format!("Hello {name}[")) {
            break rest
                .split_once(']')
                .map(|(id, _)| id.to_string())
                .context("client id in the welcome")?;
        }
    };
    Ok(Session { id, lines, writer })
}

/// Logs in `count` clients with global indices from `first`, 64 at a time.
pub async fn login_all(
    share: &Share,
    prefix: &str,
    first: usize,
    count: usize,
) -> anyhow::Result<Vec<Session>> {
    let permits = Arc::new(Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for index in first..first + count {
        let permit = permits.clone().acquire_owned().await?;
        let share = *share;
        let name = format!("{prefix}{index}");
        tasks.spawn(async move {
            let s = login(share.addr, source_ip(index, share.sources), &name).await;
            drop(permit);
            (index, s)
        });
    }
    let mut sessions = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        let (index, session) = joined?;
        match session {
            Ok(s) => sessions.push((index, s)),
            Err(e) => bail!("login of client {index} failed: {e:#}"),
        }
    }
    sessions.sort_by_key(|(i, _)| *i);
    Ok(sessions.into_iter().map(|(_, s)| s).collect())
}

/// The text after `marker` in `line`, if `line` contains it.
pub fn after<'a>(line: &'a [u8], marker: &[u8]) -> Option<&'a [u8]> {
    line.windows(marker.len())
        .position(|w| w == marker)
        .map(|i| &line[i + marker.len()..])
}

/// Parses `SEQ MICROS` (two decimal numbers separated by a space).
pub fn parse_seq_time(text: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let (seq, at) = text.split_once(' ')?;
    Some((seq.parse().ok()?, at.trim().parse().ok()?))
}

/// Sends one line per `1 / per_second` seconds from `first_due` until `end`, on a fixed
/// open-loop schedule; `line(seq)` makes each line (with its newline). Returns the lines
/// sent, the worst lateness against the schedule in µs, and the writing half (dropping
/// it would half-close the connection, which the gateway takes for a departing client).
pub async fn send_on_schedule(
    mut writer: OwnedWriteHalf,
    first_due: tokio::time::Instant,
    per_second: f64,
    end: tokio::time::Instant,
    line: impl Fn(u64) -> String,
) -> (u64, u64, OwnedWriteHalf) {
    let (mut seq, mut max_lag) = (0u64, 0u64);
    loop {
        // A division, not seq × (1 / rate): 3000 / 300.0 is exactly 10 s.
        let due = first_due + Duration::from_secs_f64(seq as f64 / per_second);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(due.elapsed().as_micros() as u64);
        if writer.write_all(line(seq).as_bytes()).await.is_err() {
            break;
        }
        seq += 1;
    }
    (seq, max_lag, writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_payloads() {
        let line = b"p0_1[abc] said to You :p 12 1700000000000000";
        let rest = after(line, b" said to You :p ").unwrap();
        assert_eq!(parse_seq_time(rest), Some((12, 1_700_000_000_000_000)));
        assert_eq!(after(line, b" said :b "), None);
        assert_eq!(parse_seq_time(b"x 1"), None);
    }

    #[test]
    fn sources_rotate() {
        assert_eq!(source_ip(0, 4).to_string(), "127.0.1.1");
        assert_eq!(source_ip(5, 4).to_string(), "127.0.1.2");
    }
}
