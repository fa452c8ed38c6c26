//! `Client` against real sockets: a local TCP server plays the gateway. (`Deployment`
//! is exercised by the applications' own suites, `apps/chat/tests` and
//! `apps/rooms/tests`, and by this crate's transport tests — `websocket.rs`, `json.rs`,
//! `tls.rs`, `internal_tls.rs` — which run the fixture, `src/bin/fixture.rs`.)

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_testkit::{Client, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A listener on a free port, and a client connected to it with the server's end.
async fn pair() -> (Client, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(Client::connect(addr), listener.accept());
    let (server, peer) = accepted.unwrap();
    assert_eq!(
        peer,
        client.local_addr(),
        "local_addr is what the server sees"
    );
    (client, server)
}

#[tokio::test]
async fn lines_are_read_in_order_and_expect_returns_what_it_skipped() {
    let (mut c, mut server) = pair().await;
    server.write_all(b"one\ntwo\nthree\nfour\n").await.unwrap();
    c.expect_next("one").await;
    assert_eq!(c.expect("four").await, vec!["two", "three"]);
}

#[tokio::test]
async fn a_line_cut_by_a_timeout_is_completed_by_the_next_read() {
    let (mut c, mut server) = pair().await;
    server.write_all(b"hal").await.unwrap();
    assert_eq!(c.try_line(Duration::from_millis(200)).await, None);
    server.write_all(b"f\nnext\n").await.unwrap();
    assert_eq!(c.line().await, "half");
    assert_eq!(c.line().await, "next");
}

#[tokio::test]
async fn try_line_is_none_at_the_end_and_a_last_line_without_newline_counts() {
    let (mut c, mut server) = pair().await;
    server.write_all(b"last").await.unwrap();
    drop(server);
    assert_eq!(c.try_line(WAIT).await.as_deref(), Some("last"));
    assert_eq!(c.try_line(WAIT).await, None);
}

#[tokio::test]
async fn closed_within_tells_a_close_from_silence() {
    let (mut c, mut server) = pair().await;
    server.write_all(b"ignored\n").await.unwrap();
    assert!(!c.closed_within(Duration::from_millis(200)).await);
    drop(server);
    assert!(c.closed_within(WAIT).await);
}

#[tokio::test]
async fn send_adds_a_newline_and_send_raw_does_not() {
    let (mut c, server) = pair().await;
    c.send("hello").await;
    c.send_raw(b"raw ").await;
    c.send_raw(b"bytes\n").await;
    let mut lines = BufReader::new(server).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("hello"));
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("raw bytes")
    );
}

#[tokio::test]
#[should_panic(expected = "bob: connection closed while waiting for a line")]
async fn line_fails_naming_the_client_when_the_connection_closes() {
    let (mut c, server) = pair().await;
    c.name = "bob".into();
    drop(server);
    c.line().await;
}

#[tokio::test]
#[should_panic(expected = "bob: unexpected line")]
async fn expect_next_fails_naming_the_client_on_another_line() {
    let (mut c, mut server) = pair().await;
    c.name = "bob".into();
    server.write_all(b"surprise\n").await.unwrap();
    c.expect_next("hello").await;
}
