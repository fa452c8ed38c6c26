//! `private`: M logged-in clients in pairs, each sending `PEER_ID:p SEQ MICROS` to its
//! partner (a browser: a private `say` with content `p SEQ MICROS`), at a total rate R
//! for T seconds.
//!
//! Sending is open-loop: every client has a fixed schedule (it does not wait for
//! answers), so a slow server shows up as latency, not as a lower offered rate. The
//! recipient measures latency from the timestamp in the line; a message not received
//! within the grace period after sending stops is lost. Both clients of a pair live in
//! the same load-generator process, so each child knows what its clients must receive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
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

/// Parameters of `private`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Params {
    /// Logged-in clients (an even number: they send in pairs).
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Messages per second, over all clients.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds after sending stops within which every message must have arrived.
    #[arg(long, default_value_t = 3.0)]
    pub grace: f64,
}

/// What one child measured.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Outcome {
    sent: u64,
    received: u64,
    not_online: u64,
    /// Worst lateness of a send against its schedule (the generator keeping up).
    max_send_lag_us: u64,
    latency: Histogram,
    /// Messages later than [`LATE_US`], by the 10 ms window they were sent in (Unix
    /// time ÷ [`WINDOW_US`]): whether the slow ones come together (a stall) or spread
    /// over the run (a queue).
    late: BTreeMap<u64, u64>,
    /// CPU seconds this child spent from `go` to its result.
    cpu_s: f64,
}

/// A message this late or later is counted in [`Outcome::late`], µs.
const LATE_US: u64 = 1_000;
/// The windows of [`Outcome::late`], µs.
const WINDOW_US: u64 = 10_000;

/// Marker of a private line at its recipient (telnet).
const RECEIVED: &[u8] = b" said to You :p ";
/// Marker of a private `say` at its recipient (browser; the sender's own copy says
/// `privately to NAME`).
const RECEIVED_JSON: &[u8] = b"privately to you: </b>p ";
/// The marker of a private line at its recipient, in `protocol`.
fn received_marker(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Text => RECEIVED,
        Protocol::Websocket => RECEIVED_JSON,
    }
}

/// What the chat answers when the recipient is unknown.
const NOT_ONLINE: &[u8] = b"is not online";

/// Sends `p SEQ MICROS` privately to `to` on a fixed schedule until `end`; returns
/// (sent, worst lag in µs) and the writer.
async fn send(
    writer: Writer,
    protocol: Protocol,
    to: String,
    first_due: Instant,
    per_second: f64,
    end: Instant,
) -> (u64, u64, Writer) {
    client::send_on_schedule(writer, first_due, per_second, end, |seq| {
        client::say_to(protocol, &to, &format!("p {seq} {}", client::now_micros()))
    })
    .await
}

/// Receives until `expected` (set by the partner's sender when it is done) is reached,
/// or `deadline`.
async fn receive(
    mut lines: Incoming,
    marker: &'static [u8],
    expected: Arc<AtomicU64>,
    deadline: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let (marker, not_online) = (Finder::new(marker), Finder::new(NOT_ONLINE));
    // One timer for the client's whole run, moved on when it fires.
    let recheck = Duration::from_millis(50);
    let wake = tokio::time::sleep_until((Instant::now() + recheck).min(deadline));
    tokio::pin!(wake);
    while out.received < expected.load(Ordering::Acquire) {
        let line = match lines.next_or(wake.as_mut(), deadline).await {
            Next::Message(line) => line,
            Next::End => break,
            Next::Timer => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                wake.as_mut().reset((now + recheck).min(deadline));
                continue;
            }
        };
        if let Some(i) = marker.find(line) {
            if let Some((_, at)) = client::parse_seq_time(&line[i + marker.needle().len()..]) {
                out.received += 1;
                let latency = client::now_micros().saturating_sub(at);
                out.latency.record(latency);
                if latency >= LATE_US {
                    *out.late.entry(at / WINDOW_US).or_default() += 1;
                }
            }
        } else if not_online.find(line).is_some() {
            out.not_online += 1;
        }
    }
    out
}

