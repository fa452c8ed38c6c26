//! workerman-chat's JSON message protocol, as pure functions: what a browser sends,
//! parsed as leniently as the original server does, and the JSON the server sends
//! back. No I/O here; the handlers are in `browser.rs`. The protocol is documented in
//! docs/chat.md.

use serde::Serialize;
use serde_json::{json, Map, Value};
use switchboard::ClientId;

/// What a browser said, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `{"type":"login","client_name":…,"room_id":…}`: the name is trimmed, the room id
    /// is a string whether it came as `"1"` or `1`.
    Login { name: String, room: String },
    /// `{"type":"say","to_client_id":…,"to_client_name":…,"content":…}`. `to_name` is
    /// the recipient's name as the sender's page knows it (for the sender's echo of a
    /// private message; workerman-chat's pages send it); `None` for a say to all, and
    /// when it is missing, empty, or not a name a login would take.
    Say {
        to: To,
        to_name: Option<String>,
        content: String,
    },
    /// `{"type":"pong"}`: the answer to a heartbeat ping; nothing to do.
    Pong,
}

/// Whom a `say` is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// `"to_client_id":"all"`: the sender's room.
    All,
    /// One client, by id.
    Client(ClientId),
}

/// Why a message could not be taken: the `error` message the browser gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The `code` of the error message (see [`code`]).
    pub code: u16,
    /// Its `msg`, in plain words.
    pub msg: String,
}

/// The error codes of `{"type":"error","code":…,"msg":…}`. 101 is the original's; the
/// others are this server's (the original front end ignores them all).
pub mod code {
    /// Not a JSON object, an unknown `type`, or a field missing or of the wrong kind.
    pub const BAD_MESSAGE: u16 = 100;
    /// The original's: the name is already used in the room.
    pub const NAME_TAKEN: u16 = 101;
    /// A login that cannot be accepted: a bad name or room id, or a second login.
    pub const BAD_LOGIN: u16 = 102;
    /// A `say` before a login.
    pub const NOT_LOGGED_IN: u16 = 103;
    /// A private `say` to a client that is not online (nothing was sent).
    pub const NOT_ONLINE: u16 = 104;
    /// The room's history could not be read (the login goes on without it).
    pub const NO_HISTORY: u16 = 105;
    /// A private `say` whose recipient's gateway failed while asked (it hung or
    /// died): the message may not have arrived.
    pub const UNREACHABLE: u16 = 106;
}

/// Longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room id accepted, in bytes.
pub const MAX_ROOM_BYTES: usize = 64;

