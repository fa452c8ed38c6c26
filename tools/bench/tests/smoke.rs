//! Smoke test of the load generator: every scenario for about two seconds (`soak` for
//! fifteen, with churn and two reloads) with a few dozen clients, against a deployment
//! the tool starts, with zero loss — telnet clients, and browsers over WebSocket (`ws`)
//! and over TLS (`wss`).
//!
//! It uses the `chat` binary cargo built beside this test (`target/<profile>/chat`); the
//! workspace test command builds every binary first. It never builds anything itself.

use std::path::PathBuf;
use std::process::Command;

/// The `chat` binary of this profile: this test runs from `target/<profile>/deps/`.
fn chat_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> directory");
    let chat = profile_dir.join("chat");
    assert!(
        chat.exists(),
        "{} is missing: run the workspace tests (they build every binary) or `cargo build -p chat` first",
        chat.display()
    );
    chat
}

/// Runs one scenario with `--json` and returns the figures of its single run.
fn run(args: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    run_all(args).remove(0)
}

/// Runs one scenario with `--json` and returns the figures of every run (or round).
fn run_all(args: &[&str]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    run_all_with(&[], args)
}

/// Like [`run`], with the servers' configuration changed through the environment.
fn run_with(env: &[(&str, &str)], args: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    run_all_with(env, args).remove(0)
}

fn run_all_with(
    env: &[(&str, &str)],
    args: &[&str],
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut bench = Command::new(env!("CARGO_BIN_EXE_bench"));
    bench.envs(env.iter().copied()).args(args).arg("--json");
    // The floor servers are the tool's own; everything else runs the chat.
    if !args.contains(&"--floor") {
        bench.arg("--chat").arg(chat_bin());
    }
    let out = bench.output().expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let all: Vec<_> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !all.is_empty(),
        "no JSON figures in:\n{stdout}\nstderr:\n{stderr}"
    );
    all
}

fn figure(figures: &serde_json::Map<String, serde_json::Value>, name: &str) -> f64 {
    figures
        .get(name)
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("no {name} in {figures:?}"))
}

/// 60 idle clients held for 1.5 s.
const CONNECT_60: &[&str] = &["connect", "--clients", "60", "--hold", "1.5"];

#[test]
fn connect_holds_every_client() {
    let f = run(&[CONNECT_60, &["--gateways", "2", "--sources", "2"]].concat());
    assert_eq!(figure(&f, "clients"), 60.0, "{f:?}");
    assert_eq!(figure(&f, "failed"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "alive_after_hold"), 60.0, "{f:?}");
    assert!(figure(&f, "gateway_rss_mib") > 0.0, "{f:?}");
    assert!(figure(&f, "gateway_switches_per_connect") > 0.0, "{f:?}");
}

/// 1,200 private lines between 24 clients.
const PRIVATE_1200: &[&str] = &[
    "private",
    "--clients",
    "24",
    "--rate",
    "600",
    "--seconds",
    "2",
    "--grace",
    "5",
];

/// Each of `want`'s figures has its value.
fn assert_figures(f: &serde_json::Map<String, serde_json::Value>, want: &[(&str, f64)]) {
    for (name, value) in want {
        assert_eq!(figure(f, name), *value, "{name}: {f:?}");
    }
}

/// Every one of the 1,200 private lines arrived.
fn assert_all_private_arrived(f: &serde_json::Map<String, serde_json::Value>) {
    assert_figures(f, &[("sent", 1200.0), ("lost", 0.0), ("not_online", 0.0)]);
}

#[test]
fn private_loses_nothing() {
    let f = run(PRIVATE_1200);
    assert_all_private_arrived(&f);
    // At 600 lines a second the server's processes sleep between them: each wake-up
    // is counted.
    assert!(figure(&f, "gateway_switches_per_msg") > 0.0, "{f:?}");
    assert!(figure(&f, "workers_switches_per_msg") > 0.0, "{f:?}");
    // The share of late messages and of the windows they fall in are reported (how
    // many there are depends on the machine).
    for name in ["late_pct", "late_windows_pct"] {
        assert!((0.0..=100.0).contains(&figure(&f, name)), "{name}: {f:?}");
    }
}

/// `--against` starts a second binary (the same one here) in turn with `--chat`, each
/// `--runs` times, the baseline first, and compares them figure by figure: both medians
/// with their spreads, the ratio of the medians, and the pairs where the new one is
/// lower.
#[test]
fn against_alternates_the_baseline_and_the_new_build_and_compares_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(PRIVATE_1200)
        .args(["--runs", "2", "--json", "--chat"])
        .arg(chat_bin())
        .arg("--against")
        .arg(chat_bin())
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let runs: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name))
        .filter(|name| name.contains(" run "))
        .collect();
    assert_eq!(runs, ["base run 1", "new run 1", "base run 2", "new run 2"]);
    let figures: Vec<serde_json::Map<String, serde_json::Value>> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let builds: Vec<_> = figures.iter().map(|f| f["build"].as_str()).collect();
    assert_eq!(
        builds,
        [Some("base"), Some("new"), Some("base"), Some("new")]
    );
    for f in &figures {
        assert_all_private_arrived(f);
    }
    let row = |name: &str| -> Vec<String> {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{stdout}"));
        row.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(
        row("sent"),
        [
            "sent",
            "1200",
            "[1200..1200]",
            "1200",
            "[1200..1200]",
            "1.000",
            "0/2"
        ]
    );
    // No loss in either: no ratio to give.
    assert_eq!(
        row("lost"),
        ["lost", "0", "[0..0]", "0", "[0..0]", "-", "0/2"]
    );
}

