//! `rooms`: a minimal Switchboard application, and the starter to copy.
//!
//! `telnet 127.0.0.1 8490`, then:
//! - `/login NAME` — who you are; log in with the same name from several devices;
//! - `/join ROOM`, `/leave ROOM` — rooms you are in (as many as you like; `/join`
//!   answers with all of them);
//! - `/who` — who is in each of your rooms, across every gateway;
//! - `@NAME words` — to every device of that user;
//! - any other line — to everybody in your rooms.
//!
//! The user's name is the client's uid and rooms are groups: nothing is mirrored in the
//! session, the gateways keep both and every event carries them ([`Context::uid`],
//! [`Context::groups`]).

use std::process::ExitCode;

use switchboard::{async_trait, App, Context, Events, HandlerResult, Message};

/// The business code: no state of its own (workers are stateless).
#[derive(Default)]
struct Rooms;

const HELP: &str = "commands: /login NAME, /join ROOM, /leave ROOM, /who, @NAME words; \
                    other lines go to your rooms";

#[async_trait]
impl Events for Rooms {
    async fn on_connect(&self, ctx: &mut Context) -> HandlerResult {
        ctx.reply(format!("welcome to rooms; {HELP}")).await?;
        Ok(())
    }

    async fn on_message(&self, ctx: &mut Context, message: Message) -> HandlerResult {
        let line = message.text()?.trim();
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        if command == "/login" {
            return login(ctx, rest).await;
        }
        let Some(me) = ctx.uid().map(str::to_owned) else {
            ctx.reply("log in first: /login NAME").await?;
            return Ok(());
        };
        match command {
            "/join" if valid_name(rest) => {
                ctx.join_group(rest).await?;
                let text = format!("{me} joined {rest}");
                // Counted: it returns once every gateway has queued the announcement,
                // so it reaches the room before anyone who joins after this reply
                // (a plain send could reach another gateway after them).
                ctx.gateway()
                    .send_to_group_counted(&[rest], text, &[])
                    .await?;
                // `ctx.groups()` has the new room already, with the earlier ones.
                let rooms = ctx.groups().join(", ");
                ctx.reply(format!("your rooms: {rooms}")).await?;
            }
            "/join" => {
                ctx.reply("a room name is 1 to 32 letters, digits, '-' or '_'")
                    .await?;
            }
            "/leave" if ctx.in_group(rest) => {
                ctx.leave_group(rest).await?;
                let text = format!("{me} left {rest}");
                // Counted, before the reply: as for `/join`.
                ctx.gateway()
                    .send_to_group_counted(&[rest], text, &[])
                    .await?;
                ctx.reply(format!("you left {rest}")).await?;
            }
            "/leave" => {
                ctx.reply(format!("no such room for you: {rest:?}")).await?;
            }
            "/who" => who(ctx).await?,
            _ if line.starts_with('@') => {
                let (to, words) = line[1..].split_once(' ').unwrap_or((&line[1..], ""));
                // One round trip says how many devices got it: no `is_online` first.
                let text = format!("{me} to you: {}", words.trim());
                match ctx.gateway().send_to_uid(&[to], text).await? {
                    0 => ctx.reply(format!("{to} is not online")).await?,
                    n => ctx.reply(format!("sent to {to} ({n} device(s))")).await?,
                }
            }
            _ if ctx.groups().is_empty() => {
                ctx.reply("join a room first: /join ROOM").await?;
            }
            _ => {
                for room in ctx.groups() {
                    let text = format!("[{room}] {me}: {line}");
                    ctx.gateway().send_to_group(&[room], text, &[]).await?;
                }
            }
        }
        Ok(())
    }

    async fn on_close(&self, ctx: &mut Context) -> HandlerResult {
        // The client is out of its rooms already; the context still says which they were.
        if let Some(me) = ctx.uid() {
            for room in ctx.groups() {
                let text = format!("{me} left {room}");
                ctx.gateway().send_to_group(&[room], text, &[]).await?;
            }
        }
        Ok(())
    }
}

/// `/login NAME`: binds the client to the uid NAME (another device may hold it too).
async fn login(ctx: &mut Context, name: &str) -> HandlerResult {
    if !valid_name(name) {
        ctx.reply("a name is 1 to 32 letters, digits, '-' or '_'")
            .await?;
        return Ok(());
    }
    ctx.bind_uid(name).await?;
    ctx.reply(format!("you are {name}")).await?;
    Ok(())
}

/// `/who`: the users in each of my rooms, whatever gateway holds them.
async fn who(ctx: &mut Context) -> HandlerResult {
    if ctx.groups().is_empty() {
        ctx.reply("you are in no room").await?;
    }
    for room in ctx.groups() {
        let users = ctx.gateway().uids_by_group(room).await?;
        ctx.reply(format!("{room}: {}", users.join(", "))).await?;
    }
    Ok(())
}

/// Names of users and rooms: 1 to 32 letters, digits, `-` or `_`.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn main() -> ExitCode {
    App::new("rooms", || Rooms)
        .version(env!("CARGO_PKG_VERSION"))
        .about("rooms: a minimal Switchboard application (telnet 127.0.0.1 8490)")
        .default_config(include_str!("../rooms.toml"))
        .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(valid_name("room-1_a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(33)));
    }
}
