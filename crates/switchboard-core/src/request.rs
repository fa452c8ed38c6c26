//! The HTTP request a WebSocket client upgraded with, as the application sees it
//! (`switchboard::Events::on_websocket_connect`,
//! `switchboard::Context::request`), and [`Refuse`], the way a hook turns
//! a client away.

use serde::{Deserialize, Serialize};

/// The upgrade request of a WebSocket client.
///
/// ```
/// # use switchboard::WebSocketRequest;
/// let req = WebSocketRequest {
///     path: "/chat".into(),
///     query: "room_id=2&name=J%C3%BCrgen".into(),
///     headers: vec![("Origin".into(), "https://example.com".into())],
///     peer: "203.0.113.9:51000".into(),
///     forwarded_for: None,
/// };
/// assert_eq!(req.query_param("name").as_deref(), Some("Jürgen"));
/// assert_eq!(req.header("origin"), Some("https://example.com"));
/// assert_eq!(req.client_ip(), "203.0.113.9");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSocketRequest {
    /// The path, without the query string (`/chat`).
    pub path: String,
    /// The query string without `?`, still percent-encoded; see
    /// [`query_param`](Self::query_param).
    pub query: String,
    /// Every header, names as sent.
    pub headers: Vec<(String, String)>,
    /// The address the connection came from (`ip:port`): the client, or a proxy.
    pub peer: String,
    /// The client's address according to `X-Forwarded-For` — only when the connection
    /// came from one of the listener's `trusted_proxies` (otherwise anyone could claim
    /// any address).
    pub forwarded_for: Option<String>,
}

impl WebSocketRequest {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter of that name, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The client's IP: [`forwarded_for`](Self::forwarded_for) when a trusted proxy
    /// gave it, the peer's IP otherwise.
    pub fn client_ip(&self) -> &str {
        match &self.forwarded_for {
            Some(ip) => ip,
            None => self
                .peer
                .rsplit_once(':')
                .map(|(ip, _)| ip.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or(&self.peer),
        }
    }
}

/// A refusal from `switchboard::Events::on_websocket_connect`:
/// return it as the handler's error and the client gets this HTTP status (and the reason
/// as the body) instead of the upgrade; no connect event follows.
///
/// ```
/// # use switchboard::{HandlerResult, Refuse, WebSocketRequest};
/// fn check(request: &WebSocketRequest) -> HandlerResult {
///     match request.query_param("token") {
///         Some(t) if t == "s3cret" => Ok(()),
///         Some(_) => Err(Refuse::forbidden("bad token").into()),
///         None => Err(Refuse::unauthorized("a token is required").into()),
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused with HTTP {status}: {reason}")]
pub struct Refuse {
    /// The HTTP status (4xx or 5xx).
    pub status: u16,
    /// Why; sent as the body of the answer.
    pub reason: String,
}

impl Refuse {
    /// 401 Unauthorized: the client did not say who it is.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::status(401, reason)
    }

    /// 403 Forbidden: the client may not connect.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::status(403, reason)
    }

    /// Any status from 400 to 599 (others become 403).
    pub fn status(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status: if (400..600).contains(&status) {
                status
            } else {
                403
            },
            reason: reason.into(),
        }
    }
}
