//! `broadcast`: K logged-in clients; S of them (the first S, in child 0) send public
//! lines `b SEQ MICROS` at a total rate R for T seconds, and every client — senders
//! included — must receive every line. Browsers are all in one room and send `say`
//! messages to all with that content.
//!
//! A sender ends with `b end COUNT`, so a receiver knows when it has everything; one
//! that has not within the grace period counts the rest as lost. Deliveries per second
//! are all lines received by all clients over the time from `go` to the last delivery.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use memchr::memmem::Finder;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Incoming, Next, Writer};
use crate::deploy::Deployment;
use crate::procinfo::{self, CpuSample};
use crate::procs::{self, Children, Share};
use crate::stats::Histogram;
use crate::wire::Protocol;
use crate::{Figures, Job, Load};

/// Parameters of `broadcast`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Params {
    /// Logged-in clients, every one a receiver.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Clients that also send (all in the first load-generator process).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Lines per second, over all senders.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds after sending stops within which every line must have arrived.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Measured rounds after one login phase (each reported as a run): a browser
    /// room's logins are quadratic, and 10,000 take many minutes.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

/// Name prefix of the clients; sender `j` is `b{j}`.
const PREFIX: &str = "b";
/// Marker of a broadcast line of this benchmark (telnet).
const PUBLIC: &[u8] = b" said :b ";
/// Marker of a broadcast `say` of this benchmark (browser).
const PUBLIC_JSON: &[u8] = b"\"content\":\"b ";

/// The marker of a public line at its recipients, in `protocol`.
fn public_marker(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Text => PUBLIC,
        Protocol::Websocket => PUBLIC_JSON,
    }
}
/// Where a browser `say` names its sender.
const SENDER_JSON: &[u8] = b"\"from_client_name\":\"";

/// What one child measured.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Outcome {
    sent: u64,
    /// Lines each of this child's clients received.
    received: Vec<u64>,
    /// Lines that arrived out of order (per sender).
    reordered: u64,
    /// Unix µs of the last delivery.
    last_delivery_us: u64,
    max_send_lag_us: u64,
    latency: Histogram,
    /// CPU seconds this child spent from `go` to its result.
    cpu_s: f64,
}

/// What one receiving client saw.
#[derive(Default)]
struct Received {
    count: u64,
    reordered: u64,
    last_us: u64,
    latency: Histogram,
}

/// Sends on a fixed schedule until `end`, then the end marker; returns (sent, lag µs)
/// and the writing half.
async fn send(
    writer: Writer,
    protocol: Protocol,
    first_due: Instant,
    per_second: f64,
    end: Instant,
) -> (u64, u64, Writer) {
    let (seq, max_lag, mut writer) =
        client::send_on_schedule(writer, first_due, per_second, end, |seq| {
            client::say_all(protocol, &format!("b {seq} {}", client::now_micros()))
        })
        .await;
    let _ = writer
        .send(&client::say_all(protocol, &format!("b end {seq}")))
        .await;
    (seq, max_lag, writer)
}

/// The sender number in a line `b{j}[ID] said :…`, or in a browser `say` from `b{j}`.
fn sender_of(line: &[u8], protocol: Protocol) -> Option<usize> {
    let line = match protocol {
        Protocol::Text => line,
        Protocol::Websocket => client::after(line, SENDER_JSON)?,
    };
    let rest = line.strip_prefix(PREFIX.as_bytes())?;
    let (n, _) = client::leading_number(rest)?;
    usize::try_from(n).ok()
}

/// Receives until every sender's end marker and all its lines arrived, or `deadline`.
async fn receive(
    mut lines: Incoming,
    protocol: Protocol,
    senders: usize,
    deadline: Instant,
) -> (Received, Incoming) {
    let marker = Finder::new(public_marker(protocol));
    let mut out = Received::default();
    // Per sender: next expected seq, and its total once the end marker came.
    let mut next: HashMap<usize, u64> = HashMap::new();
    let mut ends: HashMap<usize, u64> = HashMap::new();
    let give_up = tokio::time::sleep_until(deadline);
    tokio::pin!(give_up);
    loop {
        if ends.len() == senders && out.count >= ends.values().sum::<u64>() {
            break;
        }
        let Next::Message(line) = lines.next_or(give_up.as_mut(), deadline).await else {
            break;
        };
        let Some(i) = marker.find(line) else {
            continue;
        };
        let rest = &line[i + marker.needle().len()..];
        let Some(sender) = sender_of(line, protocol) else {
            continue;
        };
        if let Some(total) = rest.strip_prefix(b"end ") {
            let total = client::leading_number(total).map(|(n, _)| n);
            ends.insert(sender, total.unwrap_or(0));
            continue;
        }
        let Some((seq, at)) = client::parse_seq_time(rest) else {
            continue;
        };
        let now = client::now_micros();
        out.count += 1;
        out.last_us = now;
        out.latency.record(now.saturating_sub(at));
        let expect = next.entry(sender).or_insert(0);
        if seq != *expect {
            out.reordered += 1;
        }
        *expect = seq + 1;
    }
    (out, lines)
}

