//! Faults: wrong secrets, foreign peers on the internal port; and under steady load
//! (numbered private messages between telnet users, common/load.rs) a worker, a gateway
//! or the supervisor killed, and the store (Redis, memcached) or the history database
//! (MariaDB) stopped and started again — private servers the tests start themselves
//! (common/servers.rs). No acknowledged message may be lost in any of them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use common::load::{End, Load, Pace, Talker};
use common::servers::Server;
use common::{chat, chat_bin, ChatClient};
use switchboard::protocol::internal::{self, Frame};
use switchboard::{stats, ClientId};
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
    common::stop_process(frozen);
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

// --- Faults under load: a role killed, or a server the chat depends on stopped, while
// telnet users exchange numbered private messages (common/load.rs). ---

/// Time between two messages of one talker.
const GAP: Duration = Duration::from_millis(40);

/// Bound on the messages of one talker (a few dozen talkers: a few thousand at most).
const MAX_PER_TALKER: usize = 600;

/// How long the messages still in flight when sending stops may take to arrive.
const SETTLE: Duration = Duration::from_secs(10);

fn pace() -> Pace {
    Pace {
        gap: GAP,
        max: MAX_PER_TALKER,
    }
}

/// Logs in talkers (`{prefix}0`, `{prefix}1`, ...) on `addr` until every gateway of `d`
/// holds at least `per_gateway` of them; they are returned by gateway number. The
/// kernel spreads the connections (SO_REUSEPORT), so some gateways get more.
async fn talkers_on_every_gateway(
    d: &Deployment,
    prefix: &str,
    per_gateway: usize,
) -> BTreeMap<u32, Vec<Talker>> {
    let gateways = d.config().gateway.count;
    let mut by_gateway: BTreeMap<u32, Vec<Talker>> = BTreeMap::new();
    for n in 0..200 * gateways * per_gateway {
        if by_gateway.len() == gateways && by_gateway.values().all(|t| t.len() >= per_gateway) {
            return by_gateway;
        }
        let t = Talker::login(d.addr(), &format!("{prefix}{n}")).await;
        by_gateway.entry(t.id.gateway).or_default().push(t);
    }
    let counts: Vec<(u32, usize)> = by_gateway.iter().map(|(g, t)| (*g, t.len())).collect();
    panic!("talkers per gateway {counts:?}: not {per_gateway} on each of {gateways}");
}

/// Each talker sends to the next one, the last to the first.
fn ring(talkers: Vec<Talker>) -> Vec<(Talker, ClientId)> {
    let ids: Vec<ClientId> = talkers.iter().map(|t| t.id).collect();
    talkers
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, ids[(i + 1) % ids.len()]))
        .collect()
}

