//! The internal protocol between gateways and workers: a pure codec, no I/O.
//!
//! Every frame is `u32 length (big-endian)` + `u8 type` + body, where `length` counts the
//! type byte and the body. Bodies are built from a handful of primitives (big-endian
//! integers, `u32`-length-prefixed byte strings, `u32`-count-prefixed lists). The full
//! byte layout is in `docs/protocol.md`; [`PROTOCOL_VERSION`] is exchanged in the
//! handshake and a peer with another version is refused.
//!
//! Decoding never panics: a truncated body, an unknown type, bad UTF-8, trailing bytes or
//! a frame over the size bound is a [`ProtocolError`]. "Not enough bytes yet" is not an
//! error: [`decode`] returns `Ok(None)`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::ClientProtocol;
use crate::{ClientId, Message, PerProtocol};

/// Version of this protocol, sent in [`Frame::Hello`] and [`Frame::Auth`].
///
/// 2: events carry the listener, its protocol, the client's uid and groups and whether
/// the message is binary; sends carry the text/binary mark; counted sends; the
/// WebSocket handshake event and its verdict.
///
/// 3: the message of every send carries its renderings per client protocol
/// ([`PerProtocol`]), after the default one.
///
/// 4: a reply larger than a frame comes in pages ([`Frame::ReplyPart`]).
///
/// 5: [`Command::SendOrTell`], a send that also tells its sender what became of it.
pub const PROTOCOL_VERSION: u16 = 5;

/// Bytes in a frame header (the length field).
const HEADER: usize = 4;

/// Length of the handshake nonce and of the HMAC-SHA256 answer.
pub const NONCE_LEN: usize = 32;

/// What is wrong with bytes that claim to be an internal frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The length field announces more than the configured bound.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// Configured bound.
        max: usize,
    },
    /// The length field is zero (no type byte).
    #[error("empty frame")]
    Empty,
    /// Unknown frame type byte.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A body ended before a field was complete.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    /// A body had bytes left after its last field.
    #[error("{0} frame has {1} trailing bytes")]
    Trailing(&'static str, usize),
    /// A field held a value outside its range (bad enum tag, bad UTF-8).
    #[error("invalid {field} in {frame} frame")]
    Invalid {
        /// The frame kind.
        frame: &'static str,
        /// The field.
        field: &'static str,
    },
}

/// Which side of a connection a peer of the gateway plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A worker: receives events, sends commands.
    Worker,
    /// A Gateway API client outside any worker (a web back end): commands only, never
    /// given events.
    Api,
}

/// What happened to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A client connected.
    Connect,
    /// A client sent a message.
    Message,
    /// A client disconnected.
    Close,
    /// A WebSocket client asks to upgrade (the body is the request as JSON); the worker
    /// answers with [`Frame::Verdict`] instead of [`Frame::Ack`].
    WebSocketConnect,
}

/// One event, as a gateway ships it to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Gateway-assigned sequence number on this link; the worker acknowledges it.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// Which client.
    pub client: ClientId,
    /// The client's remote address (`ip:port`).
    pub addr: String,
    /// Name of the listener the client connected to.
    pub listener: String,
    /// That listener's protocol.
    pub protocol: ClientProtocol,
    /// The uid the client is bound to, if any.
    pub uid: Option<String>,
    /// The groups the client is in, sorted.
    pub groups: Vec<String>,
    /// The client's session as a JSON object (`{}` when empty).
    pub session: Bytes,
    /// The message (empty for connect and close).
    pub body: Bytes,
    /// Whether `body` is a binary message (else it is UTF-8 text).
    pub binary: bool,
}

/// What a worker asks a gateway to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send to one client.
    SendToClient {
        /// Recipient.
        client: ClientId,
        /// Message, rendered for the recipient's protocol.
        data: PerProtocol,
    },
    /// Send to every client of this gateway, or only to `only` when given; never to
    /// `exclude`.
    SendToAll {
        /// Message, rendered for each recipient's protocol.
        data: PerProtocol,
        /// When present, the recipients (those held by this gateway).
        only: Option<Vec<ClientId>>,
        /// Clients to skip.
        exclude: Vec<ClientId>,
    },
    /// Send to every client bound to any of these uids.
    SendToUid {
        /// The uids.
        uids: Vec<String>,
        /// Message, rendered for each recipient's protocol.
        data: PerProtocol,
    },
    /// Send to every member of any of these groups, except `exclude`.
    SendToGroup {
        /// The groups.
        groups: Vec<String>,
        /// Message, rendered for each recipient's protocol.
        data: PerProtocol,
        /// Clients to skip.
        exclude: Vec<ClientId>,
    },
    /// Bind a client to a uid (replacing any previous uid of that client).
    BindUid {
        /// The client.
        client: ClientId,
        /// The uid.
        uid: String,
    },
    /// Unbind a client from a uid.
    UnbindUid {
        /// The client.
        client: ClientId,
        /// The uid.
        uid: String,
    },
    /// Add a client to a group.
    JoinGroup {
        /// The client.
        client: ClientId,
        /// The group.
        group: String,
    },
    /// Remove a client from a group.
    LeaveGroup {
        /// The client.
        client: ClientId,
        /// The group.
        group: String,
    },
    /// Dissolve a group (members stay connected).
    Ungroup {
        /// The group.
        group: String,
    },
    /// Replace a client's session (a JSON object).
    SetSession {
        /// The client.
        client: ClientId,
        /// The new session, a JSON object.
        session: Bytes,
    },
    /// Merge keys into a client's session (a JSON object; `null` values remove keys).
    UpdateSession {
        /// The client.
        client: ClientId,
        /// The keys to merge, a JSON object.
        session: Bytes,
    },
    /// Close a client, after sending `last` if given.
    CloseClient {
        /// The client.
        client: ClientId,
        /// A last message, sent before the connection closes.
        last: Option<Message>,
    },
    /// Send to one client and tell another (the sender, on the same gateway) what
    /// became of it, in the same step: `sent` when `client` got `data`, `offline` when
    /// `client` is not online. The chat's private line with no round trip.
    SendOrTell {
        /// Recipient.
        client: ClientId,
        /// Message, rendered for the recipient's protocol.
        data: PerProtocol,
        /// Who is told; only a client of the same gateway is.
        sender: ClientId,
        /// Sent to `sender` when `client` got `data`.
        sent: Option<PerProtocol>,
        /// Sent to `sender` when `client` is not online.
        offline: Option<PerProtocol>,
    },
}

/// An [`Event`] borrowed from where the gateway keeps its parts, to be encoded without
/// copying them into an owned `Event` first ([`EventRef::encode_to_bytes`]): one
/// allocation per event, the frame's.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a, G> {
    /// See [`Event::seq`].
    pub seq: u64,
    /// See [`Event::kind`].
    pub kind: EventKind,
    /// See [`Event::client`].
    pub client: ClientId,
    /// See [`Event::addr`].
    pub addr: &'a str,
    /// See [`Event::listener`].
    pub listener: &'a str,
    /// See [`Event::protocol`].
    pub protocol: ClientProtocol,
    /// See [`Event::uid`].
    pub uid: Option<&'a str>,
    /// See [`Event::groups`]: anything that lists them, in order.
    pub groups: G,
    /// See [`Event::session`].
    pub session: &'a [u8],
    /// See [`Event::body`].
    pub body: &'a [u8],
    /// See [`Event::binary`].
    pub binary: bool,
}

