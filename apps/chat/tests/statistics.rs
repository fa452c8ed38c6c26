//! Statistics and metrics of a real deployment: known traffic through telnet clients,
//! then `/metrics` (parsed as Prometheus text), the statistics API, a supervisor
//! restart, the admin token, and the dashboard in headless Chromium.

mod common;

use std::time::{Duration, Instant};

use common::web::{http_get, screenshot_path, Browser};
use common::{Client, Deployment, Options, WAIT};

/// Every sample of `name` whose labels include `labels`, summed.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text page");
    let mut found = None;
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        if labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            *found.get_or_insert(0.0) += v;
        }
    }
    found
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

/// Logs in `n` clients, then sends `lines` public lines and one private line to a
/// client id that is not online (a failure in the statistics).
async fn traffic(d: &Deployment, n: usize, lines: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = Client::connect(d.addr).await;
        c.login(&format!("user{i}")).await;
        clients.push(c);
    }
    for i in 0..lines {
        let c = &mut clients[i % n];
        c.send(&format!("line {i}")).await;
        let name = c.name.clone();
        let id = c.id.unwrap();
        c.expect(&format!("{name}[{id}] said :line {i}")).await;
    }
    let c = &mut clients[0];
    c.send("00000001000000000abc:anyone there?").await;
    c.expect("[00000001000000000abc] is not online; nothing was sent")
        .await;
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_and_survive_a_supervisor_restart() {
    let started = Instant::now();
    let mut d = Deployment::start(Options::default());
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
    // 3 names + 12 lines + 1 private line.
    assert_eq!(
        metric(&page, "switchboard_events_total", &[("kind", "message")]),
        Some(16.0)
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
        Some(19.0)
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
    d.restart(1, 2);
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
        Some(16.0)
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
    let opts = |port: u16| Options {
        admin: format!("listen = \"0.0.0.0:{port}\"\ntoken = \"{token}\"\n"),
        ..Options::default()
    };
    // Without the token, `config check` and `start` refuse with the key named.
    let d = Deployment::prepare(opts(common::free_port()));
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    let bad = d.dir.path().join("no-token.toml");
    std::fs::write(&bad, text.replace(&format!("token = \"{token}\"\n"), "")).unwrap();
    for args in [vec!["config", "check"], vec!["start"]] {
        let out = std::process::Command::new(&d.binary)
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
    let token_file = d.dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let with_file = d.dir.path().join("token-file.toml");
    std::fs::write(
        &with_file,
        text.replace(
            &format!("token = \"{token}\"\n"),
            &format!("token_file = \"{}\"\n", token_file.display()),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(&d.binary)
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
    let d = Deployment::start(opts(common::free_port()));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_charts_and_the_failure_log_in_a_browser() {
    let started = Instant::now();
    let d = Deployment::start(Options::default());
    let _clients = traffic(&d, 4, 30).await;
    let addr = d.admin_addr();
    wait_metrics(&d, None, "30 say calls", |p| {
        metric(
            p,
            "switchboard_statistic_calls_total",
            &[("interface", "say"), ("success", "true")],
        ) == Some(30.0)
    });
    let Some(browser) = Browser::start(1400, 1000).await else {
        return;
    };
    let c = &browser.client;
    c.goto(&format!("http://{addr}/")).await.unwrap();
    // The overview: figures in the KPI boxes and ink on every chart.
    browser
        .wait_js(
            "const k = document.querySelector('#kpis .kpi b'); return k && k.textContent.replace(/,/g, '') === '35' ? k.textContent : null;",
            WAIT,
            "the overview shows 35 calls (4 logins, 30 lines, 1 private)",
        )
        .await;
    const INK: &str = "const cv = document.getElementById(arguments[0] || ID); const g = cv.getContext('2d');
        const d = g.getImageData(0, 0, cv.width, cv.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) n++; }
        return n;";
    for id in ["c-calls", "c-rate", "c-time"] {
        let js = INK.replace("arguments[0] || ID", &format!("'{id}'"));
        let ink = browser
            .wait_js(&js, WAIT, &format!("chart {id} is drawn"))
            .await;
        assert!(ink.as_u64().unwrap() > 500, "{id}: only {ink} dark pixels");
    }
    browser
        .wait_js(
            "return document.getElementById('codes').textContent.includes('code 404');",
            WAIT,
            "the code distribution lists 404",
        )
        .await;
    browser
        .wait_js(
            "return document.getElementById('l-clients').textContent === '4';",
            WAIT,
            "the live header shows 4 clients",
        )
        .await;
    browser.screenshot(&screenshot_path("dashboard.png")).await;

    // The module → interface tree and the per-minute table of `chat::say`.
    c.execute(
        "document.querySelector('nav button[data-tab=interfaces]').click()",
        vec![],
    )
    .await
    .unwrap();
    browser
        .wait_js(
            "return [...document.querySelectorAll('.tree .if')].map(e => e.dataset.i).join(',');",
            WAIT,
            "the tree lists interfaces",
        )
        .await;
    c.execute(
        "document.querySelector('.tree .if[data-i=say]').click()",
        vec![],
    )
    .await
    .unwrap();
    browser
        .wait_js(
            "return document.getElementById('if-title').textContent === 'chat::say' && document.querySelectorAll('#if-table tr').length >= 2;",
            WAIT,
            "chat::say with its per-minute table",
        )
        .await;
    browser
        .screenshot(&screenshot_path("dashboard-interfaces.png"))
        .await;

    // The failure log, filtered by code.
    c.execute(
        "document.querySelector('nav button[data-tab=failures]').click()",
        vec![],
    )
    .await
    .unwrap();
    browser
        .wait_js(
            "return document.getElementById('f-table').textContent.includes('is not online');",
            WAIT,
            "the failure log shows the private line to nobody",
        )
        .await;
    c.execute(
        "document.getElementById('f-code').value = '500'; document.querySelector('#f-form button').click();",
        vec![],
    )
    .await
    .unwrap();
    browser
        .wait_js(
            "return document.getElementById('f-table').textContent.includes('no failure matches');",
            WAIT,
            "filtering by another code empties the log",
        )
        .await;
    c.execute(
        "document.getElementById('f-code').value = '404'; document.querySelector('#f-form button').click();",
        vec![],
    )
    .await
    .unwrap();
    browser
        .wait_js(
            "return document.getElementById('f-table').textContent.includes('chat::private');",
            WAIT,
            "filtering by 404 shows it again",
        )
        .await;
    browser
        .screenshot(&screenshot_path("dashboard-failures.png"))
        .await;

    // Live: the processes of the machine and the clients chart, fed by the stream.
    c.execute(
        "document.querySelector('nav button[data-tab=live]').click()",
        vec![],
    )
    .await
    .unwrap();
    browser
        .wait_js(
            "return document.querySelectorAll('#procs tr').length === 4;",
            WAIT,
            "the live view lists the gateway and both workers",
        )
        .await;
    let js = INK.replace("arguments[0] || ID", "'c-clients'");
    browser
        .wait_js(&js, WAIT, "the live clients chart is drawn")
        .await;
    browser
        .screenshot(&screenshot_path("dashboard-live.png"))
        .await;
    browser.close().await;
    eprintln!("took {:?}", started.elapsed());
}
