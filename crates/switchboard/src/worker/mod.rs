//! The worker process: runs the application's [`Events`] for the events gateways send,
//! isolated from panics, and drains cleanly on shutdown.

pub mod events;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Map;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{self, Acker, EventSink, Gateway, GatewayOptions};
use crate::config::Config;
use crate::protocol::internal::{Event, EventKind, Role};
use crate::stats;
use crate::{Error, Message, Refuse, WebSocketRequest};
use events::ClientMeta;
pub use events::{Context, Events, HandlerResult};

/// Worker counters.
#[derive(Default)]
struct Counters {
    events: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
}

/// Runs one worker process until `shutdown`, then drains: gateways are told to send no
/// more events, events already received are finished and acknowledged, then it returns.
pub async fn run(
    config: Config,
    events: Arc<dyn Events>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let store = crate::open_store(&config).await?;
    let db = crate::open_db(&config)?;
    let counters = Arc::new(Counters::default());
    let statistics_stop = CancellationToken::new();
    let (statistics, flusher) = crate::statistic::start(&config, statistics_stop.clone());
    let tracker = TaskTracker::new();
    let options = GatewayOptions {
        namespace: config.name.clone(),
        secret: config.secret.clone(),
        name: format!("worker-{}", std::process::id()),
        query_timeout: config.worker.query_timeout,
        discovery_interval: config.worker.discovery_interval,
        max_frame: config.gateway.max_internal_frame,
        max_session: config.gateway.max_session,
        link_timeout: config.worker.link_timeout,
        statistics,
        tls: client::link_tls(&config)?,
    };
    // Events that arrive before `on_worker_start` has finished wait for it, as
    // GatewayWorker users expect (their onWorkerStart opens databases and the like).
    let (started_tx, started_rx) = tokio::sync::watch::channel(false);
    let gateway = Gateway::start(options, store, db, Role::Worker, |gateway| {
        let gateway = gateway.clone();
        let events = events.clone();
        let counters = counters.clone();
        let tracker = tracker.clone();
        let inline = runs_inline();
        let sink: EventSink = Arc::new(move |event: Event, acker: Acker| {
            let (gateway, events, counters) = (gateway.clone(), events.clone(), counters.clone());
            let mut started = started_rx.clone();
            let task = async move {
                let _ = started.wait_for(|s| *s).await;
                let (seq, client) = (event.seq, event.client);
                match handle(events.as_ref(), gateway, event, &counters).await {
                    Outcome::Done => acker.ack(seq, client).await,
                    Outcome::Verdict { status, reason } => {
                        acker.verdict(seq, client, status, reason).await
                    }
                }
            };
            if inline {
                run_or_spawn(&tracker, task);
            } else {
                tracker.spawn(task);
            }
        });
        Some(sink)
    });
    tracing::info!(allocator = %crate::alloc::describe(), "worker started");
    crate::alloc::warn_if_not_installed(config.worker.allocator);

    // on_worker_start runs once gateways are reachable (or after a short wait), so it
    // can use the Gateway API; a failure or panic there is logged and the worker goes on.
    gateway.wait_for_gateways(1, Duration::from_secs(2)).await;
    match std::panic::AssertUnwindSafe(events.on_worker_start(&gateway))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "on_worker_start failed"),
        Err(_) => tracing::error!("on_worker_start panicked"),
    }
    let _ = started_tx.send(true);

    let stats_stop = CancellationToken::new();
    let stats_task = tokio::spawn(write_stats(
        gateway.clone(),
        counters.clone(),
        config.run_dir(),
        stats_stop.clone(),
    ));

    shutdown.cancelled().await;
    let started = Instant::now();
    tracing::info!("worker draining");
    gateway.drain(Duration::from_secs(5)).await;
    tracker.close();
    if tokio::time::timeout(config.worker.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            unfinished = tracker.len(),
            "drain timeout: exiting with events unfinished (gateways re-dispatch them)"
        );
    }
    gateway.close().await;
    // The last statistics reach the spool before the final metrics snapshot.
    statistics_stop.cancel();
    if let Some(f) = flusher {
        let _ = f.await;
    }
    stats_stop.cancel();
    let _ = stats_task.await;
    stats::remove(&config.run_dir(), "worker", std::process::id());
    tracing::info!(took = ?started.elapsed(), handled = counters.events.load(Ordering::Relaxed), "worker drained and stopped");
    Ok(())
}

/// Whether events run on the link's reader before a task is spawned for them
/// ([`run_or_spawn`]): on a single-threaded runtime (the workers' default) a spawned
/// task would run on the same thread anyway, only later and at the price of a task;
/// on a runtime with several threads, tasks let events of one link run in parallel.
fn runs_inline() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// Runs `task` until it first waits; only if it does, it becomes a task of `tracker`
/// (which polls it again, with its own waker, so nothing it waits for is missed). Most
/// events — a handler that queues its sends and returns — end on that first poll, and
/// cost neither a task nor a trip through the scheduler.
fn run_or_spawn<F>(tracker: &TaskTracker, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut task = Box::pin(task);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if task.poll_unpin(&mut cx).is_pending() {
        tracker.spawn(task);
    }
}