impl<'a, G, S> EventRef<'a, G>
where
    G: IntoIterator<Item = S> + Copy,
    S: AsRef<str>,
{
    /// The whole frame (header included), in a buffer allocated once at its size.
    pub fn encode_to_bytes(&self) -> Bytes {
        let groups: usize = self.groups.into_iter().map(|g| 4 + g.as_ref().len()).sum();
        let size = HEADER
            + 1 // type
            + 8 + 1 + 12 // seq, kind, client
            + 4 + self.addr.len()
            + 4 + self.listener.len()
            + 1 // protocol
            + 1 + self.uid.map_or(0, |u| 4 + u.len())
            + 4 + groups
            + 4 + self.session.len()
            + 4 + self.body.len()
            + 1; // binary
        let mut buf = BytesMut::with_capacity(size);
        buf.put_u32(0);
        self.write(&mut Writer(&mut buf));
        let len = (buf.len() - HEADER) as u32;
        buf[..HEADER].copy_from_slice(&len.to_be_bytes());
        debug_assert_eq!(buf.len(), size, "the size computed ahead is exact");
        buf.freeze()
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.u8(ty::EVENT);
        w.u64(self.seq);
        w.u8(match self.kind {
            EventKind::Connect => 1,
            EventKind::Message => 2,
            EventKind::Close => 3,
            EventKind::WebSocketConnect => 4,
        });
        w.client(self.client);
        w.str(self.addr);
        w.str(self.listener);
        w.u8(self.protocol.wire_byte());
        w.opt_str(self.uid);
        let count = self.groups.into_iter().count();
        w.u32(count as u32);
        for g in self.groups {
            w.str(g.as_ref());
        }
        w.bytes(self.session);
        w.bytes(self.body);
        w.u8(u8::from(self.binary));
    }
}

/// A question a worker asks a gateway; answered by a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Is this client connected? → [`Reply::Bool`]
    IsOnline(ClientId),
    /// Clients bound to a uid → [`Reply::ClientIds`]
    ClientIdsByUid(String),
    /// The uid of a client → [`Reply::OptString`]
    UidByClientId(ClientId),
    /// Members of a group → [`Reply::ClientIds`]
    ClientIdsByGroup(String),
    /// Number of members of a group → [`Reply::Count`]
    ClientCountByGroup(String),
    /// Number of clients → [`Reply::Count`]
    AllClientCount,
    /// Every client → [`Reply::ClientIds`]
    AllClientIds,
    /// Every bound uid → [`Reply::Strings`]
    AllUids,
    /// Every group with members → [`Reply::Strings`]
    AllGroups,
    /// Sessions of every client, or of a group's members → [`Reply::Sessions`]
    Sessions(Option<String>),
    /// One client's session → [`Reply::OptBytes`]
    GetSession(ClientId),
    /// One row per client (for `connections`) → [`Reply::Clients`]
    Clients,
    /// Execute a send command and say how many clients it reached → [`Reply::Count`]
    Counted(Command),
    /// Uids bound to members of a group → [`Reply::Strings`]
    UidsByGroup(String),
}

/// One client as listed by [`Query::Clients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client.
    pub client: ClientId,
    /// Remote address.
    pub addr: String,
    /// Name of the listener it connected to.
    pub listener: String,
    /// That listener's protocol.
    pub protocol: ClientProtocol,
    /// Bound uid, if any.
    pub uid: Option<String>,
    /// Groups the client is in.
    pub groups: Vec<String>,
    /// Milliseconds since the client last sent anything.
    pub idle_ms: u64,
}

/// A gateway's answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Yes or no.
    Bool(bool),
    /// A count.
    Count(u64),
    /// A list of clients.
    ClientIds(Vec<ClientId>),
    /// A list of strings.
    Strings(Vec<String>),
    /// Maybe a string.
    OptString(Option<String>),
    /// Maybe bytes.
    OptBytes(Option<Bytes>),
    /// Clients with their sessions (JSON objects).
    Sessions(Vec<(ClientId, Bytes)>),
    /// Client rows.
    Clients(Vec<ClientInfo>),
    /// The gateway could not answer.
    Error(String),
}

/// One internal frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Gateway → peer, first frame on a connection: who I am and the challenge.
    Hello {
        /// Protocol version.
        version: u16,
        /// The gateway's number (the first part of its client ids).
        gateway: u32,
        /// Random challenge; the peer answers with HMAC-SHA256(secret, nonce ‖ role ‖ name).
        nonce: [u8; NONCE_LEN],
    },
    /// Peer → gateway: the answer to the challenge.
    Auth {
        /// Protocol version.
        version: u16,
        /// Worker or API client.
        role: Role,
        /// Free-form name for logs (`worker-1234`).
        name: String,
        /// HMAC-SHA256 over nonce, role byte and name, keyed by the shared secret.
        mac: [u8; NONCE_LEN],
        /// The peer's own challenge: the gateway proves it knows the secret too.
        nonce: [u8; NONCE_LEN],
    },
    /// Gateway → peer: authenticated.
    Welcome {
        /// HMAC-SHA256 over the peer's nonce, a zero role byte and the gateway number.
        mac: [u8; NONCE_LEN],
    },
    /// Gateway → peer: refused; the gateway closes the connection after this frame.
    Refused {
        /// Why.
        reason: String,
    },
    /// Gateway → worker: an event to handle.
    Event(Event),
    /// Worker → gateway: an event has been handled.
    Ack {
        /// The event's sequence number.
        seq: u64,
        /// The event's client (lets the gateway find it without an index).
        client: ClientId,
    },
    /// Worker → gateway: a `WebSocketConnect` event has been handled, and whether the
    /// client may upgrade.
    Verdict {
        /// The event's sequence number.
        seq: u64,
        /// The event's client.
        client: ClientId,
        /// 0: accepted; otherwise the HTTP status the client is refused with.
        status: u16,
        /// Why it was refused (the body of the refusal).
        reason: String,
    },
    /// Worker → gateway: send me no new events; I will exit once done.
    Draining,
    /// Gateway → worker: no new events will follow on this link.
    DrainAck,
    /// Peer → gateway: do something.
    Command(Command),
    /// Peer → gateway: a question.
    Query {
        /// Request id, echoed in the reply.
        id: u64,
        /// The question.
        query: Query,
    },
    /// Gateway → peer: the answer to a query.
    Reply {
        /// Request id from the query.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// Gateway → peer: one page of an answer too large for one frame; more pages
    /// follow, the last one as a [`Frame::Reply`]. The peer joins them in order
    /// ([`Reply::extend`]). Only list answers are paged.
    ReplyPart {
        /// Request id from the query.
        id: u64,
        /// This page.
        reply: Reply,
    },
    /// Liveness probe (either direction); answered by `Pong`.
    Ping,
    /// Answer to `Ping`.
    Pong,
}

// Frame type bytes. Commands are 0x20.., so a command's type byte names the command.
mod ty {
    pub const HELLO: u8 = 0x01;
    pub const AUTH: u8 = 0x02;
    pub const WELCOME: u8 = 0x03;
    pub const REFUSED: u8 = 0x04;
    pub const EVENT: u8 = 0x10;
    pub const ACK: u8 = 0x11;
    pub const DRAINING: u8 = 0x12;
    pub const DRAIN_ACK: u8 = 0x13;
    pub const VERDICT: u8 = 0x14;
    pub const SEND_TO_CLIENT: u8 = 0x20;
    pub const SEND_TO_ALL: u8 = 0x21;
    pub const SEND_TO_UID: u8 = 0x22;
    pub const SEND_TO_GROUP: u8 = 0x23;
    pub const BIND_UID: u8 = 0x24;
    pub const UNBIND_UID: u8 = 0x25;
    pub const JOIN_GROUP: u8 = 0x26;
    pub const LEAVE_GROUP: u8 = 0x27;
    pub const UNGROUP: u8 = 0x28;
    pub const SET_SESSION: u8 = 0x29;
    pub const UPDATE_SESSION: u8 = 0x2a;
    pub const CLOSE_CLIENT: u8 = 0x2b;
    pub const SEND_OR_TELL: u8 = 0x2c;
    pub const QUERY: u8 = 0x40;
    pub const REPLY: u8 = 0x41;
    pub const REPLY_PART: u8 = 0x42;
    pub const PING: u8 = 0x50;
    pub const PONG: u8 = 0x51;
}

