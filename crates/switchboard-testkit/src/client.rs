//! A client of a `text` listener, for tests.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::{ClientId, Gateway};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::WAIT;

/// A client of a `text` listener: it sends lines and reads lines, as telnet would.
///
/// Every read is bounded: [`line`](Client::line) and the `expect` methods fail the test
/// after [`WAIT`], with a message that starts with the client's [`name`](Client::name).
///
/// ```no_run
/// # async fn demo(addr: std::net::SocketAddr) {
/// use switchboard_testkit::Client;
///
/// let mut alice = Client::connect(addr).await;
/// alice.name = "alice".into(); // failure messages say "alice: ..."
/// alice.expect_next("welcome").await; // exactly the next line
/// alice.send("hello").await;
/// let skipped = alice.expect("hello to you").await; // any lines, then this one
/// assert!(skipped.is_empty(), "{skipped:?}");
/// # }
/// ```
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    local: SocketAddr,
    /// Bytes of a line not complete yet (kept across reads that timed out).
    pending: Vec<u8>,
    /// The client id, once known: set by [`identify`](Client::identify), or by the
    /// test (an application's login dialogue may tell it).
    pub id: Option<ClientId>,
    /// How failure messages name this client; by default `client <local address>`.
    pub name: String,
}

impl Client {
    /// Connects to `addr`; fails the test if that takes longer than [`WAIT`].
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = match tokio::time::timeout(WAIT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => panic!("cannot connect to {addr}: {e}"),
            Err(_) => panic!("connecting to {addr} took longer than {WAIT:?}"),
        };
        let local = stream
            .local_addr()
            .expect("local address of a connected socket");
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            local,
            pending: Vec::new(),
            id: None,
            name: format!("client {local}"),
        }
    }

    /// The client's own address: the one the gateway sees and reports as the client's
    /// address (`ClientInfo::addr`, `Context::client_addr`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Reads the next line (without its `\n`); fails the test if none comes within
    /// [`WAIT`] or the connection closes.
    pub async fn line(&mut self) -> String {
        match self.read_line(WAIT).await {
            Ok(line) => line,
            Err(ReadEnd::Closed) => {
                panic!("{}: connection closed while waiting for a line", self.name)
            }
            Err(ReadEnd::TimedOut) => panic!("{}: no line within {WAIT:?}", self.name),
        }
    }

    /// Reads the next line, or `None` if none comes within `wait` or the connection
    /// closes. A line that was only partly received when the wait ended is kept for
    /// the next read.
    pub async fn try_line(&mut self, wait: Duration) -> Option<String> {
        self.read_line(wait).await.ok()
    }

    async fn read_line(&mut self, wait: Duration) -> Result<String, ReadEnd> {
        // `read_until` keeps what it read in `pending` if the timeout cancels it.
        match tokio::time::timeout(wait, self.reader.read_until(b'\n', &mut self.pending)).await {
            Err(_) => Err(ReadEnd::TimedOut),
            Ok(Err(_)) => Err(ReadEnd::Closed),
            Ok(Ok(_)) if self.pending.is_empty() => Err(ReadEnd::Closed),
            Ok(Ok(_)) => {
                let bytes = std::mem::take(&mut self.pending);
                let text = String::from_utf8_lossy(&bytes);
                Ok(text.trim_end_matches('\n').to_string())
            }
        }
    }

    /// Reads lines until one equals `expected`; returns the lines skipped before it.
    /// Fails the test if a line takes longer than [`WAIT`] to come.
    pub async fn expect(&mut self, expected: &str) -> Vec<String> {
        let mut skipped = vec![];
        loop {
            let l = self.line().await;
            if l == expected {
                return skipped;
            }
            skipped.push(l);
            assert!(
                skipped.len() < 100_000,
                "{}: never got {expected:?}",
                self.name
            );
        }
    }

    /// Reads the next line and fails the test unless it equals `expected`.
    pub async fn expect_next(&mut self, expected: &str) {
        let l = self.line().await;
        assert_eq!(l, expected, "{}: unexpected line", self.name);
    }

    /// Sends `line` and a `\n`.
    pub async fn send(&mut self, line: &str) {
        let name = &self.name;
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot send {line:?}: {e}"));
    }

    /// Sends `bytes` as they are (no line ending added).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let name = &self.name;
        self.writer
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot send {} bytes: {e}", bytes.len()));
    }

    /// Whether the server closes the connection within `wait`; data that arrives
    /// before the end is read and ignored.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        self.pending.clear();
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Learns this client's id from the gateways (through the Gateway API `api`, by
    /// the client's address), stores it in [`id`](Client::id) and returns it. Fails the
    /// test if no gateway reports the client within [`WAIT`].
    ///
    /// The gateway number is [`ClientId::gateway`]: tests use it to tell which gateway
    /// process holds the client.
    pub async fn identify(&mut self, api: &Gateway) -> ClientId {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = api
                .clients()
                .await
                .unwrap_or_else(|e| panic!("{}: cannot list the clients: {e}", self.name));
            if let Some(row) = rows
                .iter()
                .find(|r| r.addr.parse::<SocketAddr>().ok() == Some(self.local))
            {
                self.id = Some(row.client);
                return row.client;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no gateway reports a client at {} after {WAIT:?} (gateways: {:?})",
                self.name,
                self.local,
                api.gateways()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("local_addr", &self.local)
            .finish_non_exhaustive()
    }
}

/// Why no line could be read.
enum ReadEnd {
    Closed,
    TimedOut,
}