/// Child side: logs in this share of the clients; after each `go` the senders send
/// and everybody receives, for `rounds` rounds.
pub async fn child(p: Params, share: Share) -> anyhow::Result<()> {
    let (first, count) = share.part(p.clients);
    let logins =
        client::login_all(&share, PREFIX, first, count, public_marker(share.protocol)).await?;
    procs::report("ready", &serde_json::json!({ "clients": logins.ids.len() }))?;
    procs::wait_go().await?;
    let sessions = logins.sessions().await?;
    let mut lines: Vec<Option<Incoming>> = Vec::with_capacity(sessions.len());
    // Writing halves stay open until every child's last result is out (the
    // release): a close is announced to all.
    let mut writers: Vec<Option<Writer>> = Vec::with_capacity(sessions.len());
    for s in sessions {
        lines.push(Some(s.lines));
        writers.push(Some(s.writer));
    }
    for round in 0..p.rounds.max(1) {
        if round > 0 {
            procs::wait_go().await?;
        }
        let out = measure(&p, &share, first, &mut lines, &mut writers).await?;
        procs::report("result", &out)?;
    }
    // The other children may still be receiving: this one's clients leave after.
    procs::wait_release().await;
    Ok(())
}

/// One measured round (from `go` to the child's result).
async fn measure(
    p: &Params,
    share: &Share,
    first: usize,
    lines: &mut [Option<Incoming>],
    writers: &mut [Option<Writer>],
) -> anyhow::Result<Outcome> {
    let cpu_at_go = procinfo::cpu_seconds(std::process::id());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(p.seconds);
    let deadline = end + Duration::from_secs_f64(p.grace);
    let per_sender = p.rate.max(1e-3) / p.senders as f64;
    let interval = Duration::from_secs_f64(1.0 / per_sender);
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    for offset in 0..lines.len() {
        let index = first + offset;
        if index < p.senders {
            let phase = interval.mul_f64(index as f64 / p.senders as f64);
            let writer = writers[offset].take().context("a writer")?;
            let (protocol, per_sender) = (share.protocol, per_sender);
            senders.spawn(async move {
                let sent = send(writer, protocol, start + phase, per_sender, end).await;
                (offset, sent)
            });
        }
        let incoming = lines[offset].take().context("a reader")?;
        let (protocol, senders_n) = (share.protocol, p.senders);
        receivers.spawn(async move {
            let r = receive(incoming, protocol, senders_n, deadline).await;
            (offset, r)
        });
    }
    let mut out = Outcome::default();
    while let Some(joined) = senders.join_next().await {
        let (offset, (sent, lag, writer)) = joined?;
        out.sent += sent;
        out.max_send_lag_us = out.max_send_lag_us.max(lag);
        writers[offset] = Some(writer);
    }
    let mut per_client = vec![0; lines.len()];
    while let Some(joined) = receivers.join_next().await {
        let (offset, (r, incoming)) = joined?;
        per_client[offset] = r.count;
        out.reordered += r.reordered;
        out.last_delivery_us = out.last_delivery_us.max(r.last_us);
        out.latency.merge(&r.latency);
        lines[offset] = Some(incoming);
    }
    out.received = per_client;
    out.cpu_s = procinfo::cpu_seconds(std::process::id()) - cpu_at_go;
    Ok(out)
}

