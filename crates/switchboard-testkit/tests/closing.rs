//! Closes that always happen, and stops that flush: clients that do not read, on real
//! gateway processes (issue 12, holes 1 and 10), and the internal listener's handshake
//! against peers that announce huge frames or never authenticate (hole 2).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use switchboard::config::HeartbeatConfig;
use switchboard_testkit::{Deployment, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes each flood message carries, and how many: 32 MiB in all, far more than the
/// kernel buffers of a loopback connection hold, so the gateway's writer is stuck.
const SIZE: usize = 64 << 10;
const COUNT: usize = 512;

/// A deployment whose clients may have 64 MiB waiting (so the flood does not make a
/// slow consumer of them) and whose closes must be done within 1 s.
fn flood_options() -> switchboard_testkit::Options {
    options().gateway_keys("outbound_limit = 67108864\nflush_timeout = \"1s\"")
}

/// Asks the fixture for the flood and waits until the worker has sent all of it (the
/// gateway holds what the client has not read).
async fn flood(d: &Deployment, client: &mut TcpStream) -> SocketAddr {
    let addr = client.local_addr().expect("local address");
    wait_event(d, "connect", addr).await;
    client
        .write_all(format!("/flood {COUNT} {SIZE}\n").as_bytes())
        .await
        .expect("send");
    wait_event(d, "flooded", addr).await;
    addr
}

/// Waits until the gateway no longer counts any client; returns how long it took.
async fn until_no_client(api: &switchboard::Gateway, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if api.all_client_count().await.expect("count") == 0 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_client_completes_within_the_flush_timeout_when_the_client_does_not_read() {
    let d = Deployment::start(flood_options());
    let api = d.api().await;
    let mut client = sluggish(d.addr()).await;
    flood(&d, &mut client).await;
    let ids = api.all_client_ids().await.expect("ids");
    assert_eq!(ids.len(), 1);
    api.close_client(ids[0], None).await.expect("close_client");
    // 1 s of flush_timeout, then the socket is aborted: well within 6 s.
    let took = until_no_client(&api, Duration::from_secs(6)).await;
    assert!(
        took.is_some(),
        "the client was still connected 6 s after close_client (flush_timeout 1 s)\n{}",
        d.log()
    );
    // The client gets the end of the stream, short of the flood: nothing waits for it.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection did not end");
    assert!(
        received < COUNT * (SIZE + 1),
        "the client got all {received} bytes: the close waited for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_closes_a_silent_client_that_does_not_read_once_and_for_good() {
    let d = Deployment::start(flood_options().heartbeat(HeartbeatConfig {
        interval: Duration::from_millis(500),
        idle_intervals: 2,
        ping: None,
    }));
    let api = d.api().await;
    let mut client = sluggish(d.addr()).await;
    flood(&d, &mut client).await;
    // Silent for 2 × 500 ms: closed by the heartbeat, then flushed for at most 1 s.
    let took = until_no_client(&api, Duration::from_secs(8)).await;
    assert!(
        took.is_some(),
        "a silent client that does not read was still connected after 8 s\n{}",
        d.log()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closes = d
        .log()
        .matches("heartbeat: no data from client; closing")
        .count();
    assert_eq!(closes, 1, "one close, logged once:\n{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_flushes_what_its_clients_have_queued() {
    let mut d = Deployment::start(options().gateway_keys("outbound_limit = 67108864"));
    let mut client = sluggish(d.addr()).await;
    flood(&d, &mut client).await;
    // The gateway holds most of the 32 MiB. Stop everything, and only then read.
    let reader = tokio::spawn(async move {
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received += n,
            }
        }
    });
    let stopper = tokio::task::spawn_blocking(move || {
        d.stop();
        d
    });
    let received = tokio::time::timeout(Duration::from_secs(40), reader)
        .await
        .expect("the connection ends")
        .expect("reader");
    let d = stopper.await.expect("stop");
    assert_eq!(
        received,
        COUNT * (SIZE + 1),
        "a clean stop must deliver what was queued (each message is its bytes and a newline)\n{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_peer_announcing_a_huge_frame_is_refused_at_its_header() {
    let d = Deployment::start(options());
    let addr = internal_addr(&d);
    let mut peer = tcp(addr).await;
    // A header announcing 16 MiB (any type), then a first MiB of it.
    let mut header = (16u32 << 20).to_be_bytes().to_vec();
    header.push(2);
    peer.write_all(&header).await.expect("header");
    let _ = peer.write_all(&vec![0u8; 1 << 20]).await;
    // Before its 5 s to authenticate are up, and naming why.
    let reason = refusal(&mut peer, Duration::from_secs(3)).await;
    let reason = reason.unwrap_or_else(|| {
        panic!(
            "no refusal within 3 s of a 16 MiB header during the handshake\n{}",
            d.log()
        )
    });
    assert!(
        reason.contains("handshake"),
        "the refusal names the handshake limit: {reason:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_internal_connections_are_capped() {
    let d = Deployment::start(options().gateway_keys("max_unauthenticated = 8"));
    let addr = internal_addr(&d);
    // Eight silent peers hold every place...
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tcp(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a ninth is refused at once, saying why.
    let mut ninth = tcp(addr).await;
    let reason = refusal(&mut ninth, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("the ninth peer was not refused\n{}", d.log()));
    assert!(
        reason.contains("unauthenticated"),
        "the refusal names the cap: {reason:?}"
    );
    // When they go, the places are free again: the Gateway API authenticates.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = d.api().await;
    assert_eq!(api.all_client_count().await.expect("count"), 0);
}
