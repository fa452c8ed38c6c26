//! Steady private-message load between telnet users of the chat, for fault tests.
//!
//! Every message is numbered (`m<talker>-<n>`), so what happened to each one can be
//! told afterwards from a [`Report`]:
//!
//! - **acknowledged**: the sender saw the chat's confirmation of a delivered private
//!   message, `NAME[ID] said to [TO] :TEXT` (the chat sends it only after the
//!   recipient's gateway said it queued the message for the recipient);
//! - **refused**: the sender saw `[TO] is not online; nothing was sent`, or `[TO] could
//!   not be reached; your message may not have arrived` (the recipient's gateway
//!   failed while asked);
//! - **received**: the recipient saw `NAME[ID] said to You :TEXT`, counted, so a
//!   duplicate shows; and it must be the recipient the sender named.
//!
//! A fault test starts the load ([`Load::start`]), waits for progress
//! ([`Load::wait_acked`]), does its harm, waits for progress again, then stops sending
//! and lets what is in flight settle ([`Load::finish`]), all bounded in time. Every
//! sender sends at most a fixed number of messages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchboard::ClientId;
use switchboard_testkit::WAIT;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a read returned no line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (or it broke).
    Closed,
    /// Nothing came within the wait.
    TimedOut,
}

/// A telnet user of the chat, logged in. Unlike the testkit's `Client` it tells a
/// closed connection from a silent one, which is what a fault test asks.
pub struct Talker {
    /// The name it logged in with.
    pub name: String,
    /// The client id the chat gave it.
    pub id: ClientId,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Bytes of a line not complete yet, kept across reads that were cancelled.
    pending: Vec<u8>,
}

impl Talker {
    /// Connects to the chat at `addr` and logs in as `name`; fails the test if that
    /// takes longer than [`WAIT`].
    pub async fn login(addr: SocketAddr, name: &str) -> Talker {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("{name}: connecting to {addr} took longer than {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{name}: cannot connect to {addr}: {e}"));
        let (r, w) = stream.into_split();
        let mut t = Talker {
            name: name.to_owned(),
            id: ClientId::new(0, 0),
            reader: BufReader::new(r),
            writer: w,
            pending: Vec::new(),
        };
        t.skip_to(|l| l == "type in your name:").await;
        t.send(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot send the name: {e}"));
        let hello = t.skip_to(|l| l.starts_with("Hello ")).await;
        t.id = hello
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .and_then(|(id, _)| id.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no client id in {hello:?}"));
        let come = format!("{name}[{}] come", t.id);
        t.skip_to(|l| l == come).await;
        t
    }

    /// Reads lines until one satisfies `want` and returns it; fails the test if the
    /// connection closes, or a line takes longer than [`WAIT`], or after 10,000 lines.
    pub async fn skip_to(&mut self, want: impl Fn(&str) -> bool) -> String {
        for _ in 0..10_000 {
            match self.read_line(WAIT).await {
                Ok(l) if want(&l) => return l,
                Ok(_) => {}
                Err(end) => panic!("{}: {end:?} while waiting for a line", self.name),
            }
        }
        panic!("{}: 10,000 lines without the one expected", self.name);
    }

    /// The next line (without its `\n`), or why there is none within `wait`.
    pub async fn read_line(&mut self, wait: Duration) -> Result<String, End> {
        match tokio::time::timeout(wait, self.next_line()).await {
            Err(_) => Err(End::TimedOut),
            Ok(r) => r,
        }
    }

    /// The next line; cancel-safe (a partial line stays in `pending`).
    async fn next_line(&mut self) -> Result<String, End> {
        match self.reader.read_until(b'\n', &mut self.pending).await {
            Ok(0) | Err(_) => Err(End::Closed),
            Ok(_) if !self.pending.ends_with(b"\n") => Err(End::Closed),
            Ok(_) => {
                let bytes = std::mem::take(&mut self.pending);
                let text = String::from_utf8_lossy(&bytes);
                Ok(text.trim_end_matches(['\r', '\n']).to_owned())
            }
        }
    }

    /// Sends `line` and a `\n`.
    pub async fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.writer.write_all(format!("{line}\n").as_bytes()).await
    }
}