/// How an event ended, for its acknowledgement.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Handled (successfully or not): a plain ack.
    Done,
    /// A WebSocket upgrade: 0 accepts, an HTTP status refuses.
    Verdict {
        /// 0 or the HTTP status.
        status: u16,
        /// Why it was refused.
        reason: String,
    },
}

/// Runs the handler for one event, catching errors and panics.
async fn handle(
    events: &dyn Events,
    gateway: Gateway,
    event: Event,
    counters: &Counters,
) -> Outcome {
    let session = match serde_json::from_slice(&event.session) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %event.client, error = %e, "event carried a session that is not a JSON object; using an empty one");
            Map::new()
        }
    };
    let kind = event.kind;
    // Connect and upgrade events of WebSocket clients carry the upgrade request.
    let request = match kind {
        EventKind::Connect | EventKind::WebSocketConnect if !event.body.is_empty() => {
            match serde_json::from_slice::<WebSocketRequest>(&event.body) {
                Ok(r) => Some(Box::new(r)),
                Err(e) => {
                    tracing::warn!(client = %event.client, error = %e, "event carried a WebSocket request that cannot be read");
                    None
                }
            }
        }
        _ => None,
    };
    let meta = ClientMeta {
        client_id: event.client,
        client_addr: event.addr,
        listener: event.listener,
        protocol: event.protocol,
        uid: event.uid,
        groups: event.groups,
        request,
    };
    let mut ctx = Context::new(meta, session, gateway.clone());
    let message = Message::from_parts(event.body, event.binary);
    let fut = async {
        match kind {
            EventKind::Connect => events.on_connect(&mut ctx).await,
            EventKind::Message => events.on_message(&mut ctx, message).await,
            EventKind::Close => events.on_close(&mut ctx).await,
            EventKind::WebSocketConnect => match ctx.request().cloned() {
                Some(req) => events.on_websocket_connect(&mut ctx, &req).await,
                None => Err(Refuse::status(400, "unreadable upgrade request").into()),
            },
        }
    };
    let began = Instant::now();
    let outcome = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
    crate::metrics::worker::event_handled(
        match kind {
            EventKind::Connect => crate::metrics::worker::EventKind::Connect,
            EventKind::Message => crate::metrics::worker::EventKind::Message,
            EventKind::Close => crate::metrics::worker::EventKind::Close,
            EventKind::WebSocketConnect => crate::metrics::worker::EventKind::WebSocketConnect,
        },
        began.elapsed(),
        // A refused upgrade is the handler's answer, not its failure.
        matches!(&outcome, Ok(Err(e)) if e.downcast_ref::<Refuse>().is_none()),
        outcome.is_err(),
    );
    counters.events.fetch_add(1, Ordering::Relaxed);
    let mut verdict = (0u16, String::new());
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e))
            if kind == EventKind::WebSocketConnect && e.downcast_ref::<Refuse>().is_some() =>
        {
            if let Some(r) = e.downcast_ref::<Refuse>() {
                verdict = (r.status, r.reason.clone());
            }
        }
        Ok(Err(e)) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %event.client, event = ?kind, error = %e, "handler failed");
            verdict = (500, "the application failed to answer".into());
        }
        Err(panic) => {
            counters.panicked.fetch_add(1, Ordering::Relaxed);
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            tracing::error!(client = %event.client, event = ?kind, panic = %msg, "handler panicked; this event failed, the worker goes on");
            verdict = (500, "the application failed to answer".into());
        }
    }
    if kind != EventKind::Close {
        if let Some(changes) = ctx.take_session_changes() {
            // Boxed: its future (a query to the gateway) would take a kilobyte in
            // every event's task, most of which change no session.
            if let Err(e) = Box::pin(gateway.update_session(event.client, &changes)).await {
                tracing::warn!(client = %event.client, error = %e, "could not save the session");
            }
        }
    }
    match kind {
        EventKind::WebSocketConnect => Outcome::Verdict {
            status: verdict.0,
            reason: verdict.1,
        },
        _ => Outcome::Done,
    }
}

