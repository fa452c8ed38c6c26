//! The brief's chat demo on Switchboard: `telnet 127.0.0.1 8480`, and the browser chat
//! on `http://127.0.0.1:7272`.
//!
//! Telnet: the first line a client types is its name; after that a line goes to
//! everybody, and `client_id:words` goes to that one client only. What reaches a
//! terminal has every control character but the tab turned into a space
//! ([`protocol::one_line`]), so one user's escape sequences never reach another's. Browsers speak
//! workerman-chat's JSON protocol in rooms ([`browser`]); the telnet users are room
//! `1`, and the two meet there. All of the business logic is the [`Chat`] events below
//! and the `browser` module; the gateways, workers and supervisor are Switchboard's.

mod browser;
// Also compiled into crates/switchboard-db/tests/chat_history.rs, which uses the rest.
#[allow(dead_code)]
mod history;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use browser::protocol::{self, To};
use browser::{TELNET_GROUP, TELNET_ROOM};
use history::{ChatHistory, HistoryLine};
use switchboard::{
    async_trait, App, ClientId, ClientProtocol, Context, Events, Gateway, HandlerResult, Message,
    Session,
};
use switchboard_db::{DbError, Instance};
use tokio::sync::OnceCell;

/// The chat's business code.
#[derive(Default)]
struct Chat {
    /// Public lines, kept through the Db module (`[db.instances.history]`). Without it
    /// the chat works, and `/history` says it is not available.
    history: History,
}

/// What `/history` answers when the history cannot be read now.
const HISTORY_UNAVAILABLE: &str = "history is not available right now; try again later";

/// How long the history is left alone after its database could not be reached: calls
/// in that time fail at once instead of each waiting the instance's connect timeout.
const HISTORY_HOLD_OFF: Duration = Duration::from_secs(3);

/// The chat history as the handlers use it: opened when the worker starts, or later,
/// in the background, once the database answers; and left alone for a moment after
/// the database could not be reached, so that a database that is down slows nobody.
#[derive(Default)]
struct History {
    /// The opened history (its table made sure of).
    opened: Arc<OnceCell<ChatHistory>>,
    /// The configured instance (no connection), kept to open the history later.
    instance: OnceLock<Instance>,
    /// Whether a background open is running (one at a time).
    opening: Arc<AtomicBool>,
    /// Until when calls are not tried (the database could not be reached, or the
    /// history could not be opened).
    down_until: Arc<Mutex<Option<Instant>>>,
}

impl History {
    /// Opens the history in `instance` (the worker's start); if the database does not
    /// answer, [`usable`](History::usable) tries again later.
    async fn open(&self, instance: Instance) -> Result<(), DbError> {
        let _ = self.instance.set(instance.clone());
        let history = ChatHistory::open(instance).await?;
        let _ = self.opened.set(history);
        Ok(())
    }

    /// The history, if it can be used now: opened, and its database not known to be
    /// down. When it was never opened, an open is started in the background for later
    /// calls.
    fn usable(&self) -> Option<&ChatHistory> {
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until);
        if down {
            return None;
        }
        if let Some(history) = self.opened.get() {
            return Some(history);
        }
        let instance = self.instance.get()?.clone();
        if !self.opening.swap(true, Ordering::AcqRel) {
            let (opened, opening) = (Arc::clone(&self.opened), Arc::clone(&self.opening));
            let down_until = Arc::clone(&self.down_until);
            tokio::spawn(async move {
                match ChatHistory::open(instance).await {
                    Ok(history) => {
                        let _ = opened.set(history);
                        tracing::info!("chat history opened");
                    }
                    Err(e) => {
                        // Tried again after the hold-off, not at every call.
                        tracing::warn!(error = %e, "chat history still not available");
                        *down_until.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now() + HISTORY_HOLD_OFF);
                    }
                }
                opening.store(false, Ordering::Release);
            });
        }
        None
    }

    /// Notes how a history call ended: a database that cannot be reached is left
    /// alone for [`HISTORY_HOLD_OFF`].
    fn note<T>(&self, result: &Result<T, DbError>) {
        // A lost connection is not one: the next call takes another from the pool.
        let unreachable = matches!(
            result,
            Err(DbError::Connect { .. } | DbError::Timeout { .. })
        );
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        *down = unreachable.then(|| Instant::now() + HISTORY_HOLD_OFF);
    }
}

/// How many lines `/history` prints.
const HISTORY_LINES: u32 = 20;

/// The current time as messages carry it (to the second: each thread formats it once
/// a second, not once a message).
fn now_time() -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    LAST.with_borrow_mut(|(at, text)| {
        if *at != unix {
            *text = format_time(unix);
            *at = unix;
        }
        text.clone()
    })
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time.
fn format_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A history line as telnet shows it; a browser's line breaks become spaces.
fn history_line(l: &HistoryLine) -> String {
    format!(
        "[{}] {}[{}] said :{}",
        format_time(l.at),
        l.name,
        l.client_id,
        protocol::one_line(&l.text)
    )
}

/// What the server says when it needs a name.
const ASK_NAME: &str = "type in your name:";

/// The name stored in a client's session, once it has one.
fn name_of(ctx: &Context) -> Option<String> {
    browser::name_in(ctx.session()).map(str::to_owned)
}

/// Whether this event's client is a browser (it came through a `websocket` listener).
fn from_browser(ctx: &Context) -> bool {
    ctx.protocol() == ClientProtocol::WebSocket
}

/// A usable name: not empty, no control characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_control)
}

/// Splits `ID:words` when the text before the first colon is shaped like a client id;
/// anything else (`time: 10`) is an ordinary line.
fn private_target(line: &str) -> Option<(ClientId, &str)> {
    let (head, words) = line.split_once(':')?;
    ClientId::looks_like(head)
        .then(|| head.parse().ok())
        .flatten()
        .map(|id| (id, words))
}

