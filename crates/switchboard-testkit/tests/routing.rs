//! `gateway.routing` end to end: two fixture workers, one of them held up by a handler
//! that blocks its only thread (`/block MS`), and which worker answers the others
//! (`/pid`), and how `/metrics` shows the held-up one. Least-busy routing passes over a
//! worker that has acknowledged nothing for `gateway.held_up_after`.

mod common;

use std::collections::BTreeSet;

use common::*;
use switchboard_testkit::{Client, Deployment, Options, WAIT};

/// How long `/block` holds a worker: long enough for every other step of a test to
/// happen meanwhile on a loaded machine (the gateway publishes its figures once a
/// second).
const BLOCK: &str = "/block 5000";

/// Two workers and a single-threaded gateway: it handles the frames of one read of a
/// link (a worker's answer and the acknowledgement after it) before any client's next
/// line, so what is in flight when a client's line arrives does not depend on timing.
fn deployment(gateway_keys: &str) -> Deployment {
    Deployment::start(
        Options::new(FIXTURE)
            .workers(2)
            .gateway_keys(&format!("threads = 1\n{gateway_keys}")),
    )
}

/// Sends `/block` from `client` and waits until a worker has begun it (the fixture logs
/// `message ADDR N bytes` as its handler starts).
async fn hold_a_worker(d: &Deployment, client: &mut Client) {
    client.send(BLOCK).await;
    let started = format!("message {} {} bytes", client.local_addr(), BLOCK.len());
    let deadline = tokio::time::Instant::now() + WAIT;
    while !fixture_events(d, client.local_addr())
        .iter()
        .any(|e| e.trim_end() == started)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker began {BLOCK:?} within {WAIT:?}:\n{}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Which worker process answers `client`'s `/pid`.
async fn worker_of(client: &mut Client) -> String {
    client.send("/pid").await;
    pid_of(&client.line().await)
}

/// The worker process named by an answer to `/pid`.
fn pid_of(line: &str) -> String {
    line.strip_prefix("pid ")
        .unwrap_or_else(|| panic!("not an answer to /pid: {line:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_routing_keeps_a_client_on_its_worker_while_that_one_is_held_up() {
    let d = deployment("");
    // Three clients on two workers: two of them share one (they took turns).
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(d.addr()).await;
        let pid = worker_of(&mut c).await;
        clients.push((c, pid));
    }
    let (x, y) = (0..3)
        .flat_map(|i| (i + 1..3).map(move |j| (i, j)))
        .find(|&(i, j)| clients[i].1 == clients[j].1)
        .expect("two of three clients on one of two workers");
    let held = clients[x].1.clone();
    let (mut cx, _) = clients.remove(x);
    let (mut cy, _) = clients.remove(y - 1);
    hold_a_worker(&d, &mut cx).await;
    // The gateway shows x's event in flight at the held-up worker, none at the other.
    let worker = format!("worker-{held}");
    let in_flight = |page: &str, labels: &[(&str, &str)]| {
        metric(page, "switchboard_worker_events_in_flight", labels)
    };
    let page = wait_metrics(&d, "an event in flight at the held-up worker", |page| {
        in_flight(page, &[("worker", &worker)]) == Some(1.0)
    });
    assert_eq!(in_flight(&page, &[]), Some(1.0), "only there:\n{page}");
    // y's line waits for its own worker, although the other one is free.
    assert_eq!(worker_of(&mut cy).await, held, "y stays with its worker");
    cx.expect_next(&format!("blocked by {held}")).await;
}

/// A client `x` whose `/block` holds a worker, and four more that each had a line
/// answered before (so both workers have handled some of them).
async fn four_clients_and_a_held_worker(d: &Deployment) -> (Client, Vec<Client>) {
    let mut x = Client::connect(d.addr()).await;
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(Client::connect(d.addr()).await);
    }
    for c in others.iter_mut() {
        worker_of(c).await;
    }
    hold_a_worker(d, &mut x).await;
    (x, others)
}

/// Asserts that one worker answered every line (`answered`: the pids) and that it is
/// not the one `x`'s `/block` held (its answer names it).
async fn assert_only_the_free_worker_answered(x: &mut Client, answered: &BTreeSet<String>) {
    let line = x.line().await;
    let held = line
        .strip_prefix("blocked by ")
        .unwrap_or_else(|| panic!("not an answer to /block: {line:?}"));
    assert_eq!(answered.len(), 1, "one worker answered: {answered:?}");
    assert!(!answered.contains(held), "not the held-up one ({held})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_busy_routing_passes_over_a_held_up_worker() {
    let d = deployment("routing = \"least_busy\"");
    let (mut x, mut others) = four_clients_and_a_held_worker(&d).await;
    // While x's event holds one worker, every line goes to the other, whichever worker
    // handled the client before.
    let mut answered = BTreeSet::new();
    for c in others.iter_mut() {
        answered.insert(worker_of(c).await);
        answered.insert(worker_of(c).await);
    }
    assert_only_the_free_worker_answered(&mut x, &answered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_busy_routing_passes_over_a_held_up_worker_when_lines_come_together() {
    // Lines sent together put several events in flight at the free worker, more than
    // the held-up one's one: the fewest in flight alone would send some of them there
    // (with `held_up_after = "0"` this test fails).
    let d = deployment("routing = \"least_busy\"\nheld_up_after = \"1s\"");
    let (mut x, mut others) = four_clients_and_a_held_worker(&d).await;
    // Past `held_up_after`: the held worker has acknowledged nothing for that long.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for c in others.iter_mut() {
        c.send("/pid").await;
    }
    let mut answered = BTreeSet::new();
    for c in others.iter_mut() {
        answered.insert(pid_of(&c.line().await));
    }
    assert_only_the_free_worker_answered(&mut x, &answered).await;
}
