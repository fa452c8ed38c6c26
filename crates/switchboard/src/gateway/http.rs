//! Plain HTTP on a `websocket` listener: the application's embedded files for a `GET`
//! without `Upgrade`, errors for anything else. One request per connection
//! (`Connection: close`): pages are small and few.

use bytes::Bytes;

use crate::assets::Assets;
use crate::protocol::websocket::{self, HttpError, HttpRequest};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