impl std::fmt::Debug for Talker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Talker")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// How the load sends.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Time between two messages of one talker.
    pub gap: Duration,
    /// Most messages one talker sends, whatever happens.
    pub max: usize,
}

/// What one talker did and saw.
#[derive(Debug, Clone)]
pub struct TalkerLog {
    /// Its name.
    pub name: String,
    /// Its client id.
    pub id: ClientId,
    /// Whom it sends to.
    pub target: ClientId,
    /// Messages it wrote.
    pub sent: usize,
    /// Its messages the chat confirmed (text → how many confirmations).
    pub acked: HashMap<String, usize>,
    /// `... is not online` and `... could not be reached` answers it got.
    pub refused: usize,
    /// Messages it received (text → how many times).
    pub received: HashMap<String, usize>,
    /// `error: ...` lines it got.
    pub errors: Vec<String>,
    /// When (since the load started) its connection closed, if it did.
    pub closed_at: Option<Duration>,
}

impl TalkerLog {
    /// Messages written that got no answer (neither confirmation nor refusal).
    pub fn unanswered(&self) -> usize {
        self.sent.saturating_sub(self.acked.len() + self.refused)
    }
}

/// The load's shared record; every talker task writes its lines here.
#[derive(Debug, Default)]
struct Ledger {
    talkers: Vec<TalkerLog>,
    /// Message text → (sender index, recipient), written before the message is sent.
    sent: HashMap<String, (usize, ClientId)>,
    /// Messages received by a talker that was not the one named by the sender, or
    /// never sent by anybody: (receiver name, line).
    strays: Vec<(String, String)>,
}

impl Ledger {
    /// Files one line talker `i` read.
    fn observe(&mut self, i: usize, line: &str) {
        let (name, id) = (&self.talkers[i].name, self.talkers[i].id);
        let mine = format!("{name}[{id}] said to [");
        if let Some(rest) = line.strip_prefix(&mine) {
            let text = rest.split_once("] :").map_or(rest, |(_, t)| t).to_owned();
            *self.talkers[i].acked.entry(text).or_default() += 1;
        } else if line.ends_with("is not online; nothing was sent")
            || line.ends_with("could not be reached; your message may not have arrived")
        {
            self.talkers[i].refused += 1;
        } else if let Some((_, text)) = line.split_once(" said to You :") {
            match self.sent.get(text) {
                Some((_, to)) if *to == id => {
                    *self.talkers[i].received.entry(text.to_owned()).or_default() += 1;
                }
                _ => self
                    .strays
                    .push((self.talkers[i].name.clone(), line.to_owned())),
            }
        } else if line.starts_with("error:") {
            self.talkers[i].errors.push(line.to_owned());
        }
    }

    /// Whether nothing more is to be waited for: every talker still connected has an
    /// answer for each message it sent, and every acknowledged message for a talker
    /// still connected has reached it.
    fn settled(&self) -> bool {
        let open: HashSet<ClientId> = self
            .talkers
            .iter()
            .filter(|t| t.closed_at.is_none())
            .map(|t| t.id)
            .collect();
        let by_id: HashMap<ClientId, &TalkerLog> = self.talkers.iter().map(|t| (t.id, t)).collect();
        self.talkers.iter().all(|t| {
            (t.closed_at.is_some() || t.unanswered() == 0)
                && t.acked.keys().all(|text| {
                    !open.contains(&t.target)
                        || by_id
                            .get(&t.target)
                            .is_some_and(|r| r.received.contains_key(text))
                })
        })
    }
}

/// Steady private messages between talkers; see the module documentation.
pub struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop_sending: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Option<Talker>>>,
    started: Instant,
}

