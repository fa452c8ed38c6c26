//! The HTTP push API on the admin listener: every Gateway API call as a JSON endpoint
//! under `/v1/`, and the OpenAPI document describing them at `/openapi.json`
//! (`docs/openapi.json`, embedded). See `docs/push-api.md`.
//!
//! The supervisor holds one client-library [`Gateway`] for it, made like any outside
//! caller's (it discovers the gateways through the store and authenticates with the
//! secret): pushes need no worker, so they go on while workers are reloaded.
//!
//! Every route the server answers is a row of [`ROUTES`]; the dispatcher looks paths up
//! there and nowhere else, so a test can check the OpenAPI document against it.
//!
//! Rules every endpoint keeps:
//! - `POST` bodies are JSON objects (`Content-Type: application/json`, which also keeps
//!   a web page from posting here through a visitor's browser without a CORS
//!   preflight); unknown fields are refused; at most `admin.max_body` bytes (413).
//! - `GET` parameters come in the query string; unknown ones are refused.
//! - Everything is checked before anything is done: a malformed client id, an empty
//!   uid, or a client that is not online is a 4xx and nothing was sent or changed.
//! - Errors are `{"ok": false, "error": "…"}` naming the problem; successes
//!   `{"ok": true, …}`.

use std::sync::OnceLock;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{full, parse_query, Body};
use crate::{ApiError, ClientId, Gateway, Message, Session};

/// The OpenAPI 3 document of this API (`docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// One route of the push API.
#[derive(Debug)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The exact path.
    pub path: &'static str,
    /// What it does (the Gateway API call it makes).
    pub summary: &'static str,
    endpoint: Endpoint,
}

/// Which handler a route runs.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    OpenApi,
    Push,
    SendToClient,
    SendToUid,
    SendToGroup,
    SendToAll,
    BindUid,
    UnbindUid,
    JoinGroup,
    LeaveGroup,
    Ungroup,
    SetSession,
    UpdateSession,
    CloseClient,
    IsOnline,
    IsUidOnline,
    ClientIdsByUid,
    UidByClientId,
    ClientIdsByGroup,
    UidsByGroup,
    ClientCountByGroup,
    AllClientCount,
    AllClientIds,
    AllUids,
    AllGroups,
    GetSession,
    Sessions,
    Clients,
    Gateways,
}

const fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    endpoint: Endpoint,
) -> Route {
    Route {
        method,
        path,
        summary,
        endpoint,
    }
}

/// Every route of the push API: the one table the server dispatches from.
pub const ROUTES: &[Route] = &[
    route(
        "GET",
        "/openapi.json",
        "this API's OpenAPI 3 document",
        Endpoint::OpenApi,
    ),
    route(
        "POST",
        "/v1/push",
        "send a message to one client, a uid, a group or everybody",
        Endpoint::Push,
    ),
    route(
        "POST",
        "/v1/send_to_client",
        "send_to_client",
        Endpoint::SendToClient,
    ),
    route(
        "POST",
        "/v1/send_to_uid",
        "send_to_uid",
        Endpoint::SendToUid,
    ),
    route(
        "POST",
        "/v1/send_to_group",
        "send_to_group_counted",
        Endpoint::SendToGroup,
    ),
    route(
        "POST",
        "/v1/send_to_all",
        "send_to_all_filtered_counted",
        Endpoint::SendToAll,
    ),
    route("POST", "/v1/bind_uid", "bind_uid", Endpoint::BindUid),
    route("POST", "/v1/unbind_uid", "unbind_uid", Endpoint::UnbindUid),
    route("POST", "/v1/join_group", "join_group", Endpoint::JoinGroup),
    route(
        "POST",
        "/v1/leave_group",
        "leave_group",
        Endpoint::LeaveGroup,
    ),
    route("POST", "/v1/ungroup", "ungroup", Endpoint::Ungroup),
    route(
        "POST",
        "/v1/set_session",
        "set_session",
        Endpoint::SetSession,
    ),
    route(
        "POST",
        "/v1/update_session",
        "update_session",
        Endpoint::UpdateSession,
    ),
    route(
        "POST",
        "/v1/close_client",
        "close_client",
        Endpoint::CloseClient,
    ),
    route("GET", "/v1/is_online", "is_online", Endpoint::IsOnline),
    route(
        "GET",
        "/v1/is_uid_online",
        "is_uid_online",
        Endpoint::IsUidOnline,
    ),
    route(
        "GET",
        "/v1/client_ids_by_uid",
        "client_ids_by_uid",
        Endpoint::ClientIdsByUid,
    ),
    route(
        "GET",
        "/v1/uid_by_client_id",
        "uid_by_client_id",
        Endpoint::UidByClientId,
    ),
    route(
        "GET",
        "/v1/client_ids_by_group",
        "client_ids_by_group",
        Endpoint::ClientIdsByGroup,
    ),
    route(
        "GET",
        "/v1/uids_by_group",
        "uids_by_group",
        Endpoint::UidsByGroup,
    ),
    route(
        "GET",
        "/v1/client_count_by_group",
        "client_count_by_group",
        Endpoint::ClientCountByGroup,
    ),
    route(
        "GET",
        "/v1/all_client_count",
        "all_client_count",
        Endpoint::AllClientCount,
    ),
    route(
        "GET",
        "/v1/all_client_ids",
        "all_client_ids",
        Endpoint::AllClientIds,
    ),
    route("GET", "/v1/all_uids", "all_uids", Endpoint::AllUids),
    route("GET", "/v1/all_groups", "all_groups", Endpoint::AllGroups),
    route(
        "GET",
        "/v1/get_session",
        "get_session",
        Endpoint::GetSession,
    ),
    route("GET", "/v1/sessions", "sessions", Endpoint::Sessions),
    route("GET", "/v1/clients", "clients", Endpoint::Clients),
    route(
        "GET",
        "/v1/gateways",
        "the gateways the admin listener is connected to",
        Endpoint::Gateways,
    ),
];

