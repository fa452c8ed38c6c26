//! The browser chat (docs/chat.md) end to end: the real `chat` binary, real WebSocket
//! clients speaking workerman-chat's JSON protocol, and telnet users in room 1.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ws::Ws;
use common::{browser_heartbeat, chat, chat_with_browsers, metrics, ChatClient};
use serde_json::{json, Value};
use switchboard::ClientId;
use switchboard_testkit::{Client, Deployment, Listener, WAIT};

fn browser_addr(d: &Deployment) -> std::net::SocketAddr {
    d.listener_addr("browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_flow_of_workerman_chat() {
    let d = Deployment::start(chat_with_browsers());
    let addr = browser_addr(&d);

    // alice logs in with the room as a string: history first (empty), then her login
    // with the member list, herself in it.
    let mut alice = Ws::connect(addr).await;
    alice
        .send(json!({"type": "login", "client_name": "alice", "room_id": "1"}))
        .await;
    let history = alice.next().await;
    assert_eq!(
        history,
        json!({"type": "history", "room_id": "1", "messages": []})
    );
    let me = alice.next().await;
    assert_eq!(me["type"], "login");
    assert_eq!(me["client_name"], "alice");
    let a = me["client_id"].as_str().unwrap().to_owned();
    assert!(ClientId::looks_like(&a), "{me}");
    assert_eq!(me["client_list"], json!({ a.clone(): "alice" }));
    let time = me["time"].as_str().unwrap();
    assert!(
        time.len() == 19 && time.as_bytes()[4] == b'-' && time.as_bytes()[13] == b':',
        "{time}"
    );
    alice.name = "alice".into();
    alice.id = a.parse().ok();

    // bob logs in with the room as a number (the original front end's concatenation):
    // the same room.
    let mut bob = Ws::connect(addr).await;
    let (b, list) = bob.login("bob", json!(1)).await;
    let b = b.to_string();
    assert_eq!(
        list,
        BTreeMap::from([(a.clone(), "alice".into()), (b.clone(), "bob".into())])
    );
    let joined = alice.next().await;
    assert_eq!(joined["type"], "login");
    assert_eq!(joined["client_id"], b.as_str());
    assert_eq!(joined["client_name"], "bob");
    assert!(joined.get("client_list").is_none(), "{joined}");

    // A name taken in the room: error 101, and the connection stays usable. The
    // server first makes sure alice is still there: she gets a ping and answers it.
    let mut carol = Ws::connect(addr).await;
    carol
        .send(json!({"type": "login", "client_name": "alice", "room_id": 1}))
        .await;
    assert_eq!(alice.next().await, json!({"type": "ping"}));
    alice.send(json!({"type": "pong"})).await;
    let (taken, _) = carol.expect_type("error").await;
    assert_eq!(taken["code"], 101, "{taken}");
    assert!(taken["msg"].as_str().unwrap().contains("alice"), "{taken}");
    // Saying something before a login: 103. A bad login: 102.
    carol.say("anyone?").await;
    assert_eq!(carol.next().await["code"], 103);
    carol
        .send(json!({"type": "login", "client_name": "  ", "room_id": 1}))
        .await;
    assert_eq!(carol.next().await["code"], 102);
    let (c, _) = carol.login("carol", json!("1")).await;
    let c = c.to_string();
    for x in [&mut alice, &mut bob] {
        assert_eq!(x.next().await["client_id"], c.as_str());
    }

    // A say to all reaches the whole room, the sender too, escaped as the original does.
    alice.say("<b>fish & \"chips\"</b>\nit's 'late'").await;
    let want = "&lt;b&gt;fish &amp; &quot;chips&quot;&lt;/b&gt;<br />\nit&#039;s &#039;late&#039;";
    for x in [&mut alice, &mut bob, &mut carol] {
        let m = x.next().await;
        assert_eq!(m["type"], "say", "{m}");
        assert_eq!(m["from_client_id"], a.as_str());
        assert_eq!(m["from_client_name"], "alice");
        assert_eq!(m["to_client_id"], "all");
        assert_eq!(m["content"], want);
    }

    // A private message: the recipient and the sender, each with its prefix; carol
    // gets nothing (her next message is the public line after it).
    alice.say_to(b.parse().unwrap(), "bob", "psst <3").await;
    let got = bob.next().await;
    assert_eq!(got["type"], "say");
    assert_eq!(got["from_client_id"], a.as_str());
    assert_eq!(got["to_client_id"], b.as_str());
    assert_eq!(got["content"], "<b>privately to you: </b>psst &lt;3");
    let echo = alice.next().await;
    assert_eq!(echo["to_client_id"], b.as_str());
    assert_eq!(echo["content"], "<b>privately to bob: </b>psst &lt;3");
    // A page that does not know the name (an id typed by hand): the echo names the id.
    alice.say_to(b.parse().unwrap(), "", "again").await;
    assert_eq!(
        bob.next().await["content"],
        "<b>privately to you: </b>again"
    );
    let echo = alice.next().await;
    assert_eq!(echo["content"], format!("<b>privately to {b}: </b>again"));
    alice.say("after the secret").await;
    assert_eq!(carol.next().await["content"], "after the secret");
    bob.next().await;
    alice.next().await;

    // To a client that is not online: 104, and no echo.
    let gone = ClientId::new(alice.id.unwrap().gateway, 999_999);
    alice.say_to(gone, "", "hello?").await;
    let e = alice.next().await;
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("error"), json!(104)),
        "{e}"
    );

    // What the original front end sends for `C:\dir`: not JSON. An error, the message
    // is dropped, and the connection stays.
    alice
        .send_text(
            r#"{"type":"say","to_client_id":"all","to_client_name":"all","content":"C:\dir"}"#,
        )
        .await;
    assert_eq!(alice.next().await["code"], 100);
    alice.send_text("not json at all").await;
    assert_eq!(alice.next().await["code"], 100);
    alice.send(json!({"type": "dance"})).await;
    assert_eq!(alice.next().await["code"], 100);
    // A pong is taken silently.
    alice.send(json!({"type": "pong"})).await;
    alice.nothing_within(Duration::from_millis(300)).await;
    bob.nothing_within(Duration::from_millis(10)).await;
    alice.say("still here").await;
    for x in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(x.next().await["content"], "still here");
    }
    // A second login on the same connection is refused.
    alice
        .send(json!({"type": "login", "client_name": "alice2", "room_id": "2"}))
        .await;
    assert_eq!(alice.next().await["code"], 102);

    // bob leaves: the others get a logout with from_client_id (not client_id).
    bob.close().await;
    for x in [&mut alice, &mut carol] {
        let m = x.next().await;
        assert_eq!(
            m,
            json!({"type": "logout", "from_client_id": b, "from_client_name": "bob", "time": m["time"]})
        );
    }
    // His name is free again.
    let mut bob2 = Ws::connect(addr).await;
    let (_, list) = bob2.login("bob", json!(1)).await;
    assert_eq!(list.len(), 3, "{list:?}");
    // A newcomer gets the room's history: the public lines, escaped, oldest first.
    let mut dave = Ws::connect(addr).await;
    dave.send(json!({"type": "login", "client_name": "dave", "room_id": 1}))
        .await;
    let h = dave.next().await;
    assert_eq!(h["type"], "history", "{h}");
    let contents: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, [want, "after the secret", "still here"]);
    assert_eq!(h["messages"][0]["from_client_name"], "alice");
    assert_eq!(h["messages"][0]["from_client_id"], a.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_apart() {
    let d = Deployment::start(chat_with_browsers());
    let addr = browser_addr(&d);
    let mut one = Ws::connect(addr).await;
    one.login("ann", json!("1")).await;
    let mut two = Ws::connect(addr).await;
    let (t, list) = two.login("ann", json!(2)).await; // the same name in another room
    assert_eq!(list.len(), 1);
    let mut two_b = Ws::connect(addr).await;
    let (_, list) = two_b.login("bea", json!("2")).await;
    assert!(
        list.contains_key(&t.to_string()) && list.len() == 2,
        "{list:?}"
    );
    assert_eq!(two.next().await["client_name"], "bea");
    two.say("in two").await;
    assert_eq!(two_b.next().await["content"], "in two");
    assert_eq!(two.next().await["content"], "in two");
    one.nothing_within(Duration::from_millis(300)).await;
    // A room id that is neither a string nor an integer, or empty: 102.
    let mut bad = Ws::connect(addr).await;
    for room in [json!(1.5), json!(""), json!(null), json!(["1"])] {
        bad.send(json!({"type": "login", "client_name": "x", "room_id": room}))
            .await;
        assert_eq!(bad.next().await["code"], 102, "room_id {room}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pings_every_interval_and_closes_a_page_that_never_answers() {
    let d = Deployment::start(
        chat()
            .listener(Listener::text("telnet"))
            // 1 s: a pong may be late by up to an interval before the page counts as
            // silent, and this test shares 2 cores with the 1,000 browsers.
            .listener(Listener::new("browser", "websocket").keys(&browser_heartbeat("1s"))),
    );
    let addr = browser_addr(&d);
    let mut talker = Ws::connect(addr).await;
    talker.login("talker", json!(1)).await;
    let mut silent = Ws::connect(addr).await;
    silent.login("silent", json!(1)).await;
    // The talker answers every ping at once, as both front ends do; what else it
    // hears comes out of `heard`.
    let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let counted = pings.clone();
    let talking = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return talker,
                m = talker.try_next(WAIT) => match m {
                    Ok(m) if m == json!({"type": "ping"}) => {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        talker.send(json!({"type": "pong"})).await;
                    }
                    Ok(m) => {
                        let _ = heard_tx.send(m);
                    }
                    Err(end) => panic!("talker: {end:?} while answering pings"),
                },
            }
        }
    });
    // The silent one gets pings too, never answers, and is closed after 2 intervals;
    // the room hears it leave.
    assert_eq!(silent.next().await, json!({"type": "ping"}));
    assert!(
        silent.closed_within(WAIT).await,
        "the silent page was not closed"
    );
    let logout = loop {
        let m = tokio::time::timeout(WAIT, heard.recv())
            .await
            .expect("a logout within WAIT")
            .expect("the talker is reading");
        if m["type"] == "logout" {
            break m;
        }
        assert_eq!(
            m["client_name"], "silent",
            "only silent's login came before: {m}"
        );
    };
    assert_eq!(logout["from_client_name"], "silent");
    // The talker stays while it answers, for more than twice the idle limit.
    let before = pings.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + WAIT;
    while pings.load(std::sync::atomic::Ordering::SeqCst) < before + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pings stopped coming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let mut talker = talking.await.expect("the talker task");
    talker.say("alive").await;
    let m = loop {
        let m = talker.next_not_ping().await;
        if m["type"] == "say" {
            break m;
        }
    };
    assert_eq!(m["content"], "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnet_and_browser_users_meet_in_room_one() {
    let d = Deployment::start(chat_with_browsers());
    let addr = browser_addr(&d);
    let mut tom = Client::connect(d.addr()).await;
    let t = tom.login("tom").await;

    // A browser joining room 1 finds the telnet user in the list; telnet hears it come.
    let mut web = Ws::connect(addr).await;
    let (w, list) = web.login("wendy", json!("1")).await;
    assert_eq!(
        list,
        BTreeMap::from([
            (t.to_string(), "tom".into()),
            (w.to_string(), "wendy".into())
        ])
    );
    tom.expect_next(&format!("wendy[{w}] come")).await;
    // A browser in another room is not in room 1.
    let mut other = Ws::connect(addr).await;
    other.login("otto", json!(2)).await;

    // Browser → everybody in room 1: telnet gets the line unescaped, on one line.
    web.say("hi <tom> & co\nsecond line").await;
    tom.expect_next(&format!("wendy[{w}] said :hi <tom> & co second line"))
        .await;
    assert_eq!(
        web.next().await["content"],
        "hi &lt;tom&gt; &amp; co<br />\nsecond line"
    );
    // Telnet → everybody: the browser gets a say, escaped.
    tom.send("hello <wendy> & all").await;
    tom.expect_next(&format!("tom[{t}] said :hello <wendy> & all"))
        .await;
    let m = web.next().await;
    assert_eq!(m["type"], "say");
    assert_eq!(m["from_client_id"], t.to_string());
    assert_eq!(m["from_client_name"], "tom");
    assert_eq!(m["to_client_id"], "all");
    assert_eq!(m["content"], "hello &lt;wendy&gt; &amp; all");

    // Telnet → browser, privately: a say for wendy, the telnet echo for tom.
    tom.send(&format!("{w}:just you")).await;
    tom.expect_next(&format!("tom[{t}] said to [{w}] :just you"))
        .await;
    let m = web.next().await;
    assert_eq!(m["to_client_id"], w.to_string());
    assert_eq!(m["from_client_name"], "tom");
    assert_eq!(m["content"], "<b>privately to you: </b>just you");
    // Browser → telnet, privately: a line for tom, the say echo for wendy.
    web.say_to(t, "tom", "you <only>").await;
    tom.expect_next(&format!("wendy[{w}] said to You :you <only>"))
        .await;
    let m = web.next().await;
    assert_eq!(m["content"], "<b>privately to tom: </b>you &lt;only&gt;");
    // Room 2 heard none of it.
    other.nothing_within(Duration::from_millis(300)).await;

    // A second telnet user: both sides see the join; telnet users see each other's
    // lines exactly as before.
    let mut ted = Client::connect(d.addr()).await;
    let t2 = ted.login("ted").await;
    tom.expect_next(&format!("ted[{t2}] come")).await;
    let m = web.next().await;
    assert_eq!(
        (m["type"].as_str(), m["client_id"].as_str()),
        (Some("login"), Some(t2.to_string().as_str()))
    );
    ted.send("hey").await;
    for c in [&mut tom, &mut ted] {
        c.expect_next(&format!("ted[{t2}] said :hey")).await;
    }
    assert_eq!(web.next().await["content"], "hey");
    // telnet's /history is room 1's: browser and telnet lines, not room 2's.
    other.say("room two only").await;
    ted.send("/history").await;
    for want in [
        format!("wendy[{w}] said :hi <tom> & co second line"),
        format!("tom[{t}] said :hello <wendy> & all"),
        format!("ted[{t2}] said :hey"),
    ] {
        let line = ted.line().await;
        assert!(line.ends_with(&want), "{line:?} is not …{want:?}");
    }
    assert!(ted.try_line(Duration::from_millis(300)).await.is_none());

    // Leaving: telnet sees a browser go, browsers see a telnet user go.
    web.close().await;
    tom.expect_next(&format!("wendy[{w}] logout")).await;
    ted.expect_next(&format!("wendy[{w}] logout")).await;
    let mut web2 = Ws::connect(addr).await;
    web2.login("wendy", json!(1)).await;
    tom.line().await; // wendy come
    drop(ted);
    tom.expect_next(&format!("ted[{t2}] logout")).await;
    let (m, _) = web2.expect_type("logout").await;
    assert_eq!(m["from_client_id"], t2.to_string());
    assert_eq!(m["from_client_name"], "ted");
}

