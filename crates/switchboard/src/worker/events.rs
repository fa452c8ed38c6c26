//! The application's side: the [`Events`] trait and the [`Context`] of one event.

use async_trait::async_trait;
use bytes::Bytes;
use switchboard_store::SharedStore;

use super::api::{ApiError, Gateway};
use crate::{ClientId, Session};

/// What a handler returns: any error is logged with the client id and counted; it fails
/// only this one event.
pub type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The application's business code. Every method has a default that does nothing, so an
/// application implements only what it needs.
///
/// One client's events are delivered in order, one at a time; events of different
/// clients run concurrently. Delivery is at-least-once: if a worker dies while handling
/// an event, the gateway gives the event to another worker, so a handler that has side
/// effects outside Switchboard should be idempotent (see docs/guide.md).
///
/// ```
/// use switchboard::{async_trait, Context, Events, HandlerResult};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Events for Echo {
///     async fn on_message(&self, ctx: &mut Context, message: bytes::Bytes) -> HandlerResult {
///         ctx.reply(message).await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Events: Send + Sync + 'static {
    /// Once per worker process, when it has connected to the gateways it found.
    async fn on_worker_start(&self, _gateway: &Gateway) -> HandlerResult {
        Ok(())
    }

    /// A client connected.
    async fn on_connect(&self, _ctx: &mut Context) -> HandlerResult {
        Ok(())
    }

    /// A client sent a message (a line without its newline, or a frame's payload).
    async fn on_message(&self, _ctx: &mut Context, _message: Bytes) -> HandlerResult {
        Ok(())
    }

    /// A client disconnected. Its uid and groups are already gone; its session is here.
    async fn on_close(&self, _ctx: &mut Context) -> HandlerResult {
        Ok(())
    }
}

/// The context of one event: which client, its session, and the Gateway API.
pub struct Context {
    client_id: ClientId,
    client_addr: String,
    session: Session,
    session_changed: bool,
    gateway: Gateway,
}

impl Context {
    pub(crate) fn new(
        client_id: ClientId,
        client_addr: String,
        session: Session,
        gateway: Gateway,
    ) -> Self {
        Self {
            client_id,
            client_addr,
            session,
            session_changed: false,
            gateway,
        }
    }

    /// The client this event is about.
    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    /// The client's remote address (`ip:port`).
    pub fn client_addr(&self) -> &str {
        &self.client_addr
    }

    /// The client's session as it was when the event was sent (including the changes
    /// made while handling this client's previous events).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session, to change; the changes are saved on the gateway when the handler
    /// returns (before the next event of this client is delivered).
    pub fn session_mut(&mut self) -> &mut Session {
        self.session_changed = true;
        &mut self.session
    }

    /// The Gateway API.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The deployment's store, for application data (keys under `app/{name}/`).
    pub fn store(&self) -> &SharedStore {
        self.gateway.store()
    }

    /// A named database instance from the configuration (`[db.instances.NAME]`).
    pub fn db(&self, name: &str) -> Result<switchboard_db::Instance, switchboard_db::DbError> {
        self.gateway.db().instance(name)
    }

    /// Sends a message to the client of this event.
    pub async fn reply(&self, data: impl Into<Bytes>) -> Result<(), ApiError> {
        self.gateway.send_to_client(self.client_id, data).await
    }

    pub(crate) fn take_changed_session(&mut self) -> Option<Session> {
        self.session_changed
            .then(|| std::mem::take(&mut self.session))
    }
}
