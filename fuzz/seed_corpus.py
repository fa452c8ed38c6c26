#!/usr/bin/env python3
"""Writes the hand-made seeds of every fuzz target into fuzz/corpus/<target>/seed-*.

Realistic inputs, built after the byte layouts of docs/protocol.md and the formats the
targets' headers describe; the fuzzer grows the corpus from them, and `cargo fuzz cmin`
keeps it small (docs/fuzzing.md). Run from anywhere; existing seeds are overwritten.
"""
import hashlib
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- internal protocol -------------------------------------------------------------
def u8(v): return struct.pack(">B", v)
def u16(v): return struct.pack(">H", v)
def u32(v): return struct.pack(">I", v)
def u64(v): return struct.pack(">Q", v)
def bstr(b): return u32(len(b)) + b
def s(t): return bstr(t.encode())
def client(g, c): return u32(g) + u64(c)
def clients(l): return u32(len(l)) + b"".join(client(*c) for c in l)
def strs(l): return u32(len(l)) + b"".join(s(x) for x in l)
def opt_str(t): return u8(0) if t is None else u8(1) + s(t)
def message(b, binary=False): return bstr(b) + u8(1 if binary else 0)
def per_protocol(default, alts=()):
    return message(default) + u8(len(alts)) + b"".join(u8(p) + message(m) for p, m in alts)
def frame(t, body=b""): return u32(1 + len(body)) + u8(t) + body

nonce = bytes(range(32))
event = lambda kind, body, proto=1: frame(0x10, u64(7) + u8(kind) + client(1, 42) + s("127.0.0.1:50000")
    + s("main") + u8(proto) + opt_str("ann") + strs(["room-1"]) + bstr(b'{"name":"ann"}') + bstr(body) + u8(0))
internal = [
    frame(0x01, u16(3) + u32(1) + nonce),
    frame(0x02, u16(3) + u8(1) + s("worker-1") + nonce + nonce),
    frame(0x02, u16(3) + u8(2) + s("api") + nonce + nonce),
    frame(0x03, nonce),
    frame(0x04, s("bad secret")),
    event(1, b""), event(2, b"hello"), event(3, b""), event(4, b'{"path":"/chat"}', 4),
    frame(0x11, u64(7) + client(1, 42)),
    frame(0x14, u64(8) + client(1, 43) + u16(403) + s("forbidden")),
    frame(0x12), frame(0x13), frame(0x50), frame(0x51),
    frame(0x20, client(1, 42) + per_protocol(b"hi", [(4, b'{"t":"hi"}')])),
    frame(0x21, per_protocol(b"all") + u8(1) + clients([(1, 1), (2, 2)]) + clients([(1, 3)])),
    frame(0x21, per_protocol(b"all") + u8(0) + clients([])),
    frame(0x22, strs(["ann", "bob"]) + per_protocol(b"hi")),
    frame(0x23, strs(["room-1"]) + per_protocol(b"hi", [(1, b"hi"), (3, b"{}")]) + clients([(1, 42)])),
    frame(0x24, client(1, 42) + s("ann")), frame(0x25, client(1, 42) + s("ann")),
    frame(0x26, client(1, 42) + s("room-1")), frame(0x27, client(1, 42) + s("room-1")),
    frame(0x28, s("room-1")),
    frame(0x29, client(1, 42) + bstr(b'{"a":1}')), frame(0x2a, client(1, 42) + bstr(b'{"b":2}')),
    frame(0x2b, client(1, 42) + u8(1) + message(b"bye")), frame(0x2b, client(1, 42) + u8(0)),
] + [frame(0x40, u64(9) + u8(k) + body) for k, body in [
    (1, client(1, 42)), (2, s("ann")), (3, client(1, 42)), (4, s("room-1")), (5, s("room-1")),
    (6, b""), (7, b""), (8, b""), (9, b""), (10, opt_str("room-1")), (10, u8(0)), (11, client(1, 42)),
    (12, b""), (13, u8(0x28) + s("room-1")), (14, s("room-1"))]
] + [frame(0x41, u64(9) + u8(k) + body) for k, body in [
    (1, u8(1)), (2, u64(3)), (3, clients([(1, 42)])), (4, strs(["ann"])), (5, opt_str("ann")),
    (6, u8(1) + bstr(b"{}")), (7, u32(1) + client(1, 42) + bstr(b"{}")),
    (8, u32(1) + client(1, 42) + s("127.0.0.1:1") + s("main") + u8(1) + opt_str(None) + strs(["g"]) + u64(5)),
    (9, s("no such client"))]
]
for i, f in enumerate(internal):
    for choice in (0x00, 0x83):
        write("internal", u8(choice | (i % 32)) + f)
write("internal", u8(0x80) + b"".join(internal))
write("internal", u8(0x00) + u32(16 << 20) + b"\x10")

# --- client codecs -----------------------------------------------------------------
lim = u16(1024)
write("client_text", lim + b"\x00" + b"hello\r\nworld\n\n")
write("client_text", lim + b"\x03" + "héllo wörld\n/join room-1\n".encode())
write("client_text", u16(8) + b"\x01" + b"x" * 12 + b"\n")
write("client_text", lim + b"\x02" + b"a\n\xff\xfe\nb\n")
for body in [b"", b"{\"type\":\"say\",\"content\":\"hi\"}", bytes(range(40))]:
    write("client_frame", lim + b"\x04" + u32(len(body)) + body)
