//! What [`Gateway::send_to_client_or_tell`](super::Gateway::send_to_client_or_tell)
//! tells the sender, and whom it tells how the send went.

use crate::{ApiError, ClientId, PerProtocol};

/// Called once with the outcome of a send: `Ok(true)` delivered, `Ok(false)` not
/// online, `Err` when it is not known (see
/// [`send_to_client_or_tell`](super::Gateway::send_to_client_or_tell)).
pub(crate) type Then = Box<dyn FnOnce(Result<bool, ApiError>) + Send + 'static>;

/// The sender's side of a [`send_to_client_or_tell`](super::Gateway::send_to_client_or_tell):
/// who sent it, what that client is told when the message was delivered and when
/// its recipient is not online, and an optional callback with the outcome (for
/// statistics).
///
/// ```
/// use switchboard::client::Tell;
/// use switchboard::ClientId;
///
/// let me = ClientId::new(1, 7);
/// let tell = Tell::sender(me)
///     .sent("you said it to bob")
///     .offline("bob is not online; nothing was sent")
///     .then(|outcome| println!("delivered: {outcome:?}"));
/// # drop(tell);
/// ```
pub struct Tell {
    pub(crate) sender: ClientId,
    pub(crate) sent: Option<PerProtocol>,
    pub(crate) offline: Option<PerProtocol>,
    pub(crate) then: Option<Then>,
}

impl Tell {
    /// Tells `sender` (nothing yet: add [`sent`](Self::sent) and
    /// [`offline`](Self::offline)).
    pub fn sender(sender: ClientId) -> Self {
        Tell {
            sender,
            sent: None,
            offline: None,
            then: None,
        }
    }

    /// What the sender gets when the recipient got the message, after it.
    pub fn sent(mut self, message: impl Into<PerProtocol>) -> Self {
        self.sent = Some(message.into());
        self
    }

    /// What the sender gets when the recipient is not online (nothing was sent).
    pub fn offline(mut self, message: impl Into<PerProtocol>) -> Self {
        self.offline = Some(message.into());
        self
    }

    /// Calls `done` once with the outcome: `Ok(true)` when the recipient got the
    /// message, `Ok(false)` when it is not online, `Err` when the send failed or its
    /// outcome is unknown. It runs on the task that reads the gateway's link, so it
    /// must be quick and must not block (report a statistic, spawn a task).
    ///
    /// Without it, the command is sent with no answer at all when sender and recipient
    /// share a gateway.
    pub fn then(mut self, done: impl FnOnce(Result<bool, ApiError>) + Send + 'static) -> Self {
        self.then = Some(Box::new(done));
        self
    }
}

impl std::fmt::Debug for Tell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tell")
            .field("sender", &self.sender)
            .field("sent", &self.sent)
            .field("offline", &self.offline)
            .field("then", &self.then.as_ref().map(|_| "FnOnce"))
            .finish()
    }
}
