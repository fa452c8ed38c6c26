//! The browser chat: workerman-chat's JSON protocol on the `websocket` listener
//! (docs/chat.md), with rooms, and room `1` shared with the telnet users.
//!
//! - A room is a group: the browsers of room `R` are in group `room:R`. The telnet
//!   users are in group `telnet` and are members of room `1`, so what is said in room
//!   `1` goes to both groups, each in its own format (JSON for browsers, a line for
//!   telnet): one send with a rendering per protocol ([`PerProtocol`]), which each
//!   recipient's gateway picks by the listener the client came through.
//! - A client's session holds its `name` once it has one, and a browser's its `room`:
//!   other clients' handlers (a newcomer's member list) can only see sessions. The
//!   client's own handlers read its room from its groups.
//! - A login whose name a browser of the room already has is refused (101) only if
//!   that browser is still there: it is sent a `ping`, and one that does not answer
//!   within [`PROBE`] is taken for gone (its network went and the server never heard:
//!   workerman-chat's front end then reconnects at once with the same name) and is
//!   closed, so the new login takes its place. A browser's `pong` counts in its
//!   session ([`PONGS`]), which is how the login sees the answer.
//! - The parsing, escaping and JSON are in [`protocol`], pure and unit-tested.

pub mod protocol;

use std::time::Duration;

use protocol::{code, Incoming, Refused, Said, To};
use switchboard::client::Tell;
use switchboard::{
    ApiError, ClientId, ClientProtocol, Context, Gateway, HandlerResult, Message, PerProtocol,
    Session, Statistic,
};

use crate::history::ChatHistory;
use crate::{format_time, now_time, HISTORY_LINES};

/// The room the telnet users are in.
pub const TELNET_ROOM: &str = "1";
/// The group of the telnet users who gave their name.
pub const TELNET_GROUP: &str = "telnet";
/// Prefix of a room's group (browsers only).
const ROOM_GROUP_PREFIX: &str = "room:";
/// Session key of a client's name (telnet and browser alike).
pub const NAME: &str = "name";
/// Session key of a browser's room.
const ROOM: &str = "room";
/// Session key counting a browser's `pong`s.
const PONGS: &str = "pongs";
/// How long a browser whose name a new login wants has to answer a `ping` before it is
/// taken for gone.
pub const PROBE: Duration = Duration::from_secs(2);
/// How often the login looks for the answer meanwhile.
const PROBE_POLL: Duration = Duration::from_millis(20);

/// The group of room `room`'s browsers.
pub fn room_group(room: &str) -> String {
    format!("{ROOM_GROUP_PREFIX}{room}")
}

/// The room of this browser client, from its groups.
fn room_of(ctx: &Context) -> Option<String> {
    ctx.groups()
        .iter()
        .find_map(|g| g.strip_prefix(ROOM_GROUP_PREFIX))
        .map(str::to_owned)
}

/// The name in a session, if any.
pub fn name_in(session: &Session) -> Option<&str> {
    session.get(NAME).and_then(|v| v.as_str())
}

/// The members of `room` that gave a name, `(id, name)` sorted by id: its browsers,
/// and for room `1` the telnet users too.
pub async fn members(gw: &Gateway, room: &str) -> Result<Vec<(ClientId, String)>, ApiError> {
    let mut sessions = gw.sessions(Some(&room_group(room))).await?;
    if room == TELNET_ROOM {
        sessions.extend(gw.sessions(Some(TELNET_GROUP)).await?);
    }
    let mut members: Vec<(ClientId, String)> = sessions
        .iter()
        .filter_map(|(id, s)| name_in(s).map(|n| (*id, n.to_owned())))
        .collect();
    members.sort();
    Ok(members)
}

/// Tells room `room`: `json` to its browsers and, in room `1`, `line` to the telnet
/// users (one send: each gateway gives each client the rendering of its protocol);
/// nobody in `exclude` gets either. The telnet line goes through
/// [`protocol::one_line`] here, whoever wrote it: no control character reaches a
/// terminal.
pub async fn tell_room(
    gw: &Gateway,
    room: &str,
    json: String,
    line: String,
    exclude: &[ClientId],
) -> Result<(), ApiError> {
    if room == TELNET_ROOM {
        let both =
            PerProtocol::new(protocol::one_line(&line)).with(ClientProtocol::WebSocket, json);
        gw.send_to_group(&[room_group(room), TELNET_GROUP.to_owned()], both, exclude)
            .await
    } else {
        gw.send_to_group(&[room_group(room)], json, exclude).await
    }
}

/// What the sender of a private message is told, in its own format.
pub struct Notices {
    /// The echo, once the recipient got the message.
    pub sent: String,
    /// The recipient is not online: nothing was sent.
    pub offline: String,
    /// The recipient's gateway did not answer (it hung, died, or its link broke):
    /// written only then, for the recipient given.
    pub unreachable: fn(ClientId) -> String,
}

