//! `tls` listeners end to end: every protocol over TLS (wss, TLS text, frame and json)
//! with certificates made here (a CA and a leaf for `IP:127.0.0.1`), certificate
//! reloads, refused configurations, and the protocol versions offered.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::pki::{self, Ca, Leaf};
use common::*;
use futures_util::{SinkExt, StreamExt};
use switchboard_testkit::{Deployment, Listener, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Certificates in a directory of their own (the deployment's does not exist yet when
/// its options are written).
struct Certs {
    dir: tempfile::TempDir,
    ca: Ca,
    first: Leaf,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = Ca::new("switchboard test CA");
        let first = ca.leaf("first");
        first.write(dir.path(), "server");
        Self { dir, ca, first }
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("server.crt")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("server.key")
    }

    /// `tls = { ... }` for the server files.
    fn tls(&self) -> String {
        format!("tls = {}", pki::tls_table(&self.cert(), &self.key()))
    }
}

/// A deployment with a wss listener (`wss`) and a TLS text listener (`lines`), both on
/// the certificate files of `certs`.
fn deployment(certs: &Certs) -> Deployment {
    Deployment::start(
        options()
            .listener(websocket("wss").keys(&certs.tls()))
            .listener(Listener::text("lines").keys(&certs.tls())),
    )
}

/// A TLS line client.
struct Lines {
    stream: BufReader<TlsStream<TcpStream>>,
}

impl Lines {
    async fn connect(addr: SocketAddr, ca: &Ca) -> Self {
        Self {
            stream: BufReader::new(pki::connect(addr, &ca.pem, &[]).await),
        }
    }

    fn cert(&self) -> Vec<u8> {
        pki::peer_cert(self.stream.get_ref())
    }

    /// Sends `line` and returns the next line.
    async fn ask(&mut self, line: &str) -> String {
        let s = self.stream.get_mut();
        s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(WAIT, self.stream.read_line(&mut got))
            .await
            .expect("an answer in time")
            .expect("read a line");
        got.trim_end().to_owned()
    }
}

type Wss = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// A wss client (ALPN `http/1.1`, as browsers ask).
async fn wss(addr: SocketAddr, ca: &Ca) -> (Wss, Vec<u8>) {
    let tls = pki::connect(addr, &ca.pem, &[b"http/1.1"]).await;
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let cert = pki::peer_cert(&tls);
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/"), tls)
        .await
        .expect("upgrade over TLS");
    (ws, cert)
}

async fn echo(ws: &mut Wss, text: &str) {
    ws.send(WsMessage::text(text)).await.unwrap();
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(m))) => assert_eq!(m, WsMessage::text(text)),
        other => panic!("no echo: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_tls_text_work_end_to_end() {
    let certs = Certs::new();
    let d = deployment(&certs);
    let (mut ws, cert) = wss(d.listener_addr("wss"), &certs.ca).await;
    assert_eq!(cert, certs.first.der);
    echo(&mut ws, "über TLS").await;
    // A message of the whole default limit (1 MiB), across many TLS records.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(WsMessage::binary(big.clone())).await.unwrap();
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(m))) => assert!(m == WsMessage::binary(big), "the 1 MiB message differs"),
        other => panic!("no echo of 1 MiB: {other:?}"),
    }
    ws.send(WsMessage::text("/whoami")).await.unwrap();
    let who = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        who.to_text()
            .unwrap()
            .starts_with("listener=wss protocol=websocket "),
        "{who:?}"
    );

    let mut lines = Lines::connect(d.listener_addr("lines"), &certs.ca).await;
    assert_eq!(lines.cert(), certs.first.der);
    assert_eq!(lines.ask("hello").await, "hello");
    let long = "x".repeat(65536);
    assert!(lines.ask(&long).await == long, "a 64 KiB line");
    assert!(lines
        .ask("/whoami")
        .await
        .starts_with("listener=lines protocol=text "));
    // Plain HTTP over TLS serves the page too.
    let mut tls = pki::connect(d.listener_addr("wss"), &certs.ca.pem, &[b"http/1.1"]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let page = read_head(&mut tls, &mut buf).await;
    assert_eq!(page.status, 200, "{page:?}");
}