/// Whether `path` belongs to the push API (answered with JSON, errors included).
pub fn is_push_path(path: &str) -> bool {
    path == "/openapi.json" || path == "/v1" || path.starts_with("/v1/")
}

/// The push API's state in the admin listener.
pub(crate) struct PushApi {
    /// Set once the supervisor's Gateway handle has connected to the store.
    gateway: OnceLock<Gateway>,
    /// Largest request body accepted (`admin.max_body`).
    max_body: usize,
}

impl PushApi {
    pub(crate) fn new(max_body: usize) -> Self {
        Self {
            gateway: OnceLock::new(),
            max_body,
        }
    }

    /// Installs the Gateway handle; the first one wins.
    pub(crate) fn set_gateway(&self, gateway: Gateway) -> Result<(), Gateway> {
        self.gateway.set(gateway)
    }

    /// The Gateway handle, once connected.
    pub(crate) fn gateway(&self) -> Option<&Gateway> {
        self.gateway.get()
    }
}

/// An answer that is not a success: an HTTP status and what went wrong.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    error: String,
    /// More fields for the error object (`reached`, ...).
    extra: Map<String, Value>,
}

fn fail(status: StatusCode, error: impl Into<String>) -> Failure {
    Failure {
        status,
        error: error.into(),
        extra: Map::new(),
    }
}

fn bad(error: impl Into<String>) -> Failure {
    fail(StatusCode::BAD_REQUEST, error)
}

fn not_found(error: impl Into<String>) -> Failure {
    fail(StatusCode::NOT_FOUND, error)
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let status = match &e {
            ApiError::NoGateway { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout { .. } | ApiError::SendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Disconnected { .. } | ApiError::BadReply { .. } => StatusCode::BAD_GATEWAY,
            // The client's gateway went away between the check and the command.
            ApiError::GatewayUnavailable { .. } => StatusCode::NOT_FOUND,
            ApiError::Session(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } | ApiError::SessionTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
        };
        fail(status, e.to_string())
    }
}

type Outcome = Result<Map<String, Value>, Failure>;

/// A JSON object from `fields` (a `json!({...})` object).
fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub(crate) fn json_error(status: StatusCode, error: &str) -> Response<Body> {
    respond(Err(fail(status, error)))
}

fn respond(outcome: Outcome) -> Response<Body> {
    let (status, mut body) = match outcome {
        Ok(fields) => {
            let mut body = Map::new();
            body.insert("ok".into(), true.into());
            body.extend(fields);
            (StatusCode::OK, body)
        }
        Err(f) => {
            let mut body = Map::new();
            body.insert("ok".into(), false.into());
            body.insert("error".into(), f.error.into());
            body.extend(f.extra);
            (f.status, body)
        }
    };
    let mut text = Value::Object(std::mem::take(&mut body)).to_string();
    text.push('\n');
    full(status, "application/json", text)
}

