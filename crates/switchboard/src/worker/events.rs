//! The application's side: the [`Events`] trait and the [`Context`] of one event.

use async_trait::async_trait;
use switchboard_store::SharedStore;

use crate::client::{ApiError, Gateway};
use crate::protocol::ClientProtocol;
use crate::{ClientId, Message, Session, WebSocketRequest};

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
/// use switchboard::{async_trait, Context, Events, HandlerResult, Message};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Events for Echo {
///     async fn on_message(&self, ctx: &mut Context, message: Message) -> HandlerResult {
///         let line = message.text()?;
///         ctx.reply(format!("you said: {line}")).await?;
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

    /// A client of a `websocket` listener asks to upgrade; before
    /// [`on_connect`](Events::on_connect). Return `Err(Refuse::unauthorized(..).into())`
    /// (or any [`Refuse`](crate::Refuse)) to turn it away with that HTTP status: it then
    /// never connects, and no other event of it follows. Any other error, or a panic,
    /// refuses it with 500. Session changes made here are kept; nothing can be sent to
    /// the client yet (send in `on_connect`).
    ///
    /// ```
    /// use switchboard::{async_trait, Context, Events, HandlerResult, Refuse, WebSocketRequest};
    ///
    /// struct Private;
    ///
    /// #[async_trait]
    /// impl Events for Private {
    ///     async fn on_websocket_connect(&self, ctx: &mut Context, req: &WebSocketRequest) -> HandlerResult {
    ///         let Some(token) = req.query_param("token") else {
    ///             return Err(Refuse::unauthorized("a token is required").into());
    ///         };
    ///         ctx.session_mut().insert("token".into(), token.into());
    ///         Ok(())
    ///     }
    /// }
    /// ```
    async fn on_websocket_connect(
        &self,
        _ctx: &mut Context,
        _request: &WebSocketRequest,
    ) -> HandlerResult {
        Ok(())
    }

    /// A client connected (for a WebSocket client: its upgrade was accepted, and
    /// [`Context::request`] has the request).
    async fn on_connect(&self, _ctx: &mut Context) -> HandlerResult {
        Ok(())
    }

    /// A client sent a message: a line without its line ending (`text` listeners,
    /// always text), or a frame's payload (`frame` listeners, binary).
    async fn on_message(&self, _ctx: &mut Context, _message: Message) -> HandlerResult {
        Ok(())
    }

    /// A client disconnected. It is no longer bound to its uid nor in its groups, but
    /// [`Context::uid`] and [`Context::groups`] still say what it had, and its session
    /// is here.
    async fn on_close(&self, _ctx: &mut Context) -> HandlerResult {
        Ok(())
    }
}

/// The context of one event: which client (id, address, listener, uid, groups), its
/// session, and the Gateway API.
pub struct Context {
    client_id: ClientId,
    client_addr: String,
    listener: String,
    protocol: ClientProtocol,
    uid: Option<String>,
    groups: Vec<String>,
    request: Option<Box<WebSocketRequest>>,
    session: Session,
    session_changed: bool,
    gateway: Gateway,
}

/// What a [`Context`] is made of, besides the session and the Gateway handle.
pub(crate) struct ClientMeta {
    pub client_id: ClientId,
    pub client_addr: String,
    pub listener: String,
    pub protocol: ClientProtocol,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub request: Option<Box<WebSocketRequest>>,
}

impl Context {
    pub(crate) fn new(meta: ClientMeta, session: Session, gateway: Gateway) -> Self {
        Self {
            client_id: meta.client_id,
            client_addr: meta.client_addr,
            listener: meta.listener,
            protocol: meta.protocol,
            uid: meta.uid,
            groups: meta.groups,
            request: meta.request,
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

    /// Name of the listener the client connected to (`[[gateway.listeners]] name`).
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// That listener's protocol.
    pub fn protocol(&self) -> ClientProtocol {
        self.protocol
    }

    /// The HTTP request a WebSocket client upgraded with: in `on_websocket_connect` and
    /// `on_connect` (keep what later events need in the session); `None` otherwise.
    pub fn request(&self) -> Option<&WebSocketRequest> {
        self.request.as_deref()
    }

    /// The uid the client is bound to, as it was when the event was sent, with the
    /// changes this handler made through [`Context::bind_uid`] / [`Context::unbind_uid`].
    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    /// The groups the client is in, sorted, as they were when the event was sent, with
    /// the changes this handler made through [`Context::join_group`] /
    /// [`Context::leave_group`].
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// Whether the client is in `group` (see [`Context::groups`]).
    pub fn in_group(&self, group: &str) -> bool {
        self.groups
            .binary_search_by(|g| g.as_str().cmp(group))
            .is_ok()
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

    /// A guard measuring one call of business code for the statistics (the brief's
    /// `StatisticClient::tick` + `report`): report it with
    /// [`success`](crate::Statistic::success) or [`fail`](crate::Statistic::fail), or
    /// time an async block with [`time`](crate::Statistic::time).
    pub fn statistic(
        &self,
        module: impl Into<std::borrow::Cow<'static, str>>,
        interface: impl Into<std::borrow::Cow<'static, str>>,
    ) -> crate::Statistic {
        self.gateway.statistic(module, interface)
    }

    /// Sends a message to the client of this event (without waiting for an answer:
    /// the client may already be gone).
    pub async fn reply(&self, data: impl Into<Message>) -> Result<(), ApiError> {
        self.gateway.push_to_client(self.client_id, data).await
    }

    /// Binds this client to `uid` ([`Gateway::bind_uid`]); [`Context::uid`] says so at
    /// once.
    pub async fn bind_uid(&mut self, uid: &str) -> Result<(), ApiError> {
        self.gateway.bind_uid(self.client_id, uid).await?;
        self.uid = Some(uid.to_owned());
        Ok(())
    }

    /// Unbinds this client from `uid` ([`Gateway::unbind_uid`]).
    pub async fn unbind_uid(&mut self, uid: &str) -> Result<(), ApiError> {
        self.gateway.unbind_uid(self.client_id, uid).await?;
        if self.uid.as_deref() == Some(uid) {
            self.uid = None;
        }
        Ok(())
    }

    /// Adds this client to `group` ([`Gateway::join_group`]); [`Context::groups`] says
    /// so at once.
    pub async fn join_group(&mut self, group: &str) -> Result<(), ApiError> {
        self.gateway.join_group(self.client_id, group).await?;
        if let Err(at) = self.groups.binary_search_by(|g| g.as_str().cmp(group)) {
            self.groups.insert(at, group.to_owned());
        }
        Ok(())
    }

    /// Removes this client from `group` ([`Gateway::leave_group`]).
    pub async fn leave_group(&mut self, group: &str) -> Result<(), ApiError> {
        self.gateway.leave_group(self.client_id, group).await?;
        if let Ok(at) = self.groups.binary_search_by(|g| g.as_str().cmp(group)) {
            self.groups.remove(at);
        }
        Ok(())
    }

    pub(crate) fn take_changed_session(&mut self) -> Option<Session> {
        self.session_changed
            .then(|| std::mem::take(&mut self.session))
    }
}