impl Load {
    /// Starts one task per talker: each sends `m<index>-<n>` to its target every
    /// `pace.gap`, at most `pace.max` times, and files every line it reads.
    pub fn start(talkers: Vec<(Talker, ClientId)>, pace: Pace) -> Load {
        let started = Instant::now();
        let ledger = Arc::new(Mutex::new(Ledger {
            talkers: talkers
                .iter()
                .map(|(t, target)| TalkerLog {
                    name: t.name.clone(),
                    id: t.id,
                    target: *target,
                    sent: 0,
                    acked: HashMap::new(),
                    refused: 0,
                    received: HashMap::new(),
                    errors: Vec::new(),
                    closed_at: None,
                })
                .collect(),
            ..Ledger::default()
        }));
        let (stop_sending, _) = watch::channel(false);
        let (stop, _) = watch::channel(false);
        let tasks = talkers
            .into_iter()
            .enumerate()
            .map(|(i, (t, target))| {
                tokio::spawn(talk(
                    i,
                    t,
                    target,
                    pace,
                    Arc::clone(&ledger),
                    stop_sending.subscribe(),
                    stop.subscribe(),
                    started,
                ))
            })
            .collect();
        Load {
            ledger,
            stop_sending,
            stop,
            tasks,
            started,
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acknowledged messages so far, all talkers together.
    pub fn acked(&self) -> usize {
        self.ledger().talkers.iter().map(|t| t.acked.len()).sum()
    }

    /// Talkers whose connection has closed so far.
    pub fn closed(&self) -> Vec<ClientId> {
        self.ledger()
            .talkers
            .iter()
            .filter(|t| t.closed_at.is_some())
            .map(|t| t.id)
            .collect()
    }

    /// Waits until `n` more messages than now are acknowledged; fails the test, with
    /// the ledger, if that takes longer than `within`.
    pub async fn wait_acked(&self, n: usize, within: Duration) {
        let want = self.acked() + n;
        let deadline = Instant::now() + within;
        while self.acked() < want {
            assert!(
                Instant::now() < deadline,
                "the load made no progress: {} of {want} acknowledged after {within:?}\n{}",
                self.acked(),
                self.snapshot().summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until each of `ids` has been disconnected; fails the test after `within`.
    pub async fn wait_closed(&self, ids: &[ClientId], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let closed = self.closed();
            if ids.iter().all(|id| closed.contains(id)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "talkers {ids:?} not all disconnected after {within:?} (closed: {closed:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A copy of what the ledger says now.
    fn snapshot(&self) -> Report {
        Report::from(&*self.ledger())
    }

    /// Stops sending, waits at most `settle` for answers and deliveries still in
    /// flight (see the module documentation), stops the talkers and returns the
    /// report and the talkers still connected.
    pub async fn finish(self, settle: Duration) -> (Report, Vec<Talker>) {
        let _ = self.stop_sending.send(true);
        let deadline = Instant::now() + settle;
        // Let the senders see the signal before the ledger is judged.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while !self.ledger().settled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        let mut open = Vec::new();
        for task in self.tasks {
            match tokio::time::timeout(WAIT, task).await {
                Ok(Ok(Some(t))) => open.push(t),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => panic!("a talker task failed: {e}"),
                Err(_) => panic!("a talker task did not stop within {WAIT:?}"),
            }
        }
        let mut report = Report::from(&*self.ledger.lock().unwrap_or_else(|e| e.into_inner()));
        report.took = self.started.elapsed();
        (report, open)
    }
}

/// One talker's task: send on a timer, read always; returns the talker if its
/// connection is still open.
#[allow(clippy::too_many_arguments)]
async fn talk(
    i: usize,
    mut t: Talker,
    target: ClientId,
    pace: Pace,
    ledger: Arc<Mutex<Ledger>>,
    mut stop_sending: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    started: Instant,
) -> Option<Talker> {
    let lock = || ledger.lock().unwrap_or_else(|e| e.into_inner());
    let mut tick = tokio::time::interval(pace.gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0;
    let mut sending = true;
    loop {
        tokio::select! {
            _ = stop.changed() => return Some(t),
            r = stop_sending.changed(), if sending => {
                sending = r.is_ok() && !*stop_sending.borrow();
            }
            _ = tick.tick(), if sending && next < pace.max => {
                let text = format!("m{i}-{next}");
                {
                    let mut l = lock();
                    l.sent.insert(text.clone(), (i, target));
                    l.talkers[i].sent += 1;
                }
                next += 1;
                if t.send(&format!("{target}:{text}")).await.is_err() {
                    lock().talkers[i].closed_at = Some(started.elapsed());
                    return None;
                }
            }
            line = t.next_line() => match line {
                Ok(line) => lock().observe(i, &line),
                Err(_) => {
                    lock().talkers[i].closed_at = Some(started.elapsed());
                    return None;
                }
            },
        }
    }
}

/// What happened to every message of a load.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every talker's record, in the order given to [`Load::start`].
    pub talkers: Vec<TalkerLog>,
    /// Received by someone not named as the recipient, or never sent.
    pub strays: Vec<(String, String)>,
    /// How long the load ran.
    pub took: Duration,
}

impl From<&Ledger> for Report {
    fn from(l: &Ledger) -> Self {
        Report {
            talkers: l.talkers.clone(),
            strays: l.strays.clone(),
            took: Duration::ZERO,
        }
    }
}

impl Report {
    /// Acknowledged messages that never reached their recipient, for recipients
    /// `counts` says count (all of them, or those that stayed connected): (sender,
    /// text).
    pub fn lost(&self, counts: impl Fn(&TalkerLog) -> bool) -> Vec<(String, String)> {
        let by_id: HashMap<ClientId, &TalkerLog> = self.talkers.iter().map(|t| (t.id, t)).collect();
        let mut lost = Vec::new();
        for t in &self.talkers {
            let Some(r) = by_id.get(&t.target) else {
                continue;
            };
            if !counts(r) {
                continue;
            }
            for text in t.acked.keys() {
                if !r.received.contains_key(text) {
                    lost.push((t.name.clone(), text.clone()));
                }
            }
        }
        lost.sort();
        lost
    }

    /// Messages received, or acknowledged, more than once: (talker, text, times).
    pub fn duplicated(&self) -> Vec<(String, String, usize)> {
        let mut dup: Vec<_> = self
            .talkers
            .iter()
            .flat_map(|t| {
                t.received
                    .iter()
                    .chain(t.acked.iter())
                    .filter(|(_, n)| **n > 1)
                    .map(|(text, n)| (t.name.clone(), text.clone(), *n))
            })
            .collect();
        dup.sort();
        dup
    }

    /// The talkers whose connection closed.
    pub fn disconnected(&self) -> Vec<ClientId> {
        self.talkers
            .iter()
            .filter(|t| t.closed_at.is_some())
            .map(|t| t.id)
            .collect()
    }

    /// Acknowledged messages, all talkers together.
    pub fn acked(&self) -> usize {
        self.talkers.iter().map(|t| t.acked.len()).sum()
    }

    /// Sent messages, all talkers together.
    pub fn sent(&self) -> usize {
        self.talkers.iter().map(|t| t.sent).sum()
    }

    /// Fails the test, with the summary and `context` (the deployment's log, say),
    /// unless nothing acknowledged was lost for a recipient `counts` says count,
    /// nothing arrived twice or at the wrong talker, and nobody got an `error:` line.
    pub fn assert_no_loss(&self, counts: impl Fn(&TalkerLog) -> bool, context: &str) {
        let lost = self.lost(counts);
        let dup = self.duplicated();
        let errors: Vec<&String> = self.talkers.iter().flat_map(|t| &t.errors).collect();
        assert!(
            lost.is_empty() && dup.is_empty() && self.strays.is_empty() && errors.is_empty(),
            "lost (acknowledged, never received): {lost:?}\nduplicated: {dup:?}\n\
             strays: {:?}\nerrors: {errors:?}\n{}\n{context}",
            self.strays,
            self.summary()
        );
    }

    /// One line per talker: what it sent, what was confirmed, refused, unanswered and
    /// received, and when it was disconnected.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "load: {} sent, {} acknowledged in {:?}\n",
            self.sent(),
            self.acked(),
            self.took
        );
        let mut by_gateway: BTreeMap<u32, usize> = BTreeMap::new();
        for t in &self.talkers {
            *by_gateway.entry(t.id.gateway).or_default() += 1;
            let _ = writeln!(
                s,
                "  {} [{}] -> [{}]: sent {}, acked {}, refused {}, unanswered {}, received {}{}",
                t.name,
                t.id,
                t.target,
                t.sent,
                t.acked.len(),
                t.refused,
                t.unanswered(),
                t.received.len(),
                t.closed_at
                    .map(|at| format!(", disconnected at {at:?}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(s, "  talkers per gateway: {by_gateway:?}");
        s
    }
}