/// Appends the encoding of `frame` to `dst`.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    let start = dst.len();
    dst.put_u32(0); // patched below
    let mut w = Writer(dst);
    match frame {
        Frame::Hello {
            version,
            gateway,
            nonce,
        } => {
            w.u8(ty::HELLO);
            w.u16(*version);
            w.u32(*gateway);
            w.raw(nonce);
        }
        Frame::Auth {
            version,
            role,
            name,
            mac,
            nonce,
        } => {
            w.u8(ty::AUTH);
            w.u16(*version);
            w.u8(role_byte(*role));
            w.str(name);
            w.raw(mac);
            w.raw(nonce);
        }
        Frame::Welcome { mac } => {
            w.u8(ty::WELCOME);
            w.raw(mac);
        }
        Frame::Refused { reason } => {
            w.u8(ty::REFUSED);
            w.str(reason);
        }
        Frame::Event(e) => EventRef {
            seq: e.seq,
            kind: e.kind,
            client: e.client,
            addr: &e.addr,
            listener: &e.listener,
            protocol: e.protocol,
            uid: e.uid.as_deref(),
            groups: &e.groups,
            session: &e.session,
            body: &e.body,
            binary: e.binary,
        }
        .write(&mut w),
        Frame::Ack { seq, client } => {
            w.u8(ty::ACK);
            w.u64(*seq);
            w.client(*client);
        }
        Frame::Verdict {
            seq,
            client,
            status,
            reason,
        } => {
            w.u8(ty::VERDICT);
            w.u64(*seq);
            w.client(*client);
            w.u16(*status);
            w.str(reason);
        }
        Frame::Draining => w.u8(ty::DRAINING),
        Frame::DrainAck => w.u8(ty::DRAIN_ACK),
        Frame::Command(c) => encode_command(c, &mut w),
        Frame::Query { id, query } => {
            w.u8(ty::QUERY);
            w.u64(*id);
            encode_query(query, &mut w);
        }
        Frame::Reply { id, reply } => {
            w.u8(ty::REPLY);
            w.u64(*id);
            encode_reply(reply, &mut w);
        }
        Frame::ReplyPart { id, reply } => {
            w.u8(ty::REPLY_PART);
            w.u64(*id);
            encode_reply(reply, &mut w);
        }
        Frame::Ping => w.u8(ty::PING),
        Frame::Pong => w.u8(ty::PONG),
    }
    let len = (dst.len() - start - HEADER) as u32;
    dst[start..start + HEADER].copy_from_slice(&len.to_be_bytes());
}

impl Reply {
    /// Appends the next page of a paged answer ([`Frame::ReplyPart`]) to this one.
    /// Pages of a different kind, or of an answer that is not a list, are a protocol
    /// error (`Err` with the page's kind).
    pub fn extend(&mut self, page: Reply) -> Result<(), ProtocolError> {
        let bad = ProtocolError::Invalid {
            frame: "reply-part",
            field: "reply kind",
        };
        match (self, page) {
            (Reply::ClientIds(a), Reply::ClientIds(b)) => a.extend(b),
            (Reply::Strings(a), Reply::Strings(b)) => a.extend(b),
            (Reply::Sessions(a), Reply::Sessions(b)) => a.extend(b),
            (Reply::Clients(a), Reply::Clients(b)) => a.extend(b),
            _ => return Err(bad),
        }
        Ok(())
    }

    /// Splits a list answer into two halves of about equal length; gives the answer
    /// back (`Err`) when it is not a list, or a list of fewer than two items.
    fn halves(self) -> Result<(Reply, Reply), Reply> {
        fn split<T>(mut a: Vec<T>, f: fn(Vec<T>) -> Reply) -> Result<(Reply, Reply), Reply> {
            if a.len() < 2 {
                return Err(f(a));
            }
            let b = a.split_off(a.len() / 2);
            Ok((f(a), f(b)))
        }
        match self {
            Reply::ClientIds(a) => split(a, Reply::ClientIds),
            Reply::Strings(a) => split(a, Reply::Strings),
            Reply::Sessions(a) => split(a, Reply::Sessions),
            Reply::Clients(a) => split(a, Reply::Clients),
            other => Err(other),
        }
    }
}

/// Encodes the answer to query `id` in frames of at most `max_frame` bytes: one
/// [`Frame::Reply`], or — for a list too large for one frame — [`Frame::ReplyPart`]
/// pages and a last `Reply`, in order. An answer that cannot be split small enough (a
/// single item over the limit) becomes one [`Reply::Error`] saying so: the peer gets
/// an error instead of a frame it would have to drop the link for.
pub fn reply_frames(id: u64, reply: Reply, max_frame: usize) -> Vec<Bytes> {
    let mut frames = Vec::new();
    if let Err(size) = push_pages(&mut frames, id, reply, max_frame, true) {
        frames.clear();
        let error = Reply::Error(format!(
            "an item of the answer takes {size} bytes, over the internal frame limit of {max_frame} bytes"
        ));
        frames.push(encode_reply_frame(id, &error, true));
    }
    frames
}

/// Appends the pages of `reply` to `frames`; `last` marks the end of the answer.
/// `Err` carries the size of a frame that could not be split.
fn push_pages(
    frames: &mut Vec<Bytes>,
    id: u64,
    reply: Reply,
    max_frame: usize,
    last: bool,
) -> Result<(), usize> {
    let bytes = encode_reply_frame(id, &reply, last);
    let size = bytes.len() - HEADER;
    if size <= max_frame {
        frames.push(bytes);
        return Ok(());
    }
    drop(bytes);
    let (first, second) = reply.halves().map_err(|_| size)?;
    push_pages(frames, id, first, max_frame, false)?;
    push_pages(frames, id, second, max_frame, last)
}

fn encode_reply_frame(id: u64, reply: &Reply, last: bool) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u32(0);
    let mut w = Writer(&mut buf);
    w.u8(if last { ty::REPLY } else { ty::REPLY_PART });
    w.u64(id);
    encode_reply(reply, &mut w);
    let len = (buf.len() - HEADER) as u32;
    buf[..HEADER].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Encodes one frame into fresh bytes.
///
/// The frame is written into a buffer kept by the thread and copied out at its size:
/// one allocation per frame, where a buffer grown from nothing took one per doubling
/// (seven for a chat line). A frame that grew the buffer past 64 KiB takes the buffer
/// itself, uncopied, and the next frame starts a new one.
pub fn encode_to_bytes(frame: &Frame) -> Bytes {
    thread_local! {
        static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }
    // `encode` never calls back here, so the buffer is never borrowed twice.
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        encode(frame, buf);
        if buf.capacity() > SCRATCH_KEPT {
            std::mem::take(buf).freeze()
        } else {
            Bytes::copy_from_slice(buf)
        }
    })
}

/// The largest encoding buffer a thread keeps between frames (see [`encode_to_bytes`]).
const SCRATCH_KEPT: usize = 64 << 10;

