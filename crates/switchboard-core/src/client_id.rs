//! `client_id`: the opaque name of one client connection.
//!
//! A client id encodes the number of the gateway that holds the client and the
//! connection's number on that gateway, so a worker routes `send_to_client` straight to
//! the right gateway without asking the store. Gateway numbers come from a counter in the
//! store that is seeded with the current time, so ids are never reused, not even after a
//! gateway (or the whole deployment) restarts.
//!
//! Printed form: 20 lowercase hex digits, 8 for the gateway and 12 for the connection.
//!
//! ```
//! use switchboard::ClientId;
//! let id = ClientId::new(7, 42);
//! assert_eq!(id.to_string(), "0000000700000000002a");
//! assert_eq!("0000000700000000002a".parse::<ClientId>(), Ok(id));
//! assert!("time".parse::<ClientId>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

/// Largest connection number that fits in the printed form (48 bits).
pub const MAX_CONNECTION: u64 = (1 << 48) - 1;

/// The identity of one client: which gateway holds it, and which connection it is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    /// The gateway's number, unique for the lifetime of the deployment's store.
    pub gateway: u32,
    /// The connection's number on that gateway, never reused by that gateway.
    pub connection: u64,
}

impl ClientId {
    /// Builds an id from its parts.
    pub fn new(gateway: u32, connection: u64) -> Self {
        Self {
            gateway,
            connection,
        }
    }

    /// Whether `text` has the shape of a client id (20 hex digits). Cheap; used by the
    /// chat demo to tell `ID:words` from an ordinary line containing a colon.
    pub fn looks_like(text: &str) -> bool {
        text.len() == 20 && text.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand into a stack buffer: applications print ids into nearly every line
        // they send (the chat's "NAME[ID] said"), and `{:08x}{:012x}` through
        // `core::fmt` cost several times this.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 20];
        let (gateway, connection) = text.split_at_mut(8);
        for (digits, mut value) in [
            (gateway, u64::from(self.gateway)),
            (connection, self.connection & MAX_CONNECTION),
        ] {
            for digit in digits.iter_mut().rev() {
                *digit = HEX[(value & 0xf) as usize];
                value >>= 4;
            }
        }
        // Hex digits only: always UTF-8.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Why a string is not a client id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a client id (expected 20 hex digits)")]
pub struct ParseClientIdError(pub String);

impl FromStr for ClientId {
    type Err = ParseClientIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !Self::looks_like(s) {
            return Err(ParseClientIdError(s.chars().take(40).collect()));
        }
        let gateway = u32::from_str_radix(&s[..8], 16);
        let connection = u64::from_str_radix(&s[8..], 16);
        match (gateway, connection) {
            (Ok(gateway), Ok(connection)) => Ok(Self::new(gateway, connection)),
            _ => Err(ParseClientIdError(s.to_owned())),
        }
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shape() {
        assert!(ClientId::looks_like("0123456789abcdefABCD"));
        assert!(!ClientId::looks_like("time"));
        assert!(!ClientId::looks_like("0123456789abcdefABCDE"));
        assert!(!ClientId::looks_like("0123456789abcdefABCg"));
        assert!("zz".parse::<ClientId>().is_err());
    }

    proptest! {
        #[test]
        fn round_trip(g in any::<u32>(), c in 0..=MAX_CONNECTION) {
            let id = ClientId::new(g, c);
            let text = id.to_string();
            prop_assert_eq!(&text, &format!("{g:08x}{c:012x}"));
            prop_assert_eq!(text.len(), 20);
            prop_assert_eq!(text.parse::<ClientId>().unwrap(), id);
        }
    }
}