#[async_trait]
impl Events for Chat {
    async fn on_worker_start(&self, gateway: &Gateway) -> HandlerResult {
        let instance = gateway.db().instance("history")?;
        self.history.open(instance).await?;
        Ok(())
    }

    async fn on_connect(&self, ctx: &mut Context) -> HandlerResult {
        if from_browser(ctx) {
            return Ok(()); // a browser speaks first: its login
        }
        ctx.reply(ASK_NAME).await?;
        Ok(())
    }

    async fn on_message(&self, ctx: &mut Context, message: Message) -> HandlerResult {
        if from_browser(ctx) {
            return browser::on_message(self.history.usable(), ctx, message).await;
        }
        let line = message.text()?;
        let me = ctx.client_id();
        let Some(name) = name_of(ctx) else {
            let call = ctx.statistic("chat", "login");
            let name = line.trim();
            if !valid_name(name) {
                call.fail(400, "invalid name");
                ctx.reply("a name must not be empty or contain control characters")
                    .await?;
                ctx.reply(ASK_NAME).await?;
                return Ok(());
            }
            // The name is on the gateway before the client is in room 1, so a
            // browser that sees it as a member sees its name.
            let mut changes = Session::new();
            changes.insert(browser::NAME.into(), name.into());
            ctx.update_session(changes).await?;
            ctx.reply(format!(
                "Hello {name}[{me}]! Your client_id is {me}.\n\
                 Type client_id:words to say words to that client only; type words to say them to everybody."
            ))
            .await?;
            ctx.join_group(TELNET_GROUP).await?;
            let json = protocol::login(me, name, &now_time());
            let come = format!("{name}[{me}] come");
            browser::tell_room(ctx.gateway(), TELNET_ROOM, json, come, &[]).await?;
            call.success();
            return Ok(());
        };

        if line.trim() == "/history" {
            let call = ctx.statistic("chat", "history");
            let Some(history) = self.history.usable() else {
                call.fail(503, "history is not available");
                ctx.reply(HISTORY_UNAVAILABLE).await?;
                return Ok(());
            };
            let read = call.time(history.last(TELNET_ROOM, HISTORY_LINES)).await;
            self.history.note(&read);
            let lines = match read {
                Ok(lines) => lines,
                Err(e) => {
                    // The user is told; the reason is for the operator.
                    tracing::warn!(error = %e, "cannot read the chat history");
                    ctx.reply(HISTORY_UNAVAILABLE).await?;
                    return Ok(());
                }
            };
            if lines.is_empty() {
                ctx.reply("no history yet").await?;
            }
            for l in &lines {
                ctx.reply(history_line(l)).await?;
            }
            return Ok(());
        }

        match private_target(line) {
            Some((to, words)) => {
                let call = ctx.statistic("chat", "private");
                // In the recipient's format; the sender is told how it went.
                let notices = browser::Notices {
                    sent: format!("{name}[{me}] said to [{to}] :{}", protocol::one_line(words)),
                    offline: format!("[{to}] is not online; nothing was sent"),
                    unreachable: |to| {
                        format!("[{to}] could not be reached; your message may not have arrived")
                    },
                };
                browser::send_private(ctx.gateway(), call, (me, &name), to, words, notices).await;
            }
            None => {
                // Timed with the history write (the Db call) included; an error of
                // either is reported with its message.
                let call = ctx.statistic("chat", "say");
                call.time(async {
                    let content = protocol::content_html(line);
                    let json = protocol::say(me, &name, To::All, &content, &now_time());
                    // tell_room makes it one line for terminals.
                    let said = format!("{name}[{me}] said :{line}");
                    browser::tell_room(ctx.gateway(), TELNET_ROOM, json, said, &[]).await?;
                    if let Some(history) = self.history.usable() {
                        let written = history
                            .append(TELNET_ROOM, &name, &me.to_string(), line)
                            .await;
                        self.history.note(&written);
                        written?;
                    }
                    HandlerResult::Ok(())
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn on_close(&self, ctx: &mut Context) -> HandlerResult {
        if from_browser(ctx) {
            return browser::on_close(ctx).await;
        }
        if let Some(name) = name_of(ctx) {
            let me = ctx.client_id();
            let json = protocol::logout(me, &name, &now_time());
            let logout = format!("{name}[{me}] logout");
            browser::tell_room(ctx.gateway(), TELNET_ROOM, json, logout, &[]).await?;
        }
        Ok(())
    }
}

/// Workers on mimalloc, gateways on glibc's allocator (`worker.allocator`,
/// `gateway.allocator`).
#[global_allocator]
static ALLOCATOR: switchboard::alloc::Allocator = switchboard::alloc::Allocator;

fn main() -> ExitCode {
    App::new("chat", Chat::default)
        .version(env!("CARGO_PKG_VERSION"))
        .about("The brief's chat demo on Switchboard: telnet 127.0.0.1 8480, http://127.0.0.1:7272")
        .default_config(include_str!("../chat.toml"))
        .asset("/", include_bytes!("../web/index.html"))
        .asset("/chat.js", include_bytes!("../web/chat.js"))
        .asset("/chat.css", include_bytes!("../web/chat.css"))
        .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_lines_need_a_client_id_before_the_colon() {
        let id = ClientId::new(1, 2);
        assert_eq!(
            private_target(&format!("{id}:hi there")),
            Some((id, "hi there"))
        );
        assert_eq!(private_target("time: 10"), None);
        assert_eq!(private_target("no colon"), None);
        assert_eq!(private_target(&format!("{id}")), None);
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(!valid_name(""));
        assert!(!valid_name("a\u{7}b"));
    }
}
