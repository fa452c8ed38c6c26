//! Worker-side metrics: events handled, handler time, errors and panics, and the
//! commands the Gateway API sends. Wired in `worker/` (events) and `client/mod.rs`
//! (commands), so workers and API clients record them with no help from the
//! application.

use super::{Counter, Histogram, Series};

/// Kinds of event a worker handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `on_connect`.
    Connect = 0,
    /// `on_message`.
    Message = 1,
    /// `on_close`.
    Close = 2,
    /// `on_websocket_connect` (the upgrade request of a WebSocket client).
    WebSocketConnect = 3,
}

const EVENT_NAMES: [&str; 4] = ["connect", "message", "close", "websocket_connect"];

/// Kinds of command (and query) the Gateway API sends, for `switchboard_commands_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// A message to one client (also `Context::reply`).
    SendToClient = 0,
    /// A message to every client.
    SendToAll,
    /// A message to groups.
    SendToGroup,
    /// A message to uids.
    SendToUid,
    /// Bind or unbind a uid.
    Uid,
    /// Join or leave a group, or dissolve one.
    Group,
    /// Set or update a session.
    Session,
    /// Close a client.
    Close,
    /// A query (`is_online`, `client_ids_by_group`, ...).
    Query,
    /// Anything else.
    Other,
}

const COMMAND_NAMES: [&str; 10] = [
    "send_to_client",
    "send_to_all",
    "send_to_group",
    "send_to_uid",
    "uid",
    "group",
    "session",
    "close",
    "query",
    "other",
];

static EVENTS: [Counter; 4] = [const { Counter::new() }; 4];
static DURATION: [Histogram; 4] = [const { Histogram::new() }; 4];
static ERRORS: Counter = Counter::new();
static PANICS: Counter = Counter::new();
static COMMANDS: [Counter; 10] = [const { Counter::new() }; 10];

/// One event handled, how long it took, and how it ended.
#[inline]
pub fn event_handled(kind: EventKind, took: std::time::Duration, error: bool, panic: bool) {
    EVENTS[kind as usize].inc();
    DURATION[kind as usize].observe(took);
    if error {
        ERRORS.inc();
    }
    if panic {
        PANICS.inc();
    }
}

/// One command sent to gateways (counted once, however many gateways it went to).
#[inline]
pub fn command(kind: CommandKind) {
    COMMANDS[kind as usize].inc();
}

pub(super) fn collect(out: &mut Vec<Series>) {
    let any = EVENTS.iter().any(|c| c.get() > 0) || COMMANDS.iter().any(|c| c.get() > 0);
    if !any {
        return;
    }
    for (i, name) in EVENT_NAMES.iter().enumerate() {
        out.push(Series::counter(
            "switchboard_events",
            &[("kind", name)],
            EVENTS[i].get(),
        ));
        out.push(Series::new(
            "switchboard_handler_duration_seconds",
            &[("kind", name)],
            DURATION[i].value(),
        ));
    }
    out.push(Series::counter(
        "switchboard_handler_errors",
        &[],
        ERRORS.get(),
    ));
    out.push(Series::counter(
        "switchboard_handler_panics",
        &[],
        PANICS.get(),
    ));
    for (i, name) in COMMAND_NAMES.iter().enumerate() {
        let n = COMMANDS[i].get();
        if n > 0 {
            out.push(Series::counter(
                "switchboard_commands",
                &[("kind", name)],
                n,
            ));
        }
    }
}
