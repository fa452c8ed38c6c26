//! Static files an application embeds in its binary and its `websocket` listeners serve
//! over HTTP (`GET /` → the page; a `GET` with `Upgrade: websocket` upgrades instead).
//!
//! They are data, not code: gateways serve them without running application code.

use std::collections::HashMap;

/// One embedded file.
#[derive(Debug, Clone)]
pub struct Asset {
    /// `Content-Type` it is served with.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    /// Strong entity tag (a hash of the bytes), for `If-None-Match`.
    pub etag: String,
}

/// The files of an application, by URL path.
///
/// ```
/// let mut assets = switchboard::Assets::default();
/// assets.add("/", b"<!doctype html><title>chat</title>");
/// assets.add("/chat.js", b"console.log('hi')");
/// assert_eq!(assets.get("/").unwrap().content_type, "text/html; charset=utf-8");
/// assert_eq!(assets.get("/index.html").unwrap().body, assets.get("/").unwrap().body);
/// assert_eq!(assets.get("/chat.js").unwrap().content_type, "text/javascript; charset=utf-8");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Assets {
    files: HashMap<String, Asset>,
}

impl Assets {
    /// Adds a file at `path` (`/`, `/app.js`). `/` (and `/index.html`) is served as
    /// HTML; other types come from the extension.
    pub fn add(&mut self, path: &str, body: &'static [u8]) {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let content_type = if path == "/" {
            "text/html; charset=utf-8"
        } else {
            content_type_of(&path)
        };
        let asset = Asset {
            content_type,
            body,
            etag: format!("\"{:016x}\"", fnv1a(body)),
        };
        if path == "/" || path == "/index.html" {
            self.files.insert("/".into(), asset.clone());
            self.files.insert("/index.html".into(), asset);
        } else {
            self.files.insert(path, asset);
        }
    }

    /// The file at `path`.
    pub fn get(&self, path: &str) -> Option<&Asset> {
        self.files.get(path)
    }

    /// Whether there is no file at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// `Content-Type` by file extension, for the kinds of files a web page is made of.
fn content_type_of(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// FNV-1a, 64 bits: enough to tell versions of a file apart for caching.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