impl Refused {
    fn new(code: u16, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    /// The `error` message.
    pub fn to_json(&self) -> String {
        error(self.code, &self.msg)
    }
}

/// Parses one message of a browser.
///
/// Lenient where the original front end forces it: `room_id` may be a string or an
/// integer, extra fields are ignored, `to_client_name` may be missing. A message that is
/// not JSON (the original front end does not escape backslashes, so `a\b` reaches the
/// server as invalid JSON) is refused with [`code::BAD_MESSAGE`]: the handler answers
/// that error and keeps the connection, as the original keeps it.
pub fn parse(text: &str) -> Result<Incoming, Refused> {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else {
        return Err(Refused::new(
            code::BAD_MESSAGE,
            "the message is not a JSON object; it was ignored",
        ));
    };
    match m.get("type").and_then(Value::as_str) {
        Some("login") => parse_login(&m),
        Some("say") => parse_say(&m),
        Some("pong") => Ok(Incoming::Pong),
        Some(other) => Err(Refused::new(
            code::BAD_MESSAGE,
            format!("unknown message type {other:?}; it was ignored"),
        )),
        None => Err(Refused::new(
            code::BAD_MESSAGE,
            "the message has no \"type\"; it was ignored",
        )),
    }
}

fn parse_login(m: &Map<String, Value>) -> Result<Incoming, Refused> {
    let name = match m.get("client_name") {
        Some(Value::String(s)) => s.trim(),
        _ => return Err(Refused::new(code::BAD_LOGIN, "a login needs a client_name")),
    };
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(Refused::new(
            code::BAD_LOGIN,
            "a name must not be empty or contain control characters",
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Refused::new(
            code::BAD_LOGIN,
            format!("a name has at most {MAX_NAME_CHARS} characters"),
        ));
    }
    let room = match m.get("room_id") {
        Some(Value::String(s)) => s.clone(),
        // The original front end builds the login by concatenation: `"room_id":1`.
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => {
            return Err(Refused::new(
                code::BAD_LOGIN,
                "a login needs a room_id, a string or an integer",
            ))
        }
    };
    if room.is_empty() || room.len() > MAX_ROOM_BYTES || room.chars().any(char::is_control) {
        return Err(Refused::new(
            code::BAD_LOGIN,
            format!("a room_id has 1 to {MAX_ROOM_BYTES} bytes and no control characters"),
        ));
    }
    Ok(Incoming::Login {
        name: name.to_owned(),
        room,
    })
}

fn parse_say(m: &Map<String, Value>) -> Result<Incoming, Refused> {
    let Some(content) = m.get("content").and_then(Value::as_str) else {
        return Err(Refused::new(
            code::BAD_MESSAGE,
            "a say needs a content string",
        ));
    };
    let to = match m.get("to_client_id").and_then(Value::as_str) {
        None | Some("all") => To::All,
        Some(id) => match id.parse::<ClientId>() {
            Ok(client) if ClientId::looks_like(id) => To::Client(client),
            _ => {
                return Err(Refused::new(
                    code::NOT_ONLINE,
                    format!("there is no client {id:?}; nothing was sent"),
                ))
            }
        },
    };
    let to_name = match to {
        To::All => None,
        To::Client(_) => m
            .get("to_client_name")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|n| {
                !n.is_empty()
                    && n.chars().count() <= MAX_NAME_CHARS
                    && !n.chars().any(char::is_control)
            })
            .map(str::to_owned),
    };
    Ok(Incoming::Say {
        to,
        to_name,
        content: content.to_owned(),
    })
}

/// Escapes text for HTML as PHP's `htmlspecialchars` does (`&`, `<`, `>`, `"`, `'`),
/// because the original front end inserts names and content as HTML.
pub fn escape(text: &str) -> String {
    // Most text has nothing to escape: then it is copied whole.
    if !text
        .bytes()
        .any(|b| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\''))
    {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#039;"),
        c => out.push(c),
    }
}

/// Message text as the original sends it: escaped, with `<br />` before each line
/// break (`\r\n`, `\n\r`, `\n` or `\r`, kept after it), as PHP's `nl2br`.
pub fn content_html(text: &str) -> String {
    if !text.bytes().any(|b| matches!(b, b'\r' | b'\n')) {
        return escape(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {
                out.push_str("<br />");
                out.push(c);
                let pair = if c == '\r' { '\n' } else { '\r' };
                if chars.peek() == Some(&pair) {
                    out.push(pair);
                    chars.next();
                }
            }
            c => push_escaped(&mut out, c),
        }
    }
    out
}

/// Text as one line for a telnet terminal: every control character but the tab — C0
/// (`ESC`, `CR`, `BS`, ...), `DEL` and C1 (`U+0080`–`U+009F`, such as the one-character
/// CSI `U+009B`) — becomes a space, so nobody's text can move another user's cursor,
/// clear their screen or retitle their window.
pub fn one_line(text: &str) -> String {
    // Text with no byte that can start a control character (C1 ones are encoded
    // 0xC2 0x80..=0x9F) is copied whole; the rest is looked at character by character.
    if !text
        .bytes()
        .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f || b == 0xc2)
    {
        return text.to_owned();
    }
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// The prefix of a private message's content on the recipient's side.
pub fn private_to_you() -> String {
    "<b>privately to you: </b>".to_owned()
}

/// The prefix of a private message's content on the sender's side.
pub fn private_to(name: &str) -> String {
    format!("<b>privately to {}: </b>", escape(name))
}