fn encode_command(c: &Command, w: &mut Writer<'_>) {
    match c {
        Command::SendToClient { client, data } => {
            w.u8(ty::SEND_TO_CLIENT);
            w.client(*client);
            w.per_protocol(data);
        }
        Command::SendToAll {
            data,
            only,
            exclude,
        } => {
            w.u8(ty::SEND_TO_ALL);
            w.per_protocol(data);
            match only {
                None => w.u8(0),
                Some(list) => {
                    w.u8(1);
                    w.clients(list);
                }
            }
            w.clients(exclude);
        }
        Command::SendToUid { uids, data } => {
            w.u8(ty::SEND_TO_UID);
            w.strs(uids);
            w.per_protocol(data);
        }
        Command::SendToGroup {
            groups,
            data,
            exclude,
        } => {
            w.u8(ty::SEND_TO_GROUP);
            w.strs(groups);
            w.per_protocol(data);
            w.clients(exclude);
        }
        Command::BindUid { client, uid } => {
            w.u8(ty::BIND_UID);
            w.client(*client);
            w.str(uid);
        }
        Command::UnbindUid { client, uid } => {
            w.u8(ty::UNBIND_UID);
            w.client(*client);
            w.str(uid);
        }
        Command::JoinGroup { client, group } => {
            w.u8(ty::JOIN_GROUP);
            w.client(*client);
            w.str(group);
        }
        Command::LeaveGroup { client, group } => {
            w.u8(ty::LEAVE_GROUP);
            w.client(*client);
            w.str(group);
        }
        Command::Ungroup { group } => {
            w.u8(ty::UNGROUP);
            w.str(group);
        }
        Command::SetSession { client, session } => {
            w.u8(ty::SET_SESSION);
            w.client(*client);
            w.bytes(session);
        }
        Command::UpdateSession { client, session } => {
            w.u8(ty::UPDATE_SESSION);
            w.client(*client);
            w.bytes(session);
        }
        Command::CloseClient { client, last } => {
            w.u8(ty::CLOSE_CLIENT);
            w.client(*client);
            w.opt_message(last.as_ref());
        }
        Command::SendOrTell {
            client,
            data,
            sender,
            sent,
            offline,
        } => {
            w.u8(ty::SEND_OR_TELL);
            w.client(*client);
            w.per_protocol(data);
            w.client(*sender);
            w.opt_per_protocol(sent.as_ref());
            w.opt_per_protocol(offline.as_ref());
        }
    }
}

fn encode_query(q: &Query, w: &mut Writer<'_>) {
    match q {
        Query::IsOnline(c) => {
            w.u8(1);
            w.client(*c);
        }
        Query::ClientIdsByUid(s) => {
            w.u8(2);
            w.str(s);
        }
        Query::UidByClientId(c) => {
            w.u8(3);
            w.client(*c);
        }
        Query::ClientIdsByGroup(s) => {
            w.u8(4);
            w.str(s);
        }
        Query::ClientCountByGroup(s) => {
            w.u8(5);
            w.str(s);
        }
        Query::AllClientCount => w.u8(6),
        Query::AllClientIds => w.u8(7),
        Query::AllUids => w.u8(8),
        Query::AllGroups => w.u8(9),
        Query::Sessions(group) => {
            w.u8(10);
            w.opt_str(group.as_deref());
        }
        Query::GetSession(c) => {
            w.u8(11);
            w.client(*c);
        }
        Query::Clients => w.u8(12),
        Query::Counted(c) => {
            w.u8(13);
            encode_command(c, w);
        }
        Query::UidsByGroup(g) => {
            w.u8(14);
            w.str(g);
        }
    }
}

fn encode_reply(r: &Reply, w: &mut Writer<'_>) {
    match r {
        Reply::Bool(b) => {
            w.u8(1);
            w.u8(u8::from(*b));
        }
        Reply::Count(n) => {
            w.u8(2);
            w.u64(*n);
        }
        Reply::ClientIds(list) => {
            w.u8(3);
            w.clients(list);
        }
        Reply::Strings(list) => {
            w.u8(4);
            w.strs(list);
        }
        Reply::OptString(s) => {
            w.u8(5);
            w.opt_str(s.as_deref());
        }
        Reply::OptBytes(b) => {
            w.u8(6);
            w.opt_bytes(b.as_ref());
        }
        Reply::Sessions(list) => {
            w.u8(7);
            w.u32(list.len() as u32);
            for (c, s) in list {
                w.client(*c);
                w.bytes(s);
            }
        }
        Reply::Clients(list) => {
            w.u8(8);
            w.u32(list.len() as u32);
            for info in list {
                w.client(info.client);
                w.str(&info.addr);
                w.str(&info.listener);
                w.u8(info.protocol.wire_byte());
                w.opt_str(info.uid.as_deref());
                w.strs(&info.groups);
                w.u64(info.idle_ms);
            }
        }
        Reply::Error(msg) => {
            w.u8(9);
            w.str(msg);
        }
    }
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Worker => 1,
        Role::Api => 2,
    }
}

