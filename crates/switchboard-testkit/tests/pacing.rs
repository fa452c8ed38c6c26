//! `gateway.min_write_interval` on a real gateway: a message to a client that was not
//! written to within the interval goes out at once, what comes sooner waits for the
//! interval and goes out in one write with everything queued meanwhile, and a close is
//! not held back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchboard_testkit::{Deployment, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The interval of these tests: the longest allowed, so that two API calls made right
/// after a write surely fall inside it.
const INTERVAL: Duration = Duration::from_secs(1);

/// What one read returns (as text); fails the test after [`WAIT`].
async fn read_once(s: &mut TcpStream) -> String {
    let mut buf = vec![0; 4096];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(e)) => panic!("read failed: {e}"),
        Err(_) => panic!("nothing to read within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sooner_than_the_interval_wait_for_it_and_go_out_together() {
    let d = Deployment::start(options().gateway_keys("min_write_interval = \"1s\""));
    let api = d.api().await;
    let mut s = tcp(d.addr()).await;
    let id = client_id(&api, s.local_addr().unwrap()).await;

    // Never written to: at once (within WAIT, far less than anything paced would take
    // if it were held for the interval and more).
    assert!(api.send_to_client(id, "one").await.unwrap());
    assert_eq!(read_once(&mut s).await, "one\n");
    let first = Instant::now();

    assert!(api.send_to_client(id, "two").await.unwrap());
    assert!(api.send_to_client(id, "three").await.unwrap());
    let queued = first.elapsed();
    assert!(
        queued < INTERVAL - Duration::from_millis(200),
        "two API calls took {queued:?}: too slow a machine for this test's 1 s interval"
    );
    let rest = read_once(&mut s).await;
    let waited = first.elapsed();
    assert_eq!(rest, "two\nthree\n", "held back, then written in one write");
    // The gateway wrote "one" before it was read here, so the interval had less left
    // of it than this; 100 ms of slack for the two clocks' readings.
    assert!(
        waited >= INTERVAL - Duration::from_millis(100),
        "written {waited:?} after the write before: not held for the interval"
    );

    // A close goes out at once, with what is queued before it.
    assert!(api.send_to_client(id, "four").await.unwrap());
    api.close_client(id, Some("bye".into())).await.unwrap();
    let mut all = String::new();
    let mut buf = vec![0; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => all.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(Err(e)) => panic!("read failed: {e}"),
            Err(_) => panic!("not closed within {WAIT:?}; read {all:?}"),
        }
    }
    assert_eq!(all, "four\nbye\n");
}
