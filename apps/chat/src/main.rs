//! The brief's chat demo on Switchboard: `telnet 127.0.0.1 8480`.
//!
//! The first line a client types is its name; after that a line goes to everybody, and
//! `client_id:words` goes to that one client only. All of the business logic is the
//! [`Chat`] events below; the gateways, workers and supervisor are Switchboard's.

// Also compiled into crates/switchboard-db/tests/chat_history.rs, which uses the rest.
#[allow(dead_code)]
mod history;

use std::process::ExitCode;

use history::{ChatHistory, HistoryLine};
use switchboard::{async_trait, App, ClientId, Context, Events, Gateway, HandlerResult, Message};
use tokio::sync::OnceCell;

/// The chat's business code.
#[derive(Default)]
struct Chat {
    /// Public lines, kept through the Db module (`[db.instances.history]`); opened when
    /// the worker starts. Without it the chat works, and `/history` says why not.
    history: OnceCell<ChatHistory>,
}

/// How many lines `/history` prints.
const HISTORY_LINES: u32 = 20;

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

fn history_line(l: &HistoryLine) -> String {
    format!(
        "[{}] {}[{}] said :{}",
        format_time(l.at),
        l.name,
        l.client_id,
        l.text
    )
}

/// What the server says when it needs a name.
const ASK_NAME: &str = "type in your name:";

/// The name stored in a client's session, once it has one.
fn name_of(ctx: &Context) -> Option<String> {
    ctx.session()
        .get("name")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
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
        let history = ChatHistory::open(instance).await?;
        let _ = self.history.set(history);
        Ok(())
    }

    async fn on_connect(&self, ctx: &mut Context) -> HandlerResult {
        ctx.reply(ASK_NAME).await?;
        Ok(())
    }

    async fn on_message(&self, ctx: &mut Context, message: Message) -> HandlerResult {
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
            ctx.session_mut().insert("name".into(), name.into());
            ctx.reply(format!(
                "Hello {name}[{me}]! Your client_id is {me}.\n\
                 Type client_id:words to say words to that client only; type words to say them to everybody."
            ))
            .await?;
            ctx.gateway()
                .send_to_all(format!("{name}[{me}] come"))
                .await?;
            call.success();
            return Ok(());
        };

        if line.trim() == "/history" {
            let call = ctx.statistic("chat", "history");
            let Some(history) = self.history.get() else {
                call.fail(503, "history is not available");
                ctx.reply("history is not available (see the worker log)")
                    .await?;
                return Ok(());
            };
            let lines = call.time(history.last(HISTORY_LINES)).await?;
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
                // One round trip: delivered, or not online (no race between the two).
                let sent = ctx
                    .gateway()
                    .send_to_client(to, format!("{name}[{me}] said to You :{words}"))
                    .await?;
                if sent {
                    call.success();
                    ctx.reply(format!("{name}[{me}] said to [{to}] :{words}"))
                        .await?;
                } else {
                    call.fail(404, format_args!("[{to}] is not online"));
                    ctx.reply(format!("[{to}] is not online; nothing was sent"))
                        .await?;
                }
            }
            None => {
                // Timed with the history write (the Db call) included; an error on
                // either is reported with its message.
                ctx.statistic("chat", "say")
                    .time(async {
                        ctx.gateway()
                            .send_to_all(format!("{name}[{me}] said :{line}"))
                            .await?;
                        if let Some(history) = self.history.get() {
                            history.append(&name, &me.to_string(), line).await?;
                        }
                        HandlerResult::Ok(())
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn on_close(&self, ctx: &mut Context) -> HandlerResult {
        if let Some(name) = name_of(ctx) {
            let me = ctx.client_id();
            ctx.gateway()
                .send_to_all(format!("{name}[{me}] logout"))
                .await?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    App::new("chat", Chat::default)
        .version(env!("CARGO_PKG_VERSION"))
        .about("The brief's chat demo on Switchboard: telnet 127.0.0.1 8480")
        .default_config(include_str!("../chat.toml"))
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