/// Decodes one frame from the front of `src`, consuming its bytes.
///
/// Returns `Ok(None)` when `src` does not hold a whole frame yet (nothing is consumed),
/// and an error when the announced length exceeds `max_frame` or the body is malformed.
pub fn decode(src: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, ProtocolError> {
    if src.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len == 0 {
        return Err(ProtocolError::Empty);
    }
    if len > max_frame {
        return Err(ProtocolError::TooLarge {
            size: len,
            max: max_frame,
        });
    }
    if src.len() < HEADER + len {
        // Nothing is reserved for the announced length: the buffer grows with the
        // bytes that actually arrive (a peer may announce 16 MiB and send 5 bytes).
        return Ok(None);
    }
    src.advance(HEADER);
    let body = src.split_to(len).freeze();
    parse(body).map(Some)
}

/// Parses one frame body (type byte + fields) that is known to be complete.
fn parse(body: Bytes) -> Result<Frame, ProtocolError> {
    let mut r = Reader {
        buf: body,
        frame: "frame",
    };
    let t = r.u8()?;
    r.frame = frame_name(t).ok_or(ProtocolError::UnknownType(t))?;
    let frame = match t {
        ty::HELLO => Frame::Hello {
            version: r.u16()?,
            gateway: r.u32()?,
            nonce: r.array()?,
        },
        ty::AUTH => Frame::Auth {
            version: r.u16()?,
            role: match r.u8()? {
                1 => Role::Worker,
                2 => Role::Api,
                _ => return Err(r.invalid("role")),
            },
            name: r.str()?,
            mac: r.array()?,
            nonce: r.array()?,
        },
        ty::WELCOME => Frame::Welcome { mac: r.array()? },
        ty::REFUSED => Frame::Refused { reason: r.str()? },
        ty::EVENT => Frame::Event(Event {
            seq: r.u64()?,
            kind: match r.u8()? {
                1 => EventKind::Connect,
                2 => EventKind::Message,
                3 => EventKind::Close,
                4 => EventKind::WebSocketConnect,
                _ => return Err(r.invalid("event kind")),
            },
            client: r.client()?,
            addr: r.str()?,
            listener: r.str()?,
            protocol: ClientProtocol::from_wire_byte(r.u8()?).ok_or(r.invalid("protocol"))?,
            uid: r.opt_str()?,
            groups: r.strs()?,
            session: r.bytes()?,
            body: r.bytes()?,
            binary: r.flag()?,
        }),
        ty::ACK => Frame::Ack {
            seq: r.u64()?,
            client: r.client()?,
        },
        ty::VERDICT => Frame::Verdict {
            seq: r.u64()?,
            client: r.client()?,
            status: r.u16()?,
            reason: r.str()?,
        },
        ty::DRAINING => Frame::Draining,
        ty::DRAIN_ACK => Frame::DrainAck,
        ty::SEND_TO_CLIENT..=ty::SEND_OR_TELL => Frame::Command(parse_command(t, &mut r)?),
        ty::QUERY => Frame::Query {
            id: r.u64()?,
            query: parse_query(&mut r)?,
        },
        ty::REPLY => Frame::Reply {
            id: r.u64()?,
            reply: parse_reply(&mut r)?,
        },
        ty::REPLY_PART => Frame::ReplyPart {
            id: r.u64()?,
            reply: parse_reply(&mut r)?,
        },
        ty::PING => Frame::Ping,
        ty::PONG => Frame::Pong,
        other => return Err(ProtocolError::UnknownType(other)),
    };
    if r.buf.has_remaining() {
        return Err(ProtocolError::Trailing(r.frame, r.buf.remaining()));
    }
    Ok(frame)
}

/// Parses the body of a command whose type byte `t` has been read.
fn parse_command(t: u8, r: &mut Reader) -> Result<Command, ProtocolError> {
    Ok(match t {
        ty::SEND_TO_CLIENT => Command::SendToClient {
            client: r.client()?,
            data: r.per_protocol()?,
        },
        ty::SEND_TO_ALL => Command::SendToAll {
            data: r.per_protocol()?,
            only: match r.u8()? {
                0 => None,
                1 => Some(r.clients()?),
                _ => return Err(r.invalid("only flag")),
            },
            exclude: r.clients()?,
        },
        ty::SEND_TO_UID => Command::SendToUid {
            uids: r.strs()?,
            data: r.per_protocol()?,
        },
        ty::SEND_TO_GROUP => Command::SendToGroup {
            groups: r.strs()?,
            data: r.per_protocol()?,
            exclude: r.clients()?,
        },
        ty::BIND_UID => Command::BindUid {
            client: r.client()?,
            uid: r.str()?,
        },
        ty::UNBIND_UID => Command::UnbindUid {
            client: r.client()?,
            uid: r.str()?,
        },
        ty::JOIN_GROUP => Command::JoinGroup {
            client: r.client()?,
            group: r.str()?,
        },
        ty::LEAVE_GROUP => Command::LeaveGroup {
            client: r.client()?,
            group: r.str()?,
        },
        ty::UNGROUP => Command::Ungroup { group: r.str()? },
        ty::SET_SESSION => Command::SetSession {
            client: r.client()?,
            session: r.bytes()?,
        },
        ty::UPDATE_SESSION => Command::UpdateSession {
            client: r.client()?,
            session: r.bytes()?,
        },
        ty::CLOSE_CLIENT => Command::CloseClient {
            client: r.client()?,
            last: r.opt_message()?,
        },
        ty::SEND_OR_TELL => Command::SendOrTell {
            client: r.client()?,
            data: r.per_protocol()?,
            sender: r.client()?,
            sent: r.opt_per_protocol()?,
            offline: r.opt_per_protocol()?,
        },
        _ => return Err(r.invalid("command type")),
    })
}

fn parse_query(r: &mut Reader) -> Result<Query, ProtocolError> {
    Ok(match r.u8()? {
        1 => Query::IsOnline(r.client()?),
        2 => Query::ClientIdsByUid(r.str()?),
        3 => Query::UidByClientId(r.client()?),
        4 => Query::ClientIdsByGroup(r.str()?),
        5 => Query::ClientCountByGroup(r.str()?),
        6 => Query::AllClientCount,
        7 => Query::AllClientIds,
        8 => Query::AllUids,
        9 => Query::AllGroups,
        10 => Query::Sessions(r.opt_str()?),
        11 => Query::GetSession(r.client()?),
        12 => Query::Clients,
        13 => {
            let t = r.u8()?;
            Query::Counted(parse_command(t, r)?)
        }
        14 => Query::UidsByGroup(r.str()?),
        _ => return Err(r.invalid("query kind")),
    })
}

fn parse_reply(r: &mut Reader) -> Result<Reply, ProtocolError> {
    Ok(match r.u8()? {
        1 => Reply::Bool(match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(r.invalid("bool")),
        }),
        2 => Reply::Count(r.u64()?),
        3 => Reply::ClientIds(r.clients()?),
        4 => Reply::Strings(r.strs()?),
        5 => Reply::OptString(r.opt_str()?),
        6 => Reply::OptBytes(r.opt_bytes()?),
        7 => {
            let n = r.count(12 + 4)?;
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                list.push((r.client()?, r.bytes()?));
            }
            Reply::Sessions(list)
        }
        8 => {
            let n = r.count(12 + 4 + 4 + 1 + 1 + 4 + 8)?;
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                list.push(ClientInfo {
                    client: r.client()?,
                    addr: r.str()?,
                    listener: r.str()?,
                    protocol: ClientProtocol::from_wire_byte(r.u8()?)
                        .ok_or(r.invalid("protocol"))?,
                    uid: r.opt_str()?,
                    groups: r.strs()?,
                    idle_ms: r.u64()?,
                });
            }
            Reply::Clients(list)
        }
        9 => Reply::Error(r.str()?),
        _ => return Err(r.invalid("reply kind")),
    })
}

fn frame_name(t: u8) -> Option<&'static str> {
    Some(match t {
        ty::HELLO => "hello",
        ty::AUTH => "auth",
        ty::WELCOME => "welcome",
        ty::REFUSED => "refused",
        ty::EVENT => "event",
        ty::ACK => "ack",
        ty::DRAINING => "draining",
        ty::DRAIN_ACK => "drain-ack",
        ty::VERDICT => "verdict",
        ty::SEND_TO_CLIENT => "send_to_client",
        ty::SEND_TO_ALL => "send_to_all",
        ty::SEND_TO_UID => "send_to_uid",
        ty::SEND_TO_GROUP => "send_to_group",
        ty::BIND_UID => "bind_uid",
        ty::UNBIND_UID => "unbind_uid",
        ty::JOIN_GROUP => "join_group",
        ty::LEAVE_GROUP => "leave_group",
        ty::UNGROUP => "ungroup",
        ty::SET_SESSION => "set_session",
        ty::UPDATE_SESSION => "update_session",
        ty::CLOSE_CLIENT => "close_client",
        ty::SEND_OR_TELL => "send_or_tell",
        ty::QUERY => "query",
        ty::REPLY => "reply",
        ty::REPLY_PART => "reply-part",
        ty::PING => "ping",
        ty::PONG => "pong",
        _ => return None,
    })
}

/// Field writer over a `BytesMut`.
struct Writer<'a>(&'a mut BytesMut);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.put_u64(v);
    }
    fn raw(&mut self, v: &[u8]) {
        self.0.put_slice(v);
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.raw(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn opt_bytes(&mut self, v: Option<&Bytes>) {
        match v {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
        }
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn message(&mut self, m: &Message) {
        self.bytes(m.as_bytes());
        self.u8(u8::from(m.is_binary()));
    }
    /// The default message, a count (0 to 4), then per protocol its byte and message.
    fn per_protocol(&mut self, m: &PerProtocol) {
        self.message(m.default_message());
        let alternatives = m.alternatives();
        self.u8(alternatives.len() as u8);
        for (p, m) in alternatives {
            self.u8(p.wire_byte());
            self.message(m);
        }
    }
    fn opt_message(&mut self, v: Option<&Message>) {
        match v {
            None => self.u8(0),
            Some(m) => {
                self.u8(1);
                self.message(m);
            }
        }
    }
    fn opt_per_protocol(&mut self, v: Option<&PerProtocol>) {
        match v {
            None => self.u8(0),
            Some(m) => {
                self.u8(1);
                self.per_protocol(m);
            }
        }
    }
    fn strs(&mut self, v: &[String]) {
        self.u32(v.len() as u32);
        for s in v {
            self.str(s);
        }
    }
    fn client(&mut self, c: ClientId) {
        self.u32(c.gateway);
        self.u64(c.connection);
    }
    fn clients(&mut self, v: &[ClientId]) {
        self.u32(v.len() as u32);
        for c in v {
            self.client(*c);
        }
    }
}

/// Field reader over one complete frame body; every read checks the length first.
struct Reader {
    buf: Bytes,
    /// Frame kind, for error messages.
    frame: &'static str,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.buf.remaining() < n {
            Err(ProtocolError::Truncated(self.frame))
        } else {
            Ok(())
        }
    }
    fn invalid(&self, field: &'static str) -> ProtocolError {
        ProtocolError::Invalid {
            frame: self.frame,
            field,
        }
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }
    /// Reads a list count and checks that the body can hold that many items of at least
    /// `min_item` bytes each, so a hostile count cannot make us allocate.
    fn count(&mut self, min_item: usize) -> Result<usize, ProtocolError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.remaining() {
            return Err(ProtocolError::Truncated(self.frame));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<Bytes, ProtocolError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn str(&mut self) -> Result<String, ProtocolError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.invalid("UTF-8 string"))
    }
    fn opt_bytes(&mut self) -> Result<Option<Bytes>, ProtocolError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(self.invalid("option flag")),
        }
    }
    fn opt_str(&mut self) -> Result<Option<String>, ProtocolError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            _ => Err(self.invalid("option flag")),
        }
    }
    fn flag(&mut self) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.invalid("flag")),
        }
    }
    /// A message: bytes, then 0 (text, which must be UTF-8) or 1 (binary).
    fn message(&mut self) -> Result<Message, ProtocolError> {
        let data = self.bytes()?;
        let binary = self.flag()?;
        if !binary && std::str::from_utf8(&data).is_err() {
            return Err(self.invalid("text message (not UTF-8)"));
        }
        Ok(Message::from_parts(data, binary))
    }
    /// The default message, then each protocol's own (a protocol at most once).
    fn per_protocol(&mut self) -> Result<PerProtocol, ProtocolError> {
        let mut m = PerProtocol::new(self.message()?);
        let n = self.u8()?;
        if usize::from(n) > ClientProtocol::ALL.len() {
            return Err(self.invalid("rendering count"));
        }
        for _ in 0..n {
            let p = ClientProtocol::from_wire_byte(self.u8()?).ok_or(self.invalid("protocol"))?;
            if m.alternatives().iter().any(|(q, _)| *q == p) {
                return Err(self.invalid("protocol rendered twice"));
            }
            m = m.with(p, self.message()?);
        }
        Ok(m)
    }
    fn opt_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.message()?)),
            _ => Err(self.invalid("option flag")),
        }
    }
    fn opt_per_protocol(&mut self) -> Result<Option<PerProtocol>, ProtocolError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.per_protocol()?)),
            _ => Err(self.invalid("option flag")),
        }
    }
    fn strs(&mut self) -> Result<Vec<String>, ProtocolError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.str()).collect()
    }
    fn client(&mut self) -> Result<ClientId, ProtocolError> {
        Ok(ClientId::new(self.u32()?, self.u64()?))
    }
    fn clients(&mut self) -> Result<Vec<ClientId>, ProtocolError> {
        let n = self.count(12)?;
        (0..n).map(|_| self.client()).collect()
    }
}

