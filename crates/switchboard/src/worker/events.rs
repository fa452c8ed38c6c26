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
    /// The session as the event carried it, kept from the first `session_mut` on: the
    /// save writes only the keys that differ from it.
    session_before: Option<Session>,
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
            session_before: None,
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
    ///
    /// Only the keys this handler added, changed or removed are written, merged into
    /// the session as [`Gateway::update_session`] does: what was written into it
    /// meanwhile under other keys (the push API, another client's event) stays. As
    /// with `update_session`, a key set to `null` is removed.
    pub fn session_mut(&mut self) -> &mut Session {
        if self.session_before.is_none() {
            self.session_before = Some(self.session.clone());
        }
        &mut self.session
    }

    /// Writes `changes` into the session on the gateway now, as
    /// [`Gateway::update_session`] does (`null` removes a key), and into
    /// [`Context::session`]: for a value others must see before this handler goes on
    /// (a name written before the client joins a room whose members are listed). They
    /// are not written again when the handler returns.
    ///
    /// ```no_run
    /// # use switchboard::{Context, HandlerResult, Session};
    /// # async fn handler(ctx: &mut Context) -> HandlerResult {
    /// let mut changes = Session::new();
    /// changes.insert("name".into(), "alice".into());
    /// ctx.update_session(changes).await?;
    /// ctx.join_group("room-1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_session(&mut self, changes: Session) -> Result<(), ApiError> {
        self.gateway
            .update_session(self.client_id, &changes)
            .await?;
        if let Some(before) = &mut self.session_before {
            crate::merge_session(before, changes.clone());
        }
        crate::merge_session(&mut self.session, changes);
        Ok(())
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

    /// What the handler changed in the session, as `update_session` changes (`null`
    /// for a removed key); `None` when nothing changed.
    pub(crate) fn take_session_changes(&mut self) -> Option<Session> {
        let before = self.session_before.take()?;
        let changes = session_changes(&before, std::mem::take(&mut self.session));
        (!changes.is_empty()).then_some(changes)
    }
}

/// The changes that turn `before` into `after`: every key of `after` whose value
/// differs, and `null` for every key `after` no longer has.
fn session_changes(before: &Session, after: Session) -> Session {
    let mut changes: Session = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    changes.extend(after.into_iter().filter(|(k, v)| before.get(k) != Some(v)));
    changes
}

#[cfg(test)]
mod tests {
    use super::session_changes;
    use serde_json::json;

    fn session(v: serde_json::Value) -> crate::Session {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_changes_are_the_keys_added_changed_and_removed() {
        let before =
            session(json!({"same": 1, "changed": "a", "removed": [1], "nested": {"x": 1}}));
        let after = session(json!({"same": 1, "changed": "b", "added": true, "nested": {"x": 2}}));
        assert_eq!(
            serde_json::Value::Object(session_changes(&before, after)),
            json!({"changed": "b", "added": true, "nested": {"x": 2}, "removed": null})
        );
        assert!(session_changes(&before, before.clone()).is_empty());
    }
}
