//! `websocket` listeners end to end, on the wire: the fixture application
//! (`src/bin/fixture.rs`) in real gateway and worker processes, clients on real sockets
//! — tokio-tungstenite where a well-behaved client will do, raw frames where the test
//! needs bytes a library would refuse to send.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use switchboard_testkit::{Client, Deployment, Listener, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// A tokio-tungstenite client upgraded on `path`.
async fn client(addr: std::net::SocketAddr, path: &str) -> WebSocketStream<TcpStream> {
    let (ws, response) =
        tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp(addr).await)
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade on {path}: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// The next message; fails the test after [`WAIT`].
async fn next(ws: &mut WebSocketStream<TcpStream>) -> WsMessage {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("no message within {WAIT:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_messages_come_back_as_they_came() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let mut ws = client(d.addr(), "/").await;
    ws.send(WsMessage::text("héllo wörld")).await.unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::text("héllo wörld"));
    ws.send(WsMessage::binary(vec![0u8, 0xff, 0x9f, 0x92]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        WsMessage::binary(vec![0u8, 0xff, 0x9f, 0x92])
    );
    // Binary stays binary even when the bytes happen to be UTF-8.
    ws.send(WsMessage::binary(b"plain ascii".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        WsMessage::binary(b"plain ascii".to_vec())
    );
    ws.send(WsMessage::text("")).await.unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::text(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_is_answered_with_a_pong_carrying_its_payload() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let mut ws = client(d.addr(), "/").await;
    ws.send(WsMessage::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        WsMessage::Pong(b"are you there".to_vec().into())
    );
    // And the connection goes on.
    ws.send(WsMessage::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::text("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_handshake_echoes_the_clients_code() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let mut ws = RawWs::connect(d.addr(), "/").await;
    let addr = ws.local_addr();
    wait_event(&d, "connect", addr).await;
    ws.send(&masked(FIN | CLOSE, &close_payload(4001, "bye")))
        .await;
    ws.expect_close(4001).await;
    wait_event(&d, "close", addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_message_is_reassembled_with_a_ping_between_fragments() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let mut ws = RawWs::connect(d.addr(), "/").await;
    // Each fragment in its own write, so the gateway sees the message arrive in parts.
    for frame in [
        masked(TEXT, b"Hel"),
        masked(FIN | PING, b"p"),
        masked(CONT, b"l"),
        masked(FIN | CONT, b"o"),
    ] {
        ws.send(&frame).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let pong = ws.frame().await;
    assert_eq!((pong.opcode, pong.payload.as_slice()), (PONG, &b"p"[..]));
    ws.expect_text("Hello").await;
    // A character split between two fragments is still text: UTF-8 is checked on the
    // whole message.
    let e_acute = "é".as_bytes();
    ws.send(&masked(TEXT, &e_acute[..1])).await;
    ws.send(&masked(FIN | CONT, &e_acute[1..])).await;
    ws.expect_text("é").await;
    // Binary fragments come back as one binary message.
    ws.send(&masked(BINARY, &[1, 2])).await;
    ws.send(&masked(FIN | CONT, &[3])).await;
    let f = ws.frame().await;
    assert_eq!((f.opcode, f.fin, f.payload), (BINARY, true, vec![1, 2, 3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_closes_with_1009_as_one_frame_or_in_fragments() {
    let d = Deployment::start(options().listener(websocket("ws").keys("max_message = 1024")));
    // Exactly the limit passes, whole or in fragments.
    let mut ok = RawWs::connect(d.addr(), "/").await;
    ok.send(&masked(FIN | BINARY, &[7; 1024])).await;
    assert_eq!(ok.frame().await.payload, vec![7; 1024]);
    ok.send(&masked(BINARY, &[8; 512])).await;
    ok.send(&masked(FIN | CONT, &[8; 512])).await;
    assert_eq!(ok.frame().await.payload, vec![8; 1024]);

    let mut one = RawWs::connect(d.addr(), "/").await;
    one.send(&masked(FIN | BINARY, &[1; 2000])).await;
    let reason = one.expect_close(1009).await;
    assert!(reason.contains("1024"), "{reason}");

    // A client still sending a large message when the gateway stops reading it (as a
    // browser would) gets the close frame too.
    let big = RawWs::connect(d.addr(), "/").await;
    let (mut rd, mut wr) = tokio::io::split(big.stream);
    let writer = tokio::spawn(async move {
        // Fails once the gateway has closed: that is expected.
        let _ = wr.write_all(&masked(FIN | BINARY, &vec![2; 8 << 20])).await;
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, rd.read_to_end(&mut got)).await;
    writer.abort();
    assert_eq!(
        got.get(..4),
        Some(&[0x88, got.get(1).copied().unwrap_or(0), 0x03, 0xf1][..]),
        "close 1009 first: {got:?}"
    );

    let mut parts = RawWs::connect(d.addr(), "/").await;
    parts.send(&masked(TEXT, &[b'a'; 600])).await;
    parts.send(&masked(FIN | CONT, &[b'a'; 600])).await;
    parts.expect_close(1009).await;

    // Neither message reached the application; the client within the limit did.
    for c in [&one, &parts] {
        let events = fixture_events(&d, c.local_addr());
        assert!(
            !events.iter().any(|e| e.starts_with("message")),
            "{events:?}"
        );
    }
    ok.send_text("still fine").await;
    ok.expect_text("still fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_message_closes_with_1007() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let mut ws = RawWs::connect(d.addr(), "/").await;
    ws.send(&masked(FIN | TEXT, &[b'o', b'k', 0xff, 0xfe]))
        .await;
    ws.expect_close(1007).await;
    // Across fragments too.
    let mut ws = RawWs::connect(d.addr(), "/").await;
    ws.send(&masked(TEXT, b"fine so far")).await;
    ws.send(&masked(FIN | CONT, &[0xc3, 0x28])).await;
    ws.expect_close(1007).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_with_1002() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let cases: [(&str, Vec<u8>); 4] = [
        ("an unmasked frame", unmasked(FIN | TEXT, b"hi")),
        ("a reserved opcode", masked(FIN | 0x3, b"hi")),
        ("a continuation without a start", masked(FIN | CONT, b"hi")),
        ("a reserved bit", masked(FIN | 0x40 | TEXT, b"hi")),
    ];
    for (what, frame) in cases {
        d.note(what);
        let mut ws = RawWs::connect(d.addr(), "/").await;
        ws.send(&frame).await;
        let f = ws.frame().await;
        assert_eq!(f.close_code(), Some(1002), "{what}: {f:?}");
        assert!(ws.ends_within(WAIT).await, "{what}: still open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_not_completed_within_the_handshake_timeout_is_closed() {
    let d =
        Deployment::start(options().listener(websocket("ws").keys("handshake_timeout = \"1s\"")));
    // Nothing at all, and half a request head: both are closed, with no answer.
    let mut silent = tcp(d.addr()).await;
    let mut half = tcp(d.addr()).await;
    half.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    for s in [&mut silent, &mut half] {
        let mut got = Vec::new();
        read_to_end(s, &mut got).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    // A client that completes in time is served.
    let mut ws = RawWs::connect(d.addr(), "/").await;
    ws.send_text("in time").await;
    ws.expect_text("in time").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_refuse_others_with_403() {
    let d = Deployment::start(
        options().listener(websocket("ws").keys("allowed_origins = [\"https://good.example\"]")),
    );
    let refused = RawWs::upgrade(tcp(d.addr()).await, "/", &["Origin: https://evil.example"])
        .await
        .err()
        .expect("an origin outside the list is refused");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.text().contains("https://evil.example"),
        "{refused:?}"
    );
    // Listed, and without Origin (not a browser): upgraded.
    for extra in [&["Origin: https://good.example"][..], &[]] {
        let mut ws = RawWs::upgrade(tcp(d.addr()).await, "/", extra)
            .await
            .unwrap_or_else(|r| panic!("{extra:?} refused: {r:?}"));
        ws.send_text("hi").await;
        ws.expect_text("hi").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_refuses_with_401_and_the_refused_client_never_connects() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let api = d.api().await;
    for path in ["/private", "/private/room", "/private?token=wrong"] {
        let mut s = tcp(d.addr()).await;
        let local = s.local_addr().unwrap();
        // The upgrade request and, at once, a message: it must never reach the app.
        let mut bytes = upgrade_request(path, &[]).into_bytes();
        bytes.extend(masked(FIN | TEXT, b"let me in anyway"));
        s.write_all(&bytes).await.unwrap();
        let mut buf = Vec::new();
        let mut r = read_head(&mut s, &mut buf).await;
        read_to_end(&mut s, &mut buf).await;
        r.body = buf;
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert_eq!(r.text(), "a token is required\n", "{path}");
        wait_event(&d, "websocket_connect", local).await;
        assert_eq!(api.all_client_count().await.unwrap(), 0, "{path}");
        // Time for a connect or message event to show, if one were (wrongly) sent.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = fixture_events(&d, local);
        assert_eq!(
            events,
            vec![format!(
                "websocket_connect {local} {}",
                path.split('?').next().unwrap()
            )],
            "{path}: only the hook ran"
        );
    }
    // With the token: upgraded, connected, counted, served.
    let mut ws = RawWs::connect(d.addr(), "/private?token=letmein").await;
    wait_event(&d, "connect", ws.local_addr()).await;
    assert_eq!(api.all_client_count().await.unwrap(), 1);
    ws.send_text("/whoami").await;
    let f = ws.frame().await;
    assert!(f.text().contains("request_path=/private "), "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_refuses_with_403_and_a_panicking_hook_with_500() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let api = d.api().await;
    let forbidden = RawWs::upgrade(tcp(d.addr()).await, "/forbidden", &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (forbidden.status, forbidden.text().as_str()),
        (403, "nobody may connect here\n"),
        "{forbidden:?}"
    );
    let panicked = RawWs::upgrade(tcp(d.addr()).await, "/panic", &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(panicked.status, 500, "{panicked:?}");
    d.wait_log("handler panicked");
    assert_eq!(api.all_client_count().await.unwrap(), 0);
    // The worker survived its panic.
    let mut ws = RawWs::connect(d.addr(), "/").await;
    ws.send_text("after the panic").await;
    ws.expect_text("after the panic").await;
    let log = d.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("fixture: connect") && !l.contains(&ws.local_addr().to_string())),
        "only the last client connected:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_slower_than_the_handshake_timeout_gets_503_and_its_late_verdict_is_ignored() {
    // One client at most: the upgrade waiting for its verdict holds the place.
    let d = Deployment::start(
        options()
            .gateway_keys("max_clients = 1")
            // Shorter than the hook's 3 s, long enough for the checks while it runs.
            .listener(websocket("ws").keys("handshake_timeout = \"2s\"")),
    );
    let api = d.api().await;
    let mut s = tcp(d.addr()).await;
    let local = s.local_addr().unwrap();
    s.write_all(upgrade_request("/slow", &[]).as_bytes())
        .await
        .unwrap();
    wait_event(&d, "websocket_connect", local).await;
    // While the hook runs, the client is nobody's to see or send to...
    assert_eq!(api.all_client_count().await.unwrap(), 0);
    assert!(api.clients().await.unwrap().is_empty());
    // ...but it counts against max_clients: another connection is closed at once.
    let mut other = tcp(d.addr()).await;
    let mut got = Vec::new();
    read_to_end(&mut other, &mut got).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    d.wait_log("refusing client: gateway is full");

    let mut buf = Vec::new();
    let mut refused = read_head(&mut s, &mut buf).await;
    read_to_end(&mut s, &mut buf).await;
    refused.body = buf;
    assert_eq!(refused.status, 503, "{refused:?}");
    // The hook ends later and accepts: that must not bring the client to life.
    wait_event(&d, "slow_done", local).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = fixture_events(&d, local);
    assert!(
        !events.iter().any(|e| e.starts_with("connect ")),
        "{events:?}"
    );
    assert_eq!(api.all_client_count().await.unwrap(), 0);
    // Its place is free again.
    let mut ws = RawWs::connect(d.addr(), "/").await;
    ws.send_text("next one").await;
    ws.expect_text("next one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let d = Deployment::start(
        options()
            .listener(websocket("proxied").keys("trusted_proxies = [\"127.0.0.1/32\"]"))
            .listener(websocket("direct").keys("trusted_proxies = [\"10.0.0.0/8\"]")),
    );
    let whoami = |listener: &'static str, headers: &'static [&'static str]| {
        let addr = d.listener_addr(listener);
        async move {
            let mut ws = RawWs::upgrade(tcp(addr).await, "/", headers)
                .await
                .expect("upgraded");
            ws.send_text("/whoami").await;
            ws.frame().await.text()
        }
    };
    let xff = &["X-Forwarded-For: 203.0.113.7, 127.0.0.1"][..];
    let from_proxy = whoami("proxied", xff).await;
    assert!(
        from_proxy.ends_with(" forwarded_for=203.0.113.7"),
        "{from_proxy}"
    );
    let not_a_proxy = whoami("direct", xff).await;
    assert!(not_a_proxy.ends_with(" forwarded_for=-"), "{not_a_proxy}");
    let no_header = whoami("proxied", &[]).await;
    assert!(no_header.ends_with(" forwarded_for=-"), "{no_header}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_serves_the_apps_files_with_their_headers() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let page = http(d.addr(), &get("/", "")).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        page.header("content-security-policy"),
        Some(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
             form-action 'self'"
        )
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("connection"), Some("close"));
    assert!(page.text().contains("switchboard fixture"), "{page:?}");
    let etag = page.header("etag").expect("an ETag").to_owned();

    let cached = http(d.addr(), &get("/", &format!("If-None-Match: {etag}\r\n"))).await;
    assert_eq!(cached.status, 304, "{cached:?}");
    assert!(cached.body.is_empty(), "{cached:?}");
    let stale = http(d.addr(), &get("/", "If-None-Match: \"other\"\r\n")).await;
    assert_eq!(stale.status, 200);

    let head = http(d.addr(), "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(page.body.len().to_string().as_str())
    );
    assert!(head.body.is_empty(), "{head:?}");

    let text = http(d.addr(), &get("/hello.txt", "")).await;
    assert_eq!(
        (
            text.status,
            text.header("content-type"),
            text.text().as_str()
        ),
        (200, Some("text/plain; charset=utf-8"), "hello\n")
    );
    let post = http(
        d.addr(),
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let missing = http(d.addr(), &get("/nope", "")).await;
    assert_eq!(missing.status, 404, "{missing:?}");
    // None of this is a client of the application.
    assert!(!d.log().contains("fixture: "), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_pings_with_a_frame_or_a_text_message() {
    let d = Deployment::start(
        options()
            .listener(
                websocket("frames").keys("heartbeat = { interval = \"200ms\", ping = \"frame\" }"),
            )
            .listener(
                websocket("texts")
                    .keys("heartbeat = { interval = \"200ms\", ping = '{\"type\":\"ping\"}' }"),
            ),
    );
    let mut framed = RawWs::connect(d.listener_addr("frames"), "/").await;
    wait_event(&d, "connect", framed.local_addr()).await;
    let ping = framed.frame().await;
    assert_eq!((ping.opcode, ping.fin), (PING, true), "{ping:?}");
    let mut texted = RawWs::connect(d.listener_addr("texts"), "/").await;
    texted.expect_text("{\"type\":\"ping\"}").await;
    // Pings are no events for the application.
    let events = fixture_events(&d, framed.local_addr());
    assert_eq!(
        events,
        vec![
            format!("websocket_connect {} /", framed.local_addr()),
            format!("connect {}", framed.local_addr())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_intervals_close_a_silent_client_with_1000_and_pongs_count_as_activity() {
    let d = Deployment::start(
        options()
            .listener(websocket("ws").keys(
                "heartbeat = { interval = \"300ms\", ping = \"frame\", idle_intervals = 3 }",
            )),
    );
    let mut silent = RawWs::connect(d.addr(), "/").await;
    let mut answering = RawWs::connect(d.addr(), "/").await;
    // The silent one only gets pings, then close 1000.
    let silent_closes = async {
        let close = loop {
            let f = silent.frame().await;
            if f.opcode != PING {
                break f;
            }
        };
        assert_eq!(close.close_code(), Some(1000), "{close:?}");
        assert!(silent.ends_within(WAIT).await);
    };
    // Meanwhile the other answers every ping, for many more intervals than the limit.
    let answers = async {
        for _ in 0..10 {
            let f = answering.frame().await;
            assert_eq!(f.opcode, PING, "an answering client is kept: {f:?}");
            answering.send(&masked(FIN | PONG, &f.payload)).await;
        }
    };
    tokio::join!(silent_closes, answers);
    wait_event(&d, "close", silent.local_addr()).await;
    answering.send_text("alive").await;
    let f = loop {
        let f = answering.frame().await;
        if f.opcode != PING {
            break f;
        }
    };
    assert_eq!(f.text(), "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_client_sends_the_last_message_then_close_1000() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let api = d.api().await;
    let mut ws = RawWs::connect(d.addr(), "/").await;
    let id = client_id(&api, ws.local_addr()).await;
    api.close_client(id, Some("goodbye".into())).await.unwrap();
    ws.expect_text("goodbye").await;
    ws.expect_close(1000).await;
    wait_event(&d, "close", ws.local_addr()).await;
}

/// Sends `body` on a `frame` listener and reads one frame back.
async fn frame_round_trip(s: &mut TcpStream, body: &[u8]) -> String {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    s.write_all(&out).await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .expect("a frame in time")
        .unwrap();
    let mut payload = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).await.unwrap();
    String::from_utf8(payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_and_protocol_are_right_on_every_protocol_at_once() {
    let d = Deployment::start(
        options()
            .listener(Listener::text("lines"))
            .listener(Listener::frame("frames"))
            .listener(Listener::new("docs", "json"))
            .listener(websocket("browsers")),
    );
    let mut text = Client::connect(d.listener_addr("lines")).await;
    text.send("/whoami").await;
    assert_eq!(
        text.line().await,
        format!(
            "listener=lines protocol=text addr={} request_path=- forwarded_for=-",
            text.local_addr()
        )
    );

    let mut frame = tcp(d.listener_addr("frames")).await;
    let local = frame.local_addr().unwrap();
    assert_eq!(
        frame_round_trip(&mut frame, b"/whoami").await,
        format!("listener=frames protocol=frame addr={local} request_path=- forwarded_for=-")
    );

    let mut json = tcp(d.listener_addr("docs")).await;
    let local = json.local_addr().unwrap();
    let body = b"\"/whoami\"";
    let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    json.write_all(&out).await.unwrap();
    let mut len = [0u8; 4];
    json.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0; u32::from_be_bytes(len) as usize - 4];
    json.read_exact(&mut payload).await.unwrap();
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        format!("listener=docs protocol=json addr={local} request_path=- forwarded_for=-")
    );

    let mut ws = RawWs::connect(d.listener_addr("browsers"), "/room?x=1").await;
    ws.send_text("/whoami").await;
    ws.expect_text(&format!(
        "listener=browsers protocol=websocket addr={} request_path=/room forwarded_for=-",
        ws.local_addr()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upgrades_get_their_http_status_and_never_reach_the_app() {
    let d = Deployment::start(options().listener(websocket("ws")));
    let upgrade =
        |headers: &str| format!("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n{headers}\r\n");
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20 << 10));
    let cases = [
        (
            "another version",
            upgrade("Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n"),
            426,
        ),
        (
            "no key",
            upgrade("Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"),
            400,
        ),
        (
            "no Connection: Upgrade",
            upgrade("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
            400,
        ),
        ("HTTP/1.0", "GET / HTTP/1.0\r\n\r\n".to_string(), 505),
        ("not HTTP", "\x16\x03\x01 hello\r\n\r\n".to_string(), 400),
        ("a head over 16 KiB", huge, 431),
    ];
    for (what, request, status) in cases {
        let r = http(d.addr(), &request).await;
        assert_eq!(r.status, status, "{what}: {r:?}");
    }
    assert!(!d.log().contains("fixture: "), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_does_not_count_as_the_clients_silence() {
    // Idle after 4 intervals (1.2 s); the /slow hook takes 3 s, within the handshake
    // timeout.
    let d = Deployment::start(options().listener(websocket("ws").keys(
        "handshake_timeout = \"10s\"\nheartbeat = { interval = \"300ms\", idle_intervals = 4 }",
    )));
    let mut ws = RawWs::connect(d.addr(), "/slow").await;
    // Well within the idle limit after the upgrade, the client speaks, and is served.
    tokio::time::sleep(Duration::from_millis(400)).await;
    ws.send_text("I was waiting for you").await;
    ws.expect_text("I was waiting for you").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_worker_an_upgrade_gets_503_within_the_handshake_timeout() {
    let d = Deployment::start(
        options()
            .workers(0)
            .listener(websocket("ws").keys("handshake_timeout = \"1s\"")),
    );
    let refused = RawWs::upgrade(tcp(d.addr()).await, "/", &[])
        .await
        .err()
        .expect("no worker to accept it");
    assert_eq!(refused.status, 503, "{refused:?}");
    // Plain HTTP needs no worker.
    let page = http(d.addr(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(page.status, 200);
    let api = d.api().await;
    assert_eq!(api.all_client_count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_requests_headers_reach_the_application() {
    let d = Deployment::start(
        options()
            .listener(websocket("ws"))
            .listener(Listener::text("lines")),
    );
    let mut ws = RawWs::upgrade(
        tcp(d.listener_addr("ws")).await,
        "/",
        &[
            "X-Echo: hello, headers",
            "User-Agent: switchboard-test/1.0",
            "Cookie: session=abc; theme=dark",
        ],
    )
    .await
    .expect("upgraded");
    for (ask, want) in [
        ("/header X-Echo", "hello, headers"),
        // Names are matched without regard to case, as HTTP wants.
        ("/header x-echo", "hello, headers"),
        ("/header user-agent", "switchboard-test/1.0"),
        ("/header Cookie", "session=abc; theme=dark"),
        ("/header Sec-WebSocket-Version", "13"),
        ("/header X-Not-Sent", "-"),
    ] {
        ws.send_text(ask).await;
        ws.expect_text(want).await;
    }
    // A text client has no request, hence no headers.
    let mut text = Client::connect(d.listener_addr("lines")).await;
    text.send("/header Host").await;
    assert_eq!(text.line().await, "-");
}