/// A private message is one Gateway call, whichever side sends it: the recipient's
/// format is the gateway's choice, so the worker asks nothing first (issue 8, point 5).
/// Counted on `/metrics`: each private message adds 1 `send_to_client` (the message
/// with the sender's echo: `send_to_client_or_tell`, sender and recipient on one
/// gateway) and no `query`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_message_is_one_gateway_call() {
    let d = Deployment::start(chat_with_browsers());
    let mut tom = Client::connect(d.addr()).await;
    let t = tom.login("tom").await;
    let mut web = Ws::connect(browser_addr(&d)).await;
    let (w, _) = web.login("wendy", json!("1")).await;
    tom.expect_next(&format!("wendy[{w}] come")).await;
    // Settled: both logins handled (tom's name, wendy's login) and counted.
    let messages = |p: &str| metrics::metric(p, "switchboard_events_total", &[("kind", "message")]);
    let commands = |p: &str, kind: &str| {
        metrics::metric(p, "switchboard_commands_total", &[("kind", kind)]).unwrap_or(0.0)
    };
    let before = metrics::wait_for(&d, "the 2 logins", |p| messages(p) == Some(2.0));
    let (queries, sends) = (
        commands(&before, "query"),
        commands(&before, "send_to_client"),
    );

    tom.send(&format!("{w}:psst")).await;
    tom.expect_next(&format!("tom[{t}] said to [{w}] :psst"))
        .await;
    assert_eq!(web.next().await["content"], "<b>privately to you: </b>psst");
    web.say_to(t, "tom", "back").await;
    tom.expect_next(&format!("wendy[{w}] said to You :back"))
        .await;
    assert_eq!(web.next().await["to_client_id"], t.to_string());

    let after = metrics::wait_for(&d, "the 2 private messages", |p| {
        messages(p) == Some(4.0) && commands(p, "send_to_client") >= sends + 2.0
    });
    assert_eq!(commands(&after, "send_to_client"), sends + 2.0, "{after}");
    assert_eq!(
        commands(&after, "query"),
        queries,
        "a private message asked the gateway something before sending:\n{after}"
    );
}

