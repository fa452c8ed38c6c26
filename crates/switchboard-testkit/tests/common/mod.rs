//! What the end-to-end tests of the fixture application share: its deployment, HTTP
//! and WebSocket on raw sockets (a WebSocket library refuses to send the bad frames
//! these tests need), certificates, and the log.
#![allow(dead_code)]

pub mod admin;
pub mod pki;

#[allow(unused_imports)]
pub use admin::*;

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::{ClientId, Gateway};
use switchboard_testkit::{Deployment, Listener, Options, WAIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The fixture application (`src/bin/fixture.rs`).
pub const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture");

/// A deployment of the fixture: one gateway, one worker (the tests need no more).
pub fn options() -> Options {
    Options::new(FIXTURE).workers(1)
}

/// A `websocket` listener.
pub fn websocket(name: &str) -> Listener {
    Listener::new(name, "websocket")
}

/// Connects to `addr`; fails the test after [`WAIT`].
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    match tokio::time::timeout(WAIT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("cannot connect to {addr}: {e}"),
        Err(_) => panic!("connecting to {addr} took longer than {WAIT:?}"),
    }
}

/// The lines of the deployment's log that the fixture wrote about the client at `addr`
/// (`fixture: EVENT ADDR ...`).
pub fn fixture_events(d: &Deployment, addr: SocketAddr) -> Vec<String> {
    let needle = format!(" {addr}");
    d.log()
        .lines()
        .filter_map(|l| l.split_once("fixture: ").map(|(_, e)| e.to_owned()))
        .filter(|e| e.contains(&format!("{needle} ")) || e.ends_with(&needle))
        .collect()
}

/// Waits until the fixture logged `event` (`connect`, `close`, ...) for the client at
/// `addr`; fails the test, with the log, after [`WAIT`].
pub async fn wait_event(d: &Deployment, event: &str, addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let prefix = format!("{event} {addr}");
    while !fixture_events(d, addr)
        .iter()
        .any(|e| e.starts_with(&prefix))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fixture never logged {prefix:?} within {WAIT:?}:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The id of the client at `addr`, from the gateways; fails after [`WAIT`].
pub async fn client_id(api: &Gateway, addr: SocketAddr) -> ClientId {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = api.clients().await.expect("list the clients");
        if let Some(row) = rows.iter().find(|r| r.addr == addr.to_string()) {
            return row.client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no gateway reports a client at {addr}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- HTTP ------------------------------------------------------------------------------

/// An HTTP response: status, head and body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The head (status line and headers), as text.
    pub head: String,
    /// The body (what came after the head).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a response head from `stream` (with what was already in `buf`); what follows the
/// head stays in `buf`. Fails the test after [`WAIT`] or if the connection closes first.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Response {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
            return Response {
                status,
                head,
                body: Vec::new(),
            };
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => panic!(
                "connection closed before a whole response head: {:?}",
                String::from_utf8_lossy(buf)
            ),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => panic!("reading a response: {e}"),
            Err(_) => panic!("no response head within {WAIT:?}"),
        }
    }
}

/// Reads until the server closes the connection; fails the test after [`WAIT`].
pub async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) {
    match tokio::time::timeout(WAIT, stream.read_to_end(buf)).await {
        Ok(Ok(_)) => {}
        // A reset after the answer (the server closed with unread input) ends it too.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("reading to the end: {e}"),
        Err(_) => panic!("the server did not close the connection within {WAIT:?}"),
    }
}