/// Child side: logs in this share of the pairs, sends and receives after `go`.
pub async fn child(p: Params, share: Share) -> anyhow::Result<()> {
    let (first_pair, pairs) = share.part(p.clients / 2);
    let first = first_pair * 2;
    let logins = client::login_all(
        &share,
        "p",
        first,
        pairs * 2,
        received_marker(share.protocol),
    )
    .await?;
    procs::report("ready", &serde_json::json!({ "clients": logins.ids.len() }))?;
    procs::wait_go().await?;
    let cpu_at_go = procinfo::cpu_seconds(std::process::id());
    let sessions = logins.sessions().await?;
    let marker = received_marker(share.protocol);

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(p.seconds);
    let deadline = end + Duration::from_secs_f64(p.grace);
    // Every client sends rate/clients messages a second, phases spread evenly over all
    // clients of all children.
    let per_client = p.rate.max(1e-3) / p.clients as f64;
    let interval = Duration::from_secs_f64(1.0 / per_client);
    let expected: Vec<Arc<AtomicU64>> = (0..sessions.len())
        .map(|_| Arc::new(AtomicU64::new(u64::MAX)))
        .collect();
    let ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    for (i, session) in sessions.into_iter().enumerate() {
        let partner = i ^ 1;
        let phase = interval.mul_f64((first + i) as f64 / p.clients as f64);
        let (to, partner_expects) = (ids[partner].clone(), expected[partner].clone());
        senders.spawn(async move {
            let (sent, lag, writer) = send(
                session.writer,
                share.protocol,
                to,
                start + phase,
                per_client,
                end,
            )
            .await;
            partner_expects.store(sent, Ordering::Release);
            (sent, lag, writer)
        });
        receivers.spawn(receive(
            session.lines,
            marker,
            expected[i].clone(),
            deadline,
        ));
    }
    let mut total = Outcome::default();
    // Writing halves stay open until every child's result is out (the release).
    let mut held = Vec::new();
    while let Some(joined) = senders.join_next().await {
        let (sent, lag, writer) = joined?;
        total.sent += sent;
        total.max_send_lag_us = total.max_send_lag_us.max(lag);
        held.push(writer);
    }
    while let Some(joined) = receivers.join_next().await {
        let o = joined?;
        total.received += o.received;
        total.not_online += o.not_online;
        total.latency.merge(&o.latency);
        merge_late(&mut total.late, &o.late);
    }
    total.cpu_s = procinfo::cpu_seconds(std::process::id()) - cpu_at_go;
    procs::report("result", &total)?;
    // The other children may still be receiving: this one's clients leave after.
    procs::wait_release().await;
    drop(held);
    Ok(())
}

/// Parent side: one run.
pub async fn parent(p: &Params, load: &Load, d: &Deployment) -> anyhow::Result<Figures> {
    if p.clients < 2 || !p.clients.is_multiple_of(2) {
        bail!("--clients must be an even number of at least 2");
    }
    let procs = load.procs.min(p.clients / 2);
    let mut kids = Children::spawn(
        &Job::Private(p.clone()),
        load,
        procs,
        load.sources_for(p.clients),
        d,
    )?;
    let _: Vec<serde_json::Value> = kids.collect("ready", Duration::from_secs(60)).await?;
    let cpu = CpuSample::start(&[
        ("gateways", d.pids("gateway")),
        ("workers", d.pids("worker")),
        ("loadgen", kids.pids()),
    ]);
    let window = CpuSample::start(&[
        ("gateways", d.pids("gateway")),
        ("workers", d.pids("worker")),
    ]);
    kids.go().await?;
    tokio::time::sleep(Duration::from_secs_f64(p.seconds)).await;
    let cpu = cpu.percent();
    let wait = Duration::from_secs_f64(p.grace + 30.0);
    let outcomes: Vec<Outcome> = kids.collect("result", wait).await?;
    // From go until every message arrived (or the grace ended): a backlog's work
    // counts too.
    let switches = window.switches();
    let window = window.seconds();
    kids.release().await;
    kids.wait().await;
    let mut total = Outcome::default();
    for o in &outcomes {
        total.sent += o.sent;
        total.received += o.received;
        total.not_online += o.not_online;
        total.max_send_lag_us = total.max_send_lag_us.max(o.max_send_lag_us);
        total.latency.merge(&o.latency);
        merge_late(&mut total.late, &o.late);
        total.cpu_s += o.cpu_s;
    }
    eprintln!("cpu during sending: {}", procinfo::format_cpu(&cpu));
    eprintln!("{}", describe_late(&total.late, p.seconds));
    let per_msg = |s: f64| (s * 1e6 / total.sent.max(1) as f64 * 100.0).round() / 100.0;
    let ms = |us: u64| us as f64 / 1e3;
    Ok(vec![
        ("sent", total.sent as f64),
        ("received", total.received as f64),
        ("lost", total.sent.saturating_sub(total.received) as f64),
        ("not_online", total.not_online as f64),
        ("sent_per_s", (total.sent as f64 / p.seconds).round()),
        (
            "received_per_s",
            (total.received as f64 / p.seconds).round(),
        ),
        ("p50_ms", ms(total.latency.quantile(0.5))),
        ("p99_ms", ms(total.latency.quantile(0.99))),
        ("max_ms", ms(total.latency.max())),
        ("max_send_lag_ms", ms(total.max_send_lag_us)),
        (
            "late_pct",
            percent(total.late.values().sum(), total.received),
        ),
        (
            "late_windows_pct",
            percent(total.late.len() as u64, windows_in(p.seconds)),
        ),
        ("cpu_gateways_pct", cpu["gateways"].round()),
        ("cpu_workers_pct", cpu["workers"].round()),
        ("cpu_loadgen_pct", cpu["loadgen"].round()),
        ("cpu_others_pct", cpu["others"].round()),
        ("cpu_softirq_pct", cpu["softirq"].round()),
        ("cpu_steal_pct", cpu["steal"].round()),
        ("gateway_us_per_msg", per_msg(window["gateways"])),
        ("workers_us_per_msg", per_msg(window["workers"])),
        ("loadgen_us_per_msg", per_msg(total.cpu_s)),
        (
            "gateway_switches_per_msg",
            procinfo::per_count(switches["gateways"], total.sent),
        ),
        (
            "workers_switches_per_msg",
            procinfo::per_count(switches["workers"], total.sent),
        ),
    ])
}