/// Answers one request for a path of the push API (the caller has checked the token).
pub(crate) async fn handle(api: &PushApi, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let Some(route) = ROUTES.iter().find(|r| r.path == path) else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no endpoint {path}; see /openapi.json for the list"),
        );
    };
    if req.method().as_str() != route.method {
        let mut r = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} takes {} only", route.method),
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(route.method) {
            r.headers_mut().insert(hyper::header::ALLOW, v);
        }
        return r;
    }
    if let Endpoint::OpenApi = route.endpoint {
        return full(StatusCode::OK, "application/json", OPENAPI);
    }
    let Some(gateway) = api.gateway() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the push API is not connected to the store yet; try again",
        );
    };
    let input = if route.method == "POST" {
        read_json(req, api.max_body).await
    } else {
        Ok(query_object(req.uri().query().unwrap_or("")))
    };
    let outcome = match input {
        Ok(input) => run(route.endpoint, gateway, input).await,
        Err(f) => Err(f),
    };
    respond(outcome)
}

/// The body of a POST: checked for its type and size, parsed as a JSON object.
async fn read_json(req: Request<Incoming>, max: usize) -> Result<Value, Failure> {
    let json_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with Content-Type: application/json",
        ));
    }
    let too_large = || {
        fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than admin.max_body ({max} bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(bad(format!("cannot read the body: {e}"))),
    };
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    Ok(value)
}

/// Query parameters as a JSON object of strings (the last of repeated ones wins).
fn query_object(query: &str) -> Value {
    Value::Object(
        parse_query(query)
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )
}

/// The input as an endpoint's parameters; unknown or missing fields are named.
fn params<T: DeserializeOwned>(input: Value) -> Result<T, Failure> {
    serde_json::from_value(input).map_err(|e| bad(e.to_string()))
}

fn client_id(field: &str, text: &str) -> Result<ClientId, Failure> {
    text.parse().map_err(|_| {
        bad(format!(
            "{field}: {text:?} is not a client id (20 hex digits)"
        ))
    })
}

fn client_ids(field: &str, list: &[String]) -> Result<Vec<ClientId>, Failure> {
    list.iter()
        .enumerate()
        .map(|(i, t)| client_id(&format!("{field}[{i}]"), t))
        .collect()
}

fn nonempty<'a>(field: &str, text: &'a str) -> Result<&'a str, Failure> {
    if text.is_empty() {
        return Err(bad(format!("{field} must not be empty")));
    }
    Ok(text)
}

fn nonempty_list(field: &str, list: &[String]) -> Result<(), Failure> {
    if list.is_empty() {
        return Err(bad(format!("{field} must list at least one")));
    }
    for (i, v) in list.iter().enumerate() {
        nonempty(&format!("{field}[{i}]"), v)?;
    }
    Ok(())
}

/// A client that must be online for a command about it: 404 otherwise, before
/// anything is done.
async fn online(gateway: &Gateway, id: ClientId) -> Result<(), Failure> {
    if gateway.is_online(id).await? {
        Ok(())
    } else {
        Err(not_found(format!("client_id {id} is not online")))
    }
}

/// `{"ok": true, "reached": n}`, or 404 when a targeted send reached nobody.
fn reached(n: usize, nobody: impl FnOnce() -> String) -> Outcome {
    if n == 0 {
        let mut f = not_found(nobody());
        f.extra.insert("reached".into(), 0.into());
        return Err(f);
    }
    Ok(fields(json!({ "reached": n })))
}

