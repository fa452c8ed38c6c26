//! The HTTP phase of a `websocket` listener, without I/O: [`answer_request`] decides
//! what a request gets — the application's embedded files for a `GET` without
//! `Upgrade` ([`respond`]), errors for anything else, a refusal for an upgrade that
//! breaks RFC 6455 or comes from a disallowed origin, else the upgrade to put to the
//! application. One request per connection (`Connection: close`): pages are small and
//! few.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::assets::Assets;
use crate::config::ListenerConfig;
use crate::protocol::websocket::{self, HttpError, HttpRequest};
use crate::request::WebSocketRequest;

/// Why an upgrade was refused before the application was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request breaks RFC 6455 (a bad `Sec-WebSocket-Key` or version), or its
    /// request could not be put into the handshake event: a protocol error.
    BadUpgrade,
    /// The `Origin` is not in the listener's `allowed_origins`: a refusal by policy.
    Origin,
}

/// Only the page's own origin may supply scripts, styles, images and connections.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The answer to a request that does not upgrade.
pub fn respond(req: &HttpRequest, assets: &Assets) -> Bytes {
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        return websocket::error_response(&HttpError {
            status: 405,
            reason: format!("{} is not served here (GET and HEAD only)", req.method),
        });
    }
    let Some(asset) = assets.get(&req.path) else {
        return websocket::error_response(&HttpError {
            status: 404,
            reason: format!("{} not found", req.path),
        });
    };
    let headers = [
        ("ETag", asset.etag.as_str()),
        // Revalidate every time: a reload of the application changes the files.
        ("Cache-Control", "no-cache"),
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ];
    if req.header("if-none-match") == Some(asset.etag.as_str()) {
        return websocket::http_response(304, asset.content_type, &headers, b"", true);
    }
    websocket::http_response(200, asset.content_type, &headers, asset.body, head_only)
}

/// What the gateway does with the HTTP request of a `websocket` listener, decided
/// without I/O ([`answer_request`]; the fuzz target `websocket_http` drives it).
#[derive(Debug)]
pub enum HttpAnswer {
    /// Not an upgrade: the page (or the HTTP error) to answer with, then close.
    Page(Bytes),
    /// An upgrade refused before the application is asked: answer with this error and
    /// count the close by its `refusal`.
    Refused {
        /// The status and why.
        response: HttpError,
        /// Why: what the gateway counts the close under.
        refusal: Refusal,
    },
    /// An upgrade to put to the application (`on_websocket_connect`).
    Upgrade {
        /// The `Sec-WebSocket-Accept` value of the `101` answer.
        accept: String,
        /// The request as the application sees it ([`WebSocketRequest`]) in JSON, the
        /// body of the handshake event.
        json: Vec<u8>,
    },
}

/// Decides the answer to the HTTP request of a `websocket` listener: a file or an HTTP
/// error for a plain request, a refusal for an upgrade that breaks RFC 6455 or comes
/// from a disallowed origin, else the upgrade to ask the application about.
///
/// ```
/// use switchboard_core::config::ListenerConfig;
/// use switchboard_core::http::{answer_request, HttpAnswer, Refusal};
/// use switchboard_core::protocol::websocket::parse_request;
/// use switchboard_core::Assets;
///
/// let config = ListenerConfig {
///     allowed_origins: vec!["https://chat.example.com".into()],
///     ..ListenerConfig::default()
/// };
/// let peer = "192.0.2.1:5000".parse().unwrap();
/// let head = "GET /chat HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\n\
///             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
///             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://evil.example\r\n\r\n";
/// let mut buf = bytes::BytesMut::from(head);
/// let request = parse_request(&mut buf).unwrap().expect("a whole head");
/// match answer_request(&config, &Assets::default(), peer, request) {
///     HttpAnswer::Refused { response, refusal } => {
///         assert_eq!((response.status, refusal), (403, Refusal::Origin));
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
pub fn answer_request(
    config: &ListenerConfig,
    assets: &Assets,
    peer: SocketAddr,
    request: HttpRequest,
) -> HttpAnswer {
    if !request.wants_upgrade() {
        return HttpAnswer::Page(respond(&request, assets));
    }
    let accept = match request.upgrade_key() {
        Ok(key) => key,
        Err(response) => {
            return HttpAnswer::Refused {
                response,
                refusal: Refusal::BadUpgrade,
            }
        }
    };
    if let Err(response) = check_origin(&config.allowed_origins, &request) {
        return HttpAnswer::Refused {
            response,
            refusal: Refusal::Origin,
        };
    }
    let ws_request = WebSocketRequest {
        path: request.path.clone(),
        query: request.query.clone(),
        forwarded_for: forwarded_for(&config.trusted_proxies, peer, &request),
        headers: request.headers,
        peer: peer.to_string(),
    };
    match serde_json::to_vec(&ws_request) {
        Ok(json) => HttpAnswer::Upgrade { accept, json },
        Err(e) => HttpAnswer::Refused {
            response: HttpError {
                status: 400,
                reason: e.to_string(),
            },
            refusal: Refusal::BadUpgrade,
        },
    }
}

