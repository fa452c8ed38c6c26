//! [`Message`]: what a client sends and what the application sends to clients;
//! [`PerProtocol`]: a message rendered differently for clients of different protocols.
//!
//! A message is bytes plus one bit: text or binary. The bit matters only where the
//! client protocol distinguishes the two (a WebSocket text frame must be UTF-8, a binary
//! frame may be anything); on line and length-prefixed listeners the bytes are written
//! as they are. Messages a gateway receives on a `text` listener are always text (the
//! gateway has checked they are UTF-8), so [`Message::text`] cannot fail there.

use bytes::Bytes;

use crate::protocol::ClientProtocol;

/// One message between a client and the application: bytes, marked text or binary.
///
/// Received in `switchboard::Events::on_message`; `Context::reply`
/// takes `impl Into<Message>` and every send of the Gateway API `impl Into<PerProtocol>`
/// (which every message is), so strings, `Vec<u8>` and [`Bytes`] can be passed as they
/// are.
///
/// ```
/// use switchboard::Message;
///
/// let m = Message::from("hello");
/// assert!(m.is_text());
/// assert_eq!(m.text().unwrap(), "hello");
///
/// // Bytes that are UTF-8 are text; anything else is binary.
/// assert!(Message::from(vec![0xff, 0x00]).is_binary());
/// // Force a binary WebSocket frame for UTF-8 bytes:
/// assert!(Message::binary("not text, really").is_binary());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Message {
    data: Bytes,
    binary: bool,
}

/// [`Message::text`] on a message that is not UTF-8 text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the message is not UTF-8 text ({len} bytes of binary data)")]
pub struct NotText {
    /// Length of the message.
    pub len: usize,
}

