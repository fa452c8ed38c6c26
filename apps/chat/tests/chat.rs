//! The chat demo as the brief describes it, against the real binary.

mod common;

use std::time::Duration;

use common::{chat, ChatClient};
use switchboard::config::HeartbeatConfig;
use switchboard_testkit::{Client, Deployment, Listener, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_message_with_three_clients() {
    let d = Deployment::start(chat());
    let mut a = Client::connect(d.addr()).await;
    let ida = a.login("alice").await;
    let mut b = Client::connect(d.addr()).await;
    let idb = b.login("bob").await;
    a.expect_next(&format!("bob[{idb}] come")).await;
    let mut c = Client::connect(d.addr()).await;
    let idc = c.login("carol").await;
    a.expect_next(&format!("carol[{idc}] come")).await;
    b.expect_next(&format!("carol[{idc}] come")).await;

    // A plain line goes to everybody, the sender included.
    a.send("hello everyone").await;
    for cl in [&mut a, &mut b, &mut c] {
        cl.expect_next(&format!("alice[{ida}] said :hello everyone"))
            .await;
    }

    // ID:words is private: the recipient and an echo to the sender, nobody else.
    b.send(&format!("{idc}:psst carol")).await;
    c.expect_next(&format!("bob[{idb}] said to You :psst carol"))
        .await;
    b.expect_next(&format!("bob[{idb}] said to [{idc}] :psst carol"))
        .await;

    // A colon after something that is not a client id is an ordinary line.
    c.send("time: 10").await;
    for cl in [&mut a, &mut b, &mut c] {
        cl.expect_next(&format!("carol[{idc}] said :time: 10"))
            .await;
    }
    // Alice saw nothing of the private message: her next line is carol's broadcast
    // (checked above with expect_next).

    // Private to an id that is not online: the sender is told, in one line.
    let offline = switchboard::ClientId::new(idc.gateway, idc.connection + 1000);
    a.send(&format!("{offline}:anyone?")).await;
    a.expect_next(&format!("[{offline}] is not online; nothing was sent"))
        .await;

    // Logout reaches the others.
    drop(c);
    a.expect_next(&format!("carol[{idc}] logout")).await;
    b.expect_next(&format!("carol[{idc}] logout")).await;
}

/// Terminal control sequences one telnet user types never reach another's terminal:
/// every C0 and C1 control character but the tab becomes a space in what the chat
/// relays (clear screen, a window title, a C1 CSI, a bare carriage return, a
/// backspace), in public lines, private ones and the echo to the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_never_reach_other_terminals() {
    let d = Deployment::start(chat());
    let mut a = Client::connect(d.addr()).await;
    let ida = a.login("mallory").await;
    let mut b = Client::connect(d.addr()).await;
    let idb = b.login("bob").await;
    a.expect_next(&format!("bob[{idb}] come")).await;
    let cases = [
        ("clear\u{1b}[2Jscreen", "clear [2Jscreen"),
        ("\u{1b}]0;pwned\u{7}title", " ]0;pwned title"),
        ("c1\u{9b}2Jcsi", "c1 2Jcsi"),
        ("over\rwrite\u{8}x\u{7f}", "over write x "),
        ("tab\tstays", "tab\tstays"),
    ];
    for (typed, shown) in cases {
        a.send(typed).await;
        for cl in [&mut a, &mut b] {
            cl.expect_next(&format!("mallory[{ida}] said :{shown}"))
                .await;
        }
        a.send(&format!("{idb}:{typed}")).await;
        b.expect_next(&format!("mallory[{ida}] said to You :{shown}"))
            .await;
        a.expect_next(&format!("mallory[{ida}] said to [{idb}] :{shown}"))
            .await;
    }
    a.send("/history").await;
    for (_, shown) in cases {
        let line = a.line().await;
        assert!(
            line.ends_with(&format!("said :{shown}")),
            "{line:?}\nlog:\n{}",
            d.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_asked_for_again() {
    let d = Deployment::start(chat());
    let mut a = Client::connect(d.addr()).await;
    a.expect_next("type in your name:").await;
    a.send("   ").await;
    a.expect_next("a name must not be empty or contain control characters")
        .await;
    a.expect_next("type in your name:").await;
    a.send("bad\u{1b}[31mname").await;
    a.expect_next("a name must not be empty or contain control characters")
        .await;
    a.expect_next("type in your name:").await;
    a.send("dave").await;
    let hello = a.line().await;
    assert!(hello.starts_with("Hello dave["), "{hello}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_chat_concurrently_and_no_line_is_lost() {
    const CLIENTS: usize = 50;
    const LINES: usize = 20;
    let d = Deployment::start(chat());
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = Client::connect(d.addr()).await;
        c.login(&format!("user{i}")).await;
        clients.push(c);
    }
    // Everyone has seen everyone's login by the time the last one logged in? Not
    // necessarily in order; drain until each client has seen the last "come".
    let last = clients.last().and_then(|c| c.id).unwrap();
    for c in clients.iter_mut().take(CLIENTS - 1) {
        c.expect(&format!("user{}[{last}] come", CLIENTS - 1)).await;
    }
    // Everybody sends at once, and everybody reads at once.
    let mut handles = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            for n in 0..LINES {
                c.send(&format!("line {n} from {i}")).await;
            }
            let mut seen = std::collections::HashSet::new();
            while seen.len() < CLIENTS * LINES {
                let l = c.line().await;
                if let Some((_, text)) = l.split_once(" said :") {
                    assert!(seen.insert(text.to_string()), "duplicate line {l:?}");
                }
            }
            // Per-sender order: lines of one sender arrive in the order sent.
            seen.len()
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), CLIENTS * LINES);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_lines_arrive_in_order() {
    let d = Deployment::start(chat());
    let mut a = Client::connect(d.addr()).await;
    a.login("sender").await;
    let mut b = Client::connect(d.addr()).await;
    b.login("reader").await;
    for n in 0..300 {
        a.send(&format!("n{n}")).await;
    }
    let mut got = Vec::new();
    while got.len() < 300 {
        let l = b.line().await;
        if let Some((_, t)) = l.split_once(" said :") {
            got.push(t.to_string());
        }
    }
    let want: Vec<String> = (0..300).map(|n| format!("n{n}")).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_closes_a_silent_client_and_keeps_a_talking_one() {
    let d = Deployment::start(chat().heartbeat(HeartbeatConfig {
        interval: Duration::from_millis(300),
        ping: Some("ping".into()),
        idle_intervals: 3,
    }));
    let mut silent = Client::connect(d.addr()).await;
    silent.expect_next("type in your name:").await;
    let mut talker = Client::connect(d.addr()).await;
    talker.expect_next("type in your name:").await;
    // The talker answers every ping; the silent one never sends anything.
    let talk = tokio::spawn(async move {
        let end = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < end {
            match talker.try_line(Duration::from_millis(500)).await {
                Some(l) if l == "ping" => talker.send("pong").await,
                Some(_) => {}
                None => {}
            }
        }
        talker
    });
    assert!(
        silent.closed_within(Duration::from_secs(3)).await,
        "silent client was not closed"
    );
    let log = d.wait_log("heartbeat: no data from client; closing");
    assert!(log.contains("intervals=3"), "{log}");
    let mut talker = talk.await.unwrap();
    assert!(
        !talker.closed_within(Duration::from_millis(200)).await,
        "talking client was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_line_gets_one_error_and_the_connection_closes() {
    let d = Deployment::start(chat().listener(Listener::text("telnet").keys("max_message = 1024")));
    let mut other = Client::connect(d.addr()).await;
    other.login("bystander").await;
    let mut c = Client::connect(d.addr()).await;
    c.expect_next("type in your name:").await;
    c.send_raw(&vec![b'x'; 5000]).await;
    c.expect_next("error: line longer than 1024 bytes").await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    let log = d.wait_log("closing client: protocol violation");
    assert!(
        log.contains("127.0.0.1:"),
        "the peer address is logged: {log}"
    );
    // The service goes on for others.
    other.send("still here").await;
    other
        .expect(&format!(
            "bystander[{}] said :still here",
            other.id.unwrap()
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_refused_line_by_line() {
    let d = Deployment::start(chat());
    let mut c = Client::connect(d.addr()).await;
    c.login("u").await;
    c.send_raw(b"\xff\xfe\n").await;
    c.expect_next("error: line is not valid UTF-8").await;
    c.send("fine").await;
    c.expect_next(&format!("u[{}] said :fine", c.id.unwrap()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_the_last_twenty_public_lines_even_after_a_restart() {
    let mut d = Deployment::start(chat());
    let mut a = Client::connect(d.addr()).await;
    let id = a.login("alice").await;
    a.send("/history").await;
    a.expect_next("no history yet").await;
    for n in 0..25 {
        a.send(&format!("line {n}")).await;
        a.expect_next(&format!("alice[{id}] said :line {n}")).await;
    }
    let mut b = Client::connect(d.addr()).await;
    let idb = b.login("bob").await;
    b.send(&format!("{id}:private words")).await;
    b.expect_next(&format!("bob[{idb}] said to [{id}] :private words"))
        .await;
    drop((a, b));

    d.restart();
    let mut c = Client::connect(d.addr()).await;
    c.login("carol").await;
    c.send("/history").await;
    for n in 5..25 {
        let l = c.line().await;
        assert!(l.ends_with(&format!("] alice[{id}] said :line {n}")), "{l}");
        assert!(l.starts_with("[20"), "a timestamp first: {l}");
    }
    // Private lines are not history; nothing else follows.
    assert_eq!(c.try_line(Duration::from_millis(300)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_works_over_a_frame_listener_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Deployment::start(
        chat()
            .listener(Listener::text("telnet"))
            .listener(Listener::frame("frames").keys("max_message = 4096")),
    );
    async fn read_frame(s: &mut tokio::net::TcpStream) -> String {
        let mut len = [0u8; 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut len))
            .await
            .unwrap()
            .unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        String::from_utf8(body).unwrap()
    }
    fn frame(text: &str) -> Vec<u8> {
        let mut v = (text.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(text.as_bytes());
        v
    }
    let mut f = tokio::net::TcpStream::connect(d.listener_addr("frames"))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut f).await, "type in your name:");
    f.write_all(&frame("framer")).await.unwrap();
    let hello = read_frame(&mut f).await;
    assert!(hello.starts_with("Hello framer["), "{hello}");
    let id = hello
        .split_once('[')
        .unwrap()
        .1
        .split_once(']')
        .unwrap()
        .0
        .to_string();
    // The welcome is one message of two lines: one frame here, two lines on telnet.
    assert!(hello.contains("\nType client_id:words"), "{hello}");
    assert_eq!(read_frame(&mut f).await, format!("framer[{id}] come"));
    // A telnet client and a frame client talk to each other.
    let mut t = Client::connect(d.addr()).await;
    let tid = t.login("liner").await;
    assert_eq!(read_frame(&mut f).await, format!("liner[{tid}] come"));
    f.write_all(&frame("hello lines")).await.unwrap();
    t.expect_next(&format!("framer[{id}] said :hello lines"))
        .await;
    t.send(&format!("{id}:hello frames")).await;
    let mut got = read_frame(&mut f).await;
    if got.contains("said :hello lines") {
        got = read_frame(&mut f).await;
    }
    assert_eq!(got, format!("liner[{tid}] said to You :hello frames"));
    // An oversized frame: one JSON error frame, then the connection closes.
    f.write_all(&5000u32.to_be_bytes()).await.unwrap();
    assert_eq!(
        read_frame(&mut f).await,
        r#"{"error":"frame of 5000 bytes exceeds the limit of 4096 bytes"}"#
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, f.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "nothing after the error: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_are_never_reused_across_restarts() {
    let mut d = Deployment::start(chat());
    let mut ids = Vec::new();
    for round in 0..3 {
        let mut clients = Vec::new();
        for n in 0..2 {
            let mut c = Client::connect(d.addr()).await;
            ids.push(c.login(&format!("r{round}n{n}")).await);
            clients.push(c);
        }
        d.restart();
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    // Every restart gives the gateway a new number.
    let gateways: std::collections::HashSet<_> = ids.iter().map(|i| i.gateway).collect();
    assert_eq!(gateways.len(), 3, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_cut_off_as_a_slow_consumer() {
    let d = Deployment::start(chat().gateway_keys("outbound_limit = 65536"));
    let mut lazy = Client::connect(d.addr()).await;
    let lazy_id = lazy.login("lazy").await;
    let mut talker = Client::connect(d.addr()).await;
    let tid = talker.login("talker").await;
    // Broadcast far more than the socket buffers and the 64 KiB queue can hold, while
    // `lazy` never reads; the talker keeps reading its own copies.
    let line = "x".repeat(1000);
    let mut cut = false;
    for round in 0..200 {
        for _ in 0..100 {
            talker.send(&line).await;
        }
        for _ in 0..100 {
            talker.expect(&format!("talker[{tid}] said :{line}")).await;
        }
        if d.log().contains("slow consumer") {
            cut = true;
            eprintln!("cut after {} lines", (round + 1) * 100);
            break;
        }
    }
    assert!(cut, "the lazy client was never cut off:\n{}", d.log());
    let log = d.log();
    assert!(
        log.contains(&lazy_id.to_string()),
        "the log names the client: {log}"
    );
    assert!(
        lazy.closed_within(Duration::from_secs(10)).await,
        "the lazy client is disconnected"
    );
    // The talker is fine.
    talker.send("still here").await;
    talker
        .expect(&format!("talker[{tid}] said :still here"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_works_on_single_threaded_runtimes() {
    // gateway.threads = 1 and worker.threads = 1: every task of a process on one thread.
    let d = Deployment::start(
        chat()
            .gateway_keys("threads = 1")
            .worker_keys("threads = 1"),
    );
    let mut a = Client::connect(d.addr()).await;
    let ida = a.login("alice").await;
    let mut b = Client::connect(d.addr()).await;
    let idb = b.login("bob").await;
    a.expect_next(&format!("bob[{idb}] come")).await;
    b.send(&format!("{ida}:psst alice")).await;
    a.expect_next(&format!("bob[{idb}] said to You :psst alice"))
        .await;
    b.expect_next(&format!("bob[{idb}] said to [{ida}] :psst alice"))
        .await;
    a.send("hello").await;
    b.expect_next(&format!("alice[{ida}] said :hello")).await;
    // Each gateway and worker runs its runtime on exactly one thread of its name.
    for role in [
        switchboard_testkit::ChildRole::Gateway,
        switchboard_testkit::ChildRole::Worker,
    ] {
        for pid in d.pids(role) {
            let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("the process's threads")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect();
            let runtime = names
                .iter()
                .filter(|n| n.starts_with("gateway-") || n.starts_with("worker-"))
                .count();
            assert_eq!(runtime, 1, "{role:?} {pid} threads: {names:?}");
        }
    }
}