/// With a non-empty list, an `Origin` header must be in it. A request without one is not
/// from a browser, and is not checked (it could send any value).
fn check_origin(allowed: &[String], req: &HttpRequest) -> Result<(), HttpError> {
    match req.header("origin") {
        Some(origin) if !allowed.is_empty() => {
            if allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(origin.trim()))
            {
                Ok(())
            } else {
                Err(HttpError {
                    status: 403,
                    reason: format!("origin {origin} is not allowed"),
                })
            }
        }
        _ => Ok(()),
    }
}

/// The client's address from `X-Forwarded-For`, believed only from trusted proxies:
/// the right-most address that is not itself a trusted proxy.
fn forwarded_for(trusted: &[ipnet::IpNet], peer: SocketAddr, req: &HttpRequest) -> Option<String> {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|net| net.contains(&ip));
    if !is_trusted(peer.ip()) {
        return None;
    }
    let chain: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    chain
        .iter()
        .rev()
        .filter_map(|s| s.parse::<std::net::IpAddr>().ok())
        .find(|ip| !is_trusted(*ip))
        .map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientProtocol;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn text(b: &Bytes) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn pages_types_caching_and_errors() {
        let mut assets = Assets::default();
        assets.add("/", b"<h1>hi</h1>");
        let ok = text(&respond(&req("GET", "/", &[]), &assets));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/html; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(
            ok.contains("Content-Security-Policy: default-src 'self'; script-src 'self';"),
            "{ok}"
        );
        assert!(ok.contains("Cache-Control: no-cache\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n<h1>hi</h1>"), "{ok}");
        let etag = assets.get("/").unwrap().etag.clone();
        let cached = text(&respond(
            &req("GET", "/", &[("If-None-Match", &etag)]),
            &assets,
        ));
        assert!(
            cached.starts_with("HTTP/1.1 304 Not Modified\r\n") && cached.ends_with("\r\n\r\n"),
            "{cached}"
        );
        let head = text(&respond(&req("HEAD", "/", &[]), &assets));
        assert!(
            head.contains("Content-Length: 11\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let missing = text(&respond(&req("GET", "/nope", &[]), &assets));
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let post = text(&respond(&req("POST", "/", &[]), &assets));
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
                && post.contains("Allow: GET, HEAD\r\n"),
            "{post}"
        );
    }

    fn upgrade_req(headers: &[(&str, &str)]) -> HttpRequest {
        req("GET", "/", headers)
    }

    #[test]
    fn http_answers_a_page_a_refusal_or_an_upgrade() {
        let config = ListenerConfig {
            protocol: ClientProtocol::WebSocket,
            allowed_origins: vec!["https://chat.example.com".into()],
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..ListenerConfig::default()
        };
        let mut assets = Assets::default();
        assets.add("/", b"<h1>hi</h1>");
        let peer: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let upgrade = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];

        let HttpAnswer::Page(page) = answer_request(&config, &assets, peer, upgrade_req(&[]))
        else {
            panic!("a plain GET gets the page");
        };
        assert!(page.starts_with(b"HTTP/1.1 200 OK\r\n"));

        let bad_key = [&upgrade[..3], &[("Sec-WebSocket-Key", "short")]].concat();
        match answer_request(&config, &assets, peer, upgrade_req(&bad_key)) {
            HttpAnswer::Refused { response, refusal } => {
                assert_eq!((response.status, refusal), (400, Refusal::BadUpgrade));
            }
            other => panic!("{other:?}"),
        }

        let evil = [&upgrade[..], &[("Origin", "https://evil.example")]].concat();
        match answer_request(&config, &assets, peer, upgrade_req(&evil)) {
            HttpAnswer::Refused { response, refusal } => {
                assert_eq!((response.status, refusal), (403, Refusal::Origin));
            }
            other => panic!("{other:?}"),
        }

        let good = [
            &upgrade[..],
            &[
                ("Origin", "https://chat.example.com"),
                ("X-Forwarded-For", "198.51.100.7"),
            ],
        ]
        .concat();
        let HttpAnswer::Upgrade { accept, json } =
            answer_request(&config, &assets, peer, upgrade_req(&good))
        else {
            panic!("an upgrade");
        };
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let seen: WebSocketRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(seen.forwarded_for.as_deref(), Some("198.51.100.7"));
        assert_eq!(seen.peer, "10.1.2.3:4000");
        assert_eq!(seen.headers.len(), good.len());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let from_proxy: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let from_client: SocketAddr = "203.0.113.5:4000".parse().unwrap();
        let r = upgrade_req(&[("X-Forwarded-For", "198.51.100.7, 10.9.9.9")]);
        assert_eq!(
            forwarded_for(&trusted, from_proxy, &r).as_deref(),
            Some("198.51.100.7"),
            "the right-most untrusted hop"
        );
        assert_eq!(forwarded_for(&trusted, from_client, &r), None);
        assert_eq!(forwarded_for(&[], from_proxy, &r), None);
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://chat.example.com".to_string()];
        assert!(check_origin(
            &allowed,
            &upgrade_req(&[("Origin", "https://chat.example.com")])
        )
        .is_ok());
        assert_eq!(
            check_origin(
                &allowed,
                &upgrade_req(&[("Origin", "https://evil.example")])
            )
            .unwrap_err()
            .status,
            403
        );
        assert!(
            check_origin(&allowed, &upgrade_req(&[])).is_ok(),
            "not a browser"
        );
        assert!(check_origin(&[], &upgrade_req(&[("Origin", "https://any")])).is_ok());
    }
}