/// A frame's name for logs.
pub fn frame_kind(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "hello",
        Frame::Auth { .. } => "auth",
        Frame::Welcome { .. } => "welcome",
        Frame::Refused { .. } => "refused",
        Frame::Event(_) => "event",
        Frame::Ack { .. } => "ack",
        Frame::Verdict { .. } => "verdict",
        Frame::Draining => "draining",
        Frame::DrainAck => "drain-ack",
        Frame::Command(_) => "command",
        Frame::Query { .. } => "query",
        Frame::Reply { .. } => "reply",
        Frame::ReplyPart { .. } => "reply-part",
        Frame::Ping => "ping",
        Frame::Pong => "pong",
    }
}

/// Largest frame a peer may send before it has authenticated (its `auth` frame is a
/// few hundred bytes): an unauthenticated peer can make the gateway hold no more.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// [`tokio_util::codec`] adapter over [`encode`] / [`decode`].
#[derive(Debug, Clone)]
pub struct InternalCodec {
    /// Largest frame accepted, in bytes (type byte + body).
    pub max_frame: usize,
}

/// I/O or protocol failure on an internal link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The peer sent a bad frame.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl tokio_util::codec::Decoder for InternalCodec {
    type Item = Frame;
    type Error = LinkError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, LinkError> {
        Ok(decode(src, self.max_frame)?)
    }
}

impl tokio_util::codec::Encoder<Frame> for InternalCodec {
    type Error = LinkError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), LinkError> {
        encode(&item, dst);
        Ok(())
    }
}

impl tokio_util::codec::Encoder<Bytes> for InternalCodec {
    type Error = LinkError;