/// Parent side: one deployment, one login phase, then `rounds` measured rounds (one
/// set of figures each).
pub async fn parent(p: &Params, load: &Load, d: &Deployment) -> anyhow::Result<Vec<Figures>> {
    if p.senders == 0 || p.senders > p.clients {
        bail!("--senders must be between 1 and --clients");
    }
    let procs = load.procs.min(p.clients);
    if p.clients.div_ceil(procs) < p.senders {
        bail!("all senders must fit in the first process: use fewer --senders or --procs");
    }
    let mut kids = Children::spawn(
        &Job::Broadcast(p.clone()),
        load,
        procs,
        load.sources_for(p.clients),
        d,
    )?;
    // Logins are quadratic in a browser room (each is announced to everybody, and each
    // reads the member list twice): 10,000 take many minutes.
    let login = CpuSample::start(&[
        ("gateways", d.pids("gateway")),
        ("workers", d.pids("worker")),
        ("loadgen", kids.pids()),
    ]);
    let _: Vec<serde_json::Value> = kids.collect("ready", Duration::from_secs(7200)).await?;
    let login = login.seconds();
    let per_login = |group: &str| (login[group] * 1e6 / p.clients as f64).round();
    eprintln!(
        "{} clients logged in in {:.1} s; CPU per login: gateways {} µs, workers {} µs, generator {} µs",
        p.clients,
        login["wall"],
        per_login("gateways"),
        per_login("workers"),
        per_login("loadgen"),
    );
    let mut rounds = Vec::new();
    for _ in 0..p.rounds.max(1) {
        // The last logins' announcements (or the last round) drain first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut figures = round(p, d, &mut kids).await?;
        figures.push(("login_s", (login["wall"] * 10.0).round() / 10.0));
        figures.push(("login_gateway_us", per_login("gateways")));
        figures.push(("login_workers_us", per_login("workers")));
        rounds.push(figures);
    }
    kids.release().await;
    kids.wait().await;
    Ok(rounds)
}

/// One measured round.
async fn round(p: &Params, d: &Deployment, kids: &mut Children) -> anyhow::Result<Figures> {
    let cpu = CpuSample::start(&[
        ("gateways", d.pids("gateway")),
        ("workers", d.pids("worker")),
        ("loadgen", kids.pids()),
    ]);
    let window = CpuSample::start(&[
        ("gateways", d.pids("gateway")),
        ("workers", d.pids("worker")),
    ]);
    let go_us = client::now_micros();
    kids.go().await?;
    tokio::time::sleep(Duration::from_secs_f64(p.seconds)).await;
    let cpu = cpu.percent();
    let wait = Duration::from_secs_f64(p.grace + 30.0);
    let outcomes: Vec<Outcome> = kids.collect("result", wait).await?;
    // From go until every line arrived everywhere (or the grace ended).
    let window = window.seconds();

    let sent: u64 = outcomes.iter().map(|o| o.sent).sum();
    let received: Vec<u64> = outcomes.iter().flat_map(|o| o.received.clone()).collect();
    let delivered: u64 = received.iter().sum();
    let expected = sent * received.len() as u64;
    let incomplete = received.iter().filter(|r| **r < sent).count();
    let mut latency = Histogram::default();
    for o in &outcomes {
        latency.merge(&o.latency);
    }
    let last = outcomes
        .iter()
        .map(|o| o.last_delivery_us)
        .max()
        .unwrap_or(0);
    let span = (last.saturating_sub(go_us) as f64 / 1e6).max(p.seconds);
    let max_lag = outcomes
        .iter()
        .map(|o| o.max_send_lag_us)
        .max()
        .unwrap_or(0);
    let reordered: u64 = outcomes.iter().map(|o| o.reordered).sum();
    let loadgen_s: f64 = outcomes.iter().map(|o| o.cpu_s).sum();
    let per_delivery = |s: f64| (s * 1e6 / delivered.max(1) as f64 * 1000.0).round() / 1000.0;
    eprintln!("cpu during sending: {}", procinfo::format_cpu(&cpu));
    let ms = |us: u64| us as f64 / 1e3;
    Ok(vec![
        ("sent", sent as f64),
        ("receivers", received.len() as f64),
        ("delivered", delivered as f64),
        ("lost", expected.saturating_sub(delivered) as f64),
        ("incomplete_clients", incomplete as f64),
        ("reordered", reordered as f64),
        ("deliveries_per_s", (delivered as f64 / span).round()),
        ("p50_ms", ms(latency.quantile(0.5))),
        ("p99_ms", ms(latency.quantile(0.99))),
        ("max_ms", ms(latency.max())),
        ("max_send_lag_ms", ms(max_lag)),
        ("cpu_gateways_pct", cpu["gateways"].round()),
        ("cpu_workers_pct", cpu["workers"].round()),
        ("cpu_loadgen_pct", cpu["loadgen"].round()),
        ("cpu_others_pct", cpu["others"].round()),
        ("cpu_softirq_pct", cpu["softirq"].round()),
        ("cpu_steal_pct", cpu["steal"].round()),
        ("gateway_us_per_delivery", per_delivery(window["gateways"])),
        ("workers_us_per_delivery", per_delivery(window["workers"])),
        ("loadgen_us_per_delivery", per_delivery(loadgen_s)),
    ])
}