/// Sends a private message from `from` (named `from_name`) to `to`, in `to`'s own
/// format — a `say` for a browser, a `NAME[ID] said to You :text` line for telnet, both
/// in one send, and `to`'s gateway picks by the listener `to` came through — and tells
/// `from` how it went ([`Notices`]). With sender and recipient on one gateway, that
/// gateway does it all in one command, with no answer to wait for; the `call`
/// statistic (`chat::private`) is reported when the outcome is known: success, 404
/// (not online) or 502 (no answer).
pub async fn send_private(
    gw: &Gateway,
    call: Statistic,
    (from, from_name): (ClientId, &str),
    to: ClientId,
    text: &str,
    notices: Notices,
) {
    let content = protocol::private_to_you() + &protocol::content_html(text);
    let said = protocol::say(from, from_name, To::Client(to), &content, &now_time());
    // The whole line is made terminal-safe: a browser's name may hold controls too.
    let line = protocol::one_line(&format!("{from_name}[{from}] said to You :{text}"));
    let message = PerProtocol::new(line).with(ClientProtocol::WebSocket, said);
    let Notices {
        sent,
        offline,
        unreachable,
    } = notices;
    let back = gw.clone();
    let tell = Tell::sender(from)
        .sent(sent)
        .offline(offline)
        .then(move |outcome| match outcome {
            Ok(true) => call.success(),
            Ok(false) => call.fail(404, format_args!("[{to}] is not online")),
            Err(e) => {
                // The sender is told, not left waiting; the reason is for the operator.
                tracing::warn!(to = %to, error = %e, "private message: no answer from the recipient's gateway");
                call.fail(502, format_args!("[{to}] could not be reached: {e}"));
                tokio::spawn(async move {
                    if let Err(e) = back.send_to_client(from, unreachable(to)).await {
                        tracing::warn!(client = %from, error = %e, "cannot tell the sender");
                    }
                });
            }
        });
    // An error here has reached `then` too, which dealt with it.
    let _ = gw.send_to_client_or_tell(to, message, tell).await;
}

/// A browser sent a message.
pub async fn on_message(
    history: Option<&ChatHistory>,
    ctx: &mut Context,
    message: Message,
) -> HandlerResult {
    let parsed = match message.text() {
        Ok(text) => protocol::parse(text),
        Err(_) => Err(Refused {
            code: code::BAD_MESSAGE,
            msg: "binary messages are not part of the chat; it was ignored".into(),
        }),
    };
    match parsed {
        Err(refused) => ctx.reply(refused.to_json()).await?,
        Ok(Incoming::Pong) => {
            // Counted, so that a login probing this browser's name sees it is alive.
            let pongs = ctx
                .session()
                .get(PONGS)
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            ctx.session_mut().insert(PONGS.into(), (pongs + 1).into());
        }
        Ok(Incoming::Login { name, room }) => login(history, ctx, name, room).await?,
        Ok(Incoming::Say {
            to,
            to_name,
            content,
        }) => say(history, ctx, to, to_name, &content).await?,
    }
    Ok(())
}

async fn login(
    history: Option<&ChatHistory>,
    ctx: &mut Context,
    name: String,
    room: String,
) -> HandlerResult {
    let call = ctx.statistic("chat", "login");
    if let Some(current) = room_of(ctx) {
        let msg = format!("already logged in to room {current}; reconnect to log in again");
        call.fail(code::BAD_LOGIN.into(), &msg);
        ctx.reply(protocol::error(code::BAD_LOGIN, &msg)).await?;
        return Ok(());
    }
    let gw = ctx.gateway().clone();
    let me = ctx.client_id();
    // A browser with this name that is gone is closed and its place taken; one that is
    // still there (and any telnet user) makes the name taken.
    let mut replaced = Vec::new();
    for (old, session) in same_name(&gw, &room, &name).await? {
        if is_browser(&session) && gone(&gw, old, &session).await? {
            gw.close_client(old, None).await?;
            replaced.push(old);
        } else {
            let msg = format!("the name {name} is already used in room {room}");
            call.fail(code::NAME_TAKEN.into(), &msg);
            ctx.reply(protocol::error(code::NAME_TAKEN, &msg)).await?;
            return Ok(());
        }
    }
    // History first, so that it comes before anything said after the join.
    let read = ctx.statistic("chat", "history");
    match history {
        Some(h) => match read.time(h.last(&room, HISTORY_LINES)).await {
            Ok(lines) => {
                let said: Vec<Said<'_>> = lines
                    .iter()
                    .map(|l| Said {
                        from: &l.client_id,
                        name: &l.name,
                        text: &l.text,
                        time: format_time(l.at),
                    })
                    .collect();
                ctx.reply(protocol::history(&room, &said)).await?;
            }
            Err(e) => {
                let msg = format!("the history is not available: {e}");
                ctx.reply(protocol::error(code::NO_HISTORY, &msg)).await?;
            }
        },
        None => {
            let msg = "the history is not available (see the worker log)";
            read.fail(503, msg);
            ctx.reply(protocol::error(code::NO_HISTORY, msg)).await?;
        }
    }
    // The name is on the gateway before the client is in the group, so whoever sees
    // it as a member sees its name.
    let mut changes = Session::new();
    changes.insert(NAME.into(), name.as_str().into());
    changes.insert(ROOM.into(), room.as_str().into());
    ctx.update_session(changes).await?;
    ctx.join_group(&room_group(&room)).await?;
    // Joined first, asked second: a member who joins at the same time is either in
    // this list or hears of us (our login below reaches it), never neither.
    // A replaced browser leaves the room as its close is handled: not listed meanwhile.
    let mut list = members(&gw, &room).await?;
    list.retain(|(id, _)| !replaced.contains(id));
    let time = now_time();
    ctx.reply(protocol::login_with_list(me, &name, &time, &list))
        .await?;
    let come = format!("{name}[{me}] come");
    tell_room(&gw, &room, protocol::login(me, &name, &time), come, &[me]).await?;
    call.success();
    Ok(())
}