    /// Pre-encoded frames (from [`encode_to_bytes`]) are written as they are.
    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), LinkError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    /// Decodes the frames of a paged answer and joins them.
    fn join_pages(frames: &[Bytes], id: u64, max: usize) -> Reply {
        let mut joined: Option<Reply> = None;
        for (n, bytes) in frames.iter().enumerate() {
            assert!(bytes.len() - HEADER <= max, "page {n} fits in a frame");
            let mut buf = BytesMut::from(&bytes[..]);
            let frame = decode(&mut buf, max).expect("decodes").expect("whole");
            let (page, last) = match frame {
                Frame::ReplyPart { id: i, reply } if i == id => (reply, false),
                Frame::Reply { id: i, reply } if i == id => (reply, true),
                other => panic!("not a reply: {other:?}"),
            };
            assert_eq!(last, n + 1 == frames.len(), "only the last page is a reply");
            match &mut joined {
                None => joined = Some(page),
                Some(j) => j.extend(page).expect("same kind"),
            }
        }
        joined.expect("at least one frame")
    }

    #[test]
    fn an_event_encoded_from_borrowed_parts_is_the_owned_events_frame() {
        let owned = Event {
            seq: 42,
            kind: EventKind::Message,
            client: ClientId::new(3, 9),
            addr: "127.0.0.1:5555".into(),
            listener: "main".into(),
            protocol: ClientProtocol::Text,
            uid: Some("alice".into()),
            groups: vec!["a".into(), "bb".into(), "ccc".into()],
            session: Bytes::from_static(br#"{"name":"alice"}"#),
            body: Bytes::from_static(b"hello"),
            binary: false,
        };
        let groups: std::collections::BTreeSet<String> = owned.groups.iter().cloned().collect();
        let borrowed = EventRef {
            seq: owned.seq,
            kind: owned.kind,
            client: owned.client,
            addr: &owned.addr,
            listener: &owned.listener,
            protocol: owned.protocol,
            uid: owned.uid.as_deref(),
            groups: &groups,
            session: &owned.session,
            body: &owned.body,
            binary: owned.binary,
        };
        let (allocations, bytes) = crate::alloc_count::count(|| borrowed.encode_to_bytes());
        assert_eq!(bytes, encode_to_bytes(&Frame::Event(owned)));
        assert_eq!(allocations, 1, "one buffer, allocated at its size");
    }

    /// A worker encodes every command and ack it sends: into one buffer of the
    /// frame's size, not a buffer grown from nothing (seven reallocations for a
    /// chat line's private message), and the same bytes as ever.
    #[test]
    fn a_command_is_encoded_into_one_allocation() {
        let line = "x".repeat(70);
        let json = "y".repeat(230);
        let frame = Frame::Command(Command::SendToClient {
            client: ClientId::new(1, 2),
            data: PerProtocol::new(line).with(ClientProtocol::WebSocket, json),
        });
        let mut expected = BytesMut::new();
        encode(&frame, &mut expected);
        let _warm = encode_to_bytes(&frame);
        let (allocations, bytes) = crate::alloc_count::count(|| encode_to_bytes(&frame));
        assert_eq!(bytes, expected.freeze());
        assert_eq!(allocations, 1, "one buffer, allocated at its size");
        let ack = Frame::Ack {
            seq: 7,
            client: ClientId::new(1, 2),
        };
        let (allocations, _) = crate::alloc_count::count(|| encode_to_bytes(&ack));
        assert_eq!(allocations, 1, "an ack");
        // A frame larger than the kept buffer takes it; the next starts afresh.
        let large = Frame::Command(Command::SendToClient {
            client: ClientId::new(1, 2),
            data: PerProtocol::new("z".repeat(100 << 10)),
        });
        let mut expected_large = BytesMut::new();
        encode(&large, &mut expected_large);
        let expected_large = expected_large.freeze();
        assert_eq!(encode_to_bytes(&large), expected_large);
        assert_eq!(encode_to_bytes(&large), expected_large);
        assert_eq!(encode_to_bytes(&frame), bytes);
    }

    #[test]
    fn a_reply_too_large_for_a_frame_comes_in_pages_that_join_to_it() {
        let sessions: Vec<(ClientId, Bytes)> = (0..100)
            .map(|n| (ClientId::new(1, n), Bytes::from(vec![b'x'; 1000])))
            .collect();
        let reply = Reply::Sessions(sessions);
        let frames = reply_frames(7, reply.clone(), 10_000);
        assert!(frames.len() >= 11, "{} pages", frames.len());
        assert_eq!(join_pages(&frames, 7, 10_000), reply);
        // Small enough: one frame.
        let small = Reply::Strings(vec!["a".into(), "b".into()]);
        let frames = reply_frames(8, small.clone(), 10_000);
        assert_eq!(frames.len(), 1);
        assert_eq!(join_pages(&frames, 8, 10_000), small);
    }

    #[test]
    fn an_item_larger_than_a_frame_becomes_an_error_reply() {
        let reply = Reply::Sessions(vec![
            (ClientId::new(1, 1), Bytes::from(vec![b'x'; 100])),
            (ClientId::new(1, 2), Bytes::from(vec![b'x'; 20_000])),
        ]);
        let frames = reply_frames(9, reply, 10_000);
        assert_eq!(frames.len(), 1, "no page of a failed answer is sent");
        match join_pages(&frames, 9, 10_000) {
            Reply::Error(e) => assert!(e.contains("10000"), "{e}"),
            other => panic!("not an error: {other:?}"),
        }
        assert!(Reply::Count(1).extend(Reply::Count(2)).is_err());
        assert!(Reply::Strings(vec![])
            .extend(Reply::ClientIds(vec![]))
            .is_err());
    }

    #[test]
    fn an_announced_length_reserves_nothing_before_the_bytes_arrive() {
        // 16 MiB announced, 5 bytes sent: the buffer holds what came.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(16u32 << 20).to_be_bytes());
        buf.extend_from_slice(&[2]);
        assert!(matches!(decode(&mut buf, 16 << 20), Ok(None)));
        assert!(
            buf.capacity() < 64 << 10,
            "{} bytes reserved for 5 received",
            buf.capacity()
        );
    }

    fn any_client() -> impl Strategy<Value = ClientId> {
        (any::<u32>(), any::<u64>()).prop_map(|(g, c)| ClientId::new(g, c))
    }
    fn any_bytes() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }
    fn any_str() -> impl Strategy<Value = String> {
        ".{0,16}"
    }
    fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            any_str().prop_map(Message::from),
            any_bytes().prop_map(Message::binary),
        ]
    }
    fn any_protocol() -> impl Strategy<Value = ClientProtocol> {
        proptest::sample::select(ClientProtocol::ALL.to_vec())
    }
    /// A default message and up to 4 renderings (a protocol given twice keeps the
    /// later one, as `with` does).
    fn any_per_protocol() -> impl Strategy<Value = PerProtocol> {
        (any_message(), vec((any_protocol(), any_message()), 0..5)).prop_map(|(d, alts)| {
            alts.into_iter()
                .fold(PerProtocol::new(d), |m, (p, a)| m.with(p, a))
        })
    }

    fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (any_client(), any_per_protocol())
                .prop_map(|(client, data)| Command::SendToClient { client, data }),
            (
                any_per_protocol(),
                proptest::option::of(vec(any_client(), 0..4)),
                vec(any_client(), 0..4)
            )
                .prop_map(|(data, only, exclude)| Command::SendToAll {
                    data,
                    only,
                    exclude
                }),
            (vec(any_str(), 0..4), any_per_protocol())
                .prop_map(|(uids, data)| Command::SendToUid { uids, data }),
            (
                vec(any_str(), 0..4),
                any_per_protocol(),
                vec(any_client(), 0..4)
            )
                .prop_map(|(groups, data, exclude)| Command::SendToGroup {
                    groups,
                    data,
                    exclude
                }),
            (any_client(), any_str()).prop_map(|(client, uid)| Command::BindUid { client, uid }),
            (any_client(), any_str()).prop_map(|(client, uid)| Command::UnbindUid { client, uid }),
            (any_client(), any_str())
                .prop_map(|(client, group)| Command::JoinGroup { client, group }),
            (any_client(), any_str())
                .prop_map(|(client, group)| Command::LeaveGroup { client, group }),
            any_str().prop_map(|group| Command::Ungroup { group }),
            (any_client(), any_bytes())
                .prop_map(|(client, session)| Command::SetSession { client, session }),
            (any_client(), any_bytes())
                .prop_map(|(client, session)| Command::UpdateSession { client, session }),
            (any_client(), proptest::option::of(any_message()))
                .prop_map(|(client, last)| Command::CloseClient { client, last }),
            (
                any_client(),
                any_per_protocol(),
                any_client(),
                proptest::option::of(any_per_protocol()),
                proptest::option::of(any_per_protocol())
            )
                .prop_map(|(client, data, sender, sent, offline)| {
                    Command::SendOrTell {
                        client,
                        data,
                        sender,
                        sent,
                        offline,
                    }
                }),
        ]
    }

    fn any_query() -> impl Strategy<Value = Query> {
        prop_oneof![
            any_client().prop_map(Query::IsOnline),
            any_str().prop_map(Query::ClientIdsByUid),
            any_client().prop_map(Query::UidByClientId),
            any_str().prop_map(Query::ClientIdsByGroup),
            any_str().prop_map(Query::ClientCountByGroup),
            Just(Query::AllClientCount),
            Just(Query::AllClientIds),
            Just(Query::AllUids),
            Just(Query::AllGroups),
            proptest::option::of(any_str()).prop_map(Query::Sessions),
            any_client().prop_map(Query::GetSession),
            Just(Query::Clients),
            any_command().prop_map(Query::Counted),
            any_str().prop_map(Query::UidsByGroup),
        ]
    }

    fn any_reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            any::<bool>().prop_map(Reply::Bool),
            any::<u64>().prop_map(Reply::Count),
            vec(any_client(), 0..4).prop_map(Reply::ClientIds),
            vec(any_str(), 0..4).prop_map(Reply::Strings),
            proptest::option::of(any_str()).prop_map(Reply::OptString),
            proptest::option::of(any_bytes()).prop_map(Reply::OptBytes),
            vec((any_client(), any_bytes()), 0..4).prop_map(Reply::Sessions),
            vec(
                (
                    (any_client(), any_str(), any_str(), any_protocol()),
                    proptest::option::of(any_str()),
                    vec(any_str(), 0..3),
                    any::<u64>()
                )
                    .prop_map(
                        |((client, addr, listener, protocol), uid, groups, idle_ms)| {
                            ClientInfo {
                                client,
                                addr,
                                listener,
                                protocol,
                                uid,
                                groups,
                                idle_ms,
                            }
                        }
                    ),
                0..3
            )
            .prop_map(Reply::Clients),
            any_str().prop_map(Reply::Error),
        ]
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u16>(), any::<u32>(), any::<[u8; 32]>()).prop_map(
                |(version, gateway, nonce)| Frame::Hello {
                    version,
                    gateway,
                    nonce
                }
            ),
            (
                any::<u16>(),
                any::<bool>(),
                any_str(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>()
            )
                .prop_map(|(version, w, name, mac, nonce)| Frame::Auth {
                    version,
                    role: if w { Role::Worker } else { Role::Api },
                    name,
                    mac,
                    nonce
                }),
            any::<[u8; 32]>().prop_map(|mac| Frame::Welcome { mac }),
            any_str().prop_map(|reason| Frame::Refused { reason }),
            (
                (any::<u64>(), 0u8..4, any_client(), any_str()),
                (any_str(), any_protocol()),
                (proptest::option::of(any_str()), vec(any_str(), 0..3)),
                (any_bytes(), any_bytes(), any::<bool>())
            )
                .prop_map(
                    |(
                        (seq, k, client, addr),
                        (listener, protocol),
                        (uid, groups),
                        (session, body, binary),
                    )| Frame::Event(Event {
                        seq,
                        kind: [
                            EventKind::Connect,
                            EventKind::Message,
                            EventKind::Close,
                            EventKind::WebSocketConnect
                        ][k as usize],
                        client,
                        addr,
                        listener,
                        protocol,
                        uid,
                        groups,
                        session,
                        body,
                        binary,
                    })
                ),
            (any::<u64>(), any_client()).prop_map(|(seq, client)| Frame::Ack { seq, client }),
            (any::<u64>(), any_client(), any::<u16>(), any_str()).prop_map(
                |(seq, client, status, reason)| Frame::Verdict {
                    seq,
                    client,
                    status,
                    reason
                }
            ),
            Just(Frame::Draining),
            Just(Frame::DrainAck),
            any_command().prop_map(Frame::Command),
            (any::<u64>(), any_query()).prop_map(|(id, query)| Frame::Query { id, query }),
            (any::<u64>(), any_reply()).prop_map(|(id, reply)| Frame::Reply { id, reply }),
            (any::<u64>(), any_reply()).prop_map(|(id, reply)| Frame::ReplyPart { id, reply }),
            Just(Frame::Ping),
            Just(Frame::Pong),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn round_trip(frame in any_frame()) {
            let mut buf = BytesMut::new();
            encode(&frame, &mut buf);
            let decoded = decode(&mut buf, MAX).unwrap();
            prop_assert_eq!(decoded, Some(frame));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn every_truncation_is_incomplete_not_an_error(frame in any_frame()) {
            let whole = encode_to_bytes(&frame);
            for cut in 0..whole.len() {
                let mut buf = BytesMut::from(&whole[..cut]);
                prop_assert_eq!(decode(&mut buf, MAX), Ok(None));
                prop_assert_eq!(buf.len(), cut, "nothing consumed while incomplete");
            }
        }

        #[test]
        fn a_short_length_field_is_an_error_never_a_panic(frame in any_frame(), shrink in 1usize..8) {
            let whole = encode_to_bytes(&frame);
            let len = whole.len() - HEADER;
            if shrink < len {
                let mut bytes = whole.to_vec();
                bytes[..4].copy_from_slice(&((len - shrink) as u32).to_be_bytes());
                bytes.truncate(whole.len() - shrink);
                let mut buf = BytesMut::from(&bytes[..]);
                // Either a clean error, or (rarely) another valid frame: never a panic.
                let _ = decode(&mut buf, MAX);
            }
        }

        #[test]
        fn random_bytes_never_panic(data in vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = decode(&mut buf, 1024) {}
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0x00, 0x10, 0x00, 0x01][..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(ProtocolError::TooLarge {
                size: 0x100001,
                max: 1024
            })
        );
    }

    #[test]
    fn empty_and_unknown_frames_are_errors() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf, MAX), Err(ProtocolError::Empty));
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0xee][..]);
        assert_eq!(decode(&mut buf, MAX), Err(ProtocolError::UnknownType(0xee)));
        let mut buf = BytesMut::from(&[0, 0, 0, 2, ty::PING, 0][..]);
        assert_eq!(
            decode(&mut buf, MAX),
            Err(ProtocolError::Trailing("ping", 1))
        );
    }

    #[test]
    fn hostile_list_count_does_not_allocate() {
        // send_to_uid with a count of 2^32-1 strings but no bytes behind it.
        let mut buf = BytesMut::from(&[0, 0, 0, 5, ty::SEND_TO_UID, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode(&mut buf, MAX),
            Err(ProtocolError::Truncated("send_to_uid"))
        );
    }

    #[test]
    fn a_text_message_that_is_not_utf8_is_refused() {
        let mut bytes = encode_to_bytes(&Frame::Command(Command::SendToClient {
            client: ClientId::new(1, 2),
            data: Message::binary(vec![0xff]).into(),
        }))
        .to_vec();
        // Flip the binary flag (before the rendering count) to "text".
        let flag = bytes.len() - 2;
        bytes[flag] = 0;
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode(&mut buf, MAX),
            Err(ProtocolError::Invalid {
                frame: "send_to_client",
                field: "text message (not UTF-8)"
            })
        );
    }

    #[test]
    fn exact_bytes_of_an_ack() {
        let bytes = encode_to_bytes(&Frame::Ack {
            seq: 5,
            client: ClientId::new(1, 2),
        });
        assert_eq!(
            &bytes[..],
            &[0, 0, 0, 21, 0x11, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
        );
    }

    #[test]
    fn exact_bytes_of_a_send_with_a_websocket_rendering() {
        let bytes = encode_to_bytes(&Frame::Command(Command::SendToClient {
            client: ClientId::new(1, 2),
            data: PerProtocol::new("hi").with(ClientProtocol::WebSocket, "{}"),
        }));
        #[rustfmt::skip]
        let want: &[u8] = &[
            0, 0, 0, 29, 0x20,
            0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, // client 1:2
            0, 0, 0, 2, b'h', b'i', 0,          // default: "hi", text
            1,                                  // one rendering
            4, 0, 0, 0, 2, b'{', b'}', 0,       // websocket: "{}", text
        ];
        assert_eq!(&bytes[..], want);
        let mut buf = BytesMut::from(&bytes[..]);
        let Ok(Some(Frame::Command(Command::SendToClient { data, .. }))) = decode(&mut buf, MAX)
        else {
            panic!("not a send_to_client");
        };
        assert_eq!(
            data.for_protocol(ClientProtocol::Text),
            &Message::from("hi")
        );
        assert_eq!(
            data.for_protocol(ClientProtocol::WebSocket),
            &Message::from("{}")
        );
    }

    #[test]
    fn renderings_are_checked() {
        let send = |tail: &[u8]| {
            let mut body = vec![ty::SEND_TO_CLIENT, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
            body.extend_from_slice(&[0, 0, 0, 1, b'x', 0]);
            body.extend_from_slice(tail);
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            decode(&mut BytesMut::from(&frame[..]), MAX)
        };
        let invalid = |field| {
            Err(ProtocolError::Invalid {
                frame: "send_to_client",
                field,
            })
        };
        assert!(matches!(send(&[0]), Ok(Some(_))));
        assert!(matches!(send(&[1, 1, 0, 0, 0, 0, 0]), Ok(Some(_))));
        assert_eq!(send(&[1, 9, 0, 0, 0, 0, 0]), invalid("protocol"));
        assert_eq!(
            send(&[2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
            invalid("protocol rendered twice")
        );
        assert_eq!(send(&[5]), invalid("rendering count"));
        assert_eq!(
            send(&[1, 4, 0, 0, 0, 1]),
            Err(ProtocolError::Truncated("send_to_client"))
        );
        // A version 2 peer's send (no count) is a truncated frame, never misread.
        assert_eq!(send(&[]), Err(ProtocolError::Truncated("send_to_client")));
    }

    #[test]
    fn exact_bytes_of_a_message_event() {
        let bytes = encode_to_bytes(&Frame::Event(Event {
            seq: 1,
            kind: EventKind::Message,
            client: ClientId::new(7, 42),
            addr: "127.0.0.1:50000".into(),
            listener: "main".into(),
            protocol: ClientProtocol::Text,
            uid: None,
            groups: vec![],
            session: Bytes::from_static(b"{}"),
            body: Bytes::from_static(b"hi"),
            binary: false,
        }));
        let mut want = vec![0, 0, 0, 0x44, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        want.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0x2a]);
        want.extend_from_slice(b"\0\0\0\x0f127.0.0.1:50000\0\0\0\x04main");
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0]);
        want.extend_from_slice(b"\0\0\0\x02{}\0\0\0\x02hi\0");
        assert_eq!(&bytes[..], &want[..]);
    }
}