/// Sends `request` on a new connection and reads the whole answer (the gateway closes
/// every plain HTTP connection after one answer).
pub async fn http(addr: SocketAddr, request: &str) -> Response {
    let mut s = tcp(addr).await;
    s.write_all(request.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    let mut r = read_head(&mut s, &mut buf).await;
    read_to_end(&mut s, &mut buf).await;
    r.body = buf;
    r
}

/// A WebSocket upgrade request for `path`, with `extra` header lines (`"Origin: x"`).
pub fn upgrade_request(path: &str, extra: &[&str]) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

// ---- WebSocket frames ------------------------------------------------------------------

/// Opcodes.
pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xa;
/// The FIN bit of a frame's first byte.
pub const FIN: u8 = 0x80;

fn frame_bytes(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n < 65536 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame; `first` is FIN/RSV bits | opcode.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    frame_bytes(first, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// An unmasked frame (only servers may send these).
pub fn unmasked(first: u8, payload: &[u8]) -> Vec<u8> {
    frame_bytes(first, payload, None)
}

/// A close frame's payload: code and reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The FIN bit.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The payload (servers do not mask).
    pub payload: Vec<u8>,
}

impl Frame {
    /// The code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The payload as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Takes one whole server frame off the front of `buf`, if there is one.
fn parse_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return None;
    }
    let frame = Frame {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        payload: buf[head..head + len].to_vec(),
    };
    buf.drain(..head + len);
    Some(frame)
}

/// A WebSocket client on a raw stream: sends any bytes, reads frames as they come.
pub struct RawWs<S = TcpStream> {
    /// The connection.
    pub stream: S,
    /// Bytes read and not yet taken as a frame.
    buf: Vec<u8>,
}

impl RawWs<TcpStream> {
    /// Connects to `addr` and upgrades on `path`; fails the test unless the answer is
    /// `101`.
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        Self::upgrade(tcp(addr).await, path, &[])
            .await
            .unwrap_or_else(|r| panic!("upgrade on {path} refused: {r:?}"))
    }

    /// The client's own address (the one the gateway reports).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    /// Sends an upgrade request for `path` with `extra` headers; the client on `101`,
    /// else the whole refusal.
    pub async fn upgrade(mut stream: S, path: &str, extra: &[&str]) -> Result<Self, Response> {
        stream
            .write_all(upgrade_request(path, extra).as_bytes())
            .await
            .expect("send the upgrade request");
        let mut buf = Vec::new();
        let mut r = read_head(&mut stream, &mut buf).await;
        if r.status == 101 {
            assert_eq!(
                r.header("sec-websocket-accept"),
                Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "{r:?}"
            );
            return Ok(Self { stream, buf });
        }
        read_to_end(&mut stream, &mut buf).await;
        r.body = buf;
        Err(r)
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("send to the gateway");
    }

    /// Sends one masked, unfragmented text message.
    pub async fn send_text(&mut self, text: &str) {
        self.send(&masked(FIN | TEXT, text.as_bytes())).await;
    }

    /// The next frame, or `None` if the connection ends first; fails the test after
    /// `wait` with nothing.
    pub async fn try_frame(&mut self, wait: Duration) -> Result<Option<Frame>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = parse_frame(&mut self.buf) {
                return Ok(Some(f));
            }
            let mut chunk = [0u8; 16 << 10];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Err(()),
            }
        }
    }

    /// The next frame; fails the test if none comes within [`WAIT`].
    pub async fn frame(&mut self) -> Frame {
        match self.try_frame(WAIT).await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("the connection ended while waiting for a frame"),
            Err(()) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next frame must be a text message with this text.
    pub async fn expect_text(&mut self, text: &str) {
        let f = self.frame().await;
        assert_eq!(
            (f.opcode, f.fin, f.text().as_str()),
            (TEXT, true, text),
            "{f:?}"
        );
    }

    /// The next frame must be a close frame with `code`, and the connection must end
    /// after it; returns the close reason.
    pub async fn expect_close(&mut self, code: u16) -> String {
        let f = self.frame().await;
        assert_eq!(f.close_code(), Some(code), "expected close {code}: {f:?}");
        assert!(
            self.ends_within(WAIT).await,
            "the connection stayed open after close {code}"
        );
        String::from_utf8_lossy(&f.payload[2..]).into_owned()
    }

    /// Whether the server ends the connection within `wait` (frames that come first are
    /// skipped).
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_frame(left).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(()) => return false,
            }
        }
    }
}

// ---- commands ---------------------------------------------------------------------------

/// Runs `BIN --config FILE ARGS...` of the deployment and waits for it at most
/// [`WAIT`] (a `start` that wrongly starts would never end): its exit status and
/// output. Fails the test if it is still running then.
pub fn run_bounded(d: &Deployment, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out_path = d.dir().join(format!("run-{}.out", args.join("-")));
    let out = std::fs::File::create(&out_path).expect("create the output file");
    let mut child = std::process::Command::new(d.binary())
        .arg("--config")
        .arg(d.config_path())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("clone a file handle"))
        .stderr(out)
        .spawn()
        .expect("run the binary");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{args:?} still running after {WAIT:?}:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(&out_path).unwrap_or_default(),
    )
}

// ---- peers that misbehave -----------------------------------------------------------

/// A client that reads nothing on its own: a tiny receive buffer, so that what the
/// gateway writes piles up in the gateway.
pub async fn sluggish(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// The gateway's internal address, from its stats.
pub fn internal_addr(d: &Deployment) -> SocketAddr {
    let all = switchboard::stats::read_all(&d.config().run_dir());
    let gw = all
        .iter()
        .find(|s| s.role == "gateway")
        .expect("a gateway's stats");
    gw.detail["internal"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the internal address in the stats")
}

/// Reads frames from an internal connection until a `Refused` (its reason) or the end.
pub async fn refusal(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        while let Ok(Some(frame)) = switchboard::protocol::internal::decode(&mut buf, 1 << 20) {
            if let switchboard::protocol::internal::Frame::Refused { reason } = frame {
                return Some(reason);
            }
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}