/// Waits until no process of `pids` is alive (`/proc` says so; a zombie is dead);
/// fails the test, naming the survivors, after `within`.
fn wait_gone(pids: &[u32], within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| switchboard::process::alive(*p))
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still alive after {within:?}: {alive:?} ({:?})",
            alive
                .iter()
                .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_gateway_under_load_cuts_only_its_own_clients() {
    const PER_GATEWAY: usize = 10;
    let d = Deployment::start(chat().gateways(2));
    let mut by_gateway = talkers_on_every_gateway(&d, "t", PER_GATEWAY).await;
    let before: HashSet<ClientId> = by_gateway.values().flatten().map(|t| t.id).collect();
    let numbers: Vec<u32> = by_gateway.keys().copied().collect();
    let (victim, survivor) = (numbers[0], numbers[1]);
    let victims = by_gateway.remove(&victim).unwrap_or_default();
    let survivors = by_gateway.remove(&survivor).unwrap_or_default();
    let victim_ids: Vec<ClientId> = victims.iter().map(|t| t.id).collect();
    let survivor_ids: Vec<ClientId> = survivors.iter().map(|t| t.id).collect();
    // Survivors mostly talk among themselves, every third to a victim; victims talk to
    // survivors, across gateways.
    let mut plan = Vec::new();
    for (k, t) in survivors.into_iter().enumerate() {
        let target = if k % 3 == 2 {
            victim_ids[k % victim_ids.len()]
        } else {
            survivor_ids[(k + 1) % survivor_ids.len()]
        };
        plan.push((t, target));
    }
    for (k, t) in victims.into_iter().enumerate() {
        plan.push((t, survivor_ids[k % survivor_ids.len()]));
    }
    let victim_pid = d.gateway_pid(victim);
    let load = Load::start(plan, pace());
    load.wait_acked(200, WAIT).await;

    // It hangs first, then dies: what workers were asking it when it died fails.
    d.note(&format!(
        "SIGSTOP, then SIGKILL gateway {victim_pid} (number {victim})"
    ));
    common::stop_process(victim_pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(switchboard::process::signal(victim_pid, libc::SIGKILL));
    // Its own clients, and only they, are cut at once.
    load.wait_closed(&victim_ids, WAIT).await;
    // The others keep talking while the supervisor restarts it.
    load.wait_acked(200, WAIT).await;
    d.wait_log("child died; restarting");
    d.wait_ready();
    load.wait_acked(100, WAIT).await;
    let (report, survivors) = load.finish(SETTLE).await;

    let mut cut = report.disconnected();
    cut.sort();
    let mut want = victim_ids.clone();
    want.sort();
    assert_eq!(
        cut,
        want,
        "only the killed gateway's clients are cut\n{}",
        report.summary()
    );
    // Nothing acknowledged is lost for a recipient that stayed; none of them misses
    // an answer (a confirmation, or "not online" for a victim).
    report.assert_no_loss(|r| r.closed_at.is_none(), &d.log());
    for t in report.talkers.iter().filter(|t| t.closed_at.is_none()) {
        assert_eq!(
            t.unanswered(),
            0,
            "{} got no answer\n{}\n{}",
            t.name,
            report.summary(),
            d.log()
        );
    }
    assert_eq!(survivors.len(), survivor_ids.len());

    // The restarted gateway has a new number: reconnecting clients get new ids, never
    // an old one, and are served on either gateway.
    let restarted: Vec<u32> = stats::read_all(&d.config().run_dir())
        .into_iter()
        .filter(|s| s.role == "gateway")
        .filter_map(|s| s.detail.get("number")?.as_u64())
        .map(|n| n as u32)
        .collect();
    assert_eq!(restarted.len(), 2, "{restarted:?}");
    assert!(
        !restarted.contains(&victim),
        "number {victim} reused: {restarted:?}"
    );
    let again = talkers_on_every_gateway(&d, "again", 3).await;
    for t in again.values().flatten() {
        assert!(!before.contains(&t.id), "client id {} reused", t.id);
        assert_ne!(
            t.id.gateway, victim,
            "client id {} on the dead gateway's number",
            t.id
        );
    }
    // Old and new talkers in one ring, across both gateways: nothing lost.
    let mut everyone = survivors;
    everyone.extend(again.into_values().flatten());
    let load = Load::start(ring(everyone), pace());
    load.wait_acked(200, WAIT).await;
    let (report, _) = load.finish(SETTLE).await;
    assert!(report.disconnected().is_empty(), "{}", report.summary());
    report.assert_no_loss(|_| true, &d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_supervisor_under_load_stops_its_children_and_a_new_start_recovers() {
    let mut d = Deployment::start(chat().gateways(2));
    let talkers: Vec<Talker> = talkers_on_every_gateway(&d, "t", 6)
        .await
        .into_values()
        .flatten()
        .collect();
    let ids: Vec<ClientId> = talkers.iter().map(|t| t.id).collect();
    let load = Load::start(ring(talkers), pace());
    load.wait_acked(200, WAIT).await;

    let supervisor = d.supervisor_pid();
    let children: Vec<u32> = d
        .pids(ChildRole::Gateway)
        .into_iter()
        .chain(d.pids(ChildRole::Worker))
        .collect();
    assert_eq!(children.len(), 4, "{children:?}");
    d.note(&format!("SIGKILL supervisor {supervisor}"));
    assert!(switchboard::process::signal(supervisor, libc::SIGKILL));
    // Its children see it die (parent-death signal) and stop by themselves: no orphan.
    wait_gone(&children, Duration::from_secs(20));
    load.wait_closed(&ids, WAIT).await;
    let (report, _) = load.finish(SETTLE).await;
    // The gateways stopped cleanly: what they had acknowledged was written to its
    // recipient before they closed it.
    report.assert_no_loss(|_| true, &d.log());

    // The pid file still names the dead supervisor; a new start sees it is stale.
    let pid_file = switchboard::supervisor::pid_file(d.config());
    let stale = std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert_eq!(
        stale.trim(),
        supervisor.to_string(),
        "{}",
        pid_file.display()
    );
    d.restart();
    let now = d.supervisor_pid();
    assert_ne!(now, supervisor);
    let written = std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert_eq!(written.trim(), now.to_string());
    // It serves clients again, on both gateways, and loses nothing.
    let talkers: Vec<Talker> = talkers_on_every_gateway(&d, "again", 4)
        .await
        .into_values()
        .flatten()
        .collect();
    let load = Load::start(ring(talkers), pace());
    load.wait_acked(200, WAIT).await;
    let (report, _) = load.finish(SETTLE).await;
    assert!(report.disconnected().is_empty(), "{}", report.summary());
    report.assert_no_loss(|_| true, &d.log());
}

/// A gateway or worker the test starts itself, beside the supervisor's (`chat
/// --config FILE gateway|worker --index N`): a process joining the deployment.
/// Stopped with SIGTERM when dropped.
struct Joiner {
    child: std::process::Child,
}

impl Joiner {
    fn start(d: &Deployment, role: &str, index: usize) -> Joiner {
        let log = std::fs::File::create(d.dir().join(format!("{role}-{index}.log")))
            .expect("create a log file");
        let index = index.to_string();
        let child = switchboard_testkit::spawn(
            d.binary(),
            d.config_path(),
            &[role, "--index", &index],
            log,
        );
        Joiner { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        switchboard::process::signal(self.child.id(), libc::SIGTERM);
        let deadline = std::time::Instant::now() + WAIT;
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

/// Waits until the gateway with pid `pid` reports `workers` worker links; fails the
/// test, with the stats, after [`WAIT`].
fn wait_gateway_workers(d: &Deployment, pid: u32, workers: u64) -> stats::ProcessStats {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let all = stats::read_all(&d.config().run_dir());
        if let Some(s) = all.iter().find(|s| {
            s.role == "gateway"
                && s.pid == pid
                && s.detail.get("workers").and_then(|v| v.as_u64()) == Some(workers)
        }) {
            return s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway {pid} never reported {workers} workers: {all:#?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The store (Redis or memcached, a private server) stopped and started again, empty,
/// under load: nobody is disconnected, nothing acknowledged is lost, a user can log in
/// during the outage, and discovery recovers by itself — a worker and a gateway that
/// join after the restart find, and are found by, the running ones.
async fn store_outage_under_load(mut server: Server, store: &str) {
    server.start();
    let d = Deployment::start(chat().store(store));
    let mut talkers = Vec::new();
    for n in 0..16 {
        talkers.push(Talker::login(d.addr(), &format!("t{n}")).await);
    }
    let load = Load::start(ring(talkers), pace());
    load.wait_acked(200, WAIT).await;

    d.note("stopping the store");
    server.stop();
    d.wait_log("cannot publish this gateway in the store");
    load.wait_acked(200, WAIT).await;
    // Client ids come from the gateway, not the store: logging in still works.
    let late = Talker::login(d.addr(), "late").await;

    d.note("starting the store again, empty");
    server.start();
    d.wait_log("store reachable again; gateway entry republished");
    load.wait_acked(100, WAIT).await;
    // Newcomers find the running processes, and are found by them, through the
    // repaired store.
    let worker = Joiner::start(&d, "worker", 7);
    let gateway = Joiner::start(&d, "gateway", 7);
    let [supervised] = d.pids(ChildRole::Gateway)[..] else {
        panic!("one supervised gateway")
    };
    wait_gateway_workers(&d, supervised, 3);
    let joined = wait_gateway_workers(&d, gateway.pid(), 3);
    load.wait_acked(100, WAIT).await;
    let (report, _) = load.finish(SETTLE).await;
    // A store that comes back empty lists no gateway until each republishes itself:
    // a link that is up is no reason to drop a gateway (dropping it would re-dispatch,
    // and so duplicate, the events in flight on it).
    let log = d.log();
    assert!(
        !log.contains("gateway left the store"),
        "a worker dropped a live gateway after the store restart:\n{log}"
    );
    assert!(
        report.disconnected().is_empty(),
        "nobody is disconnected by a store outage\n{}",
        report.summary()
    );
    report.assert_no_loss(|_| true, &d.log());
    for t in &report.talkers {
        assert_eq!(
            t.unanswered() + t.refused,
            0,
            "{}\n{}\n{}",
            t.name,
            report.summary(),
            d.log()
        );
    }

    // A user of the gateway that joined talks with the one who came during the outage.
    let addr: std::net::SocketAddr = joined
        .detail
        .get("listeners")
        .and_then(|l| l.get(0)?.as_str()?.parse().ok())
        .expect("the joined gateway's listener");
    let newcomer = Talker::login(addr, "newcomer").await;
    assert_ne!(newcomer.id.gateway, late.id.gateway);
    let load = Load::start(ring(vec![late, newcomer]), pace());
    load.wait_acked(40, WAIT).await;
    let (report, _) = load.finish(SETTLE).await;
    assert!(report.disconnected().is_empty(), "{}", report.summary());
    report.assert_no_loss(|_| true, &d.log());
    drop((worker, gateway));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_under_load_disconnects_nobody_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(server) = Server::redis(dir.path(), "redis_stopped_and_restarted_under_load") else {
        return;
    };
    let store = format!("backend = \"redis\"\nurl = \"redis://{}\"", server.addr());
    store_outage_under_load(server, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_stopped_and_restarted_under_load_disconnects_nobody_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(server) = Server::memcached(dir.path(), "memcached_stopped_and_restarted_under_load")
    else {
        return;
    };
    let store = format!("backend = \"memcached\"\nservers = [\"{}\"]", server.addr());
    store_outage_under_load(server, &store).await;
}

/// Reads `t`'s lines until one satisfies `want`, at most `within`; `None` if the time
/// runs out first. Fails the test if the connection closes.
async fn line_within(
    t: &mut Talker,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match t.read_line(left).await {
            Ok(l) if want(&l) => return Some(l),
            Ok(_) => {}
            Err(End::TimedOut) => return None,
            Err(End::Closed) => panic!("{}: disconnected", t.name),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_stopped_and_restarted_under_load_history_says_so_then_works_again() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(mut server) = Server::mariadb(dir.path(), "mariadb_stopped_and_restarted_under_load")
    else {
        return;
    };
    server.start();
    let admin = switchboard_db::Instance::new(
        "admin",
        switchboard_db::InstanceConfig {
            port: server.port,
            ..switchboard_db::InstanceConfig::default()
        },
    )
    .expect("an instance");
    admin
        .sql("CREATE DATABASE chat")
        .execute()
        .await
        .unwrap_or_else(|e| panic!("create the database: {e}\n{}", server.log()));
    // The chat with its history on this server; a connection is given up after 2 s.
    let d = Deployment::start(common::chat_without_history().section(&format!(
        "[db.instances.history]\ndriver = \"mysql\"\nhost = \"127.0.0.1\"\nport = {}\n\
             database = \"chat\"\nconnect_timeout = 2",
        server.port
    )));
    let mut talkers = Vec::new();
    for n in 0..12 {
        talkers.push(Talker::login(d.addr(), &format!("t{n}")).await);
    }
    let mut h = Talker::login(d.addr(), "historian").await;
    let hid = h.id;
    let said = |text: &str| format!("historian[{hid}] said :{text}");
    let load = Load::start(ring(talkers), pace());
    load.wait_acked(100, WAIT).await;
    h.send("before").await.expect("send");
    h.skip_to(|l| l == said("before")).await;
    h.send("/history").await.expect("send");
    h.skip_to(|l| l.ends_with(&said("before"))).await;

    d.note("stopping MariaDB");
    server.stop();
    // The chat goes on: a line said now still goes to the room (its sender hears it
    // there like everybody; it is not kept), and private messages flow.
    h.send("during").await.expect("send");
    h.skip_to(|l| l == said("during")).await;
    load.wait_acked(100, WAIT).await;
    // `/history` answers, within the connect timeout and a margin, that it cannot.
    h.send("/history").await.expect("send");
    let answer = line_within(&mut h, Duration::from_secs(10), |l| {
        l.starts_with("history is not available")
    })
    .await;
    assert!(
        answer.is_some(),
        "/history gave no answer while the database is down:\n{}",
        d.log()
    );

    // New workers (a reload) start while it is down: their history cannot be opened
    // at start, and must open by itself later.
    let reloaded = d.cli(&["reload"]);
    assert!(reloaded.status.success(), "{reloaded:?}");
    d.wait_log("reload: done");
    d.wait_log("on_worker_start failed");
    load.wait_acked(100, WAIT).await;

    d.note("starting MariaDB again");
    server.start();
    // It works again by itself: the line said before the outage is back.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        h.send("/history").await.expect("send");
        let back = line_within(&mut h, Duration::from_secs(5), |l| {
            l.ends_with(&said("before")) || l.starts_with("history is not available")
        })
        .await;
        if back.is_some_and(|l| l.ends_with(&said("before"))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/history did not recover within {WAIT:?} of the restart:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The reloaded workers opened it in the background.
    d.wait_log("chat history opened");
    h.send("after").await.expect("send");
    h.skip_to(|l| l == said("after")).await;
    load.wait_acked(100, WAIT).await;
    let (report, _) = load.finish(SETTLE).await;
    assert!(report.disconnected().is_empty(), "{}", report.summary());
    report.assert_no_loss(|_| true, &d.log());
    for t in &report.talkers {
        assert_eq!(
            t.unanswered() + t.refused,
            0,
            "{}\n{}\n{}",
            t.name,
            report.summary(),
            d.log()
        );
    }
    // The history holds what was said while the database was up, in order.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        h.send("/history").await.expect("send");
        let mut lines = Vec::new();
        // The answer: at most 20 lines, then silence.
        for _ in 0..25 {
            let Some(l) = line_within(&mut h, Duration::from_millis(500), |l| {
                l.contains(" said :") || l.starts_with("history is not available")
            })
            .await
            else {
                break;
            };
            lines.push(l);
        }
        let texts: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.split_once(" said :").map(|(_, t)| t))
            .collect();
        if texts.ends_with(&["after"]) {
            assert_eq!(texts, ["before", "after"], "{lines:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_private_message_to_a_client_of_a_gateway_that_dies_gets_an_error() {
    let d = Deployment::start(common::chat_with_browsers().gateways(2));
    let mut browser = common::ws::Ws::connect(d.listener_addr("browser")).await;
    let (bid, _) = browser.login("browser", serde_json::json!("1")).await;
    // A telnet user on the other gateway.
    let mut telnet = None;
    for n in 0..100 {
        let t = Talker::login(d.addr(), &format!("t{n}")).await;
        if t.id.gateway != bid.gateway {
            telnet = Some(t);
            break;
        }
    }
    let telnet = telnet.expect("a telnet user on the browser's other gateway");
    let victim = d.gateway_pid(telnet.id.gateway);
    // Its gateway hangs while the worker asks it to deliver, then dies.
    common::stop_process(victim);
    browser.say_to(telnet.id, &telnet.name, "psst").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(switchboard::process::signal(victim, libc::SIGKILL));
    let (m, _) = browser.expect_type("error").await;
    assert_eq!(m["code"], 106, "{m}\n{}", d.log());
    let msg = m["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(&telnet.id.to_string()), "{m}");
}