/// `{"type":"login",…}` as the room gets it.
pub fn login(client: ClientId, name: &str, time: &str) -> String {
    login_value(client, name, time).to_string()
}

fn login_value(client: ClientId, name: &str, time: &str) -> Value {
    json!({
        "type": "login",
        "client_id": client.to_string(),
        "client_name": escape(name),
        "time": time,
    })
}

/// `{"type":"login",…,"client_list":{…}}` as the new member gets it: the room's
/// members (itself included), id to escaped name.
pub fn login_with_list(
    client: ClientId,
    name: &str,
    time: &str,
    members: &[(ClientId, String)],
) -> String {
    let mut message = login_value(client, name, time);
    let list: Map<String, Value> = members
        .iter()
        .map(|(id, name)| (id.to_string(), Value::from(escape(name))))
        .collect();
    message["client_list"] = Value::Object(list);
    message.to_string()
}

/// `{"type":"say",…}`; `content` is HTML already (see [`content_html`]). Written from a
/// struct (one allocation for the text) rather than through a `Value` (a map of six
/// keys and values): every chat line builds one. The fields are in the order a `Value`
/// printed them, so the text is the same as before.
pub fn say(from: ClientId, from_name: &str, to: To, content: &str, time: &str) -> String {
    #[derive(Serialize)]
    struct Say<'a> {
        content: &'a str,
        from_client_id: &'a str,
        from_client_name: &'a str,
        time: &'a str,
        to_client_id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
    }
    let from = from.to_string();
    let to = match to {
        To::All => "all".to_owned(),
        To::Client(id) => id.to_string(),
    };
    let say = Say {
        content,
        from_client_id: &from,
        from_client_name: &escape(from_name),
        time,
        to_client_id: &to,
        kind: "say",
    };
    // Serializing strings into a `Vec` cannot fail.
    serde_json::to_string(&say).unwrap_or_default()
}

/// `{"type":"ping"}`, as the heartbeat sends it (chat.toml): both front ends answer
/// with a `pong`.
pub fn ping() -> String {
    json!({ "type": "ping" }).to_string()
}

/// `{"type":"logout",…}`.
pub fn logout(client: ClientId, name: &str, time: &str) -> String {
    json!({
        "type": "logout",
        "from_client_id": client.to_string(),
        "from_client_name": escape(name),
        "time": time,
    })
    .to_string()
}

/// `{"type":"error","code":…,"msg":…}`.
pub fn error(code: u16, msg: &str) -> String {
    json!({ "type": "error", "code": code, "msg": msg }).to_string()
}

/// One line of history, for [`history`]: who said it (id as stored, name), what, when.
pub struct Said<'a> {
    pub from: &'a str,
    pub name: &'a str,
    pub text: &'a str,
    pub time: String,
}