/// Whether a session is a browser's: only browsers have a room in theirs (telnet users
/// are in room 1 by their group).
fn is_browser(session: &Session) -> bool {
    session.contains_key(ROOM)
}

/// The members of `room` named `name`, with their sessions.
async fn same_name(
    gw: &Gateway,
    room: &str,
    name: &str,
) -> Result<Vec<(ClientId, Session)>, ApiError> {
    let mut sessions = gw.sessions(Some(&room_group(room))).await?;
    if room == TELNET_ROOM {
        sessions.extend(gw.sessions(Some(TELNET_GROUP)).await?);
    }
    sessions.retain(|(_, s)| name_in(s) == Some(name));
    Ok(sessions)
}

/// Whether browser `client` (whose session was `session`) is gone: it is no longer
/// connected, or it does not answer a `ping` within [`PROBE`].
async fn gone(gw: &Gateway, client: ClientId, session: &Session) -> Result<bool, ApiError> {
    let pongs = |s: &Session| s.get(PONGS).and_then(|v| v.as_u64()).unwrap_or(0);
    let before = pongs(session);
    if !gw.send_to_client(client, protocol::ping()).await? {
        return Ok(true);
    }
    let deadline = tokio::time::Instant::now() + PROBE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(PROBE_POLL).await;
        match gw.get_session(client).await? {
            None => return Ok(true),
            Some(s) if pongs(&s) > before => return Ok(false),
            Some(_) => {}
        }
    }
    Ok(true)
}

async fn say(
    history: Option<&ChatHistory>,
    ctx: &mut Context,
    to: To,
    to_name: Option<String>,
    content: &str,
) -> HandlerResult {
    let (Some(room), Some(name)) = (room_of(ctx), name_in(ctx.session()).map(str::to_owned)) else {
        let msg = "log in before you say something";
        ctx.reply(protocol::error(code::NOT_LOGGED_IN, msg)).await?;
        return Ok(());
    };
    let gw = ctx.gateway().clone();
    let me = ctx.client_id();
    let time = now_time();
    match to {
        To::All => {
            // Timed with the history write (the Db call), as on the telnet side.
            let call = ctx.statistic("chat", "say");
            call.time(async {
                let json =
                    protocol::say(me, &name, To::All, &protocol::content_html(content), &time);
                let line = format!("{name}[{me}] said :{}", protocol::one_line(content));
                tell_room(&gw, &room, json, line, &[]).await?;
                if let Some(h) = history {
                    h.append(&room, &name, &me.to_string(), content).await?;
                }
                HandlerResult::Ok(())
            })
            .await?;
        }
        To::Client(to) => {
            let call = ctx.statistic("chat", "private");
            // Named as the sender's page named the recipient (workerman-chat's
            // `to_client_name`), else by its id.
            let to_name = to_name.unwrap_or_else(|| to.to_string());
            let echo = protocol::private_to(&to_name) + &protocol::content_html(content);
            let notices = Notices {
                sent: protocol::say(me, &name, To::Client(to), &echo, &time),
                offline: protocol::error(
                    code::NOT_ONLINE,
                    &format!("{to} is not online; nothing was sent"),
                ),
                unreachable: |to| {
                    protocol::error(
                        code::UNREACHABLE,
                        &format!("{to} could not be reached; your message may not have arrived"),
                    )
                },
            };
            send_private(&gw, call, (me, &name), to, content, notices).await;
        }
    }
    Ok(())
}

/// A browser disconnected: its room hears that it left.
pub async fn on_close(ctx: &mut Context) -> HandlerResult {
    let (Some(room), Some(name)) = (room_of(ctx), name_in(ctx.session())) else {
        return Ok(());
    };
    let me = ctx.client_id();
    let json = protocol::logout(me, name, &now_time());
    let line = format!("{name}[{me}] logout");
    tell_room(ctx.gateway(), &room, json, line, &[]).await?;
    Ok(())
}
