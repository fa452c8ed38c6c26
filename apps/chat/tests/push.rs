//! Pushing from outside: the HTTP push API of the admin listener (every endpoint with
//! good input, bad input of each kind, with and without the token), the `push`,
//! `online` and `kick` commands end to end with their exit statuses, and pushes that
//! arrive while workers are reloaded or stopped.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{chat, ChatClient};
use serde_json::{json, Value};
use switchboard::admin::push::{OPENAPI, ROUTES};
use switchboard::ClientId;
use switchboard_testkit::{ChildRole, Client, Deployment};

const TOKEN: &str = "push-test-token";

/// One HTTP answer.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    raw: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

/// One request on its own connection (`Connection: close`), written by hand so that
/// every header and byte is the test's: exact statuses, no client library between.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && *v == "chunked");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !chunked && (method == "POST" || !body.is_empty()) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if chunked {
        // The server may answer 413 and close before it has read everything.
        let _ = s.write_all(format!("{:x}\r\n", body.len()).as_bytes());
        let _ = s.write_all(body);
        let _ = s.write_all(b"\r\n0\r\n\r\n");
    } else {
        let _ = s.write_all(body);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status for {method} {path}: {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let is_chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if is_chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        raw: body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The admin listener of a deployment, as a test talks to it: loopback address,
/// token, and which routes answered 2xx and 4xx (to check that every route of the
/// server was exercised both ways).
struct Api {
    addr: SocketAddr,
    token: Option<&'static str>,
    good: BTreeSet<&'static str>,
    bad: BTreeSet<&'static str>,
}

impl Api {
    fn of(d: &Deployment, token: Option<&'static str>) -> Self {
        let a = d.admin_addr();
        Api {
            addr: SocketAddr::from(([127, 0, 0, 1], a.port())),
            token,
            good: BTreeSet::new(),
            bad: BTreeSet::new(),
        }
    }

    fn note(&mut self, path: &str, r: &Reply) {
        if let Some(route) = ROUTES
            .iter()
            .find(|x| path.split('?').next() == Some(x.path))
        {
            if r.status == 200 {
                self.good.insert(route.path);
            } else if (400..500).contains(&r.status) {
                self.bad.insert(route.path);
            }
        }
    }

    /// `POST path` with a JSON body.
    fn post(&mut self, path: &str, body: Value) -> Reply {
        let r = request(
            self.addr,
            "POST",
            path,
            self.token,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        self.note(path, &r);
        r
    }

    /// `POST path` with raw bytes and headers.
    fn post_raw(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let r = request(self.addr, "POST", path, self.token, headers, body);
        self.note(path, &r);
        r
    }

    /// `GET path?query`.
    fn get(&mut self, path_and_query: &str) -> Reply {
        let r = request(self.addr, "GET", path_and_query, self.token, &[], b"");
        self.note(path_and_query, &r);
        r
    }

    /// A 200 with `ok: true`; returns the body.
    fn ok_post(&mut self, path: &str, body: Value) -> Value {
        let r = self.post(path, body.clone());
        assert_eq!(r.status, 200, "POST {path} {body}: {}", r.raw);
        assert_eq!(r.body["ok"], true, "{}", r.raw);
        r.body
    }

    fn ok_get(&mut self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.raw);
        assert_eq!(r.body["ok"], true, "{}", r.raw);
        r.body
    }

    /// A 4xx with `ok: false` and an error containing every one of `words`.
    fn fails(&mut self, r: Reply, status: u16, words: &[&str], what: &str) {
        assert_eq!(r.status, status, "{what}: {}", r.raw);
        assert_eq!(r.body["ok"], false, "{what}: {}", r.raw);
        for w in words {
            assert!(
                r.error().contains(w),
                "{what}: error {:?} lacks {w:?}",
                r.error()
            );
        }
    }
}

async fn nothing_more(c: &mut Client) {
    if let Some(l) = c.try_line(Duration::from_millis(300)).await {
        panic!("{}: unexpected line {l:?}", c.name);
    }
}

/// Reads lines until `expected`, skipping the chat's name prompt.
async fn gets(c: &mut Client, expected: &str) {
    c.expect(expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_with_good_and_bad_input_and_the_token() {
    let started = Instant::now();
    let d = Deployment::start(chat().gateways(2).admin(&format!(
        "listen = \"0.0.0.0:{}\"\ntoken = \"{TOKEN}\"\nmax_body = 4096\n",
        switchboard_testkit::free_port()
    )));
    let lib = d.api().await;
    let [mut on_a, mut on_b]: [Vec<Client>; 2] = d
        .connect_on_every_gateway(&lib, 2)
        .await
        .try_into()
        .expect("2 gateways");
    // Read every prompt now, so that later lines are the pushes.
    for c in on_a.iter_mut().chain(on_b.iter_mut()) {
        c.expect("type in your name:").await;
    }
    let a = on_a[0].id.unwrap();
    let a2 = on_a[1].id.unwrap();
    let b = on_b[0].id.unwrap();
    let total = (on_a.len() + on_b.len()) as u64;
    let offline = ClientId::new(a.gateway, 999_999);
    let mut api = Api::of(&d, Some(TOKEN));

    // ---- the token ---------------------------------------------------------------
    for token in [None, Some("wrong")] {
        let mut anon = Api::of(&d, token);
        let r = anon.get("/v1/all_client_count");
        anon.fails(r, 401, &["Bearer"], "a query without the token");
        let r = anon.post("/v1/push", json!({"message": "sneaky", "all": true}));
        assert_eq!(r.status, 401);
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        let r = anon.get("/openapi.json");
        assert_eq!(r.status, 401);
    }
    nothing_more(&mut on_a[0]).await;

    // ---- the OpenAPI document ----------------------------------------------------
    let r = api.get("/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.raw, OPENAPI);
    assert_eq!(r.body["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let r = api.post("/openapi.json", json!({}));
    api.fails(r, 405, &["GET"], "POST /openapi.json");

    // ---- POST /v1/push, the fixed one -------------------------------------------
    let r = api.ok_post(
        "/v1/push",
        json!({"message": "to a", "client_id": a.to_string()}),
    );
    assert_eq!(r, json!({"ok": true, "reached": 1}));
    gets(&mut on_a[0], "to a").await;
    api.ok_post(
        "/v1/bind_uid",
        json!({"client_id": a.to_string(), "uid": "alice"}),
    );
    api.ok_post(
        "/v1/bind_uid",
        json!({"client_id": b.to_string(), "uid": "alice"}),
    );
    let r = api.ok_post("/v1/push", json!({"message": "to alice", "uid": "alice"}));
    assert_eq!(r["reached"], 2, "alice has a client on each gateway");
    gets(&mut on_a[0], "to alice").await;
    gets(&mut on_b[0], "to alice").await;
    api.ok_post(
        "/v1/join_group",
        json!({"client_id": a.to_string(), "group": "room"}),
    );
    api.ok_post(
        "/v1/join_group",
        json!({"client_id": a2.to_string(), "group": "room"}),
    );
    api.ok_post(
        "/v1/join_group",
        json!({"client_id": b.to_string(), "group": "room"}),
    );
    let r = api.ok_post(
        "/v1/push",
        json!({"message": "to room", "group": "room", "exclude": [a2.to_string()]}),
    );
    assert_eq!(r["reached"], 2);
    gets(&mut on_a[0], "to room").await;
    gets(&mut on_b[0], "to room").await;
    nothing_more(&mut on_a[1]).await;
    let r = api.ok_post(
        "/v1/push",
        json!({"message": "to all", "all": true, "exclude": [b.to_string()]}),
    );
    assert_eq!(r["reached"], total - 1);
    for c in on_a.iter_mut().chain(on_b.iter_mut().skip(1)) {
        gets(c, "to all").await;
    }
    nothing_more(&mut on_b[0]).await;

    // Bad input of each kind: 4xx naming the problem, and nothing delivered.
    let r = api.post_raw(
        "/v1/push",
        &[("Content-Type", "application/json")],
        b"{\"message\": \"x\", \"all\": tru",
    );
    api.fails(r, 400, &["not valid JSON"], "broken JSON");
    let r = api.post_raw(
        "/v1/push",
        &[("Content-Type", "application/json")],
        b"[1,2]",
    );
    api.fails(r, 400, &["JSON object"], "an array");
    let r = api.post(
        "/v1/push",
        json!({"message": "x", "all": true, "colour": "red"}),
    );
    api.fails(r, 400, &["unknown field", "colour"], "an unknown field");
    let r = api.post("/v1/push", json!({"all": true}));
    api.fails(r, 400, &["missing field", "message"], "no message");
    let r = api.post("/v1/push", json!({"message": 5, "all": true}));
    api.fails(r, 400, &["invalid type"], "a number as message");
    let r = api.post("/v1/push", json!({"message": "x"}));
    api.fails(r, 400, &["exactly one", "none"], "no target");
    let r = api.post("/v1/push", json!({"message": "x", "all": false}));
    api.fails(r, 400, &["exactly one"], "all: false");
    let r = api.post(
        "/v1/push",
        json!({"message": "x", "client_id": a.to_string(), "uid": "alice"}),
    );
    api.fails(r, 400, &["exactly one", "client_id, uid"], "two targets");
    let r = api.post(
        "/v1/push",
        json!({"message": "x", "uid": "alice", "exclude": [a.to_string()]}),
    );
    api.fails(r, 400, &["exclude"], "exclude with a uid");
    let r = api.post("/v1/push", json!({"message": "x", "client_id": "12345"}));
    api.fails(
        r,
        400,
        &["client_id", "12345", "not a client id"],
        "a malformed id",
    );
    let r = api.post(
        "/v1/push",
        json!({"message": "x", "group": "room", "exclude": ["zz"]}),
    );
    api.fails(r, 400, &["exclude[0]"], "a malformed exclusion");
    let r = api.post(
        "/v1/push",
        json!({"message": "x", "client_id": offline.to_string()}),
    );
    api.fails(
        r,
        404,
        &["not online", &offline.to_string()],
        "an offline client",
    );
    assert_eq!(
        r_reached(&api, "/v1/push", json!({"message": "x", "uid": "nobody"})),
        0
    );
    let r = api.post("/v1/push", json!({"message": "x", "uid": "nobody"}));
    api.fails(r, 404, &["nobody"], "an unknown uid");
    let r = api.post("/v1/push", json!({"message": "x", "group": "empty"}));
    api.fails(r, 404, &["empty"], "an empty group");
    let r = api.post("/v1/push", json!({"message": "x", "uid": ""}));
    api.fails(r, 400, &["uid must not be empty"], "an empty uid");
    let big = json!({"message": "y".repeat(5000), "all": true}).to_string();
    let r = api.post_raw(
        "/v1/push",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    );
    api.fails(r, 413, &["admin.max_body", "4096"], "a body over the limit");
    let r = api.post_raw(
        "/v1/push",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        big.as_bytes(),
    );
    api.fails(r, 413, &["admin.max_body"], "a chunked body over the limit");
    let r = api.post_raw(
        "/v1/push",
        &[("Content-Type", "text/plain")],
        br#"{"message": "x", "all": true}"#,
    );
    api.fails(r, 415, &["application/json"], "a text/plain body");
    let r = api.post_raw("/v1/push", &[], br#"{"message": "x", "all": true}"#);
    api.fails(r, 415, &["application/json"], "no content type");
    let r = api.get("/v1/push");
    api.fails(r, 405, &["POST"], "GET /v1/push");
    assert_eq!(r_allow(&api, "/v1/push"), "POST");
    let r = api.get("/v1/nothing_here");
    api.fails(r, 404, &["no endpoint", "/openapi.json"], "an unknown path");
    // Nothing of all that reached anybody.
    for c in on_a.iter_mut().chain(on_b.iter_mut()) {
        nothing_more(c).await;
    }

    // ---- the other sends ---------------------------------------------------------
    let r = api.ok_post(
        "/v1/send_to_client",
        json!({"client_id": b.to_string(), "message": "direct"}),
    );
    assert_eq!(r["reached"], 1);
    gets(&mut on_b[0], "direct").await;
    let r = api.post(
        "/v1/send_to_client",
        json!({"client_id": offline.to_string(), "message": "x"}),
    );
    api.fails(r, 404, &["not online"], "send_to_client offline");
    let r = api.ok_post(
        "/v1/send_to_uid",
        json!({"uids": ["alice", "nobody"], "message": "uids"}),
    );
    assert_eq!(r["reached"], 2);
    gets(&mut on_a[0], "uids").await;
    gets(&mut on_b[0], "uids").await;
    let r = api.post("/v1/send_to_uid", json!({"uids": [], "message": "x"}));
    api.fails(r, 400, &["uids", "at least one"], "no uids");
    let r = api.post(
        "/v1/send_to_uid",
        json!({"uids": ["nobody"], "message": "x"}),
    );
    api.fails(r, 404, &["nobody"], "send_to_uid to nobody");
    let r = api.ok_post(
        "/v1/send_to_group",
        json!({"groups": ["room"], "message": "grp", "exclude": [b.to_string()]}),
    );
    assert_eq!(r["reached"], 2);
    gets(&mut on_a[0], "grp").await;
    gets(&mut on_a[1], "grp").await;
    let r = api.post(
        "/v1/send_to_group",
        json!({"groups": ["room"], "message": "x", "exclude": [b.to_string(), "bad"]}),
    );
    api.fails(
        r,
        400,
        &["exclude[1]"],
        "send_to_group with a bad exclusion",
    );
    let r = api.post(
        "/v1/send_to_group",
        json!({"groups": ["empty"], "message": "x"}),
    );
    api.fails(r, 404, &["empty"], "send_to_group to nobody");
    let r = api.ok_post(
        "/v1/send_to_all",
        json!({"message": "only", "only": [a.to_string(), b.to_string()], "exclude": [a.to_string()]}),
    );
    assert_eq!(r["reached"], 1);
    gets(&mut on_b[0], "only").await;
    let r = api.ok_post("/v1/send_to_all", json!({"message": "every"}));
    assert_eq!(r["reached"], total);
    for c in on_a.iter_mut().chain(on_b.iter_mut()) {
        gets(c, "every").await;
    }
    let r = api.post("/v1/send_to_all", json!({"message": "x", "only": ["nope"]}));
    api.fails(r, 400, &["only[0]"], "send_to_all with a bad id");
    for c in on_a.iter_mut().chain(on_b.iter_mut()) {
        nothing_more(c).await;
    }

    // ---- uids, groups, sessions --------------------------------------------------
    let r = api.post(
        "/v1/bind_uid",
        json!({"client_id": offline.to_string(), "uid": "u"}),
    );
    api.fails(r, 404, &["not online"], "bind_uid offline");
    let r = api.post(
        "/v1/bind_uid",
        json!({"client_id": a.to_string(), "uid": ""}),
    );
    api.fails(r, 400, &["uid must not be empty"], "bind_uid empty");
    api.ok_post(
        "/v1/bind_uid",
        json!({"client_id": a2.to_string(), "uid": "bob"}),
    );
    api.ok_post(
        "/v1/unbind_uid",
        json!({"client_id": a2.to_string(), "uid": "bob"}),
    );
    let r = api.post("/v1/unbind_uid", json!({"client_id": a2.to_string()}));
    api.fails(r, 400, &["missing field", "uid"], "unbind_uid without uid");
    let r = api.post(
        "/v1/join_group",
        json!({"client_id": offline.to_string(), "group": "g"}),
    );
    api.fails(r, 404, &["not online"], "join_group offline");
    api.ok_post(
        "/v1/join_group",
        json!({"client_id": b.to_string(), "group": "other"}),
    );
    api.ok_post(
        "/v1/leave_group",
        json!({"client_id": a2.to_string(), "group": "room"}),
    );
    let r = api.post(
        "/v1/leave_group",
        json!({"client_id": a2.to_string(), "group": ""}),
    );
    api.fails(r, 400, &["group must not be empty"], "leave_group empty");
    let r = api.ok_post("/v1/ungroup", json!({"group": "other"}));
    assert_eq!(r["members"], 1);
    let r = api.post("/v1/ungroup", json!({"group": "other"}));
    api.fails(r, 404, &["no members"], "ungroup an empty group");
    api.ok_post(
        "/v1/set_session",
        json!({"client_id": b.to_string(), "session": {"k": 1, "name": "b"}}),
    );
    let r = api.post(
        "/v1/set_session",
        json!({"client_id": b.to_string(), "session": [1, 2]}),
    );
    api.fails(r, 400, &["invalid type"], "a session that is not an object");
    api.ok_post(
        "/v1/update_session",
        json!({"client_id": b.to_string(), "session": {"k": null, "j": true}}),
    );
    let r = api.post(
        "/v1/update_session",
        json!({"client_id": offline.to_string(), "session": {}}),
    );
    api.fails(r, 404, &["not online"], "update_session offline");

    // ---- queries -----------------------------------------------------------------
    assert_eq!(
        api.ok_get(&format!("/v1/is_online?client_id={a}"))["online"],
        true
    );
    assert_eq!(
        api.ok_get(&format!("/v1/is_online?client_id={offline}"))["online"],
        false
    );
    let r = api.get("/v1/is_online?client_id=xyz");
    api.fails(r, 400, &["client_id", "xyz"], "is_online with a bad id");
    let r = api.get("/v1/is_online");
    api.fails(
        r,
        400,
        &["missing field", "client_id"],
        "is_online without an id",
    );
    let r = api.get(&format!("/v1/is_online?client_id={a}&colour=red"));
    api.fails(r, 400, &["unknown field", "colour"], "an unknown parameter");
    assert_eq!(api.ok_get("/v1/is_uid_online?uid=alice")["online"], true);
    assert_eq!(api.ok_get("/v1/is_uid_online?uid=nobody")["online"], false);
    let r = api.get("/v1/is_uid_online?uid=");
    api.fails(r, 400, &["uid must not be empty"], "is_uid_online empty");
    let ids = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {v}"))
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let mut alice = vec![a.to_string(), b.to_string()];
    alice.sort();
    assert_eq!(
        ids(&api.ok_get("/v1/client_ids_by_uid?uid=alice"), "client_ids"),
        alice
    );
    let r = api.get("/v1/client_ids_by_uid");
    api.fails(r, 400, &["uid"], "client_ids_by_uid without uid");
    assert_eq!(
        api.ok_get(&format!("/v1/uid_by_client_id?client_id={a}"))["uid"],
        "alice"
    );
    assert_eq!(
        api.ok_get(&format!("/v1/uid_by_client_id?client_id={a2}"))["uid"],
        Value::Null
    );
    let r = api.get(&format!("/v1/uid_by_client_id?client_id={offline}"));
    api.fails(r, 404, &["not online"], "uid_by_client_id offline");
    let mut room = vec![a.to_string(), b.to_string()];
    room.sort();
    assert_eq!(
        ids(
            &api.ok_get("/v1/client_ids_by_group?group=room"),
            "client_ids"
        ),
        room
    );
    let r = api.get("/v1/client_ids_by_group?group=");
    api.fails(
        r,
        400,
        &["group must not be empty"],
        "client_ids_by_group empty",
    );
    assert_eq!(
        api.ok_get("/v1/uids_by_group?group=room")["uids"],
        json!(["alice"])
    );
    let r = api.get("/v1/uids_by_group?room=1");
    api.fails(
        r,
        400,
        &["unknown field"],
        "uids_by_group with a wrong parameter",
    );
    assert_eq!(
        api.ok_get("/v1/client_count_by_group?group=room")["count"],
        2
    );
    let r = api.get("/v1/client_count_by_group");
    api.fails(r, 400, &["group"], "client_count_by_group without group");
    assert_eq!(api.ok_get("/v1/all_client_count")["count"], total);
    let r = api.get("/v1/all_client_count?x=1");
    api.fails(
        r,
        400,
        &["unknown field"],
        "all_client_count with a parameter",
    );
    assert_eq!(
        ids(&api.ok_get("/v1/all_client_ids"), "client_ids").len() as u64,
        total
    );
    let r = api.get("/v1/all_client_ids?x=1");
    api.fails(
        r,
        400,
        &["unknown field"],
        "all_client_ids with a parameter",
    );
    assert_eq!(api.ok_get("/v1/all_uids")["uids"], json!(["alice"]));
    let r = api.get("/v1/all_uids?x=1");
    api.fails(r, 400, &["unknown field"], "all_uids with a parameter");
    assert_eq!(api.ok_get("/v1/all_groups")["groups"], json!(["room"]));
    let r = api.get("/v1/all_groups?x=1");
    api.fails(r, 400, &["unknown field"], "all_groups with a parameter");
    assert_eq!(
        api.ok_get(&format!("/v1/get_session?client_id={b}"))["session"],
        json!({"name": "b", "j": true})
    );
    let r = api.get(&format!("/v1/get_session?client_id={offline}"));
    api.fails(r, 404, &["not online"], "get_session offline");
    let all = api.ok_get("/v1/sessions");
    assert_eq!(all["sessions"].as_object().unwrap().len() as u64, total);
    let in_room = api.ok_get("/v1/sessions?group=room");
    assert_eq!(in_room["sessions"][b.to_string()]["j"], true);
    assert_eq!(in_room["sessions"].as_object().unwrap().len(), 2);
    let r = api.get("/v1/sessions?group=");
    api.fails(
        r,
        400,
        &["group must not be empty"],
        "sessions of an empty name",
    );
    let clients = api.ok_get("/v1/clients");
    let rows = clients["clients"].as_array().unwrap();
    assert_eq!(rows.len() as u64, total);
    let row_b = rows
        .iter()
        .find(|r| r["client_id"] == b.to_string())
        .unwrap();
    assert_eq!(row_b["uid"], "alice");
    assert_eq!(row_b["groups"], json!(["room"]));
    assert_eq!(row_b["protocol"], "text");
    let r = api.get("/v1/clients?x=1");
    api.fails(r, 400, &["unknown field"], "clients with a parameter");
    let gws = api.ok_get("/v1/gateways");
    let mut want = vec![a.gateway, b.gateway];
    want.sort();
    assert_eq!(gws["gateways"], json!(want));
    let r = api.get("/v1/gateways?x=1");
    api.fails(r, 400, &["unknown field"], "gateways with a parameter");

    // ---- close_client ------------------------------------------------------------
    let r = api.post(
        "/v1/close_client",
        json!({"client_id": offline.to_string()}),
    );
    api.fails(r, 404, &["not online"], "close_client offline");
    api.ok_post(
        "/v1/close_client",
        json!({"client_id": a2.to_string(), "message": "bye"}),
    );
    gets(&mut on_a[1], "bye").await;
    assert!(on_a[1].closed_within(Duration::from_secs(5)).await);

    // ---- a gateway that stops answering: 504 naming it ----------------------------
    let stats = switchboard::stats::read_all(&d.config().run_dir());
    let frozen = stats
        .iter()
        .find(|s| {
            s.role == "gateway"
                && s.detail.get("number").and_then(|v| v.as_u64()) == Some(b.gateway as u64)
        })
        .unwrap()
        .pid;
    common::stop_process(frozen);
    let r = api.get("/v1/all_client_count");
    unsafe { libc::kill(frozen as i32, libc::SIGCONT) };
    assert_eq!(r.status, 504, "{}", r.raw);
    assert!(
        r.error().contains(&format!("gateway {}", b.gateway)),
        "{}",
        r.raw
    );

    // Every route of the server answered both a success and a client error here.
    for route in ROUTES {
        assert!(
            api.good.contains(route.path),
            "{} never answered 200",
            route.path
        );
        assert!(
            api.bad.contains(route.path),
            "{} never answered a 4xx",
            route.path
        );
    }
    lib.close().await;
    eprintln!("took {:?}", started.elapsed());
}

/// The `reached` of a push expected to fail (0 in its error object).
fn r_reached(api: &Api, path: &str, body: Value) -> u64 {
    let r = request(
        api.addr,
        "POST",
        path,
        api.token,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    r.body["reached"].as_u64().unwrap_or(u64::MAX)
}

/// The Allow header of a GET to a POST route.
fn r_allow(api: &Api, path: &str) -> String {
    request(api.addr, "GET", path, api.token, &[], b"")
        .header("allow")
        .unwrap_or("")
        .to_string()
}

fn out(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a command of the binary against the deployment; checks its exit status and
/// that its standard output contains `says`.
fn cli(d: &Deployment, args: &[&str], status: i32, says: &str) -> Output {
    let o = d.cli(args);
    assert_eq!(o.status.code(), Some(status), "{args:?}: {}", out(&o));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains(says),
        "{args:?} should say {says:?}: {}",
        out(&o)
    );
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_online_and_kick_from_the_command_line_with_exit_statuses() {
    let started = Instant::now();
    let d = Deployment::start(chat());
    let lib = d.api().await;
    let mut alice = Client::connect(d.addr()).await;
    let id = alice.login("alice").await;
    let mut bob = Client::connect(d.addr()).await;
    let bob_id = bob.login("bob").await;
    alice.expect(&format!("bob[{bob_id}] come")).await;
    lib.bind_uid(id, "alice").await.unwrap();
    lib.join_group(id, "team").await.unwrap();
    let id_s = id.to_string();
    let offline = ClientId::new(id.gateway, 999_999).to_string();

    cli(
        &d,
        &["push", "--client", &id_s, "hello alice"],
        0,
        &format!("delivered to client {id}"),
    );
    alice.expect_next("hello alice").await;
    cli(
        &d,
        &["push", "--uid", "alice", "to your uid"],
        0,
        "delivered to 1 client(s) of uid alice",
    );
    alice.expect_next("to your uid").await;
    cli(
        &d,
        &["push", "--group", "team", "to the team"],
        0,
        "delivered to 1 member(s) of group team",
    );
    alice.expect_next("to the team").await;
    cli(
        &d,
        &["push", "--all", "to everybody"],
        0,
        "delivered to 2 client(s)",
    );
    alice.expect_next("to everybody").await;
    bob.expect_next("to everybody").await;
    // Nobody reached: 1, and nothing arrives.
    cli(&d, &["push", "--client", &offline, "x"], 1, "is not online");
    cli(
        &d,
        &["push", "--uid", "nobody", "x"],
        1,
        "no client is bound to uid nobody",
    );
    cli(
        &d,
        &["push", "--group", "empty", "x"],
        1,
        "group empty has no member online",
    );
    // Usage and configuration errors: 2.
    cli(
        &d,
        &["push", "--client", &id_s, "--uid", "alice", "x"],
        2,
        "cannot be used with",
    );
    cli(&d, &["push", "x"], 2, "required");
    cli(
        &d,
        &["push", "--client", "not-an-id", "x"],
        2,
        "not a client id",
    );
    cli(&d, &["push", "--all"], 2, "MESSAGE");
    cli(
        &d,
        &["--set", "worker.query_timeout=0s", "push", "--all", "x"],
        2,
        "worker.query_timeout",
    );
    let o = std::process::Command::new(d.binary())
        .args([
            "--config",
            "/nonexistent/chat.toml",
            "online",
            "--uid",
            "alice",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    // Another deployment name finds no gateway: 3, saying so.
    cli(
        &d,
        &["--set", "name=elsewhere", "push", "--all", "x"],
        3,
        "no gateway",
    );
    nothing_more(&mut alice).await;

    cli(
        &d,
        &["online", "--client", &id_s],
        0,
        &format!("client {id} is online"),
    );
    cli(&d, &["online", "--client", &offline], 1, "is not online");
    cli(
        &d,
        &["online", "--uid", "alice"],
        0,
        &format!("uid alice is online: 1 client(s): {id}"),
    );
    cli(
        &d,
        &["online", "--uid", "nobody"],
        1,
        "uid nobody is not online",
    );
    cli(&d, &["online"], 2, "required");

    cli(
        &d,
        &["kick", &bob_id.to_string(), "--message", "bye bob"],
        0,
        &format!("closed client {bob_id}"),
    );
    bob.expect_next("bye bob").await;
    assert!(bob.closed_within(Duration::from_secs(5)).await);
    // A kicked client is gone: kicking it again finds nobody.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lib.is_online(bob_id).await.unwrap() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cli(&d, &["kick", &bob_id.to_string()], 1, "is not online");
    cli(&d, &["kick", "zz"], 2, "not a client id");
    lib.close().await;
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_arrive_during_a_reload_and_with_every_worker_stopped() {
    let d = Deployment::start(chat());
    let lib = d.api().await;
    let mut c = Client::connect(d.addr()).await;
    let id = c.login("carol").await;
    let mut api = Api::of(&d, None);
    let old_workers = d.pids(ChildRole::Worker);

    // A push every 20 ms from before the reload is requested until it is done: every
    // one is answered 200 and arrives, in order.
    let reload = d.cli(&["reload"]);
    assert!(reload.status.success(), "{}", out(&reload));
    let mut sent = 0u32;
    let mut during = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = d.log().contains("reload: done");
        let r = api.post(
            "/v1/push",
            json!({"message": format!("push {sent}"), "client_id": id.to_string()}),
        );
        assert_eq!(r.status, 200, "push {sent} during the reload: {}", r.raw);
        if !done {
            during += 1;
        }
        sent += 1;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the reload never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = d.log();
    assert!(log.contains("reload: draining the old worker"), "{log}");
    assert!(
        during >= 3,
        "only {during} pushes were made during the reload"
    );
    for n in 0..sent {
        c.expect_next(&format!("push {n}")).await;
    }
    let new_workers = d.pids(ChildRole::Worker);
    assert!(
        old_workers.iter().all(|p| !new_workers.contains(p)),
        "the workers were not replaced: {old_workers:?} → {new_workers:?}"
    );

    // With every worker stopped, pushes still arrive: gateways execute them.
    for pid in &new_workers {
        common::stop_process(*pid);
    }
    let r = api.post(
        "/v1/push",
        json!({"message": "no worker needed", "all": true}),
    );
    let cli_out = d.cli(&["push", "--client", &id.to_string(), "nor here"]);
    for pid in &new_workers {
        unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
    }
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["reached"], 1);
    assert!(cli_out.status.success(), "{}", out(&cli_out));
    c.expect_next("no worker needed").await;
    c.expect_next("nor here").await;
    eprintln!("{sent} pushes, {during} of them during the reload");
    lib.close().await;
}
