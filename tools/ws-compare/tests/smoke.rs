//! Keeps the comparison tool working: `ws-compare smoke` starts every candidate's
//! server and checks, on 100 connections each, that text comes back as text, a
//! fragmented text as one message, 64 KiB of binary as binary, a ping as its pong, and
//! a close as a close answer followed by the end of the connection.

use std::process::Command;

#[test]
fn every_candidate_echoes_correctly() {
    let out = Command::new(env!("CARGO_BIN_EXE_ws-compare"))
        .args(["smoke", "--conns", "100"])
        .output()
        .expect("run ws-compare smoke");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "smoke failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for candidate in [
        "tungstenite",
        "tungstenite@4096",
        "tungstenite@1024",
        "tokio-websockets",
        "fastwebsockets",
        "fastwebsockets-hyper",
        "sans-io",
    ] {
        let line = format!("smoke {candidate}: 100/100 ok");
        assert!(
            stdout.lines().any(|l| l.starts_with(&line)),
            "no {line:?} in:\n{stdout}"
        );
    }
}

#[test]
fn a_bad_candidate_name_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_ws-compare"))
        .args(["smoke", "--candidates", "no-such-thing"])
        .output()
        .expect("run ws-compare smoke");
    assert!(!out.status.success());
}
