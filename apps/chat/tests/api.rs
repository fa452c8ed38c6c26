//! Every Gateway API call, from an API client outside the workers, against a deployment
//! with 2 gateway processes sharing one port (SO_REUSEPORT).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::ws::Ws;
use common::{chat, chat_with_browsers, ChatClient};
use serde_json::json;
use switchboard::client::Tell;
use switchboard::{ApiError, ClientId, ClientProtocol, Gateway, PerProtocol, Session};
use switchboard_testkit::{Client, Deployment};

/// Connects clients until each of the 2 gateways holds at least 2; learns each one's id
/// by sending it its own id.
async fn clients_on_both_gateways(d: &Deployment, api: &Gateway) -> Vec<(ClientId, Client)> {
    let mut pending = Vec::new();
    for _ in 0..40 {
        let mut c = Client::connect(d.addr()).await;
        c.expect_next("type in your name:").await;
        pending.push(c);
        let ids = api.all_client_ids().await.unwrap();
        let mut per: HashMap<u32, usize> = HashMap::new();
        for id in &ids {
            *per.entry(id.gateway).or_default() += 1;
        }
        if per.len() == 2 && per.values().all(|n| *n >= 2) {
            break;
        }
    }
    let ids = api.all_client_ids().await.unwrap();
    assert_eq!(ids.len(), pending.len());
    for id in &ids {
        let reached = api
            .send_to_client(*id, format!("you are {id}"))
            .await
            .unwrap();
        assert!(reached, "send_to_client says it reached {id}");
    }
    let mut out = Vec::new();
    for mut c in pending {
        let l = c.line().await;
        let id: ClientId = l.strip_prefix("you are ").unwrap().parse().unwrap();
        c.id = Some(id);
        c.name = id.to_string();
        out.push((id, c));
    }
    out
}

/// Indices of three of the clients: the first (on gateway A), one on the other
/// gateway, and another one on A.
fn a_b_c(clients: &[(ClientId, Client)]) -> (usize, usize, usize) {
    let gw_a = clients[0].0.gateway;
    let b = clients
        .iter()
        .position(|(id, _)| id.gateway != gw_a)
        .unwrap();
    let c = clients
        .iter()
        .position(|(id, _)| id.gateway == gw_a && *id != clients[0].0)
        .unwrap();
    (0, b, c)
}