impl Message {
    /// A binary message, whatever the bytes (a WebSocket client gets a binary frame).
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            binary: true,
        }
    }

    /// Bytes as received, marked binary or not. Used where the mark travels with the
    /// bytes (the internal protocol); text marked bytes must be UTF-8.
    #[doc(hidden)]
    pub fn from_parts(data: Bytes, binary: bool) -> Self {
        Self { data, binary }
    }

    /// The message as text: `Ok` for every message of a `text` listener and every
    /// WebSocket text frame; for other messages, `Ok` if the bytes are UTF-8.
    ///
    /// ```
    /// # use switchboard::{Context, HandlerResult, Message};
    /// # async fn on_message(ctx: &mut Context, message: Message) -> HandlerResult {
    /// let line = message.text()?;
    /// ctx.reply(format!("you said {line}")).await?;
    /// # Ok(()) }
    /// ```
    pub fn text(&self) -> Result<&str, NotText> {
        std::str::from_utf8(&self.data).map_err(|_| NotText {
            len: self.data.len(),
        })
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        !self.binary
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, shared (no copy).
    pub fn bytes(&self) -> Bytes {
        self.data.clone()
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Bytes {
        self.data
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the message has no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Parses the message as JSON.
    ///
    /// ```
    /// # use switchboard::Message;
    /// #[derive(serde::Deserialize)]
    /// struct Say { content: String }
    /// let say: Say = Message::from(r#"{"content":"hi"}"#).json().unwrap();
    /// assert_eq!(say.content, "hi");
    /// ```
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.text() {
            Ok(t) if !self.binary => write!(f, "Message::text({t:?})"),
            _ => write!(f, "Message::binary({} bytes)", self.data.len()),
        }
    }
}

impl std::ops::Deref for Message {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl AsRef<[u8]> for Message {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl From<&'static str> for Message {
    fn from(s: &'static str) -> Self {
        Self {
            data: Bytes::from_static(s.as_bytes()),
            binary: false,
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Self {
            data: Bytes::from(s),
            binary: false,
        }
    }
}

impl From<&String> for Message {
    fn from(s: &String) -> Self {
        Self::from(s.clone())
    }
}

impl From<Bytes> for Message {
    /// Text if the bytes are UTF-8, binary otherwise.
    fn from(data: Bytes) -> Self {
        let binary = std::str::from_utf8(&data).is_err();
        Self { data, binary }
    }
}

impl From<Vec<u8>> for Message {
    /// Text if the bytes are UTF-8, binary otherwise.
    fn from(data: Vec<u8>) -> Self {
        Self::from(Bytes::from(data))
    }
}

impl From<&'static [u8]> for Message {
    /// Text if the bytes are UTF-8, binary otherwise.
    fn from(data: &'static [u8]) -> Self {
        Self::from(Bytes::from_static(data))
    }
}

impl From<Message> for Bytes {
    fn from(m: Message) -> Bytes {
        m.data
    }
}

impl From<&Message> for Message {
    fn from(m: &Message) -> Self {
        m.clone()
    }
}

/// A message with its own rendering for clients of some protocols: every send of the
/// Gateway API takes one, and each recipient's gateway picks the rendering for the
/// listener that client connected to, or the default for a protocol without one.
///
/// An application that serves several kinds of client (a chat with telnet users on a
/// `text` listener and browsers on a `websocket` one) sends once, and each recipient
/// gets its own format, without the application knowing which kind the recipient is:
/// no query first, and the counted sends still answer in one round trip.
///
/// Every [`Message`] (and everything that converts into one: strings, `Vec<u8>`,
/// [`Bytes`]) converts into a `PerProtocol` that is that message for every protocol.
///
/// ```no_run
/// use switchboard::{ClientId, ClientProtocol, Gateway, PerProtocol};
/// # async fn demo(gateway: &Gateway, to: ClientId) -> Result<(), switchboard::ApiError> {
/// let message = PerProtocol::new("ann[7f000001:0001] said to You :hi")
///     .with(ClientProtocol::WebSocket, r#"{"type":"say","content":"hi"}"#);
/// if !gateway.send_to_client(to, message).await? {
///     println!("not online");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PerProtocol {
    default: Message,
    /// At most one per protocol (a later [`with`](Self::with) replaces an earlier one).
    alternatives: Vec<(ClientProtocol, Message)>,
}

impl PerProtocol {
    /// `default` for clients of every protocol (until [`with`](Self::with) gives a
    /// protocol its own rendering).
    pub fn new(default: impl Into<Message>) -> Self {
        Self {
            default: default.into(),
            alternatives: Vec::new(),
        }
    }

    /// Clients of `protocol` get `message` instead of the default (replacing what an
    /// earlier call gave for the same protocol).
    ///
    /// ```
    /// use switchboard::{ClientProtocol, Message, PerProtocol};
    /// let m = PerProtocol::new("a line").with(ClientProtocol::WebSocket, "{}");
    /// assert_eq!(m.for_protocol(ClientProtocol::Text), &Message::from("a line"));
    /// assert_eq!(m.for_protocol(ClientProtocol::WebSocket), &Message::from("{}"));
    /// ```
    pub fn with(mut self, protocol: ClientProtocol, message: impl Into<Message>) -> Self {
        let message = message.into();
        match self.alternatives.iter_mut().find(|(p, _)| *p == protocol) {
            Some((_, m)) => *m = message,
            None => self.alternatives.push((protocol, message)),
        }
        self
    }

    /// What a client of `protocol` gets.
    pub fn for_protocol(&self, protocol: ClientProtocol) -> &Message {
        self.alternatives
            .iter()
            .find(|(p, _)| *p == protocol)
            .map_or(&self.default, |(_, m)| m)
    }

    /// The message of protocols without their own rendering.
    pub fn default_message(&self) -> &Message {
        &self.default
    }

    /// The protocols with their own rendering, and theirs, in the order given.
    pub fn alternatives(&self) -> &[(ClientProtocol, Message)] {
        &self.alternatives
    }
}

impl<T: Into<Message>> From<T> for PerProtocol {
    /// The same message for every protocol.
    fn from(message: T) -> Self {
        Self::new(message)
    }
}

impl std::fmt::Debug for PerProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.alternatives.is_empty() {
            return self.default.fmt(f);
        }
        let mut d = f.debug_struct("PerProtocol");
        d.field("default", &self.default);
        for (p, m) in &self.alternatives {
            d.field(p.name(), m);
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary() {
        assert!(Message::from("a").is_text());
        assert!(Message::from(String::from("a")).is_text());
        assert!(Message::from(Bytes::from_static(b"ok")).is_text());
        assert!(Message::from(vec![0xc3]).is_binary());
        assert!(Message::binary("x").is_binary());
        assert_eq!(
            Message::from(vec![0xc3]).text(),
            Err(NotText { len: 1 }),
            "binary that is not UTF-8 has no text view"
        );
        assert_eq!(Message::binary("x").text(), Ok("x"));
        assert_eq!(&Message::from("abc")[1..], b"bc");
    }

    #[test]
    fn per_protocol_picks_the_recipients_rendering() {
        let m = PerProtocol::new("line")
            .with(ClientProtocol::WebSocket, "{\"a\":1}")
            .with(ClientProtocol::Frame, Message::binary("old"))
            .with(ClientProtocol::Frame, Message::binary("new"));
        assert_eq!(m.for_protocol(ClientProtocol::Text), &Message::from("line"));
        assert_eq!(m.for_protocol(ClientProtocol::Json), &Message::from("line"));
        assert_eq!(
            m.for_protocol(ClientProtocol::WebSocket),
            &Message::from("{\"a\":1}")
        );
        // A later rendering for the same protocol replaces the earlier one.
        assert_eq!(m.alternatives().len(), 2);
        assert_eq!(
            m.for_protocol(ClientProtocol::Frame),
            &Message::binary("new")
        );
        // Anything that is a message is the same message for every protocol.
        let plain = PerProtocol::from("x");
        assert!(plain.alternatives().is_empty());
        for p in ClientProtocol::ALL {
            assert_eq!(plain.for_protocol(p), &Message::from("x"));
        }
    }
}