async fn write_stats(
    gateway: Gateway,
    counters: Arc<Counters>,
    run_dir: std::path::PathBuf,
    stop: CancellationToken,
) {
    stats::publish_loop(run_dir, "worker", stop, move || {
        let mut detail = serde_json::Map::new();
        detail.insert("gateways".into(), gateway.gateways().into());
        detail.insert(
            "failed".into(),
            counters.failed.load(Ordering::Relaxed).into(),
        );
        detail.insert(
            "panicked".into(),
            counters.panicked.load(Ordering::Relaxed).into(),
        );
        stats::Sample {
            clients: gateway.gateways().len() as u64,
            events: counters.events.load(Ordering::Relaxed),
            detail,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientProtocol;
    use crate::ClientId;
    use async_trait::async_trait;
    use bytes::Bytes;

    /// Business code with a bug: it panics on "boom" and fails on "err".
    struct Buggy;

    #[async_trait]
    impl Events for Buggy {
        async fn on_message(&self, ctx: &mut Context, msg: Message) -> HandlerResult {
            match msg.as_bytes() {
                b"boom" => panic!("bug in business code"),
                b"err" => Err("a handled failure".into()),
                b"show" => {
                    let seen = ctx.session().get("seen").and_then(|v| v.as_bool());
                    ctx.reply(format!("seen={seen:?}")).await?;
                    Ok(())
                }
                // What another process writes while this handler runs (the push API,
                // another client's event) lands before the handler's own save.
                b"outside" => {
                    let mut changes = crate::Session::new();
                    changes.insert("outside".into(), 1.into());
                    ctx.gateway()
                        .update_session(ctx.client_id(), &changes)
                        .await?;
                    ctx.session_mut().insert("handler".into(), 2.into());
                    Ok(())
                }
                b"forget" => {
                    ctx.session_mut().remove("seen");
                    Ok(())
                }
                b"dump" => {
                    let session = serde_json::Value::Object(ctx.session().clone());
                    ctx.reply(session.to_string()).await?;
                    Ok(())
                }
                _ => {
                    ctx.session_mut().insert("seen".into(), true.into());
                    Ok(())
                }
            }
        }
    }

    fn event(body: &'static str) -> Event {
        Event {
            seq: 1,
            kind: EventKind::Message,
            client: ClientId::new(1, 1),
            addr: "127.0.0.1:1".into(),
            listener: "main".into(),
            protocol: ClientProtocol::Text,
            uid: None,
            groups: vec![],
            session: Bytes::from_static(b"{}"),
            body: Bytes::from_static(body.as_bytes()),
            binary: false,
        }
    }

    /// A worker's Gateway handle with no gateway to link to (a store with none).
    fn unlinked_gateway() -> Gateway {
        let store: switchboard_store::SharedStore = Arc::new(switchboard_store::MemoryStore::new());
        let options = GatewayOptions {
            namespace: "t".into(),
            secret: "s".into(),
            name: "test".into(),
            query_timeout: Duration::from_secs(1),
            discovery_interval: Duration::from_secs(60),
            max_frame: 1 << 20,
            max_session: 64 << 10,
            link_timeout: Duration::from_secs(20),
            statistics: Arc::new(crate::statistic::Collector::disabled()),
            tls: None,
        };
        let db = switchboard_db::Db::new(Default::default()).unwrap();
        Gateway::start(options, store, db, Role::Worker, |_| None)
    }

    #[tokio::test]
    async fn a_panicking_handler_fails_one_event_and_the_worker_goes_on() {
        let gateway = unlinked_gateway();
        let counters = Counters::default();
        // Each ends in a plain ack, the panic and the failure included.
        for body in ["boom", "err", "fine"] {
            let outcome = handle(&Buggy, gateway.clone(), event(body), &counters).await;
            assert_eq!(outcome, Outcome::Done, "{body}");
        }
        assert_eq!(counters.events.load(Ordering::Relaxed), 3);
        assert_eq!(counters.panicked.load(Ordering::Relaxed), 1);
        assert_eq!(counters.failed.load(Ordering::Relaxed), 1);
        gateway.close().await;
    }

    /// An event that ends on its first poll runs without a task; one that waits
    /// becomes a task, which is woken by what it waits for (the first poll's waker
    /// was a no-op one) and finishes.
    #[tokio::test]
    async fn an_event_runs_at_once_and_becomes_a_task_only_if_it_waits() {
        assert!(
            runs_inline(),
            "a single-threaded runtime runs events inline"
        );
        let tracker = TaskTracker::new();
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        run_or_spawn(&tracker, async move {
            d.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(done.load(Ordering::Relaxed), 1, "not run at once");
        assert_eq!(tracker.len(), 0, "a task for an event that never waited");

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let d = done.clone();
        run_or_spawn(&tracker, async move {
            let _ = rx.await;
            d.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(tracker.len(), 1, "an event that waits is not a task");
        assert_eq!(done.load(Ordering::Relaxed), 1);
        tx.send(()).unwrap();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .expect("the waiting event was never woken");
        assert_eq!(done.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_tasks_on_a_runtime_with_threads() {
        assert!(
            !runs_inline(),
            "events of one link would not run in parallel"
        );
    }

    /// The future of one event's handling is moved into a task of its own when it
    /// waits: it holds the session's save (a query, a kilobyte of future) boxed.
    #[tokio::test]
    async fn an_events_future_is_small() {
        let gateway = unlinked_gateway();
        let counters = Counters::default();
        let size = std::mem::size_of_val(&handle(&Buggy, gateway.clone(), event("x"), &counters));
        // 1,912 bytes with the save inline, 984 with it boxed.
        assert!(
            size <= 1_400,
            "the handling of an event is a future of {size} bytes"
        );
        gateway.close().await;
    }

    /// A gateway and a worker of a deployment in a temporary directory (file store),
    /// run in this process; the gateway's text listener binds port 0.
    async fn deployment(
        dir: &std::path::Path,
    ) -> (
        Config,
        std::net::SocketAddr,
        CancellationToken,
        Vec<tokio::task::JoinHandle<Result<(), Error>>>,
    ) {
        let config = Config::from_toml(
            &format!(
                "name = \"worker-test\"\nsecret = \"s\"\ndata_dir = \"{}\"\n\
                 [store]\nbackend = \"file\"\npath = \"store.sqlite\"\n\
                 [[gateway.listeners]]\nlisten = \"127.0.0.1:0\"\n\
                 [worker]\ndiscovery_interval = \"100ms\"\n",
                dir.display()
            ),
            None,
        )
        .unwrap();
        let stop = CancellationToken::new();
        let gateway = tokio::spawn(crate::gateway::run(
            config.clone(),
            0,
            Arc::new(crate::Assets::default()),
            stop.clone(),
        ));
        let store = crate::open_store(&config).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let listen = loop {
            let entries = crate::discovery::list(store.as_ref(), &config.name)
                .await
                .unwrap_or_default();
            if let Some(addr) = entries.first().and_then(|e| e.listeners.first()) {
                break *addr;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway never published itself"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let worker = tokio::spawn(run(config.clone(), Arc::new(Buggy), stop.clone()));
        (config, listen, stop, vec![gateway, worker])
    }

    /// A client of the test deployment: its lines, and its writing half.
    type Client = (
        tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
        tokio::net::tcp::OwnedWriteHalf,
    );

    async fn connect(listen: std::net::SocketAddr) -> Client {
        use tokio::io::AsyncBufReadExt;
        let (read, write) = tokio::net::TcpStream::connect(listen)
            .await
            .unwrap()
            .into_split();
        (tokio::io::BufReader::new(read).lines(), write)
    }

    /// The client's next line, within 15 s (`what` says what a timeout means).
    async fn next_line(client: &mut Client, what: &str) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(15), client.0.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer within 15 s: {what}"))
            .unwrap()
    }

    async fn say(client: &mut Client, lines: &[u8]) {
        use tokio::io::AsyncWriteExt;
        client.1.write_all(lines).await.unwrap();
    }

    /// Stops the deployment and waits for its tasks, which must end cleanly.
    async fn shut_down(
        stop: CancellationToken,
        tasks: Vec<tokio::task::JoinHandle<Result<(), Error>>>,
    ) {
        stop.cancel();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("stops")
                .unwrap()
                .unwrap();
        }
    }

    /// Through a real gateway and the worker's own loop: a panic and a failure are
    /// acknowledged (the client's next events, held until then, are handled), and the
    /// session a handler changed is saved (the next event carries it). On one thread,
    /// as workers run by default: the events run on the link's reader
    /// ([`run_or_spawn`]), the panic caught there too.
    #[tokio::test]
    async fn failed_events_are_acknowledged_and_a_changed_session_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let (_config, listen, stop, tasks) = deployment(dir.path()).await;
        let mut client = connect(listen).await;
        say(&mut client, b"boom\nerr\nfine\nshow\n").await;
        assert_eq!(
            next_line(&mut client, "an event was never acknowledged")
                .await
                .as_deref(),
            Some("seen=Some(true)"),
            "the session was not saved"
        );
        shut_down(stop, tasks).await;
    }

    /// A handler's session save writes the keys it changed, not its whole copy: what
    /// another process wrote into the session meanwhile is kept, and a key the handler
    /// removed is removed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handlers_save_keeps_what_others_wrote_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (_config, listen, stop, tasks) = deployment(dir.path()).await;
        let mut client = connect(listen).await;
        say(&mut client, b"fine\noutside\ndump\n").await;
        assert_eq!(
            next_line(&mut client, "dump").await.as_deref(),
            Some(r#"{"handler":2,"outside":1,"seen":true}"#),
            "the handler's save replaced what was written while it ran"
        );
        say(&mut client, b"forget\ndump\n").await;
        assert_eq!(
            next_line(&mut client, "dump").await.as_deref(),
            Some(r#"{"handler":2,"outside":1}"#),
            "a key the handler removed is still there"
        );
        shut_down(stop, tasks).await;
    }
}