/// `{"type":"history","room_id":…,"messages":[…]}`: the room's last public lines,
/// oldest first, each shaped like a `say` to all. The original front end ignores it.
pub fn history(room: &str, lines: &[Said<'_>]) -> String {
    let messages: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!({
                "type": "say",
                "from_client_id": l.from,
                "from_client_name": escape(l.name),
                "to_client_id": "all",
                "content": content_html(l.text),
                "time": l.time,
            })
        })
        .collect();
    json!({ "type": "history", "room_id": room, "messages": messages }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> Value {
        serde_json::from_str(s).expect("JSON")
    }

    #[test]
    fn a_login_takes_the_room_as_a_string_or_a_number() {
        let want = Incoming::Login {
            name: "alice".into(),
            room: "1".into(),
        };
        assert_eq!(
            parse(r#"{"type":"login","client_name":"alice","room_id":"1"}"#),
            Ok(want.clone())
        );
        assert_eq!(
            parse(r#"{"type":"login","client_name":" alice ","room_id":1}"#),
            Ok(want)
        );
        assert_eq!(
            parse(r#"{"type":"login","client_name":"bob","room_id":"lobby"}"#),
            Ok(Incoming::Login {
                name: "bob".into(),
                room: "lobby".into()
            })
        );
    }

    #[test]
    fn bad_logins_are_refused_with_a_reason() {
        for bad in [
            r#"{"type":"login","room_id":"1"}"#,
            r#"{"type":"login","client_name":"","room_id":"1"}"#,
            r#"{"type":"login","client_name":"   ","room_id":"1"}"#,
            r#"{"type":"login","client_name":"a\nb","room_id":"1"}"#,
            r#"{"type":"login","client_name":"alice"}"#,
            r#"{"type":"login","client_name":"alice","room_id":""}"#,
            r#"{"type":"login","client_name":"alice","room_id":1.5}"#,
            r#"{"type":"login","client_name":"alice","room_id":["1"]}"#,
            r#"{"type":"login","client_name":7,"room_id":"1"}"#,
        ] {
            let refused = parse(bad).expect_err(bad);
            assert_eq!(refused.code, code::BAD_LOGIN, "{bad}: {refused:?}");
        }
        let long = format!(
            r#"{{"type":"login","client_name":"{}","room_id":"1"}}"#,
            "é".repeat(MAX_NAME_CHARS + 1)
        );
        assert_eq!(parse(&long).map_err(|r| r.code), Err(code::BAD_LOGIN));
        let just = format!(
            r#"{{"type":"login","client_name":"{}","room_id":"1"}}"#,
            "é".repeat(MAX_NAME_CHARS)
        );
        assert!(parse(&just).is_ok());
    }

    #[test]
    fn says_to_all_and_to_one() {
        let id = ClientId::new(7, 42);
        assert_eq!(
            parse(r#"{"type":"say","to_client_id":"all","to_client_name":"x","content":"hi"}"#),
            Ok(Incoming::Say {
                to: To::All,
                to_name: None,
                content: "hi".into()
            })
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"say","to_client_id":"{id}","content":"psst"}}"#
            )),
            Ok(Incoming::Say {
                to: To::Client(id),
                to_name: None,
                content: "psst".into()
            })
        );
        // The recipient's name as the page knows it, when it could be a name.
        let to_name = |name: &str| {
            match parse(
            &json!({"type": "say", "to_client_id": id.to_string(), "to_client_name": name, "content": "x"})
                .to_string(),
        ) {
            Ok(Incoming::Say { to_name, .. }) => to_name,
            other => panic!("{other:?}"),
        }
        };
        assert_eq!(to_name(" bob "), Some("bob".into()));
        assert_eq!(to_name(""), None);
        assert_eq!(to_name("a\nb"), None);
        assert_eq!(to_name(&"x".repeat(MAX_NAME_CHARS + 1)), None);
        assert_eq!(
            parse(r#"{"type":"say","to_client_id":"nobody","content":"x"}"#).map_err(|r| r.code),
            Err(code::NOT_ONLINE)
        );
        assert_eq!(
            parse(r#"{"type":"say","to_client_id":"all"}"#).map_err(|r| r.code),
            Err(code::BAD_MESSAGE)
        );
    }

    #[test]
    fn what_is_not_json_or_unknown_is_refused_as_a_bad_message() {
        // What the original front end sends for the name `C:\dir` (`\d` is no JSON
        // escape; `a\b` would be valid JSON, a backspace, refused as a bad name).
        for bad in [
            r#"{"type":"login","client_name":"C:\dir","room_id":"1"}"#,
            r#"{"type":"say","to_client_id":"all","content":"\o/"}"#,
            "not json",
            "[1,2]",
            r#"{"type":"dance"}"#,
            r#"{"client_name":"alice"}"#,
            "",
        ] {
            assert_eq!(
                parse(bad).map_err(|r| r.code),
                Err(code::BAD_MESSAGE),
                "{bad}"
            );
        }
        assert_eq!(parse(r#"{"type":"pong"}"#), Ok(Incoming::Pong));
    }

    #[test]
    fn escaping_is_htmlspecialchars_and_nl2br() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#039;y&#039;)&lt;/script&gt;"
        );
        assert_eq!(escape("plain ü"), "plain ü");
        assert_eq!(
            content_html("a\nb\r\nc\rd\n\re<"),
            "a<br />\nb<br />\r\nc<br />\rd<br />\n\re&lt;"
        );
        assert_eq!(content_html("\n\n"), "<br />\n<br />\n");
        assert_eq!(one_line("a\nb\r\u{1b}[31mc\td"), "a b  [31mc\td");
    }

    /// Text with nothing to change is copied whole; what decides that looks at bytes,
    /// so every character that needs the slow path must be seen by it.
    #[test]
    fn text_with_nothing_to_change_is_copied_and_the_rest_is_not_missed() {
        for plain in ["", "hello world", "tab\there", "£ ü € 😀"] {
            assert_eq!(one_line(plain), plain);
            assert_eq!(content_html(plain), plain);
            assert_eq!(escape(plain), plain);
        }
        // DEL, C1 controls (two bytes from 0xC2), C0 at both ends; `£` (0xC2 0xA3) kept.
        assert_eq!(one_line("a\u{7f}b"), "a b");
        assert_eq!(one_line("\u{9b}2J£\u{85}"), " 2J£ ");
        assert_eq!(one_line("\u{0}x\u{1f}"), " x ");
        // Escaping without line breaks, and with them.
        assert_eq!(content_html("x<y & 'z'"), "x&lt;y &amp; &#039;z&#039;");
        assert_eq!(content_html("<\n>"), "&lt;<br />\n&gt;");
    }

    #[test]
    fn messages_are_the_originals_shape() {
        let me = ClientId::new(1, 2);
        let other = ClientId::new(1, 3);
        let t = "2026-01-02 03:04:05";
        assert_eq!(ping(), r#"{"type":"ping"}"#);
        assert_eq!(
            value(&login(me, "<al>", t)),
            value(
                r#"{"type":"login","client_id":"00000001000000000002","client_name":"&lt;al&gt;","time":"2026-01-02 03:04:05"}"#
            )
        );
        let with_list = value(&login_with_list(
            me,
            "al",
            t,
            &[(me, "al".into()), (other, "b&b".into())],
        ));
        assert_eq!(
            with_list["client_list"],
            value(r#"{"00000001000000000002":"al","00000001000000000003":"b&amp;b"}"#)
        );
        assert_eq!(with_list["client_id"], "00000001000000000002");
        assert_eq!(
            value(&say(me, "al", To::All, "hi<br />\n", t)),
            value(
                r#"{"type":"say","from_client_id":"00000001000000000002","from_client_name":"al","to_client_id":"all","content":"hi<br />\n","time":"2026-01-02 03:04:05"}"#
            )
        );
        // Byte for byte what the `Value` it was built from before printed.
        let old = json!({
            "type": "say",
            "from_client_id": me.to_string(),
            "from_client_name": escape("a<l"),
            "to_client_id": other.to_string(),
            "content": "x\"y",
            "time": t,
        });
        assert_eq!(
            say(me, "a<l", To::Client(other), "x\"y", t),
            old.to_string()
        );
        assert_eq!(
            value(&say(me, "al", To::Client(other), "x", t))["to_client_id"],
            "00000001000000000003"
        );
        assert_eq!(
            value(&logout(me, "al", t)),
            value(
                r#"{"type":"logout","from_client_id":"00000001000000000002","from_client_name":"al","time":"2026-01-02 03:04:05"}"#
            )
        );
        assert_eq!(
            value(&error(101, "taken")),
            value(r#"{"type":"error","code":101,"msg":"taken"}"#)
        );
        assert_eq!(private_to("<b>"), "<b>privately to &lt;b&gt;: </b>");
        let h = value(&history(
            "1",
            &[Said {
                from: "00000001000000000002",
                name: "al",
                text: "<i>",
                time: t.into(),
            }],
        ));
        assert_eq!(h["type"], "history");
        assert_eq!(h["room_id"], "1");
        assert_eq!(h["messages"][0]["content"], "&lt;i&gt;");
        assert_eq!(h["messages"][0]["from_client_name"], "al");
    }
}
