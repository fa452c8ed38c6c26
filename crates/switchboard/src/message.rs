//! [`Message`]: what a client sends and what the application sends to clients.
//!
//! A message is bytes plus one bit: text or binary. The bit matters only where the
//! client protocol distinguishes the two (a WebSocket text frame must be UTF-8, a binary
//! frame may be anything); on line and length-prefixed listeners the bytes are written
//! as they are. Messages a gateway receives on a `text` listener are always text (the
//! gateway has checked they are UTF-8), so [`Message::text`] cannot fail there.

use bytes::Bytes;

/// One message between a client and the application: bytes, marked text or binary.
///
/// Received in [`Events::on_message`](crate::Events::on_message); every send of the
/// Gateway API takes `impl Into<Message>`, so strings, `Vec<u8>` and [`Bytes`] can be
/// passed as they are.
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
    pub(crate) fn from_parts(data: Bytes, binary: bool) -> Self {
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
}