async fn nothing_more(c: &mut Client) {
    if let Some(l) = c.try_line(Duration::from_millis(300)).await {
        panic!("{}: unexpected line {l:?}", c.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_call_across_two_gateways() {
    let d = Deployment::start(chat().gateways(2));
    let api = Gateway::connect(d.config()).await.unwrap();
    assert!(api.wait_for_gateways(2, Duration::from_secs(10)).await);
    let mut clients = clients_on_both_gateways(&d, &api).await;
    let n = clients.len() as u64;
    assert_eq!(api.all_client_count().await.unwrap(), n);
    let (a_idx, b_idx, c_idx) = a_b_c(&clients);
    let (a, b, c) = (clients[a_idx].0, clients[b_idx].0, clients[c_idx].0);

    // send_to_all reaches everyone on both gateways.
    api.send_to_all("to all").await.unwrap();
    for (_, cl) in clients.iter_mut() {
        cl.expect_next("to all").await;
    }
    // Filtered: only a and b, excluding b.
    api.send_to_all_filtered("filtered", Some(&[a, b]), &[b])
        .await
        .unwrap();
    clients[a_idx].1.expect_next("filtered").await;
    nothing_more(&mut clients[b_idx].1).await;
    nothing_more(&mut clients[c_idx].1).await;
    // The same, counted: each gateway says how many of its clients it reached.
    assert_eq!(
        api.send_to_all_filtered_counted("filtered counted", Some(&[a, b, c]), &[c])
            .await
            .unwrap(),
        2
    );
    clients[a_idx].1.expect_next("filtered counted").await;
    clients[b_idx].1.expect_next("filtered counted").await;
    nothing_more(&mut clients[c_idx].1).await;

    // uid: one uid bound on both gateways.
    api.bind_uid(a, "u1").await.unwrap();
    api.bind_uid(b, "u1").await.unwrap();
    api.bind_uid(c, "u2").await.unwrap();
    assert_eq!(
        api.client_ids_by_uid("u1").await.unwrap(),
        sorted(vec![a, b])
    );
    assert!(api.is_uid_online("u1").await.unwrap());
    assert!(!api.is_uid_online("nobody").await.unwrap());
    assert_eq!(
        api.uid_by_client_id(a).await.unwrap().as_deref(),
        Some("u1")
    );
    assert_eq!(
        api.all_uids().await.unwrap(),
        vec!["u1".to_string(), "u2".to_string()]
    );
    // Targeted sends say how many clients they reached, both gateways together.
    assert_eq!(api.send_to_uid(&["u1"], "to u1").await.unwrap(), 2);
    clients[a_idx].1.expect_next("to u1").await;
    clients[b_idx].1.expect_next("to u1").await;
    nothing_more(&mut clients[c_idx].1).await;
    assert_eq!(api.send_to_uid(&["u1", "u2"], "to u1+u2").await.unwrap(), 3);
    for i in [a_idx, b_idx, c_idx] {
        clients[i].1.expect_next("to u1+u2").await;
    }
    assert_eq!(api.send_to_uid(&["nobody"], "x").await.unwrap(), 0);
    api.unbind_uid(a, "u1").await.unwrap();
    assert_eq!(api.client_ids_by_uid("u1").await.unwrap(), vec![b]);
    assert_eq!(api.uid_by_client_id(a).await.unwrap(), None);

    // groups, spread over both gateways.
    api.join_group(a, "room").await.unwrap();
    api.join_group(b, "room").await.unwrap();
    api.join_group(c, "room").await.unwrap();
    api.join_group(c, "other").await.unwrap();
    assert_eq!(api.client_count_by_group("room").await.unwrap(), 3);
    assert_eq!(
        api.client_ids_by_group("room").await.unwrap(),
        sorted(vec![a, b, c])
    );
    assert_eq!(
        api.all_groups().await.unwrap(),
        vec!["other".to_string(), "room".to_string()]
    );
    assert_eq!(
        api.uids_by_group("room").await.unwrap(),
        vec!["u1".to_string(), "u2".to_string()],
        "a (unbound), b (u1) and c (u2) are in the room"
    );
    api.send_to_group(&["room"], "to room", &[c]).await.unwrap();
    clients[a_idx].1.expect_next("to room").await;
    clients[b_idx].1.expect_next("to room").await;
    nothing_more(&mut clients[c_idx].1).await;
    // The counting forms of the fan-out sends.
    assert_eq!(
        api.send_to_group_counted(&["room"], "counted", &[a])
            .await
            .unwrap(),
        2
    );
    clients[b_idx].1.expect_next("counted").await;
    clients[c_idx].1.expect_next("counted").await;
    nothing_more(&mut clients[a_idx].1).await;
    assert_eq!(
        api.send_to_all_counted("all counted").await.unwrap() as u64,
        n
    );
    for (_, cl) in clients.iter_mut() {
        cl.expect_next("all counted").await;
    }
    api.leave_group(a, "room").await.unwrap();
    assert_eq!(api.client_count_by_group("room").await.unwrap(), 2);
    api.ungroup("room").await.unwrap();
    assert_eq!(api.client_count_by_group("room").await.unwrap(), 0);
    assert_eq!(api.all_groups().await.unwrap(), vec!["other".to_string()]);

    // sessions.
    let mut s = Session::new();
    s.insert("k".into(), 1.into());
    api.set_session(b, &s).await.unwrap();
    assert_eq!(api.get_session(b).await.unwrap(), Some(s.clone()));
    let mut change = Session::new();
    change.insert("j".into(), "x".into());
    change.insert("k".into(), serde_json::Value::Null);
    api.update_session(b, &change).await.unwrap();
    let got = api.get_session(b).await.unwrap().unwrap();
    assert_eq!(got.get("j"), Some(&serde_json::Value::from("x")));
    assert!(!got.contains_key("k"));
    let all = api.sessions(None).await.unwrap();
    assert_eq!(all.len() as u64, n);
    assert!(all.iter().any(|(id, s)| *id == b && s.get("j").is_some()));
    let other = api.sessions(Some("other")).await.unwrap();
    assert_eq!(other.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![c]);

    // connections rows.
    let rows = api.clients().await.unwrap();
    assert_eq!(rows.len() as u64, n);
    assert!(rows.iter().any(|r| r.client == c
        && r.groups == vec!["other".to_string()]
        && r.uid.as_deref() == Some("u2")));

    // close_client with a last message.
    assert!(api.is_online(a).await.unwrap());
    api.close_client(a, Some("bye".into())).await.unwrap();
    clients[a_idx].1.expect_next("bye").await;
    assert!(clients[a_idx].1.closed_within(Duration::from_secs(5)).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while api.is_online(a).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "closed client still online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api.all_client_count().await.unwrap(), n - 1);
    // A client gone, and an id on a gateway that does not exist: offline, and a send
    // to either reaches nobody; commands about them are errors or no-ops.
    assert!(!api.send_to_client(a, "too late").await.unwrap());
    let ghost = ClientId::new(a.gateway.wrapping_add(1000), 1);
    assert!(!api.is_online(ghost).await.unwrap());
    assert!(!api.send_to_client(ghost, "x").await.unwrap());
    assert!(matches!(
        api.bind_uid(ghost, "x").await,
        Err(ApiError::GatewayUnavailable { .. })
    ));

    // A gateway that does not answer makes a query fail with its name, not hang.
    let frozen = d.gateway_pid(b.gateway);
    common::stop_process(frozen);
    let started = std::time::Instant::now();
    let err = api.all_client_count().await.unwrap_err();
    unsafe { libc::kill(frozen as i32, libc::SIGCONT) };
    assert!(started.elapsed() < Duration::from_secs(10));
    match err {
        ApiError::Timeout { gateway, .. } => assert_eq!(gateway, b.gateway),
        other => panic!(
            "expected a timeout naming gateway {}, got {other:?}",
            b.gateway
        ),
    }
    api.close().await;
}

fn sorted(mut v: Vec<ClientId>) -> Vec<ClientId> {
    v.sort();
    v
}

/// A gateway still published in the store but whose link is down (here: stopped for
/// longer than the API client's link timeout) is not left out of a query over all
/// gateways in silence — a count without its clients would be wrong: the query waits
/// for its link, then fails naming it; once it is back the answer is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_all_gateways_names_one_whose_link_is_down() {
    let d = Deployment::start(
        chat()
            .gateways(2)
            .gateway_keys("link_ping_interval = \"200ms\""),
    );
    let mut config = d.config().clone();
    config.worker.link_timeout = Duration::from_secs(1);
    config.worker.query_timeout = Duration::from_secs(1);
    let api = Gateway::connect(&config).await.unwrap();
    assert!(api.wait_for_gateways(2, Duration::from_secs(10)).await);
    let clients = clients_on_both_gateways(&d, &api).await;
    let n = clients.len() as u64;
    assert_eq!(api.all_client_count().await.unwrap(), n);
    let stopped = clients[0].0.gateway;
    let pid = d.gateway_pid(stopped);
    common::stop_process(pid);
    // Its link times out (1 s); its store entry (5 s) is still there.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while api.gateways().contains(&stopped) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let linked = api.gateways();
    let answer = api.all_client_count().await;
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert!(!linked.contains(&stopped), "the link never timed out");
    match answer {
        Err(ApiError::Disconnected { gateway, .. }) => assert_eq!(gateway, stopped),
        other => panic!("expected an error naming gateway {stopped}, got {other:?}"),
    }
    assert!(api.wait_for_gateways(2, Duration::from_secs(10)).await);
    assert_eq!(api.all_client_count().await.unwrap(), n);
    api.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_store_is_kept_apart_from_discovery_keys() {
    let d = Deployment::start(chat());
    let api = Gateway::connect(d.config()).await.unwrap();
    api.store()
        .set("sb/chat-test/gateways", b"not a list", None)
        .await
        .unwrap();
    let raw = switchboard::open_store(d.config()).await.unwrap();
    assert_eq!(
        raw.get("app/chat-test/sb/chat-test/gateways")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"not a list"[..])
    );
    // Discovery is untouched: a new client is still served.
    let mut c = Client::connect(d.addr()).await;
    let id = c.login("carol").await;
    c.send("ok").await;
    c.expect_next(&format!("carol[{id}] said :ok")).await;
    api.close().await;
}

/// A gateway-only supervisor (`start --only gateway`) of the same deployment, standing
/// for a gateway machine added later: same name, secret and store (the deployment's
/// store file, by absolute path), its own data directory and client port.
struct ExtraGateway {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    addr: std::net::SocketAddr,
}

impl ExtraGateway {
    fn start(d: &Deployment) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = switchboard_testkit::free_port();
        let store = match d.config().resolved_store() {
            switchboard::store::StoreConfig::File { path } => path,
            other => panic!("the kit's store is a file, not {other:?}"),
        };
        let text = format!(
            "name = {name:?}\nsecret = {secret:?}\ndata_dir = {data:?}\n\n\
             [store]\nbackend = \"file\"\npath = {store:?}\n\n\
             [gateway]\ncount = 1\npublish_interval = \"300ms\"\n\n\
             [[gateway.listeners]]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            name = d.config().name,
            secret = d.config().secret,
            data = dir.path().join("data").display().to_string(),
            store = store.display().to_string(),
        );
        let config = dir.path().join("extra.toml");
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.path().join("extra.log")).unwrap();
        let child = switchboard_testkit::spawn(
            common::chat_bin().as_ref(),
            &config,
            &["start", "--only", "gateway"],
            log,
        );
        ExtraGateway {
            dir,
            child: Some(child),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("extra.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for ExtraGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `api` is connected to exactly `n` gateways.
async fn until_gateways(api: &Gateway, n: usize, what: &str) {
    let deadline = std::time::Instant::now() + switchboard_testkit::WAIT;
    while api.gateways().len() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: connected to {:?}, not {n} gateway(s)",
            api.gateways()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_gateway_every_call_is_an_error_naming_the_deployment() {
    // A store with no gateway in it: the builder (store + secret only) connects at once
    // and every call says there is no gateway, instead of reaching nobody in silence.
    let empty = tempfile::tempdir().unwrap();
    let api = Gateway::builder()
        .name("nobody-here")
        .secret("s")
        .store(switchboard::store::StoreConfig::File {
            path: empty.path().join("store.sqlite"),
        })
        .connect()
        .await
        .unwrap();
    let no_gateway = |r: Result<(), ApiError>, call: &str| match r {
        Err(ApiError::NoGateway { deployment }) => assert_eq!(deployment, "nobody-here"),
        other => panic!("{call}: expected NoGateway, got {other:?}"),
    };
    let someone = ClientId::new(7, 1);
    no_gateway(api.send_to_all("x").await, "send_to_all");
    no_gateway(api.send_to_group(&["g"], "x", &[]).await, "send_to_group");
    no_gateway(api.send_to_uid(&["u"], "x").await.map(drop), "send_to_uid");
    no_gateway(
        api.send_to_client(someone, "x").await.map(drop),
        "send_to_client",
    );
    no_gateway(api.is_online(someone).await.map(drop), "is_online");
    no_gateway(api.bind_uid(someone, "u").await, "bind_uid");
    no_gateway(api.ungroup("g").await, "ungroup");
    no_gateway(api.all_client_count().await.map(drop), "all_client_count");
    no_gateway(api.clients().await.map(drop), "clients");
    let err = api.all_client_count().await.unwrap_err().to_string();
    assert!(
        err.contains("no gateway") && err.contains("nobody-here"),
        "{err}"
    );
    api.close().await;

    // A running deployment with the wrong secret: its gateways refuse us, so there is
    // no gateway to reach either.
    let d = Deployment::start(chat());
    let api = Gateway::builder()
        .name(&d.config().name)
        .secret("not-the-secret")
        .store(d.config().resolved_store())
        .connect()
        .await
        .unwrap();
    assert!(matches!(
        api.all_client_count().await,
        Err(ApiError::NoGateway { .. })
    ));
    api.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_added_later_is_found_and_one_that_leaves_is_dropped() {
    let d = Deployment::start(chat());
    // The builder: the deployment's store and secret, nothing else.
    let api = Gateway::builder()
        .name(&d.config().name)
        .secret(&d.config().secret)
        .store(d.config().resolved_store())
        .discovery_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    // `connect` returned with the published gateway connected: no wait needed.
    assert_eq!(api.gateways().len(), 1);
    let first = api.gateways()[0];
    let mut on_first = Client::connect(d.addr()).await;
    let id_first = on_first.identify(&api).await;
    assert_eq!(id_first.gateway, first);

    let mut extra = ExtraGateway::start(&d);
    let deadline = std::time::Instant::now() + switchboard_testkit::WAIT;
    while api.gateways().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the added gateway was never connected:\n{}",
            extra.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = *api.gateways().iter().find(|g| **g != first).unwrap();
    let mut on_second = Client::connect(extra.addr).await;
    let id_second = on_second.identify(&api).await;
    assert_eq!(id_second.gateway, second);
    // Fan-out and targeted calls reach both gateways.
    assert_eq!(api.send_to_all_counted("to both").await.unwrap(), 2);
    on_first.expect("to both").await;
    on_second.expect("to both").await;
    assert!(api.send_to_client(id_second, "to second").await.unwrap());
    on_second.expect("to second").await;
    assert_eq!(api.all_client_count().await.unwrap(), 2);

    // The added gateway stops cleanly: it leaves the store and its link is dropped;
    // its client is offline, the first gateway's still served.
    extra.stop();
    until_gateways(&api, 1, "after the added gateway stopped").await;
    assert_eq!(api.gateways(), vec![first]);
    assert!(!api.is_online(id_second).await.unwrap());
    assert!(!api.send_to_client(id_second, "gone").await.unwrap());
    assert!(matches!(
        api.bind_uid(id_second, "u").await,
        Err(ApiError::GatewayUnavailable { gateway, .. }) if gateway == second
    ));
    assert_eq!(api.send_to_all_counted("to one").await.unwrap(), 1);
    on_first.expect("to one").await;
    api.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_a_stalled_gateway_time_out_naming_it() {
    let d = Deployment::start(chat().gateways(2));
    let api = d.api().await;
    let gateways = api.gateways();
    let (live, frozen) = (gateways[0], gateways[1]);
    let frozen_pid = d.gateway_pid(frozen);
    d.note(&format!("SIGSTOP gateway {frozen} (pid {frozen_pid})"));
    common::stop_process(frozen_pid);
    // Broadcasts fill the stopped gateway's socket buffers, then its link's queue;
    // from then on a send waits at most the query timeout (3 s) and fails naming it.
    let message = switchboard::Message::from("x".repeat(256));
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let err = loop {
        match api.send_to_all(message.clone()).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{sent} broadcasts to a stopped gateway all returned Ok"
        );
    };
    let stalled_for = started.elapsed();
    // A call about a client of the live gateway still works meanwhile.
    let online = api.is_online(ClientId::new(live, 1)).await;
    unsafe { libc::kill(frozen_pid as i32, libc::SIGCONT) };
    match &err {
        ApiError::SendTimeout {
            gateway, timeout, ..
        } => {
            assert_eq!(*gateway, frozen);
            assert_eq!(*timeout, Duration::from_secs(3));
        }
        other => panic!("expected a send timeout naming gateway {frozen}, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&format!("gateway {frozen}")),
        "{err}"
    );
    assert!(online.is_ok(), "{online:?}");
    eprintln!("{sent} broadcasts queued before the send timeout ({stalled_for:?})");
    // The gateway is back: sends go through again.
    let deadline = std::time::Instant::now() + switchboard_testkit::WAIT;
    while api.send_to_all_counted("again").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "sends never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.close().await;
}

/// A message with a line for `text` clients and JSON for `websocket` ones: the JSON
/// carries `what`, the line is `what`.
fn both(what: &str) -> PerProtocol {
    PerProtocol::new(what.to_owned()).with(
        ClientProtocol::WebSocket,
        json!({"type": "test", "what": what}).to_string(),
    )
}

/// The gateways that hold a client of `protocol`.
async fn gateways_holding(api: &Gateway, protocol: ClientProtocol) -> Vec<u32> {
    let mut numbers: Vec<u32> = api
        .clients()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.protocol == protocol)
        .map(|r| r.client.gateway)
        .collect();
    numbers.sort();
    numbers.dedup();
    numbers
}

/// Every send with a rendering per protocol, from an API client, to telnet and browser
/// clients spread over 2 gateways: each client gets its own protocol's rendering, and
/// the targeted and counted sends count them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_with_a_rendering_per_protocol_across_two_gateways() {
    let d = Deployment::start(chat_with_browsers().gateways(2));
    let api = Gateway::connect(d.config()).await.unwrap();
    assert!(api.wait_for_gateways(2, Duration::from_secs(10)).await);
    // Telnet and browser clients until each gateway holds one of each kind.
    let mut telnet: Vec<Client> = Vec::new();
    let mut browsers: Vec<Ws> = Vec::new();
    for _ in 0..40 {
        if gateways_holding(&api, ClientProtocol::Text).await.len() < 2 {
            let mut c = Client::connect(d.addr()).await;
            c.expect_next("type in your name:").await;
            c.identify(&api).await;
            telnet.push(c);
        }
        if gateways_holding(&api, ClientProtocol::WebSocket)
            .await
            .len()
            < 2
        {
            browsers.push(Ws::connect(d.listener_addr("browser")).await);
        }
    }
    assert_eq!(gateways_holding(&api, ClientProtocol::Text).await.len(), 2);
    // Each browser learns its id from a send to it (the sends ask nothing first).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let browser_ids: Vec<ClientId> = loop {
        let ids: Vec<ClientId> = api
            .clients()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.protocol == ClientProtocol::WebSocket)
            .map(|r| r.client)
            .collect();
        if ids.len() == browsers.len() {
            break ids;
        }
        assert!(std::time::Instant::now() < deadline, "browsers not listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut gateways_of_browsers: Vec<u32> = browser_ids.iter().map(|id| id.gateway).collect();
    gateways_of_browsers.sort();
    gateways_of_browsers.dedup();
    assert_eq!(gateways_of_browsers.len(), 2);
    for id in &browser_ids {
        assert!(api
            .send_to_client(*id, both(&id.to_string()))
            .await
            .unwrap());
    }
    for b in browsers.iter_mut() {
        let m = b.next().await;
        assert_eq!(m["type"], "test", "a browser got another rendering: {m}");
        b.id = m["what"].as_str().and_then(|s| s.parse().ok());
        assert!(browser_ids.contains(&b.id.unwrap()), "{m}");
    }
    // send_to_client: a telnet client gets the line.
    for c in telnet.iter_mut() {
        let id = c.id.unwrap();
        assert!(api.send_to_client(id, both("you")).await.unwrap());
        c.expect_next("you").await;
    }
    let everyone = (telnet.len() + browsers.len()) as u64;

    // A group of both kinds on both gateways: counted, and fire-and-forget.
    for id in telnet
        .iter()
        .map(|c| c.id.unwrap())
        .chain(browser_ids.clone())
    {
        api.join_group(id, "mixed").await.unwrap();
    }
    let reached = api
        .send_to_group_counted(&["mixed"], both("to the group"), &[])
        .await
        .unwrap();
    assert_eq!(reached as u64, everyone);
    api.send_to_group(&["mixed"], both("again"), &[])
        .await
        .unwrap();
    for c in telnet.iter_mut() {
        c.expect_next("to the group").await;
        c.expect_next("again").await;
    }
    for b in browsers.iter_mut() {
        assert_eq!(b.next().await["what"], "to the group");
        assert_eq!(b.next().await["what"], "again");
    }

    // One uid on a telnet client of one gateway and a browser of the other.
    let t = telnet[0].id.unwrap();
    let w = browser_ids
        .iter()
        .copied()
        .find(|id| id.gateway != t.gateway)
        .unwrap();
    api.bind_uid(t, "ann").await.unwrap();
    api.bind_uid(w, "ann").await.unwrap();
    assert_eq!(api.send_to_uid(&["ann"], both("to ann")).await.unwrap(), 2);
    telnet[0].expect_next("to ann").await;
    let ann = browsers.iter_mut().find(|b| b.id == Some(w)).unwrap();
    assert_eq!(ann.next().await["what"], "to ann");

    // Everyone, counted.
    assert_eq!(
        api.send_to_all_counted(both("all")).await.unwrap() as u64,
        everyone
    );
    for c in telnet.iter_mut() {
        c.expect_next("all").await;
        nothing_more(c).await;
    }
    for b in browsers.iter_mut() {
        assert_eq!(b.next().await["what"], "all");
        b.nothing_within(Duration::from_millis(100)).await;
    }
    api.close().await;
}

/// A `Tell` for a sender, told "sent" or "offline", whose outcomes come out of the
/// receiver in order.
fn outcomes() -> (
    impl Fn(ClientId) -> Tell,
    tokio::sync::mpsc::UnboundedReceiver<Result<bool, ApiError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let make = move |sender| {
        let tx = tx.clone();
        Tell::sender(sender)
            .sent("sent")
            .offline("offline")
            .then(move |outcome| {
                let _ = tx.send(outcome);
            })
    };
    (make, rx)
}

async fn next_outcome(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<bool, ApiError>>,
) -> Result<bool, ApiError> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("`then` was not called within 10 s")
        .expect("the callback was dropped without being called")
}

/// `send_to_client_or_tell`: the recipient gets the message and the sender the right
/// notice, with the sender on the recipient's gateway (one command), on the other one,
/// and when the recipient's gateway is not there; `then` hears each outcome once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_or_tell_tells_the_sender_on_one_gateway_and_across_two() {
    let d = Deployment::start(chat().gateways(2));
    let api = Gateway::connect(d.config()).await.unwrap();
    assert!(api.wait_for_gateways(2, Duration::from_secs(10)).await);
    let mut clients = clients_on_both_gateways(&d, &api).await;
    let (_, b_idx, c_idx) = a_b_c(&clients);
    let (a, b, c) = (clients[0].0, clients[b_idx].0, clients[c_idx].0);
    let gw_a = a.gateway;
    let with_sender = |sender: ClientId| Tell::sender(sender).sent("sent").offline("offline");

    // Same gateway, nobody asking for the outcome: one command, no answer.
    let queries = api.pending_queries();
    api.send_to_client_or_tell(c, "psst 1", with_sender(a))
        .await
        .unwrap();
    assert_eq!(api.pending_queries(), queries, "no answer is waited for");
    clients[c_idx].1.expect_next("psst 1").await;
    clients[0].1.expect_next("sent").await;
    // What is sent to the sender after it comes after its notice.
    let offline_here = ClientId::new(gw_a, 1 << 40);
    api.send_to_client_or_tell(offline_here, "psst 2", with_sender(a))
        .await
        .unwrap();
    api.send_to_client(a, "after").await.unwrap();
    clients[0].1.expect_next("offline").await;
    clients[0].1.expect_next("after").await;

    // With `then`: each outcome, once, on one gateway and across two.
    let (tell, mut heard) = outcomes();
    let cases = [
        (c, a, true, c_idx),
        (offline_here, a, false, 0),
        (b, a, true, b_idx),
        (ClientId::new(b.gateway, 1 << 40), a, false, 0),
        (ClientId::new(999, 1), a, false, 0),
    ];
    for (to, from, delivered, to_idx) in cases {
        api.send_to_client_or_tell(to, "psst 3", tell(from))
            .await
            .unwrap();
        assert_eq!(next_outcome(&mut heard).await, Ok(delivered), "to {to}");
        if delivered {
            clients[to_idx].1.expect_next("psst 3").await;
            clients[0].1.expect_next("sent").await;
        } else {
            clients[0].1.expect_next("offline").await;
        }
    }
    for (_, cl) in clients.iter_mut() {
        nothing_more(cl).await;
    }
    assert!(heard.try_recv().is_err(), "each outcome is heard once");
    assert_eq!(api.pending_queries(), 0);
    api.close().await;
}

/// When the answer does not come, `then` still hears once: a timeout when the
/// recipient's gateway is stopped (no task waits; the link's reader times it out), and
/// "disconnected" when its link breaks with the command in flight. The call itself has
/// returned at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_or_tell_reports_a_missing_answer_to_then() {
    let d = Deployment::start(chat());
    let api = d.api().await;
    let mut alice = Client::connect(d.addr()).await;
    alice.expect_next("type in your name:").await;
    let ids = api.all_client_ids().await.unwrap();
    let (a, gateway) = (ids[0], ids[0].gateway);
    let (tell, mut heard) = outcomes();
    let pid = d.gateway_pid(gateway);
    d.note(&format!("SIGSTOP gateway {gateway} (pid {pid})"));
    // Every thread stopped before the send, or one may still answer it.
    common::stop_process(pid);

    let started = std::time::Instant::now();
    api.send_to_client_or_tell(a, "to myself", tell(a))
        .await
        .unwrap();
    let returned = started.elapsed();
    match next_outcome(&mut heard).await {
        Err(ApiError::Timeout {
            gateway: g,
            timeout,
            ..
        }) => {
            assert_eq!(g, gateway);
            assert_eq!(timeout, Duration::from_secs(3));
        }
        other => panic!("expected a timeout naming gateway {gateway}, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the query timeout: {:?}",
        started.elapsed()
    );
    eprintln!(
        "returned after {returned:?}, timed out after {:?}",
        started.elapsed()
    );

    // The link breaks (the gateway dies) with the command in flight.
    api.send_to_client_or_tell(a, "to myself", tell(a))
        .await
        .unwrap();
    d.note(&format!("SIGKILL gateway {gateway} (pid {pid})"));
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    match next_outcome(&mut heard).await {
        Err(ApiError::Disconnected { gateway: g, .. }) => assert_eq!(g, gateway),
        other => panic!("expected gateway {gateway} disconnected, got {other:?}"),
    }
    assert!(heard.try_recv().is_err(), "each outcome is heard once");
    assert_eq!(api.pending_queries(), 0);
    api.close().await;
}
