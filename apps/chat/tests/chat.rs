//! The chat demo as the brief describes it, against the real binary.

mod common;

use std::time::Duration;

use common::{Client, Deployment, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_message_with_three_clients() {
    let d = Deployment::start(Options::default());
    let mut a = Client::connect(d.addr).await;
    let ida = a.login("alice").await;
    let mut b = Client::connect(d.addr).await;
    let idb = b.login("bob").await;
    a.expect_next(&format!("bob[{idb}] come")).await;
    let mut c = Client::connect(d.addr).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_asked_for_again() {
    let d = Deployment::start(Options::default());
    let mut a = Client::connect(d.addr).await;
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
    let d = Deployment::start(Options::default());
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = Client::connect(d.addr).await;
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
    let d = Deployment::start(Options::default());
    let mut a = Client::connect(d.addr).await;
    a.login("sender").await;
    let mut b = Client::connect(d.addr).await;
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
    let d = Deployment::start(Options {
        heartbeat: "interval = \"300ms\"\nidle_intervals = 3\nping = \"ping\"\n".into(),
        ..Options::default()
    });
    let mut silent = Client::connect(d.addr).await;
    silent.expect_next("type in your name:").await;
    let mut talker = Client::connect(d.addr).await;
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
    let d = Deployment::start(Options {
        listener_extra: "max_message = 1024\n".into(),
        ..Options::default()
    });
    let mut other = Client::connect(d.addr).await;
    other.login("bystander").await;
    let mut c = Client::connect(d.addr).await;
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
    let d = Deployment::start(Options::default());
    let mut c = Client::connect(d.addr).await;
    c.login("u").await;
    c.send_raw(b"\xff\xfe\n").await;
    c.expect_next("error: line is not valid UTF-8").await;
    c.send("fine").await;
    c.expect_next(&format!("u[{}] said :fine", c.id.unwrap()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_the_last_twenty_public_lines_even_after_a_restart() {
    let mut d = Deployment::start(Options::default());
    let mut a = Client::connect(d.addr).await;
    let id = a.login("alice").await;
    a.send("/history").await;
    a.expect_next("no history yet").await;
    for n in 0..25 {
        a.send(&format!("line {n}")).await;
        a.expect_next(&format!("alice[{id}] said :line {n}")).await;
    }
    let mut b = Client::connect(d.addr).await;
    let idb = b.login("bob").await;
    b.send(&format!("{id}:private words")).await;
    b.expect_next(&format!("bob[{idb}] said to [{id}] :private words"))
        .await;
    drop((a, b));

    d.restart(1, 2);
    let mut c = Client::connect(d.addr).await;
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