/// `part` as a percentage of `whole`, to a tenth (0 of nothing).
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

/// How many windows of [`WINDOW_US`] a run of `seconds` sends in.
fn windows_in(seconds: f64) -> u64 {
    (seconds * 1e6 / WINDOW_US as f64).ceil() as u64
}

/// Adds `other`'s late messages to `into`.
fn merge_late(into: &mut BTreeMap<u64, u64>, other: &BTreeMap<u64, u64>) {
    for (window, n) in other {
        *into.entry(*window).or_default() += n;
    }
}

/// One line on the late messages: how many, in how many of the run's 10 ms windows,
/// and the busiest windows (seconds from the first late one, and their count).
fn describe_late(late: &BTreeMap<u64, u64>, seconds: f64) -> String {
    let total: u64 = late.values().sum();
    let Some(first) = late.keys().next().copied() else {
        return format!("late (>= {} ms): none", LATE_US / 1000);
    };
    let windows = windows_in(seconds);
    let mut busiest: Vec<(u64, u64)> = late.iter().map(|(w, n)| (*w, *n)).collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let in_top: u64 = busiest.iter().take(10).map(|(_, n)| n).sum();
    let top: Vec<String> = busiest
        .iter()
        .take(10)
        .map(|(w, n)| format!("{:.2}s:{n}", (w - first) as f64 * WINDOW_US as f64 / 1e6))
        .collect();
    format!(
        "late (>= {} ms): {total} messages in {} of ~{windows} windows of {} ms; the 10 busiest hold {:.0} %: {}",
        LATE_US / 1000,
        late.len(),
        WINDOW_US / 1000,
        in_top as f64 * 100.0 / total as f64,
        top.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_messages_are_described_by_window() {
        assert_eq!(
            describe_late(&BTreeMap::new(), 10.0),
            "late (>= 1 ms): none"
        );
        let mut a = BTreeMap::from([(100, 5), (150, 1)]);
        merge_late(&mut a, &BTreeMap::from([(100, 2), (101, 3)]));
        assert_eq!(a, BTreeMap::from([(100, 7), (101, 3), (150, 1)]));
        assert_eq!(percent(11, 200), 5.5);
        assert_eq!(percent(0, 0), 0.0);
        let line = describe_late(&a, 10.0);
        assert_eq!(
            line,
            "late (>= 1 ms): 11 messages in 3 of ~1000 windows of 10 ms; the 10 busiest hold 100 %: 0.00s:7 0.01s:3 0.50s:1"
        );
    }
}
