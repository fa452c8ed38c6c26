//! Faults: wrong secrets, foreign peers on the internal port, workers killed under load.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use common::{chat, chat_bin, ChatClient};
use switchboard::protocol::internal::{self, Frame};
use switchboard::stats;
use switchboard_testkit::{ChildRole, Client, Deployment, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn internal_addr(d: &Deployment) -> String {
    stats::read_all(&d.config().run_dir())
        .into_iter()
        .find(|s| s.role == "gateway")
        .and_then(|s| {
            s.detail
                .get("internal")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .expect("gateway internal address in stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_the_wrong_secret_is_refused_and_logged() {
    let d = Deployment::start(chat());
    let wrong = std::fs::read_to_string(d.config_path())
        .unwrap()
        .replace("secret = \"test-secret\"", "secret = \"not-the-secret\"");
    let wrong_path = d.dir().join("wrong.toml");
    std::fs::write(&wrong_path, wrong).unwrap();
    let worker_log = d.dir().join("wrong-worker.log");
    let mut intruder = Command::new(chat_bin())
        .arg("--config")
        .arg(&wrong_path)
        .arg("worker")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&worker_log).unwrap())
        .spawn()
        .unwrap();
    let log = d.wait_log("refused internal connection");
    assert!(log.contains("wrong secret"), "{log}");
    assert!(
        log.contains("peer=127.0.0.1:"),
        "the peer address is logged: {log}"
    );
    // The intruder is told why.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let wl = std::fs::read_to_string(&worker_log).unwrap_or_default();
        if wl.contains("refused by gateway: wrong secret") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "worker log: {wl}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // No event ever reaches it: the chat keeps working through the real workers.
    let mut a = Client::connect(d.addr()).await;
    a.login("alice").await;
    a.send("hi").await;
    a.expect_next(&format!("alice[{}] said :hi", a.id.unwrap()))
        .await;
    let _ = intruder.kill();
    let _ = intruder.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_skips_the_handshake_gets_nothing() {
    let d = Deployment::start(chat());
    let mut s = tokio::net::TcpStream::connect(internal_addr(&d))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let hello = loop {
        s.read_buf(&mut buf).await.unwrap();
        if let Some(f) = internal::decode(&mut buf, 1 << 20).unwrap() {
            break f;
        }
    };
    assert!(matches!(hello, Frame::Hello { .. }));
    // A command instead of auth: refused, and the command is not executed.
    let cmd = internal::encode_to_bytes(&Frame::Command(internal::Command::SendToAll {
        data: "owned".into(),
        only: None,
        exclude: vec![],
    }));
    let mut a = Client::connect(d.addr()).await;
    a.login("alice").await;
    s.write_all(&cmd).await.unwrap();
    let reply = loop {
        let n = s.read_buf(&mut buf).await.unwrap();
        if let Some(f) = internal::decode(&mut buf, 1 << 20).unwrap() {
            break Some(f);
        }
        if n == 0 {
            break None;
        }
    };
    assert!(
        matches!(reply, Some(Frame::Refused { ref reason }) if reason.contains("expected auth")),
        "{reply:?}"
    );
    d.wait_log("expected auth, got command");
    // Alice never sees "owned".
    a.send("after").await;
    a.expect_next(&format!("alice[{}] said :after", a.id.unwrap()))
        .await;
    // Garbage on the client port is just a chat line, never the internal protocol.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_worker_under_traffic_loses_no_client_and_no_line() {
    const CLIENTS: usize = 10;
    const LINES: usize = 150;
    let d = Deployment::start(chat());
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = Client::connect(d.addr()).await;
        c.login(&format!("u{i}")).await;
        clients.push(c);
    }
    let last = clients.last().and_then(|c| c.id).unwrap();
    for c in clients.iter_mut().take(CLIENTS - 1) {
        c.expect(&format!("u{}[{last}] come", CLIENTS - 1)).await;
    }
    let victim = d.pids(ChildRole::Worker)[0];
    let mut handles = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            let reader = tokio::spawn(async move {
                let mut seen = HashSet::new();
                while seen.len() < CLIENTS * LINES {
                    // `line` panics if the connection closes or stalls.
                    let l = c.line().await;
                    if let Some((_, t)) = l.split_once(" said :") {
                        seen.insert(t.to_string());
                    }
                }
                seen.len()
            });
            (i, reader)
        }));
    }
    let mut readers = Vec::new();
    for h in handles {
        readers.push(h.await.unwrap());
    }
    // Senders on separate connections would change the test; instead each logged-in
    // client's writer is gone with it, so drive the load from fresh logged-in senders.
    let mut senders = Vec::new();
    for i in 0..CLIENTS {
        let mut s = Client::connect(d.addr()).await;
        s.login(&format!("s{i}")).await;
        senders.push(s);
    }
    let mut tasks = Vec::new();
    for (i, mut s) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..LINES {
                s.send(&format!("{i}-{n}")).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            s
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.note(&format!("SIGKILL worker {victim}"));
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let mut senders = Vec::new();
    for t in tasks {
        senders.push(t.await.unwrap());
    }
    for (i, r) in readers {
        assert_eq!(r.await.unwrap(), CLIENTS * LINES, "client {i} missed lines");
    }
    // The supervisor restarted the worker, and later messages still flow.
    d.wait_log("child died; restarting");
    d.wait_ready();
    let s = &mut senders[0];
    s.send("after the crash").await;
    s.expect(&format!("s0[{}] said :after the crash", s.id.unwrap()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_worker_dead_events_wait_and_are_then_delivered() {
    let d = Deployment::start(chat());
    let mut a = Client::connect(d.addr()).await;
    let id = a.login("alice").await;
    for pid in d.pids(ChildRole::Worker) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    // Sent while no worker exists; delivered once the supervisor has restarted them.
    for n in 0..5 {
        a.send(&format!("held {n}")).await;
    }
    for n in 0..5 {
        a.expect_next(&format!("alice[{id}] said :held {n}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_held_past_the_hold_timeout_are_rejected_with_an_error() {
    let d = Deployment::start(
        chat()
            .workers(1)
            .hold_timeout(Duration::from_secs(1))
            .restart_delay(Duration::from_secs(4)),
    );
    let mut a = Client::connect(d.addr()).await;
    let id = a.login("alice").await;
    let w = d.pids(ChildRole::Worker)[0];
    unsafe { libc::kill(w as i32, libc::SIGKILL) };
    d.wait_log("child died; restarting");
    a.send("during outage").await;
    a.expect_next("error: no worker is available; your message was not processed, try again later")
        .await;
    let log = d.wait_log("rejected 1 event(s) of client");
    assert!(log.contains(&id.to_string()), "{log}");
    // The client stays connected, and once the worker is back, it is served again.
    d.wait_ready();
    a.send("after outage").await;
    a.expect_next(&format!("alice[{id}] said :after outage"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_detected_by_pings_and_its_events_move_on() {
    let d = Deployment::start(chat().gateway_keys("link_ping_interval = \"200ms\""));
    // Two clients: whichever worker they stick to, freezing one worker strands one of
    // them unless the gateway notices.
    let mut a = Client::connect(d.addr()).await;
    let ida = a.login("alice").await;
    let mut b = Client::connect(d.addr()).await;
    let idb = b.login("bob").await;
    let frozen = d.pids(ChildRole::Worker)[0];
    unsafe { libc::kill(frozen as i32, libc::SIGSTOP) };
    a.send("one").await;
    b.send("two").await;
    // The gateway notices the silence (pings unanswered) while the worker is frozen.
    let log = d.wait_log("3 ping intervals");
    assert!(log.contains("peer disconnected"), "{log}");
    // Both lines arrive, in either order (the live worker's may come first).
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut want: std::collections::HashSet<String> = [
            format!("alice[{ida}] said :one"),
            format!("bob[{idb}] said :two"),
        ]
        .into();
        while !want.is_empty() {
            let l = a.line().await;
            want.remove(&l);
        }
    })
    .await;
    unsafe { libc::kill(frozen as i32, libc::SIGCONT) };
    assert!(
        got.is_ok(),
        "events stranded at the frozen worker {frozen}:\n{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_the_frame_limit_is_refused_without_breaking_the_link() {
    // The smallest frame that carries the chat's events: its WebSocket listener's 1 MiB
    // messages, sessions of 1 KiB and the headers.
    let max = (1 << 20) + 1024 + switchboard::config::EVENT_HEADROOM;
    let d = Deployment::start(
        chat().gateway_keys(&format!("max_internal_frame = {max}\nmax_session = 1024")),
    );
    let mut a = Client::connect(d.addr()).await;
    let id = a.login("alice").await;
    let api = switchboard::Gateway::connect(d.config()).await.unwrap();
    assert!(api.wait_for_gateways(1, WAIT).await);
    let err = api
        .send_to_client(id, vec![b'x'; max + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(err, switchboard::ApiError::TooLarge { max: m, .. } if m == max),
        "{err}"
    );
    api.send_to_client(id, "small").await.unwrap();
    a.expect_next("small").await;
    api.close().await;
}

/// What the impostor saw on one connection.
#[derive(Debug)]
struct Visit {
    /// The role the peer claimed in its `Auth` (none: it never sent one).
    role: Option<internal::Role>,
    /// Commands and queries it sent after the (unproven) welcome.
    commands: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_gateway_planted_in_the_store_is_not_trusted() {
    let d = Deployment::start(chat());
    // An impostor that does the handshake but cannot prove the secret; it reports every
    // connection once the peer has hung up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = listener.local_addr().unwrap();
    let fake_number = 4242;
    let (visits_tx, mut visits) = tokio::sync::mpsc::unbounded_channel::<Visit>();
    let impostor = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let visits_tx = visits_tx.clone();
            tokio::spawn(async move {
                let hello = internal::encode_to_bytes(&Frame::Hello {
                    version: internal::PROTOCOL_VERSION,
                    gateway: fake_number,
                    nonce: [7; 32],
                });
                let _ = s.write_all(&hello).await;
                let mut visit = Visit {
                    role: None,
                    commands: 0,
                };
                let mut buf = BytesMut::new();
                loop {
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    while let Ok(Some(f)) = internal::decode(&mut buf, 1 << 20) {
                        match f {
                            Frame::Auth { role, .. } => {
                                visit.role = Some(role);
                                let welcome =
                                    internal::encode_to_bytes(&Frame::Welcome { mac: [0; 32] });
                                let _ = s.write_all(&welcome).await;
                            }
                            Frame::Command(_) | Frame::Query { .. } => visit.commands += 1,
                            _ => {}
                        }
                    }
                }
                let _ = visits_tx.send(visit);
            });
        }
    });
    let store = switchboard::open_store(d.config()).await.unwrap();
    let entry = switchboard::discovery::GatewayEntry {
        number: fake_number,
        internal: fake_addr,
        listeners: vec![],
        pid: 1,
        tls: false,
    };
    switchboard::discovery::publish(
        store.as_ref(),
        &d.config().name,
        &entry,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    d.wait_log("did not prove it knows the secret");
    // Broadcasts from the chat never reach the impostor.
    let mut a = Client::connect(d.addr()).await;
    a.login("alice").await;
    a.send("secret talk").await;
    a.expect_next(&format!("alice[{}] said :secret talk", a.id.unwrap()))
        .await;
    // A Gateway API client finds the impostor too (discovery ran), does the handshake
    // with it and hangs up without sending anything: it is never one of its gateways.
    let api = switchboard::Gateway::connect(d.config()).await.unwrap();
    assert!(api.wait_for_gateways(1, WAIT).await, "the real gateway");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let visit = tokio::time::timeout_at(deadline, visits.recv())
            .await
            .expect("the API client never tried the impostor: discovery did not run")
            .expect("the impostor runs");
        assert_eq!(
            visit.commands, 0,
            "a peer sent commands to the impostor: {visit:?}"
        );
        if visit.role == Some(internal::Role::Api) {
            break;
        }
    }
    assert!(!api.gateways().contains(&fake_number));
    // Nothing went to the impostor from anybody meanwhile either.
    while let Ok(visit) = visits.try_recv() {
        assert_eq!(visit.commands, 0, "{visit:?}");
    }
    api.close().await;
    impostor.abort();
    switchboard::discovery::unpublish(store.as_ref(), &d.config().name, fake_number)
        .await
        .unwrap();
}