/// A baseline that is not there is named before anything starts.
#[test]
fn against_a_missing_binary_says_which() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(PRIVATE_1200)
        .arg("--chat")
        .arg(chat_bin())
        .args(["--against", "/nonexistent/chat"])
        .output()
        .expect("run bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--against /nonexistent/chat: no such file"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("run 1"),
        "nothing ran"
    );
}

/// The floor servers (one process; a gateway and a worker on one link) carry the
/// private scenario with zero loss, and their processes' CPU is measured: 10,000 lines,
/// so that even the split floor's worker (~2 µs a line) spends several clock ticks.
/// Both prompt every client of the connect scenario and hold it.
#[test]
fn the_floor_servers_carry_private_lines_and_hold_clients() {
    for shape in ["alone", "split"] {
        let f = run(&[CONNECT_60, &["--floor", shape]].concat());
        assert_figures(
            &f,
            &[
                ("clients", 60.0),
                ("failed", 0.0),
                ("alive_after_hold", 60.0),
            ],
        );
        assert!(figure(&f, "gateway_rss_mib") > 0.0, "{f:?}");
    }
    let load = [
        "private",
        "--clients",
        "40",
        "--rate",
        "5000",
        "--seconds",
        "2",
    ];
    let alone = run(&[&load[..], &["--floor", "alone"]].concat());
    assert_figures(
        &alone,
        &[("sent", 10_000.0), ("lost", 0.0), ("not_online", 0.0)],
    );
    assert!(figure(&alone, "gateway_us_per_msg") > 0.0, "{alone:?}");
    assert_eq!(figure(&alone, "workers_us_per_msg"), 0.0, "{alone:?}");
    let split = run(&[&load[..], &["--floor", "split"]].concat());
    assert_figures(
        &split,
        &[("sent", 10_000.0), ("lost", 0.0), ("not_online", 0.0)],
    );
    assert!(figure(&split, "gateway_us_per_msg") > 0.0, "{split:?}");
    assert!(figure(&split, "workers_us_per_msg") > 0.0, "{split:?}");
}

/// The floor does not do handshakes: refused, saying which scenarios it serves.
#[test]
fn the_floor_refuses_other_scenarios() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["handshake", "--floor", "alone"])
        .output()
        .expect("run bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--floor serves the connect, private and broadcast scenarios only"),
        "{stderr}"
    );
}

#[test]
fn broadcast_reaches_everybody() {
    let f = run(&[
        "broadcast",
        "--clients",
        "30",
        "--senders",
        "2",
        "--rate",
        "50",
        "--seconds",
        "2",
        "--grace",
        "5",
    ]);
    assert_eq!(figure(&f, "sent"), 100.0, "{f:?}");
    assert_eq!(figure(&f, "receivers"), 30.0, "{f:?}");
    assert_eq!(figure(&f, "lost"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "incomplete_clients"), 0.0, "{f:?}");
}

/// A broadcast to more recipients than a link's batch writes itself (128,
/// `gateway/direct.rs`): the rest are written by their own tasks.
const BROADCAST_TO_300: &[&str] = &[
    "broadcast",
    "--clients",
    "300",
    "--senders",
    "2",
    "--rate",
    "100",
    "--seconds",
    "2",
    "--grace",
    "5",
];

/// Every one of the 300 clients got every line, in order.
fn assert_all_in_order(f: &serde_json::Map<String, serde_json::Value>) {
    let want = [
        ("receivers", 300.0),
        ("lost", 0.0),
        ("incomplete_clients", 0.0),
        ("reordered", 0.0),
    ];
    assert_figures(f, &want);
}

#[test]
fn broadcast_to_more_clients_than_a_batch_writes_keeps_every_line_in_order() {
    assert_all_in_order(&run(BROADCAST_TO_300));
}

/// Both floor servers deliver every public line to every client in order, paced too.
#[test]
fn the_floor_servers_broadcast_every_line_in_order() {
    for shape in ["alone", "split"] {
        assert_all_in_order(&run(&[BROADCAST_TO_300, &["--floor", shape]].concat()));
    }
    let paced = [("SWITCHBOARD__GATEWAY__MIN_WRITE_INTERVAL", "20ms")];
    let f = run_with(&paced, &[BROADCAST_TO_300, &["--floor", "split"]].concat());
    assert_all_in_order(&f);
}

/// With `gateway.min_write_interval`, the lines a client gets within the interval are
/// held by the gateway's pacer and written together: none lost, none out of order, and
/// private lines (written at once to a client not written to lately) too.
#[test]
fn paced_writes_lose_nothing_and_keep_the_order() {
    let paced = [("SWITCHBOARD__GATEWAY__MIN_WRITE_INTERVAL", "20ms")];
    assert_all_in_order(&run_with(&paced, BROADCAST_TO_300));
    assert_all_private_arrived(&run_with(&paced, PRIVATE_1200));
}

