//! A browser chat client for tests: workerman-chat's JSON messages over a real
//! WebSocket (tokio-tungstenite), every wait bounded by [`WAIT`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::ClientId;
use switchboard_testkit::WAIT;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One browser of the chat.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// How failures name this client.
    pub name: String,
    /// Its client id, once logged in.
    pub id: Option<ClientId>,
}

/// Why no message could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Closed,
    TimedOut,
}

impl Ws {
    /// Opens `ws://ADDR/`; fails the test if that takes longer than [`WAIT`].
    pub async fn connect(addr: SocketAddr) -> Self {
        let url = format!("ws://{addr}/");
        let (stream, _) =
            match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url)).await {
                Ok(Ok(ok)) => ok,
                Ok(Err(e)) => panic!("cannot open {url}: {e}"),
                Err(_) => panic!("opening {url} took longer than {WAIT:?}"),
            };
        Ws {
            stream,
            name: format!("browser of {addr}"),
            id: None,
        }
    }

    /// Sends a text message as it is (invalid JSON included).
    pub async fn send_text(&mut self, text: &str) {
        let name = &self.name;
        self.stream
            .send(Message::text(text.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot send {text:?}: {e}"));
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    /// The next text message as JSON, within `wait` (WebSocket pings are answered by
    /// the library as they pass).
    pub async fn try_next(&mut self, wait: Duration) -> Result<Value, End> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(End::TimedOut),
                Ok(None | Some(Err(_))) => return Err(End::Closed),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Message::Text(text) => {
                    return Ok(serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!("{}: the server sent {text:?}, not JSON: {e}", self.name)
                    }))
                }
                Message::Close(_) => return Err(End::Closed),
                Message::Binary(b) => panic!("{}: unexpected binary message {b:?}", self.name),
                _ => continue,
            }
        }
    }

    /// The next message; fails the test if none comes within [`WAIT`].
    pub async fn next(&mut self) -> Value {
        match self.try_next(WAIT).await {
            Ok(v) => v,
            Err(end) => panic!("{}: no message within {WAIT:?} ({end:?})", self.name),
        }
    }

    /// Reads until a message of type `kind`; returns it and the messages skipped.
    pub async fn expect_type(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let m = self.next().await;
            if m["type"] == kind {
                return (m, skipped);
            }
            skipped.push(m);
        }
    }

    /// Reads the next message, skipping heartbeat pings.
    pub async fn next_not_ping(&mut self) -> Value {
        loop {
            let m = self.next().await;
            if m["type"] != "ping" {
                return m;
            }
        }
    }

    /// Fails the test if a message other than a ping comes within `wait`.
    pub async fn nothing_within(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next(left).await {
                Err(End::TimedOut) => return,
                Err(End::Closed) => panic!("{}: closed while expecting silence", self.name),
                Ok(m) if m["type"] == "ping" => continue,
                Ok(m) => panic!("{}: expected nothing, got {m}", self.name),
            }
        }
    }

    /// Logs in as `name` to `room` (a JSON string or number), skipping the history and
    /// whatever came before; returns its id and the `client_list`.
    pub async fn login(&mut self, name: &str, room: Value) -> (ClientId, BTreeMap<String, String>) {
        self.name = name.to_owned();
        self.send(json!({"type": "login", "client_name": name, "room_id": room}))
            .await;
        loop {
            let (m, _) = self.expect_type("login").await;
            if m.get("client_list").is_none() {
                continue; // somebody else's login, before ours
            }
            let id: ClientId = m["client_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{name}: no client id in {m}"));
            assert_eq!(m["client_name"], name, "{name}: {m}");
            let list = m["client_list"]
                .as_object()
                .unwrap_or_else(|| panic!("{name}: client_list is not an object: {m}"))
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            self.id = Some(id);
            return (id, list);
        }
    }

    /// A `say` to everybody in the room.
    pub async fn say(&mut self, content: &str) {
        self.send(json!({"type": "say", "to_client_id": "all", "to_client_name": "all", "content": content}))
            .await;
    }

    /// A private `say` to `to`, named `to_name` as a page names it from its member list
    /// (workerman-chat's `to_client_name`; the page sends `""` for an id it does not know).
    pub async fn say_to(&mut self, to: ClientId, to_name: &str, content: &str) {
        self.send(json!({"type": "say", "to_client_id": to.to_string(), "to_client_name": to_name, "content": content}))
            .await;
    }

    /// Whether the server closes the connection within `wait` (messages before the end
    /// are read and dropped).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next(left).await {
                Err(End::Closed) => return true,
                Err(End::TimedOut) => return false,
                Ok(_) => continue,
            }
        }
    }

    /// Closes the connection (a close frame, then the end).
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// The id as the protocol writes it.
    pub fn id_str(&self) -> String {
        self.id
            .map(|id| id.to_string())
            .unwrap_or_else(|| panic!("{}: not logged in", self.name))
    }
}