fn ids_json(ids: &[ClientId]) -> Value {
    ids.iter().map(|c| Value::String(c.to_string())).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushParams {
    message: String,
    client_id: Option<String>,
    uid: Option<String>,
    group: Option<String>,
    all: Option<bool>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    client_id: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UidsMessage {
    uids: Vec<String>,
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsMessage {
    groups: Vec<String>,
    message: String,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllMessage {
    message: String,
    only: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientUid {
    client_id: String,
    uid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientGroup {
    client_id: String,
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupOnly {
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionalGroup {
    group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientSession {
    client_id: String,
    session: Session,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseParams {
    client_id: String,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientOnly {
    client_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UidOnly {
    uid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Runs one endpoint: checks everything, then makes the Gateway API call.
async fn run(endpoint: Endpoint, gw: &Gateway, input: Value) -> Outcome {
    match endpoint {
        Endpoint::OpenApi => Ok(Map::new()),
        Endpoint::Push => push(gw, params(input)?).await,
        Endpoint::SendToClient => {
            let p: ClientMessage = params(input)?;
            let id = client_id("client_id", &p.client_id)?;
            let n = usize::from(gw.send_to_client(id, p.message).await?);
            reached(n, || format!("client_id {id} is not online"))
        }
        Endpoint::SendToUid => {
            let p: UidsMessage = params(input)?;
            nonempty_list("uids", &p.uids)?;
            let n = gw.send_to_uid(&p.uids, p.message).await?;
            reached(n, || format!("no client is bound to {}", p.uids.join(", ")))
        }
        Endpoint::SendToGroup => {
            let p: GroupsMessage = params(input)?;
            nonempty_list("groups", &p.groups)?;
            let exclude = client_ids("exclude", &p.exclude)?;
            let n = gw
                .send_to_group_counted(&p.groups, p.message, &exclude)
                .await?;
            reached(n, || {
                format!("no member of {} was reached", p.groups.join(", "))
            })
        }
        Endpoint::SendToAll => {
            let p: AllMessage = params(input)?;
            let only = p
                .only
                .as_deref()
                .map(|l| client_ids("only", l))
                .transpose()?;
            let exclude = client_ids("exclude", &p.exclude)?;
            let n = gw
                .send_to_all_filtered_counted(p.message, only.as_deref(), &exclude)
                .await?;
            Ok(fields(json!({ "reached": n })))
        }
        Endpoint::BindUid | Endpoint::UnbindUid => {
            let p: ClientUid = params(input)?;
            let id = client_id("client_id", &p.client_id)?;
            let uid = nonempty("uid", &p.uid)?;
            online(gw, id).await?;
            match endpoint {
                Endpoint::BindUid => gw.bind_uid(id, uid).await?,
                _ => gw.unbind_uid(id, uid).await?,
            }
            Ok(Map::new())
        }
        Endpoint::JoinGroup | Endpoint::LeaveGroup => {
            let p: ClientGroup = params(input)?;
            let id = client_id("client_id", &p.client_id)?;
            let group = nonempty("group", &p.group)?;
            online(gw, id).await?;
            match endpoint {
                Endpoint::JoinGroup => gw.join_group(id, group).await?,
                _ => gw.leave_group(id, group).await?,
            }
            Ok(Map::new())
        }
        Endpoint::Ungroup => {
            let p: GroupOnly = params(input)?;
            let group = nonempty("group", &p.group)?;
            let members = gw.client_count_by_group(group).await?;
            if members == 0 {
                return Err(not_found(format!("group {group:?} has no members")));
            }
            gw.ungroup(group).await?;
            Ok(fields(json!({ "members": members })))
        }
        Endpoint::SetSession | Endpoint::UpdateSession => {
            let p: ClientSession = params(input)?;
            let id = client_id("client_id", &p.client_id)?;
            online(gw, id).await?;
            match endpoint {
                Endpoint::SetSession => gw.set_session(id, &p.session).await?,
                _ => gw.update_session(id, &p.session).await?,
            }
            Ok(Map::new())
        }
        Endpoint::CloseClient => {
            let p: CloseParams = params(input)?;
            let id = client_id("client_id", &p.client_id)?;
            online(gw, id).await?;
            gw.close_client(id, p.message.map(Message::from)).await?;
            Ok(Map::new())
        }
        Endpoint::IsOnline => {
            let p: ClientOnly = params(input)?;
            let id = client_id("client_id", &p.client_id)?;
            Ok(fields(json!({ "online": gw.is_online(id).await? })))
        }
        Endpoint::IsUidOnline => {
            let p: UidOnly = params(input)?;
            let uid = nonempty("uid", &p.uid)?;
            Ok(fields(json!({ "online": gw.is_uid_online(uid).await? })))
        }
        Endpoint::ClientIdsByUid => {
            let p: UidOnly = params(input)?;
            let uid = nonempty("uid", &p.uid)?;
            let ids = gw.client_ids_by_uid(uid).await?;
            Ok(fields(json!({ "client_ids": ids_json(&ids) })))
        }
        Endpoint::UidByClientId => {
            let p: ClientOnly = params(input)?;
            let id = client_id("client_id", &p.client_id)?;
            match gw.uid_by_client_id(id).await? {
                Some(uid) => Ok(fields(json!({ "uid": uid }))),
                None => {
                    online(gw, id).await?;
                    Ok(fields(json!({ "uid": null })))
                }
            }
        }
        Endpoint::ClientIdsByGroup => {
            let p: GroupOnly = params(input)?;
            let group = nonempty("group", &p.group)?;
            let ids = gw.client_ids_by_group(group).await?;
            Ok(fields(json!({ "client_ids": ids_json(&ids) })))
        }
        Endpoint::UidsByGroup => {
            let p: GroupOnly = params(input)?;
            let group = nonempty("group", &p.group)?;
            Ok(fields(json!({ "uids": gw.uids_by_group(group).await? })))
        }
        Endpoint::ClientCountByGroup => {
            let p: GroupOnly = params(input)?;
            let group = nonempty("group", &p.group)?;
            Ok(fields(
                json!({ "count": gw.client_count_by_group(group).await? }),
            ))
        }
        Endpoint::AllClientCount => {
            let _: NoParams = params(input)?;
            Ok(fields(json!({ "count": gw.all_client_count().await? })))
        }
        Endpoint::AllClientIds => {
            let _: NoParams = params(input)?;
            let ids = gw.all_client_ids().await?;
            Ok(fields(json!({ "client_ids": ids_json(&ids) })))
        }
        Endpoint::AllUids => {
            let _: NoParams = params(input)?;
            Ok(fields(json!({ "uids": gw.all_uids().await? })))
        }
        Endpoint::AllGroups => {
            let _: NoParams = params(input)?;
            Ok(fields(json!({ "groups": gw.all_groups().await? })))
        }
        Endpoint::GetSession => {
            let p: ClientOnly = params(input)?;
            let id = client_id("client_id", &p.client_id)?;
            match gw.get_session(id).await? {
                Some(s) => Ok(fields(json!({ "session": s }))),
                None => Err(not_found(format!("client_id {id} is not online"))),
            }
        }
        Endpoint::Sessions => {
            let p: OptionalGroup = params(input)?;
            let group = p
                .group
                .as_deref()
                .map(|g| nonempty("group", g))
                .transpose()?;
            let sessions: Map<String, Value> = gw
                .sessions(group)
                .await?
                .into_iter()
                .map(|(id, s)| (id.to_string(), Value::Object(s)))
                .collect();
            Ok(fields(json!({ "sessions": sessions })))
        }
        Endpoint::Clients => {
            let _: NoParams = params(input)?;
            let rows: Vec<Value> = gw
                .clients()
                .await?
                .into_iter()
                .map(|c| {
                    json!({
                        "client_id": c.client.to_string(),
                        "addr": c.addr,
                        "listener": c.listener,
                        "protocol": c.protocol.to_string(),
                        "uid": c.uid,
                        "groups": c.groups,
                        "idle_ms": c.idle_ms,
                    })
                })
                .collect();
            Ok(fields(json!({ "clients": rows })))
        }
        Endpoint::Gateways => {
            let _: NoParams = params(input)?;
            Ok(fields(json!({ "gateways": gw.gateways() })))
        }
    }
}

/// `POST /v1/push`: exactly one target, then one counted send.
async fn push(gw: &Gateway, p: PushParams) -> Outcome {
    let mut given = Vec::new();
    if p.client_id.is_some() {
        given.push("client_id");
    }
    if p.uid.is_some() {
        given.push("uid");
    }
    if p.group.is_some() {
        given.push("group");
    }
    if p.all == Some(true) {
        given.push("all");
    }
    if given.len() != 1 {
        return Err(bad(format!(
            "give exactly one of client_id, uid, group, \"all\": true (given: {})",
            if given.is_empty() {
                "none".to_string()
            } else {
                given.join(", ")
            }
        )));
    }
    if !p.exclude.is_empty() && p.group.is_none() && p.all != Some(true) {
        return Err(bad("exclude goes with group or \"all\": true only"));
    }
    let exclude = client_ids("exclude", &p.exclude)?;
    let message = Message::from(p.message);
    if let Some(text) = &p.client_id {
        let id = client_id("client_id", text)?;
        let n = usize::from(gw.send_to_client(id, message).await?);
        return reached(n, || format!("client_id {id} is not online"));
    }
    if let Some(uid) = &p.uid {
        let uid = nonempty("uid", uid)?;
        let n = gw.send_to_uid(&[uid], message).await?;
        return reached(n, || format!("no client is bound to uid {uid:?}"));
    }
    if let Some(group) = &p.group {
        let group = nonempty("group", group)?;
        let n = gw
            .send_to_group_counted(&[group], message, &exclude)
            .await?;
        return reached(n, || format!("group {group:?} has no members reached"));
    }
    let n = gw
        .send_to_all_filtered_counted(message, None, &exclude)
        .await?;
    Ok(fields(json!({ "reached": n })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_unique_and_every_path_is_a_push_path() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(seen.insert(r.path), "{} twice", r.path);
            assert!(is_push_path(r.path), "{}", r.path);
            assert!(matches!(r.method, "GET" | "POST"), "{}", r.method);
        }
        assert!(!is_push_path("/metrics") && !is_push_path("/v10"));
    }

    #[test]
    fn the_openapi_document_is_json() {
        let v: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json parses");
        assert!(v["openapi"].as_str().is_some_and(|s| s.starts_with("3.")));
    }
}