#[test]
fn private_over_websocket_loses_nothing() {
    let f = run(&[PRIVATE_1200, &["--protocol", "websocket"]].concat());
    assert_all_private_arrived(&f);
    assert!(figure(&f, "gateway_us_per_msg") > 0.0, "{f:?}");
}

#[test]
fn broadcast_over_wss_reaches_everybody_in_every_round() {
    let rounds = run_all(&[
        "broadcast",
        "--protocol",
        "websocket",
        "--tls",
        "--clients",
        "30",
        "--senders",
        "2",
        "--rate",
        "50",
        "--seconds",
        "2",
        "--grace",
        "5",
        "--rounds",
        "2",
    ]);
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    for f in &rounds {
        assert_eq!(figure(f, "sent"), 100.0, "{f:?}");
        assert_eq!(figure(f, "receivers"), 30.0, "{f:?}");
        assert_eq!(figure(f, "lost"), 0.0, "{f:?}");
        assert_eq!(figure(f, "incomplete_clients"), 0.0, "{f:?}");
        assert_eq!(figure(f, "reordered"), 0.0, "{f:?}");
    }
}

#[test]
fn connect_holds_wss_clients() {
    let f = run(&[
        "connect",
        "--protocol",
        "websocket",
        "--tls",
        "--clients",
        "40",
        "--hold",
        "1.5",
    ]);
    assert_eq!(figure(&f, "clients"), 40.0, "{f:?}");
    assert_eq!(figure(&f, "failed"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "alive_after_hold"), 40.0, "{f:?}");
}

#[test]
fn handshakes_over_tls_complete() {
    let f = run(&[
        "handshake",
        "--tls",
        "--concurrency",
        "4",
        "--seconds",
        "1.5",
    ]);
    assert!(figure(&f, "connections") > 0.0, "{f:?}");
    assert_eq!(figure(&f, "failed"), 0.0, "{f:?}");
    assert!(figure(&f, "gateway_us_per_conn") > 0.0, "{f:?}");
}

#[test]
fn soak_with_churn_and_reloads_loses_nothing() {
    // 15 s: churn, private lines, broadcasts, a reload every 6 s (two in all).
    let f = run(&[
        "soak",
        "--minutes",
        "0.25",
        "--sample-every",
        "5",
        "--warmup",
        "0",
        "--reload-every",
        "6s",
        "--clients",
        "24",
        "--churners",
        "4",
        "--churn",
        "1",
        "--rate",
        "40",
        "--broadcast-rate",
        "2",
    ]);
    assert!(figure(&f, "private_sent") > 300.0, "{f:?}");
    assert_eq!(figure(&f, "private_received"), figure(&f, "private_sent"));
    assert_eq!(figure(&f, "lost_private"), 0.0, "{f:?}");
    assert_eq!(
        figure(&f, "broadcast_received"),
        figure(&f, "broadcast_expected")
    );
    assert_eq!(figure(&f, "lost_broadcast"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "duplicates"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "unexpected_disconnects"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "login_failures"), 0.0, "{f:?}");
    assert!(figure(&f, "disconnects") >= 8.0, "{f:?}");
    assert_eq!(figure(&f, "reloads"), 2.0, "{f:?}");
    assert_eq!(figure(&f, "reload_failures"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "samples"), 3.0, "{f:?}");
    assert!(figure(&f, "rss_worker0_kib_last") > 0.0, "{f:?}");
}

/// The floor server closes a client whose line is longer than it takes (64 KiB) and
/// goes on serving the others.
#[test]
fn the_floor_server_closes_a_client_with_a_line_too_long() {
    use std::io::{BufRead, BufReader, Read, Write};
    /// Kills the server however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["floor-server", "--shape", "alone"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the floor server"),
    );
    let mut addr = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut addr)
        .expect("the floor server's address");
    let addr = addr.trim().to_string();
    let prompted = |addr: &str| {
        let s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut r = BufReader::new(s);
        let mut prompt = String::new();
        r.read_line(&mut prompt).expect("the prompt");
        assert_eq!(prompt, "type in your name:\n");
        r
    };
    let mut long = prompted(&addr);
    let mut line = vec![b'x'; 100 * 1024];
    line.push(b'\n');
    // The server may close while the line is still being written.
    let _ = long.get_mut().write_all(&line);
    // Closed: the end of the stream, or a reset (the server closed with the rest of
    // the line unread); a timeout means it was kept.
    let mut rest = Vec::new();
    let read = long.read_to_end(&mut rest);
    let closed = match &read {
        Ok(_) => rest.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        closed,
        "the client was not closed: {read:?}, {}",
        rest.chars().take(80).collect::<String>()
    );
    let mut other = prompted(&addr);
    other.get_mut().write_all(b"ann\n").unwrap();
    let mut hello = String::new();
    other.read_line(&mut hello).unwrap();
    assert!(hello.starts_with("Hello ann["), "{hello}");
}
