//! Statistics and metrics of a real deployment: known traffic through telnet clients,
//! then `/metrics` (parsed as Prometheus text), the statistics API, a supervisor
//! restart, the admin token, and the dashboard in headless Chromium.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::ws::Ws;
use common::{chat, ChatClient};
use switchboard_testkit::browser::Browser;
use switchboard_testkit::{metric, ChildRole, Client, Deployment, Listener, Options, WAIT};

/// The chat with its telnet listener, as the statistics tests drive it.
fn telnet() -> Options {
    chat().listener(Listener::text("telnet"))
}

/// A GET and its answer.
struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr` (one plain HTTP/1.1 request, `Connection: close`), with a
/// bearer token when given: exact status codes, no client library in between.
fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> HttpReply {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // The event stream never ends: a read timeout after its first event is the end.
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from {addr}{path}: {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `/metrics` until `check` holds; returns the page.
fn wait_metrics(
    d: &Deployment,
    token: Option<&str>,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = http_get(d.admin_addr(), "/metrics", token);
        assert_eq!(r.status, 200, "{}", r.body);
        if check(&r.body) {
            return r.body;
        }
        if Instant::now() > deadline {
            panic!(
                "/metrics never showed {what}:\n{}\nlog:\n{}",
                r.body,
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Logs in `n` clients, then sends `lines` public lines, asks for `/history` once, and
/// sends one private line to a client id that is not online (a failure in the
/// statistics).
async fn traffic(d: &Deployment, n: usize, lines: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = Client::connect(d.addr()).await;
        c.login(&format!("user{i}")).await;
        clients.push(c);
    }
    for i in 0..lines {
        // The last line is the first client's, which asks for the history next: its
        // own write is done by then (a client's events are handled in order).
        let c = &mut clients[(lines - 1 - i) % n];
        c.send(&format!("line {i}")).await;
        let name = c.name.clone();
        let id = c.id.unwrap();
        c.expect(&format!("{name}[{id}] said :line {i}")).await;
    }
    let c = &mut clients[0];
    // The history (`[time] NAME[ID] said :TEXT`) ends with the last line said.
    c.send("/history").await;
    let last = format!(" said :line {}", lines - 1);
    loop {
        let l = c.line().await;
        if l.starts_with('[') && l.ends_with(&last) {
            break;
        }
    }
    c.send("00000001000000000abc:anyone there?").await;
    c.expect("[00000001000000000abc] is not online; nothing was sent")
        .await;
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_and_survive_a_supervisor_restart() {
    let started = Instant::now();
    let mut d = Deployment::start(telnet());
    let clients = traffic(&d, 3, 12).await;

    let say = [
        ("module", "chat"),
        ("interface", "say"),
        ("success", "true"),
    ];
    // Each process writes its snapshot once a second: wait for both the workers'
    // (statistics) and the gateway's (clients).
    let page = wait_metrics(&d, None, "12 say calls and 3 clients", |p| {
        metric(p, "switchboard_statistic_calls_total", &say) == Some(12.0)
            && metric(p, "switchboard_clients", &[]) == Some(3.0)
    });
    assert_eq!(
        metric(
            &page,
            "switchboard_clients",
            &[("listener", "telnet"), ("protocol", "text")]
        ),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "switchboard_statistic_calls_total",
            &[("interface", "login"), ("success", "true")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &page,
            "switchboard_statistic_calls_total",
            &[("interface", "private"), ("success", "false")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "switchboard_statistic_calls_total",
            &[
                ("module", "chat"),
                ("interface", "history"),
                ("success", "true")
            ]
        ),
        Some(1.0),
        "{page}"
    );
    // 3 names + 12 lines + /history + 1 private line.
    assert_eq!(
        metric(&page, "switchboard_events_total", &[("kind", "message")]),
        Some(17.0)
    );
    // Commands by kind: every login names the client (one session update: the handler
    // changes nothing else in the session, so nothing is saved when it returns), joins
    // the telnet group and tells room 1 (one group send to both audiences, each in its
    // own format), as every public line does; every prompt, welcome and answer is a send
    // to one client. (The private line's target is on no gateway, so it takes no query.)
    let commands = |kind: &str| metric(&page, "switchboard_commands_total", &[("kind", kind)]);
    assert_eq!(commands("send_to_group"), Some(3.0 + 12.0), "{page}");
    assert_eq!(commands("group"), Some(3.0), "{page}");
    assert_eq!(commands("session"), Some(3.0), "{page}");
    // 3 prompts, 3 welcomes, 1 "not online", and the history: up to 12 lines, at least
    // the asker's own last line (the others' writes may still be under way).
    let to_one = commands("send_to_client").unwrap_or(0.0);
    assert!((8.0..=19.0).contains(&to_one), "{to_one}: {page}");
    assert_eq!(
        commands("send_to_all"),
        None,
        "the chat never sends to all: {page}"
    );
    assert_eq!(
        metric(&page, "switchboard_events_total", &[("kind", "connect")]),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &page,
            "switchboard_statistic_duration_seconds_count",
            &[("interface", "say")]
        ),
        Some(12.0)
    );
    assert_eq!(
        metric(&page, "switchboard_processes", &[("role", "worker")]),
        Some(2.0)
    );
    assert_eq!(
        metric(&page, "switchboard_handler_duration_seconds_count", &[]),
        Some(20.0)
    );
    assert!(
        metric(
            &page,
            "switchboard_store_duration_seconds_count",
            &[("op", "get")]
        )
        .unwrap()
            > 0.0
    );
    // Every public line is written to the history through the Db module.
    assert!(
        metric(
            &page,
            "switchboard_db_duration_seconds_count",
            &[("instance", "history")]
        )
        .unwrap_or(0.0)
            >= 12.0,
        "{page}"
    );
    assert!(page.trim_end().ends_with("# EOF"));

    // The statistics API has the same figures, per minute, and the failure in its log.
    let addr = d.admin_addr();
    let deadline = Instant::now() + WAIT;
    let summary = loop {
        let r = http_get(addr, "/api/summary?module=chat&interface=say", None);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if v["total"]["ok"] == 12 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(summary["total"]["ok"], 12, "{summary}");
    assert_eq!(summary["points"].as_array().unwrap().len(), 60);
    let fails: serde_json::Value =
        serde_json::from_str(&http_get(addr, "/api/failures?code=404", None).body).unwrap();
    assert_eq!(fails[0]["interface"], "private", "{fails}");
    assert!(fails[0]["message"]
        .as_str()
        .unwrap()
        .contains("is not online"));

    // `status` prints the headline.
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("clients connected: 3"), "{text}");
    assert!(
        text.contains("statistics:") && text.contains("calls/min"),
        "{text}"
    );

    // A supervisor restart (every child restarts) keeps every figure already reported.
    drop(clients);
    d.note("restarting the supervisor");
    d.restart();
    let page = wait_metrics(&d, None, "the say count after a restart", |p| {
        metric(p, "switchboard_processes", &[("role", "worker")]) == Some(2.0)
    });
    assert_eq!(
        metric(&page, "switchboard_statistic_calls_total", &say),
        Some(12.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, "switchboard_events_total", &[("kind", "message")]),
        Some(17.0)
    );
    assert_eq!(
        metric(&page, "switchboard_clients", &[("listener", "telnet")]),
        Some(0.0),
        "gauges count only live clients"
    );
    let v: serde_json::Value = serde_json::from_str(
        &http_get(
            d.admin_addr(),
            "/api/summary?module=chat&interface=say",
            None,
        )
        .body,
    )
    .unwrap();
    assert_eq!(v["total"]["ok"], 12, "{v}");
    // New traffic adds to the old.
    let _more = traffic(&d, 1, 2).await;
    wait_metrics(&d, None, "14 say calls", |p| {
        metric(p, "switchboard_statistic_calls_total", &say) == Some(14.0)
    });
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let started = Instant::now();
    let token = "test-admin-token";
    // Port 0: the supervisor binds it and reports the address (`run/admin.addr`).
    let opts = || telnet().admin(&format!("listen = \"0.0.0.0:0\"\ntoken = \"{token}\"\n"));
    // Without the token, `config check` and `start` refuse with the key named.
    let d = Deployment::prepare(opts());
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let bad = d.dir().join("no-token.toml");
    std::fs::write(&bad, text.replace(&format!("token = \"{token}\"\n"), "")).unwrap();
    for args in [vec!["config", "check"], vec!["start"]] {
        let out = std::process::Command::new(d.binary())
            .arg("--config")
            .arg(&bad)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} accepted an admin listener with no token"
        );
        assert!(
            err.contains("admin.token") && err.contains("not a loopback address"),
            "{args:?}: {err}"
        );
    }
    // A token file does as well as the token itself.
    let token_file = d.dir().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let with_file = d.dir().join("token-file.toml");
    std::fs::write(
        &with_file,
        text.replace(
            &format!("token = \"{token}\"\n"),
            &format!("token_file = \"{}\"\n", token_file.display()),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(d.binary())
        .arg("--config")
        .arg(&with_file)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(d);

    // With it, the deployment starts; requests without it get 401.
    let d = Deployment::start(opts());
    let addr = d.admin_addr();
    assert!(addr.ip().is_unspecified(), "{addr}");
    let local: std::net::SocketAddr = format!("127.0.0.1:{}", addr.port()).parse().unwrap();
    for path in ["/metrics", "/api/summary", "/api/stream", "/"] {
        let r = http_get(local, path, None);
        assert_eq!(r.status, 401, "{path} without a token");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        let r = http_get(local, path, Some("wrong"));
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }
    // The page sent with a 401 carries no figures, only the form asking for the token.
    assert!(http_get(local, "/", None).body.contains("needs a token"));
    let r = http_get(local, "/metrics", Some(token));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("switchboard_processes"), "{}", r.body);
    eprintln!("took {:?}", started.elapsed());
}

/// A JavaScript expression: how many non-white pixels the canvas `id` has.
fn ink(id: &str) -> String {
    format!(
        "(() => {{ const cv = document.getElementById('{id}'); const d = cv.getContext('2d')
            .getImageData(0, 0, cv.width, cv.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4)
                if (d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) n++;
            return n; }})()"
    )
}

/// A JavaScript expression: the code distribution in the element `id`, as
/// `code 0: 30 (100.0 %), code 404: ...`.
fn codes(id: &str) -> String {
    format!(
        "[...document.querySelectorAll('#{id} > div')]
            .map((d) => d.firstChild.textContent + ': ' + d.lastChild.textContent).join(', ')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_charts_and_the_failure_log_in_a_browser() {
    let started = Instant::now();
    let d = Deployment::start(telnet());
    let _clients = traffic(&d, 4, 30).await;
    let addr = d.admin_addr();
    wait_metrics(&d, None, "30 say calls", |p| {
        metric(
            p,
            "switchboard_statistic_calls_total",
            &[("interface", "say"), ("success", "true")],
        ) == Some(30.0)
    });
    // Another process of this machine, configured as `statistic.host = "web-1"`,
    // reported a failure two hours ago: its batch is in the spool, as any process
    // hands its reports over. It is in the day's failure log, not the hour's.
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 2 * 3_600_000;
    let mut agg = switchboard::statistic::MinuteAgg {
        fail: 1,
        fail_us: 2_500_000,
        ..Default::default()
    };
    agg.codes.insert(502, 1);
    let batch = switchboard::statistic::Batch {
        host: "web-1".into(),
        pid: 1,
        minutes: vec![switchboard::statistic::MinuteRecord {
            module: "billing".into(),
            interface: "charge".into(),
            minute: two_hours_ago / 60_000,
            agg,
        }],
        failures: vec![switchboard::statistic::FailureRecord {
            at_ms: two_hours_ago,
            host: "web-1".into(),
            module: "billing".into(),
            interface: "charge".into(),
            code: 502,
            message: "the payment gateway timed out".into(),
            took_us: 2_500_000,
        }],
        dropped: Default::default(),
    };
    let spool = switchboard::statistic::spool::dir(&d.config().run_dir());
    switchboard::statistic::spool::write(&spool, &batch, two_hours_ago).unwrap();
    let deadline = Instant::now() + WAIT;
    while !http_get(addr, "/api/failures?host=web-1", None)
        .body
        .contains("payment gateway")
    {
        assert!(
            Instant::now() < deadline,
            "the spool file was never taken in"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let Some(page) = Browser::start_or_skip("the_dashboard_shows_charts").await else {
        return;
    };
    page.set_size(1400, 1000).await;
    page.goto(&format!("http://{addr}/")).await;
    // The overview: the figures in the boxes, ink on every chart, the codes, the live
    // header.
    page.wait_until(
        "document.querySelector('#kpis .kpi b') && document.querySelector('#kpis .kpi b').textContent === '36'",
    )
    .await; // 4 logins, 30 lines, /history, 1 private line to nobody
    for id in ["c-calls", "c-rate", "c-time"] {
        page.wait_until(&format!("{} > 500", ink(id))).await;
    }
    page.wait_until(&format!(
        "{}.includes('code 404: 1 (2.8 %)')",
        codes("codes")
    ))
    .await;
    page.wait_until("document.getElementById('l-clients').textContent === '4'")
        .await;
    page.screenshot("dashboard").await;

    // The module → interface tree and the per-minute table of `chat::say`.
    page.click("nav button[data-tab=interfaces]").await;
    page.wait_until("document.querySelector('.tree .if[data-i=say]') !== null")
        .await;
    page.click(".tree .if[data-i=say]").await;
    page.wait_until(
        "document.getElementById('if-title').textContent === 'chat::say' && document.querySelectorAll('#if-table tr').length >= 2",
    )
    .await;
    page.wait_until(&format!("{} > 500", ink("i-calls"))).await;
    // The interface's codes: every say succeeded.
    page.wait_until(&format!("{} === 'code 0: 30 (100.0 %)'", codes("if-codes")))
        .await;
    page.screenshot("dashboard-interfaces").await;
    // chat::private failed once, with 404.
    page.click(".tree .if[data-i=private]").await;
    page.wait_until(&format!(
        "document.getElementById('if-title').textContent === 'chat::private' && {} === 'code 404: 1 (100.0 %)'",
        codes("if-codes")
    ))
    .await;
    page.screenshot("dashboard-interface-codes").await;

    // The failure log of the last hour, on every host: the chat's failure, not the
    // older one of web-1.
    page.click("nav button[data-tab=failures]").await;
    let table = "document.getElementById('f-table').textContent";
    page.wait_until(&format!(
        "{table}.includes('is not online') && !{table}.includes('payment gateway')"
    ))
    .await;
    page.wait_until(
        "document.getElementById('f-scope').textContent === 'newest first · last hour · all hosts'",
    )
    .await;
    // The last day has both; web-1 alone has only its own.
    page.click("#range option[value=day]").await;
    page.wait_until(&format!(
        "{table}.includes('is not online') && {table}.includes('payment gateway')"
    ))
    .await;
    page.click("#host option[value='web-1']").await;
    page.wait_until(&format!(
        "{table}.includes('billing::charge') && !{table}.includes('is not online')"
    ))
    .await;
    page.wait_until(
        "document.getElementById('f-scope').textContent === 'newest first · last day · host web-1'",
    )
    .await;
    page.screenshot("dashboard-failures-host").await;
    page.click("#host option[value='']").await;
    page.click("#range option[value=hour]").await;
    page.wait_until(&format!("!{table}.includes('payment gateway')"))
        .await;

    // Filtered by code.
    page.fill("#f-code", "500").await;
    page.click("#f-form button").await;
    page.wait_until(
        "document.getElementById('f-table').textContent.includes('no failure matches')",
    )
    .await;
    page.fill("#f-code", "404").await;
    page.click("#f-form button").await;
    page.wait_until("document.getElementById('f-table').textContent.includes('chat::private')")
        .await;
    page.screenshot("dashboard-failures").await;

    // Live: the processes of the machine and the clients chart, fed by the stream.
    page.click("nav button[data-tab=live]").await;
    page.wait_until("document.querySelectorAll('#procs tr').length === 4")
        .await; // a header, the gateway and both workers
    page.wait_until(&format!("{} > 500", ink("c-clients")))
        .await;
    page.screenshot("dashboard-live").await;
    page.close().await;
    eprintln!("took {:?}", started.elapsed());
}

/// The gateway's own figures: clients per listener and protocol, connections ended
/// for each reason, bytes both ways and the outbound queue, from a deployment with
/// telnet, a heartbeat-closed text listener and a WebSocket listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_metrics_count_clients_connections_and_bytes_per_listener() {
    let d = Deployment::start(
        chat()
            .listener(Listener::text("telnet"))
            .listener(
                Listener::text("idle")
                    .keys(r#"heartbeat = { interval = "300ms", idle_intervals = 1 }"#),
            )
            .listener(Listener::new("browser", "websocket"))
            .gateway_keys("outbound_limit = 65536\nmax_clients = 7"),
    );
    let api = d.api().await;
    let mut telnet = Vec::new();
    for name in ["ann", "bob", "cy"] {
        let mut c = Client::connect(d.addr()).await;
        c.login(name).await;
        telnet.push(c);
    }
    let mut page = Ws::connect(d.listener_addr("browser")).await;
    let (page_id, _) = page.login("page", serde_json::json!(1)).await;
    // The browser chat reports its calls as the telnet side does: its login (and the
    // history read that comes with it) and a line said.
    page.say("hello from a page").await;
    page.expect_type("say").await;
    // A client of the `idle` listener that never says anything: the heartbeat closes it.
    let mut idle = Client::connect(d.listener_addr("idle")).await;
    assert!(idle.closed_within(WAIT).await, "the heartbeat closes it");
    let text = [("listener", "telnet"), ("protocol", "text")];
    let browser = [("listener", "browser"), ("protocol", "websocket")];
    let ended =
        |listener: &'static str, reason: &'static str| [("listener", listener), ("reason", reason)];
    let p = wait_metrics(
        &d,
        None,
        "3 telnet clients, 1 page, 1 heartbeat close, the page's calls",
        |p| {
            let calls = |i: &str| {
                metric(
                    p,
                    "switchboard_statistic_calls_total",
                    &[("interface", i), ("success", "true")],
                )
            };
            calls("login") == Some(4.0)
                && calls("history") == Some(1.0)
                && calls("say") == Some(1.0)
                && metric(p, "switchboard_clients", &text) == Some(3.0)
                && metric(p, "switchboard_clients", &browser) == Some(1.0)
                && metric(
                    p,
                    "switchboard_connections_total",
                    &ended("idle", "heartbeat"),
                ) == Some(1.0)
        },
    );
    assert_eq!(
        metric(&p, "switchboard_clients", &[("listener", "idle")]),
        Some(0.0),
        "{p}"
    );
    let chat_calls = |interface: &str| {
        metric(
            &p,
            "switchboard_statistic_calls_total",
            &[
                ("module", "chat"),
                ("interface", interface),
                ("success", "true"),
            ],
        )
    };
    // 3 telnet logins and the page's; the history read and the line are the page's.
    assert_eq!(chat_calls("login"), Some(4.0), "{p}");
    assert_eq!(chat_calls("history"), Some(1.0), "{p}");
    assert_eq!(chat_calls("say"), Some(1.0), "{p}");
    // The page's login asks for the room's members before and after it joins, two
    // session queries each time (room 1 has browsers and telnet users); telnet logins
    // ask nothing.
    assert_eq!(
        metric(&p, "switchboard_commands_total", &[("kind", "query")]),
        Some(4.0),
        "{p}"
    );
    assert_eq!(
        metric(&p, "switchboard_connections_accepted_total", &text),
        Some(3.0),
        "{p}"
    );
    assert!(
        metric(&p, "switchboard_received_bytes_total", &[]).unwrap() > 0.0,
        "{p}"
    );
    assert!(
        metric(&p, "switchboard_sent_bytes_total", &[]).unwrap() > 0.0,
        "{p}"
    );

    // One leaves, one breaks the protocol (a line over 64 KiB), the page is closed by
    // the server.
    drop(telnet.pop());
    let mut rude = telnet.pop().unwrap();
    rude.send_raw(&vec![b'x'; 70_000]).await;
    assert!(rude.closed_within(WAIT).await);
    api.close_client(page_id, None).await.unwrap();
    assert!(page.closed_within(WAIT).await, "the page is closed");
    wait_metrics(
        &d,
        None,
        "client_closed, protocol_error and server_close",
        |p| {
            metric(
                p,
                "switchboard_connections_total",
                &ended("telnet", "client_closed"),
            ) == Some(1.0)
                && metric(
                    p,
                    "switchboard_connections_total",
                    &ended("telnet", "protocol_error"),
                ) == Some(1.0)
                && metric(
                    p,
                    "switchboard_connections_total",
                    &ended("browser", "server_close"),
                ) == Some(1.0)
                && metric(p, "switchboard_clients", &text) == Some(1.0)
                && metric(p, "switchboard_clients", &browser) == Some(0.0)
        },
    );

    // A client that does not read while the others talk is cut as a slow consumer.
    let mut talker = telnet.pop().unwrap();
    let mut lazy = Client::connect(d.addr()).await;
    lazy.login("lazy").await;
    let line = "x".repeat(1000);
    let slow = ended("telnet", "slow_consumer");
    let mut cut = false;
    for _ in 0..200 {
        for _ in 0..100 {
            talker.send(&line).await;
        }
        for _ in 0..100 {
            talker
                .expect(&format!("ann[{}] said :{line}", talker_id(&talker)))
                .await;
        }
        let r = http_get(d.admin_addr(), "/metrics", None);
        if metric(&r.body, "switchboard_connections_total", &slow) == Some(1.0) {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "the lazy client was never counted as a slow consumer:\n{}",
        d.log()
    );

    // At max_clients (7, the heartbeat-free ones count), new connections are refused.
    let mut more = Vec::new();
    for _ in 0..10 {
        more.push(std::net::TcpStream::connect(d.addr()).unwrap());
    }
    let p = wait_metrics(&d, None, "refusals at max_clients", |p| {
        metric(
            p,
            "switchboard_connections_total",
            &ended("telnet", "limit"),
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    // A burst is counted as it is accepted: never more than max_clients at once.
    assert!(
        metric(&p, "switchboard_clients", &[]).unwrap() <= 7.0,
        "over max_clients: {p}"
    );
    // Whatever was queued for clients gone is off the gateway-wide figure.
    drop(more);
    drop(talker);
    drop(lazy);
    wait_metrics(&d, None, "an empty outbound queue", |p| {
        metric(p, "switchboard_outbound_queue_bytes", &[]) == Some(0.0)
            && metric(p, "switchboard_clients", &text) == Some(0.0)
    });
}

/// The client id a logged-in telnet client was told.
fn talker_id(c: &Client) -> switchboard::ClientId {
    c.id.expect("logged in")
}

/// What goes wrong and what the supervisor does, in the built-in metrics: database
/// errors (the history table dropped under the chat), an event in flight at a worker
/// that dies (re-dispatched), then held for want of a worker and rejected past
/// `hold_timeout`, the restart of the dead worker, a reload, and the worker links of
/// the gateway. One worker, so that every event has nowhere else to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_errors_redispatched_held_and_rejected_events_restarts_reloads_and_links_are_counted() {
    let started = Instant::now();
    let d = Deployment::start(
        telnet()
            .workers(1)
            .hold_timeout(Duration::from_secs(5))
            .restart_delay(Duration::from_secs(8)),
    );
    // An API client links to the gateway too, but only workers taking events count.
    let api = d.api().await;
    let links = |p: &str| metric(p, "switchboard_gateway_links", &[]);
    wait_metrics(&d, None, "one worker link", |p| links(p) == Some(1.0));
    let mut a = Client::connect(d.addr()).await;
    let id = a.login("alice").await;

    // The history's table dropped behind the chat's back: the next public line still
    // reaches the room, but its history write fails: a Db error, a failed `say` with
    // the database's message, and a handler error.
    api.db()
        .instance("history")
        .expect("the history instance")
        .sql("DROP TABLE chat_history")
        .execute()
        .await
        .expect("drop the history table");
    a.send("not kept").await;
    a.expect(&format!("alice[{id}] said :not kept")).await;
    let p = wait_metrics(&d, None, "a Db error and a failed say", |p| {
        metric(p, "switchboard_db_errors_total", &[("instance", "history")]) == Some(1.0)
            && metric(
                p,
                "switchboard_statistic_calls_total",
                &[("interface", "say"), ("success", "false")],
            ) == Some(1.0)
    });
    assert_eq!(
        metric(&p, "switchboard_handler_errors_total", &[]),
        Some(1.0),
        "{p}"
    );
    // The failure log is written by the same collection round as the figures, or the
    // next one.
    let logged_by = Instant::now() + WAIT;
    let fails = loop {
        let fails: serde_json::Value = serde_json::from_str(
            &http_get(d.admin_addr(), "/api/failures?interface=say", None).body,
        )
        .unwrap();
        if fails[0].is_object() || Instant::now() > logged_by {
            break fails;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        fails[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("chat_history")),
        "{fails}"
    );

    // A worker frozen with an event in flight, then killed: the gateway re-dispatches
    // the event, finds no worker, holds it, and rejects it after hold_timeout (5 s),
    // before the supervisor restarts the worker (8 s).
    let worker = d.pids(ChildRole::Worker)[0];
    let dispatched = |p: &str| metric(p, "switchboard_gateway_events_dispatched_total", &[]);
    // Gateways write their figures every second: read the count once it has settled,
    // so that it holds every event dispatched so far.
    let mut before = dispatched(&http_get(d.admin_addr(), "/metrics", None).body).unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(1200));
        let now = dispatched(&http_get(d.admin_addr(), "/metrics", None).body).unwrap();
        if now == before {
            break;
        }
        before = now;
    }
    d.note(&format!("SIGSTOP worker {worker}"));
    common::stop_process(worker);
    a.send("in flight").await;
    wait_metrics(&d, None, "the line dispatched to the frozen worker", |p| {
        dispatched(p) == Some(before + 1.0)
    });
    d.note(&format!("SIGKILL worker {worker}"));
    assert_eq!(unsafe { libc::kill(worker as i32, libc::SIGKILL) }, 0);
    wait_metrics(&d, None, "one event re-dispatched and held", |p| {
        metric(p, "switchboard_events_redispatched_total", &[]) == Some(1.0)
            && metric(p, "switchboard_events_held", &[]) == Some(1.0)
            && links(p) == Some(0.0)
    });
    a.expect_next("error: no worker is available; your message was not processed, try again later")
        .await;
    wait_metrics(&d, None, "the event rejected, none held", |p| {
        metric(p, "switchboard_events_rejected_total", &[]) == Some(1.0)
            && metric(p, "switchboard_events_held", &[]) == Some(0.0)
    });

    // The supervisor restarts the worker; a reload then replaces it.
    d.wait_log("child died; restarting");
    let p = wait_metrics(&d, None, "a worker restart and its link", |p| {
        metric(p, "switchboard_child_restarts_total", &[("role", "worker")]) == Some(1.0)
            && links(p) == Some(1.0)
    });
    assert_eq!(
        metric(&p, "switchboard_worker_reloads_total", &[]).unwrap_or(0.0),
        0.0,
        "{p}"
    );
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let p = wait_metrics(&d, None, "one reload", |p| {
        metric(p, "switchboard_worker_reloads_total", &[]) == Some(1.0) && links(p) == Some(1.0)
    });
    // A reload is no restart after a death.
    assert_eq!(
        metric(&p, "switchboard_child_restarts_total", &[]),
        Some(1.0),
        "{p}"
    );
    // The restarted worker made the table again: lines are kept once more.
    a.send("kept").await;
    a.expect(&format!("alice[{id}] said :kept")).await;
    wait_metrics(&d, None, "a successful say after the reload", |p| {
        metric(
            p,
            "switchboard_statistic_calls_total",
            &[("interface", "say"), ("success", "true")],
        ) == Some(1.0)
    });
    api.close().await;
    eprintln!("took {:?}", started.elapsed());
}
