//! The Gateway API at its limits, on real gateway processes (issue 12, holes 3 to 5):
//! replies larger than an internal frame, sessions over their bound, fan-out sends
//! too large to send, queries whose caller gives up, and an API peer that never reads
//! its replies.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::protocol::internal::{Frame, InternalCodec, Query, Role, PROTOCOL_VERSION};
use switchboard::{auth, ApiError, Session};
use switchboard_testkit::{Deployment, WAIT};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

/// Waits until the gateways count `n` clients and a worker has handled each one's
/// connect: the fixture's `on_connect` writes `path` into the session, and the worker
/// saves a handler's session by replacing it, so a session a test sets before that save
/// would be lost to it.
async fn until_clients(d: &Deployment, api: &switchboard::Gateway, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let count = api.all_client_count().await.expect("count");
        let mut handled = 0;
        if count == n {
            for id in api.all_client_ids().await.expect("ids") {
                let session = api.get_session(id).await.expect("get_session");
                handled += u64::from(session.is_some_and(|s| s.contains_key("path")));
            }
            if handled == n {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} client(s), {handled} connect(s) handled, instead of {n} after {WAIT:?}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session of about `size` bytes once encoded.
fn padded(n: usize, size: usize) -> Session {
    let Value::Object(map) = json!({ "n": n, "pad": "x".repeat(size) }) else {
        unreachable!("a JSON object literal")
    };
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_larger_than_an_internal_frame_comes_in_pages() {
    // 128 KiB frames (room for the listener's 64 KiB lines and 16 KiB sessions), 40
    // clients with 8 KB sessions: 320 KB of sessions in all.
    let d = Deployment::start(
        options().gateway_keys("max_internal_frame = 131072\nmax_session = 16384"),
    );
    let api = d.api().await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(tcp(d.addr()).await);
    }
    until_clients(&d, &api, 40).await;
    let ids = api.all_client_ids().await.expect("ids");
    for (n, id) in ids.iter().enumerate() {
        api.set_session(*id, &padded(n, 8000))
            .await
            .expect("set_session");
    }
    let sessions = api
        .sessions(None)
        .await
        .unwrap_or_else(|e| panic!("sessions over 128 KiB frames: {e}\n{}", d.log()));
    assert_eq!(sessions.len(), 40, "every client's session, in pages");
    for (id, session) in &sessions {
        let n = session["n"].as_u64().expect("n") as usize;
        assert_eq!(ids[n], *id, "each session belongs to its client");
        assert_eq!(session["pad"].as_str().map(str::len), Some(8000));
    }
    // The link survived the big reply: the worker and the API client still talk.
    assert_eq!(api.all_client_count().await.expect("count"), 40);
    assert!(
        !d.log().contains("protocol error"),
        "no link fell over a reply\n{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_its_bound_is_refused_with_a_clear_error() {
    let d = Deployment::start(options().gateway_keys("max_session = 4096"));
    let api = d.api().await;
    let _client = tcp(d.addr()).await;
    until_clients(&d, &api, 1).await;
    let id = api.all_client_ids().await.expect("ids")[0];
    api.set_session(id, &padded(1, 1000))
        .await
        .expect("a small session");

    let err = api
        .set_session(id, &padded(2, 8000))
        .await
        .expect_err("an 8 KB session over a 4 KiB bound");
    assert!(
        matches!(err, ApiError::SessionTooLarge { max: 4096, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("gateway.max_session"), "{err}");
    let err = api
        .update_session(id, &padded(3, 8000))
        .await
        .expect_err("an 8 KB update over a 4 KiB bound");
    assert!(matches!(err, ApiError::SessionTooLarge { .. }), "{err:?}");

    // Small updates that would make the session grow over its bound are refused by the
    // gateway, which keeps the session as it was.
    for n in 0..3 {
        let mut change = Session::new();
        change.insert(format!("k{n}"), Value::String("y".repeat(1500)));
        api.update_session(id, &change)
            .await
            .expect("a small update");
    }
    let session = api.get_session(id).await.expect("get").expect("online");
    let size = serde_json::to_vec(&session).expect("json").len();
    assert!(
        size <= 4096,
        "the session stayed within its bound: {size} bytes"
    );
    assert_eq!(
        session["n"],
        json!(1),
        "the refused changes left the rest as it was"
    );
    d.wait_log("session over gateway.max_session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_sends_too_large_for_a_frame_say_so() {
    let d = Deployment::start(
        options().gateway_keys("max_internal_frame = 131072\nmax_session = 16384"),
    );
    let api = d.api().await;
    let _client = tcp(d.addr()).await;
    until_clients(&d, &api, 1).await;
    let big = "z".repeat(200_000);
    let too_large = |r: Result<(), ApiError>, what: &str| match r {
        Err(ApiError::TooLarge { max: 131_072, .. }) => {}
        other => panic!("{what} of 200 KB over 128 KiB frames: {other:?}"),
    };
    too_large(api.send_to_all(big.clone()).await, "send_to_all");
    too_large(
        api.send_to_uid(&["u"], big.clone()).await.map(drop),
        "send_to_uid",
    );
    too_large(
        api.send_to_group(&["g"], big.clone(), &[]).await,
        "send_to_group",
    );
    too_large(api.ungroup(&big).await, "ungroup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_given_up_by_its_caller_leaves_nothing_behind() {
    let d = Deployment::start(options());
    let api = d.api().await;
    assert_eq!(api.pending_queries(), 0);
    // A gateway that cannot answer: each query waits until its caller gives up.
    let gateway = d.pids(switchboard_testkit::ChildRole::Gateway)[0];
    let stop = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &gateway.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    stop("-STOP");
    // Stopped for sure (state `T` in /proc) before the first query.
    let state = || {
        std::fs::read_to_string(format!("/proc/{gateway}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next()))
            .flatten()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while state() != Some('T') {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never stopped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut gave_up = 0;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_millis(20), api.all_client_count()).await {
            Err(_) => gave_up += 1,
            // An error is no answer either (a loaded machine may make the link look
            // dead); what matters is what the call leaves behind.
            Ok(answer) => assert!(answer.is_err(), "a stopped gateway answered: {answer:?}"),
        }
    }
    assert!(gave_up > 0, "no query was given up by its caller");
    let left = api.pending_queries();
    stop("-CONT");
    assert_eq!(
        left, 0,
        "queries whose callers gave up are forgotten at once"
    );
}

/// An authenticated API peer on the internal port, written by hand: it sends queries
/// and reads nothing.
async fn raw_api_peer(d: &Deployment) -> Framed<TcpStream, InternalCodec> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = tokio::time::timeout(WAIT, socket.connect(internal_addr(d)))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut framed = Framed::new(
        stream,
        InternalCodec {
            max_frame: 16 << 20,
        },
    );
    let Some(Ok(Frame::Hello { nonce, .. })) = framed.next().await else {
        panic!("no hello from the gateway");
    };
    let name = "never-reads".to_owned();
    let mac = auth::answer(&d.config().secret, &nonce, Role::Api, &name);
    framed
        .send(Frame::Auth {
            version: PROTOCOL_VERSION,
            role: Role::Api,
            name,
            mac,
            nonce: auth::nonce(),
        })
        .await
        .expect("auth");
    match framed.next().await {
        Some(Ok(Frame::Welcome { .. })) => framed,
        other => panic!("not welcomed: {other:?}\n{}", d.log()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_peer_that_never_reads_its_replies_is_cut_at_the_link_queue_limit() {
    let d = Deployment::start(
        options().gateway_keys("max_internal_frame = 262144\nlink_queue_limit = 1048576"),
    );
    let api = d.api().await;
    let _client = tcp(d.addr()).await;
    until_clients(&d, &api, 1).await;
    let id = api.all_client_ids().await.expect("ids")[0];
    api.set_session(id, &padded(0, 30_000))
        .await
        .expect("session");

    // 2,000 queries of 30 KB answers each: 60 MB, which the peer never reads.
    let mut peer = raw_api_peer(&d).await;
    let mut batch = BytesMut::new();
    for n in 0..2000 {
        switchboard::protocol::internal::encode(
            &Frame::Query {
                id: n,
                query: Query::Sessions(None),
            },
            &mut batch,
        );
    }
    let stream = peer.get_mut();
    let _ = tokio::time::timeout(WAIT, tokio::io::AsyncWriteExt::write_all(stream, &batch)).await;
    d.wait_log("link queue over its limit");
    // The gateway goes on serving everybody else.
    assert_eq!(api.all_client_count().await.expect("count"), 1);
}