/// Sends one length-prefixed frame on `s` (the prefix counts the 4 header bytes too if
/// `total`, as `json` does; not, as `frame` does) and returns the body of the frame
/// that comes back.
async fn frame_round_trip(s: &mut TlsStream<TcpStream>, body: &[u8], total: bool) -> Vec<u8> {
    let header = if total { 4 } else { 0 };
    let mut out = (body.len() as u32 + header).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .expect("a frame in time")
        .expect("read a frame header");
    let mut back = vec![0u8; u32::from_be_bytes(len) as usize - header as usize];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("a frame body in time")
        .expect("read a frame body");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_and_json_work_over_tls_too() {
    // With wss and TLS text above: every protocol over every transport.
    let certs = Certs::new();
    let d = Deployment::start(
        options()
            .listener(Listener::frame("frames").keys(&certs.tls()))
            .listener(Listener::new("docs", "json").keys(&certs.tls())),
    );

    let mut frames = pki::connect(d.listener_addr("frames"), &certs.ca.pem, &[]).await;
    assert_eq!(pki::peer_cert(&frames), certs.first.der);
    let local = frames.get_ref().0.local_addr().unwrap();
    assert_eq!(
        frame_round_trip(&mut frames, b"hello", false).await,
        b"hello"
    );
    // A frame of 256 KiB, across many TLS records, comes back whole.
    let big: Vec<u8> = (0..256u32 << 10).map(|i| (i % 251) as u8).collect();
    assert!(
        frame_round_trip(&mut frames, &big, false).await == big,
        "256 KiB differ"
    );
    assert_eq!(
        String::from_utf8(frame_round_trip(&mut frames, b"/whoami", false).await).unwrap(),
        format!("listener=frames protocol=frame addr={local} request_path=- forwarded_for=-")
    );

    let mut docs = pki::connect(d.listener_addr("docs"), &certs.ca.pem, &[]).await;
    assert_eq!(pki::peer_cert(&docs), certs.first.der);
    let local = docs.get_ref().0.local_addr().unwrap();
    // Workerman's JsonProtocol, byte for byte inside TLS.
    docs.write_all(b"\x00\x00\x00\x0f{\"type\":1}\n")
        .await
        .unwrap();
    docs.flush().await.unwrap();
    let mut echo = [0u8; 15];
    tokio::time::timeout(WAIT, docs.read_exact(&mut echo))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&echo, b"\x00\x00\x00\x0f{\"type\":1}\n");
    assert_eq!(
        String::from_utf8(frame_round_trip(&mut docs, b"\"/whoami\"", true).await).unwrap(),
        format!("listener=docs protocol=json addr={local} request_path=- forwarded_for=-")
    );
    // A body that is not JSON: one error frame, then the end of the TLS stream.
    docs.write_all(b"\x00\x00\x00\x0cnot json").await.unwrap();
    docs.flush().await.unwrap();
    let mut got = Vec::new();
    read_to_end(&mut docs, &mut got).await;
    let len = u32::from_be_bytes(got[..4].try_into().unwrap()) as usize;
    assert_eq!(
        len,
        got.len(),
        "one frame: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        got[4..].starts_with(b"{\"error\":\"frame body is not JSON: "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

/// A TLS ClientHello that offers at most `version` (0x0301 = TLS 1.0, 0x0302 = 1.1) and
/// no extension.
fn old_client_hello(version: u16) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites of that era
    body.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0, 0, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_offered_and_nothing_older() {
    let certs = Certs::new();
    let d = deployment(&certs);
    let addr = d.listener_addr("lines");
    // Both current versions, whatever the client prefers.
    let tls = pki::connect(addr, &certs.ca.pem, &[]).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    for (version, name) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = pki::client_config(&certs.ca.pem, &[version], &[]);
        let tls = pki::connect_with(addr, config).await.expect("handshake");
        assert_eq!(tls.get_ref().1.protocol_version(), Some(name));
    }
    // A client that knows nothing newer than TLS 1.1 (or 1.0) gets an alert, not a
    // ServerHello.
    for version in [0x0302u16, 0x0301] {
        let mut s = tcp(addr).await;
        s.write_all(&old_client_hello(version)).await.unwrap();
        let mut got = Vec::new();
        read_to_end(&mut s, &mut got).await;
        // One record: a fatal alert (rustls says handshake_failure), and the end.
        assert!(
            got.len() == 7 && got[0] == 0x15 && got[3..6] == [0x00, 0x02, 0x02],
            "a fatal alert for {version:#06x}, no ServerHello: {got:02x?}"
        );
    }
}

/// Replaces the certificate on disk, has `trigger` make the gateways re-read it, and
/// checks that new connections get the new one while old ones stay up and work.
async fn certificate_swap(trigger: impl FnOnce(&Deployment)) {
    let certs = Certs::new();
    let d = deployment(&certs);
    let mut old_lines = Lines::connect(d.listener_addr("lines"), &certs.ca).await;
    let (mut old_ws, cert) = wss(d.listener_addr("wss"), &certs.ca).await;
    assert_eq!(cert, certs.first.der);
    let second = certs.ca.leaf("second");
    second.write(certs.dir.path(), "server");
    d.note("certificate replaced on disk");
    trigger(&d);
    // One line per listener certificate.
    let deadline = std::time::Instant::now() + WAIT;
    while d.log().matches("certificate reloaded").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut new_lines = Lines::connect(d.listener_addr("lines"), &certs.ca).await;
    assert_eq!(
        new_lines.cert(),
        second.der,
        "a new connection gets the new one"
    );
    let (mut new_ws, cert) = wss(d.listener_addr("wss"), &certs.ca).await;
    assert_eq!(cert, second.der);
    assert_eq!(new_lines.ask("new").await, "new");
    echo(&mut new_ws, "new").await;
    // The old connections kept their certificate and their session.
    assert_eq!(old_lines.cert(), certs.first.der);
    assert_eq!(old_lines.ask("still here").await, "still here");
    echo(&mut old_ws, "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_gives_new_connections_the_new_certificate_and_keeps_old_ones() {
    certificate_swap(|d| {
        let out = d.cli(&["reload"]);
        assert!(out.status.success(), "{out:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_to_the_supervisor_gives_new_connections_the_new_certificate() {
    certificate_swap(|d| {
        assert!(switchboard::process::signal(
            d.supervisor_pid(),
            libc::SIGHUP
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_at_reload_keeps_the_old_certificate_and_logs_an_error() {
    let certs = Certs::new();
    let d = deployment(&certs);
    let mut old = Lines::connect(d.listener_addr("lines"), &certs.ca).await;
    let other = certs.ca.leaf("other");
    let broken: [(&str, &str, &str); 2] = [
        ("garbage", "not a certificate\n", &certs.first.key),
        (
            "a key that is not the certificate's",
            &other.cert,
            &certs.first.key,
        ),
    ];
    for (round, (what, cert, key)) in broken.into_iter().enumerate() {
        std::fs::write(certs.cert(), cert).unwrap();
        std::fs::write(certs.key(), key).unwrap();
        d.note(what);
        switchboard::process::signal(d.supervisor_pid(), libc::SIGHUP);
        let deadline = std::time::Instant::now() + WAIT;
        let needle = "certificate not reloaded; keeping the current one";
        while d.log().matches(needle).count() < 2 * (round + 1) {
            assert!(std::time::Instant::now() < deadline, "{what}:\n{}", d.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let log = d.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        assert!(
            lines
                .iter()
                .all(|l| l.contains("ERROR") && l.contains("gateway.listeners[")),
            "{what}: {lines:#?}"
        );
        let mut fresh = Lines::connect(d.listener_addr("lines"), &certs.ca).await;
        assert_eq!(fresh.cert(), certs.first.der, "{what}: the old certificate");
        assert_eq!(fresh.ask("fresh").await, "fresh");
        let (mut ws, cert) = wss(d.listener_addr("wss"), &certs.ca).await;
        assert_eq!(cert, certs.first.der, "{what}");
        echo(&mut ws, "fresh").await;
    }
    assert_eq!(old.ask("old").await, "old");
    assert!(!d.log().contains("certificate reloaded"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_tls_handshake_is_closed_after_the_handshake_timeout() {
    let certs = Certs::new();
    let d = Deployment::start(
        options().listener(
            Listener::text("lines")
                .keys(&certs.tls())
                .keys("handshake_timeout = \"1s\""),
        ),
    );
    let mut silent = tcp(d.addr()).await;
    let mut half = tcp(d.addr()).await;
    half.write_all(&old_client_hello(0x0303)[..20])
        .await
        .unwrap();
    for s in [&mut silent, &mut half] {
        let mut got = Vec::new();
        read_to_end(s, &mut got).await;
        assert!(got.is_empty(), "{got:02x?}");
    }
    // A prompt client is served.
    let mut lines = Lines::connect(d.addr(), &certs.ca).await;
    assert_eq!(lines.ask("in time").await, "in time");
}

/// A deployment (not started) whose first listener uses `cert` and `key`.
fn prepared(cert: &Path, key: &Path) -> Deployment {
    Deployment::prepare(
        options()
            .listener(websocket("wss").keys(&format!("tls = {}", pki::tls_table(cert, key))))
            .listener(Listener::text("lines")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_at_config_check_and_start_and_nothing_starts() {
    let certs = Certs::new();
    let dir = certs.dir.path();
    std::fs::write(
        dir.join("bad.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 !!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.join("empty.pem"), "just text\n").unwrap();
    let other = certs.ca.leaf("other");
    let (other_cert, _) = other.write(dir, "other");
    let cases = [
        (
            "missing file",
            dir.join("missing.crt"),
            certs.key(),
            "cannot read",
        ),
        ("bad PEM", dir.join("bad.pem"), certs.key(), "bad PEM"),
        (
            "no certificate",
            dir.join("empty.pem"),
            certs.key(),
            "no certificate",
        ),
        (
            "missing key",
            certs.cert(),
            dir.join("missing.key"),
            "cannot read",
        ),
        (
            "bad key",
            certs.cert(),
            dir.join("empty.pem"),
            "no usable private key",
        ),
        (
            "key of another certificate",
            other_cert,
            certs.key(),
            "does not match",
        ),
    ];
    for (what, cert, key, says) in cases {
        let d = prepared(&cert, &key);
        let check = d.cli(&["config", "check"]);
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success(), "{what}: config check passed");
        assert!(
            stderr.contains("gateway.listeners[0].tls") && stderr.contains(says),
            "{what}: {stderr}"
        );
        // In the foreground and as a daemon: the error is printed, naming the key.
        for start in [&["start"][..], &["start", "-d"]] {
            let (status, output) = run_bounded(&d, start);
            assert!(!status.success(), "{what}: {start:?} succeeded:\n{output}");
            assert!(
                output.contains("gateway.listeners[0].tls") && output.contains(says),
                "{what}: {start:?}: {output}"
            );
            assert!(!output.contains("supervisor started"), "{what}: {output}");
            assert_eq!(
                switchboard::supervisor::running_pid(d.config()),
                None,
                "{what}"
            );
        }
        // The listeners are on port 0: a gateway that bound one would report it.
        let gateways: Vec<_> = switchboard::stats::read_all(&d.config().run_dir())
            .into_iter()
            .filter(|s| s.role == "gateway")
            .collect();
        assert!(gateways.is_empty(), "{what}: a gateway is up: {gateways:?}");
    }
}

/// A worker-only machine runs no listener: the gateways' certificate files are not its
/// business, and a missing one does not stop `start --only worker`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_only_machine_needs_no_gateway_certificate() {
    let certs = Certs::new();
    let d = prepared(&certs.dir.path().join("missing.crt"), &certs.key());
    let out = d.cli(&["start", "-d", "--only", "worker"]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("started in the background"), "{text}");
    let stop = d.cli(&["stop"]);
    assert!(stop.status.success(), "{stop:?}");
    // The same file is still refused where gateways run.
    let (status, output) = run_bounded(&d, &["start", "--only", "gateway"]);
    assert!(
        !status.success() && output.contains("gateway.listeners[0].tls"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_a_broken_certificate_on_disk_keeps_the_running_deployment() {
    let certs = Certs::new();
    let d = deployment(&certs);
    let mut lines = Lines::connect(d.listener_addr("lines"), &certs.ca).await;
    let pid = d.supervisor_pid();
    std::fs::write(certs.cert(), "not a certificate\n").unwrap();
    let (status, output) = run_bounded(&d, &["restart"]);
    assert!(!status.success(), "restart succeeded:\n{output}");
    assert!(output.contains("gateway.listeners[0].tls"), "{output}");
    // Nothing was stopped: same supervisor, same connection, still served.
    assert!(switchboard::process::alive(pid));
    assert!(!d.log().contains("stopping"), "{}", d.log());
    assert_eq!(lines.ask("still served").await, "still served");
}