/// What one browser of the crowd knows of its room.
#[derive(Default)]
struct Seen {
    id: Option<ClientId>,
    /// Members, from the client_list and the login/logout messages since.
    members: BTreeSet<ClientId>,
    /// Everyone it heard of as a member (list or login), ever.
    ever: BTreeSet<ClientId>,
    /// Logouts heard, by client.
    logouts: BTreeMap<ClientId, u32>,
    /// Messages that were not what the protocol says.
    wrong: Vec<String>,
}

fn id_of(v: &Value) -> Option<ClientId> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// Logs in as `name` and keeps reading until told to stop; records what it heard.
async fn crowd_member(
    addr: std::net::SocketAddr,
    name: String,
    seen: Arc<Mutex<Seen>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ws = Ws::connect(addr).await;
    ws.send(json!({"type": "login", "client_name": name, "room_id": 1}))
        .await;
    let mut early: Vec<Value> = Vec::new();
    let read = async {
        loop {
            let m = match ws.try_next(Duration::from_secs(600)).await {
                Ok(m) => m,
                Err(_) => return,
            };
            if m["type"] == "ping" {
                // As workerman-chat's page does: a browser that does not answer is closed
                // by the heartbeat when the machine makes this test slow.
                ws.send(json!({"type": "pong"})).await;
                continue;
            }
            let mut s = seen.lock().unwrap();
            match m["type"].as_str() {
                Some("history") => {}
                Some("login") if m.get("client_list").is_some() => {
                    s.id = id_of(&m["client_id"]);
                    let listed: Vec<ClientId> = m["client_list"]
                        .as_object()
                        .map(|o| o.keys().filter_map(|k| k.parse().ok()).collect())
                        .unwrap_or_default();
                    s.members.extend(listed.iter().copied());
                    s.ever.extend(listed);
                    for e in early.drain(..) {
                        apply(&mut s, &e);
                    }
                }
                Some("login" | "logout") if s.id.is_none() => early.push(m),
                Some("login" | "logout") => apply(&mut s, &m),
                _ => s.wrong.push(m.to_string()),
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = stop => {}
    }
    ws.close().await;
}

fn apply(s: &mut Seen, m: &Value) {
    if m["type"] == "login" {
        if let Some(id) = id_of(&m["client_id"]) {
            s.members.insert(id);
            s.ever.insert(id);
        }
    } else if let Some(id) = id_of(&m["from_client_id"]) {
        s.members.remove(&id);
        *s.logouts.entry(id).or_default() += 1;
    }
}

/// Waits until `done` holds for every member's view; fails with the first that does
/// not after `limit`.
async fn until_all(
    crowd: &[Arc<Mutex<Seen>>],
    limit: Duration,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let missing = crowd.iter().position(|s| !done(&s.lock().unwrap()));
        let Some(i) = missing else { return };
        if tokio::time::Instant::now() > deadline {
            let s = crowd[i].lock().unwrap();
            panic!(
                "member {i} ({:?}) never {what} within {limit:?}: it knows {} members, \
                 heard {} logouts, wrong messages {:?}",
                s.id,
                s.members.len(),
                s.logouts.len(),
                s.wrong
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_browsers_join_and_leave_one_room_and_nobody_misses_anyone() {
    const N: usize = 1000;
    const WAVE: usize = 50;
    // Generous bounds for 2 shared cores: they catch a lost message, not slowness.
    const LIMIT: Duration = Duration::from_secs(240);
    let d = Deployment::start(chat_with_browsers());
    let addr = browser_addr(&d);
    let started = std::time::Instant::now();

    // Join in waves of 50 logging in at the same moment.
    let mut crowd = Vec::new();
    let mut stops = Vec::new();
    for wave in 0..N / WAVE {
        let mut this_wave = Vec::new();
        for i in wave * WAVE..(wave + 1) * WAVE {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(crowd_member(addr, format!("user{i}"), seen.clone(), rx));
            this_wave.push(seen.clone());
            crowd.push(seen);
            stops.push(tx);
        }
        until_all(&this_wave, LIMIT, "logged in", |s| s.id.is_some()).await;
    }
    let all: BTreeSet<ClientId> = crowd
        .iter()
        .map(|s| s.lock().unwrap().id.unwrap())
        .collect();
    assert_eq!(all.len(), N);
    until_all(&crowd, LIMIT, "knew all 1000 members", |s| s.members == all).await;
    let joined = started.elapsed();

    // The first half leaves at once: the other half hears every one of them go.
    let (leaving, staying) = crowd.split_at(N / 2);
    let gone: BTreeSet<ClientId> = leaving
        .iter()
        .map(|s| s.lock().unwrap().id.unwrap())
        .collect();
    let rest: BTreeSet<ClientId> = all.difference(&gone).copied().collect();
    for stop in stops.drain(..N / 2) {
        let _ = stop.send(());
    }
    until_all(staying, LIMIT, "heard all 500 logouts", |s| {
        gone.iter().all(|id| s.logouts.get(id) == Some(&1)) && s.members == rest
    })
    .await;
    for s in crowd.iter() {
        let s = s.lock().unwrap();
        assert!(s.wrong.is_empty(), "{:?}", s.wrong);
        assert!(
            s.ever.is_superset(&all) || gone.contains(&s.id.unwrap()),
            "{:?}",
            s.id
        );
    }

    // And the rest leaves: nobody is left in the room.
    for stop in stops {
        let _ = stop.send(());
    }
    let api = d.api().await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while api.client_count_by_group("room:1").await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room never emptied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{N} browsers joined (each knowing all the others) in {joined:?}; \
         all left after {:?}",
        started.elapsed()
    );
    api.close().await;
}

/// What workerman-chat's original front end does when its connection closes: it opens a
/// new one at once (`ws.onclose = connect`) and, as soon as it is open, sends the same
/// login again. The server closes rita's connection twenty times; each time the new
/// connection must be accepted under the same name (no error 101 because the old one
/// is still counted), be the only `rita` in the list, and the watcher must hear the old
/// one leave and the new one come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_front_end_reconnects_at_once_with_the_same_name_and_is_accepted() {
    let d = Deployment::start(chat_with_browsers());
    let addr = browser_addr(&d);
    let api = d.api().await;
    let mut sam = Ws::connect(addr).await;
    let (s, _) = sam.login("sam", json!(7)).await;
    let mut rita = Ws::connect(addr).await;
    let (mut old, _) = rita.login("rita", json!(7)).await;
    assert_eq!(sam.expect_type("login").await.0["client_name"], "rita");
    for round in 0..20 {
        api.close_client(old, None).await.unwrap();
        assert!(rita.closed_within(WAIT).await, "round {round}: not closed");
        // At once, as the original does: no wait, no retry.
        rita = Ws::connect(addr).await;
        rita.send(json!({"type": "login", "client_name": "rita", "room_id": "7"}))
            .await;
        let answer = loop {
            let m = rita.next_not_ping().await;
            if m["type"] == "login" && m.get("client_list").is_some() || m["type"] == "error" {
                break m;
            }
        };
        assert_eq!(answer["type"], "login", "round {round}: refused: {answer}");
        let new: ClientId = id_of(&answer["client_id"]).expect("client id");
        let list: BTreeMap<String, String> = answer["client_list"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            list,
            BTreeMap::from([
                (s.to_string(), "sam".to_owned()),
                (new.to_string(), "rita".to_owned())
            ]),
            "round {round}"
        );
        // The watcher hears both, in either order.
        let (mut left, mut came) = (false, false);
        while !(left && came) {
            let m = sam.next_not_ping().await;
            match m["type"].as_str() {
                Some("logout") if id_of(&m["from_client_id"]) == Some(old) => left = true,
                Some("login") if id_of(&m["client_id"]) == Some(new) => came = true,
                _ => panic!("round {round}: sam got {m}"),
            }
        }
        old = new;
    }
    // And she is a member like any other.
    rita.say("back").await;
    assert_eq!(sam.expect_type("say").await.0["content"], "back");
    api.close().await;
}

/// The other way a page's connection ends: its network goes (a laptop closed, a phone
/// between networks), so the page sees its connection end but the server hears
/// nothing — the old connection is still open on the server's side and would stay a
/// member until the heartbeat gives up on it (50 to 75 s). The original front end
/// reconnects at once with the same name: it must be accepted now, the silent old
/// connection be taken for gone (it answers no ping) and closed, and the room hear the
/// old one leave and the new one come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_replaces_its_old_connection_that_the_server_still_holds() {
    let d = Deployment::start(chat_with_browsers());
    let addr = browser_addr(&d);
    let mut sam = Ws::connect(addr).await;
    let (s, _) = sam.login("sam", json!(7)).await;
    let mut lost = Ws::connect(addr).await;
    let (old, _) = lost.login("rita", json!(7)).await;
    assert_eq!(sam.expect_type("login").await.0["client_name"], "rita");
    // `lost` is neither read nor closed from here on: a dead network.
    let mut rita = Ws::connect(addr).await;
    rita.send(json!({"type": "login", "client_name": "rita", "room_id": 7}))
        .await;
    let answer = loop {
        let m = rita.next_not_ping().await;
        if m["type"] == "login" && m.get("client_list").is_some() || m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(answer["type"], "login", "refused: {answer}");
    let new = id_of(&answer["client_id"]).expect("client id");
    assert_eq!(
        answer["client_list"],
        json!({ s.to_string(): "sam", new.to_string(): "rita" })
    );
    let (mut left, mut came) = (false, false);
    while !(left && came) {
        let m = sam.next_not_ping().await;
        match m["type"].as_str() {
            Some("logout") if id_of(&m["from_client_id"]) == Some(old) => left = true,
            Some("login") if id_of(&m["client_id"]) == Some(new) => came = true,
            _ => panic!("sam got {m}"),
        }
    }
    // The server closed the old connection (what it had queued comes first).
    assert!(lost.closed_within(WAIT).await, "the old connection is open");
    rita.say("back").await;
    assert_eq!(sam.expect_type("say").await.0["content"], "back");
}
