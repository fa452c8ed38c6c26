//! The chat's part of the test harness: its deployment (the `chat` binary and its
//! history database) and its login dialogue. The generic part — starting the binary on
//! ports it picks itself, waiting until it is ready, clients — is `switchboard-testkit`.

#![allow(dead_code)]

pub mod load;
pub mod metrics;
pub mod servers;
pub mod ws;

use std::time::{Duration, Instant};

use switchboard::ClientId;
use switchboard_testkit::{Client, Listener, Options, WAIT};

/// Sends SIGSTOP to process `pid` and returns once every thread of it has stopped.
/// `kill` wakes one thread of the process to take the stop, and the others run on until
/// that one has told them; on a busy machine that is a moment in which a thread still
/// running may yet handle what the test sends next (a "frozen" gateway once answered
/// `every_api_call_across_two_gateways`'s count, 6 December). Every test that stops a
/// process to see what happens without it uses this.
pub fn stop_process(pid: u32) {
    assert_eq!(
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) },
        0,
        "SIGSTOP {pid}"
    );
    let deadline = Instant::now() + WAIT;
    while !process_stopped(pid) {
        assert!(Instant::now() < deadline, "process {pid} never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn process_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
            .unwrap_or(false)
    })
}

/// Path of the binary under test.
pub fn chat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chat")
}

/// The chat's deployment: the `chat` binary, named `chat-test`, with the `history`
/// database instance it keeps public lines in. Tests add what they need:
/// `Deployment::start(chat().gateways(2))`.
pub fn chat() -> Options {
    chat_without_history()
        .section("[db.instances.history]\ndriver = \"sqlite\"\npath = \"history.sqlite\"")
}

/// The chat's deployment without its `history` database instance: a test adds its
/// own (a MariaDB one, say).
pub fn chat_without_history() -> Options {
    Options::new(chat_bin()).name("chat-test")
}

/// The browser listener's heartbeat as chat.toml has it, with another interval.
pub fn browser_heartbeat(interval: &str) -> String {
    format!(
        r#"heartbeat = {{ interval = "{interval}", ping = "{{\"type\":\"ping\"}}", idle_intervals = 2 }}"#
    )
}

/// The chat with its two listeners, as chat.toml has them: `telnet` (the first, so
/// [`Deployment::addr`](switchboard_testkit::Deployment::addr) is telnet's) and `browser`.
pub fn chat_with_browsers() -> Options {
    chat()
        .listener(Listener::text("telnet"))
        .listener(Listener::new("browser", "websocket").keys(&browser_heartbeat("25s")))
}

/// The chat's login dialogue on a [`Client`].
pub trait ChatClient {
    /// Goes through the prompt and the welcome as `name`; sets the client's `name` and
    /// `id` and returns the id.
    async fn login(&mut self, name: &str) -> ClientId;
}

impl ChatClient for Client {
    async fn login(&mut self, name: &str) -> ClientId {
        self.name = name.to_string();
        // A broadcast (another client's login) may reach us before our own prompt.
        self.expect("type in your name:").await;
        self.send(name).await;
        let hello = self.line().await;
        let id: ClientId = hello
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(id, _)| id.parse().expect("client id in welcome"))
            .unwrap_or_else(|| panic!("unexpected welcome {hello:?}"));
        assert_eq!(
            hello,
            format!("Hello {name}[{id}]! Your client_id is {id}.")
        );
        let explain = self.line().await;
        assert!(
            explain.contains("client_id:words") && explain.contains("words"),
            "{explain}"
        );
        self.expect(&format!("{name}[{id}] come")).await;
        self.id = Some(id);
        id
    }
}