write("client_frame", u16(16) + b"\x00" + u32(1 << 20) + b"0123456789")
for body in [b"{\"type\":1}\n", b"[1,2,3]", b"\"s\"", b"{\"a\":{\"b\":[null,true,1.5e3]}}"]:
    write("client_json", lim + b"\x05" + u32(4 + len(body)) + body)
write("client_json", lim + b"\x00" + u32(3) + b"x")
write("client_json", lim + b"\x00" + u32(9) + b"hello")

# --- WebSocket frames ----------------------------------------------------------------
def ws(first, payload, mask=b"\x37\xfa\x21\x3d"):
    n = len(payload)
    if n < 126: head = bytes([first, 0x80 | n])
    elif n < 65536: head = bytes([first, 0x80 | 126]) + u16(n)
    else: head = bytes([first, 0x80 | 127]) + u64(n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
write("websocket_frames", lim + b"\x00" + ws(0x81, "héllo".encode()))
write("websocket_frames", lim + b"\x03" + ws(0x82, bytes(range(200))))
write("websocket_frames", lim + b"\x01" + ws(0x01, b"frag") + ws(0x89, b"ping") + ws(0x80, b"mented"))
write("websocket_frames", lim + b"\x02" + ws(0x89, b"") + ws(0x8a, b"") + ws(0x88, u16(1000) + b"bye"))
write("websocket_frames", lim + b"\x00" + ws(0x88, b""))
write("websocket_frames", u16(16) + b"\x00" + ws(0x82, b"x" * 300)[:40])

# --- WebSocket HTTP phase ------------------------------------------------------------
upgrade = (b"GET /chat?room_id=2&token=x%20y HTTP/1.1\r\nHost: example.com\r\n"
    b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Origin: https://chat.example.com\r\nX-Forwarded-For: 198.51.100.7, 10.9.9.9\r\n\r\n")
write("websocket_http", b"\x00" + upgrade)
write("websocket_http", b"\x07" + upgrade.replace(b"chat.example.com", b"evil.example"))
write("websocket_http", b"\x01" + upgrade.replace(b"13", b"8"))
write("websocket_http", b"\x02" + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
write("websocket_http", b"\x02" + b"GET /index.html HTTP/1.1\r\nIf-None-Match: \"0\"\r\n\r\n")
write("websocket_http", b"\x03" + b"HEAD / HTTP/1.1\r\n\r\n")
write("websocket_http", b"\x04" + b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
write("websocket_http", b"\x05" + b"GET /nope HTTP/1.0\r\n\r\n")
write("websocket_http", b"\x06" + b"GET / HTTP/1.1\r\nHost: partial")

# --- configuration -------------------------------------------------------------------
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "apps", "chat", "chat.toml"), "rb") as f:
    chat = f.read()
write("config_toml", chat)
minimal = b'name = "app"\nsecret = "s3cret"\n\n[worker]\ncount = 2\n'
full = b'''name = "chat"
secret = "a-long-secret"
data_dir = "/tmp/chat"

[gateway]
count = 2
internal_listen = "127.0.0.1:0"

[[gateway.listeners]]
name = "telnet"
listen = "127.0.0.1:7272"
protocol = "text"
max_message = 4096

[[gateway.listeners]]
name = "web"
listen = "0.0.0.0:8080"
protocol = "websocket"
allowed_origins = ["https://chat.example.com"]
trusted_proxies = ["10.0.0.0/8"]
handshake_timeout = "5s"

[gateway.heartbeat]
interval = "25s"

[worker]
count = 4

[store]
backend = "redis"
url = "redis://:pw@127.0.0.1:6379/0"

[db.instances.main]
driver = "sqlite"
path = "chat.db"
'''
write("config_toml", minimal)
write("config_toml", full)
write("config_override", minimal + b"\0worker.count\x004")
write("config_override", full + b"\0gateway.listeners.0.listen\x00127.0.0.1:9000\0secret\0\"x\"")
write("config_override", minimal + b"\0gateway.listeners.0.protocol\0json\0gateway.listeners.1.listen\0[::1]:80")
write("config_override", chat + b"\0store.backend\0memcached\0worker.count\0[1, 2]")

# --- SQL lexer -----------------------------------------------------------------------
for opt, sql in [
    (0, "SELECT `id`, name FROM users WHERE id = :id AND name LIKE 'a:b%' -- :no\n"),
    (1, "SELECT [a b], \"c\" FROM t WHERE x = :x::int /* :y */ AND z = @z"),
    (0, "INSERT INTO Persons (Name, Sex) VALUES (:name, :sex)"),
    (1, "WITH t AS (SELECT 1) UPDATE x SET a = :a RETURNING id"),
    (0, "select 'it''s \\' :x' # comment :y\n, :1"),
    (2, "t.*"), (2, "Persons AS p"), (4, "did desc"), (0, "schema.table.col"),
    (0, "a.x = b.y AND c.z > 50 AND d.w <> 'x' AND e = :p AND f = -2.5e3"),
    (1, "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, body TEXT)"),
    (0, "(SELECT 1) UNION (SELECT 2)"), (0, "Grüße"), (0, "1234"),
]:
    write("sql_lexer", bytes([opt]) + sql.encode())
