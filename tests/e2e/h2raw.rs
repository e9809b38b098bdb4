//! A deliberately small, deliberately rude HTTP/2 client for tests.
//!
//! Unlike the `h2` crate it obeys nothing: it opens as many streams as it
//! likes whatever SETTINGS_MAX_CONCURRENT_STREAMS says, resets them at will
//! and writes frames in whatever batches the test builds. Only cleartext
//! HTTP/2 by prior knowledge (h2c).
//!
//! - [`H2Conn::connect`] sends the preface and our SETTINGS, and returns
//!   once the server's SETTINGS arrived (and were acknowledged).
//! - Frames are built by free functions appending to a `Vec<u8>`
//!   ([`headers`], [`data`], [`rst_stream`], [`window_update`], [`ping`],
//!   [`settings`]) so a test can batch thousands into one write, then sent
//!   with [`Writer::send`].
//! - [`Reader::next`] returns the next frame as a [`Frame`] (`None` at EOF
//!   or on a reset socket), answering PING and SETTINGS like a live client
//!   unless [`Reader::auto_reply`] is off.
//!
//! HPACK is kept minimal. Requests use only static-table indexed fields
//! (`:method GET/POST`, `:scheme http`, `:path /`) and literals without
//! indexing (indexed name or new name), never Huffman, so the encoder
//! needs no state. Our SETTINGS set HEADER_TABLE_SIZE to 0, so the server
//! cannot refer to its dynamic table in responses; the decoder then only
//! reads `:status` (always the first field h2 sends): an indexed static
//! entry (8-14) or a literal with the static name `:status`, its value
//! plain or Huffman-coded (only the digit codes are decoded).

#![allow(dead_code, reason = "a test toolkit: not every test uses every helper")]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// SETTINGS identifiers.
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
}

/// A frame from the server, reduced to what tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `status` is `None` when the block does not start with a decodable
    /// `:status` (trailers, or an encoding this decoder does not read).
    Headers {
        stream: u32,
        status: Option<u16>,
        end_stream: bool,
    },
    Data {
        stream: u32,
        len: usize,
        end_stream: bool,
    },
    RstStream {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream: u32,
        code: u32,
        debug: String,
    },
    Settings {
        ack: bool,
        values: Vec<(u16, u32)>,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Other {
        kind: u8,
        stream: u32,
    },
}

// ---- encoding -------------------------------------------------------------

/// A frame header (9 bytes: length, type, flags, stream id) and payload.
pub fn frame(buf: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame payload fits 24 bits");
    assert!(len < 1 << 24, "frame payload fits 24 bits");
    buf.extend_from_slice(&len.to_be_bytes()[1..]);
    buf.push(kind);
    buf.push(flags);
    buf.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    buf.extend_from_slice(payload);
}

/// A SETTINGS frame with these values (empty: an empty SETTINGS frame).
pub fn settings(buf: &mut Vec<u8>, values: &[(u16, u32)]) {
    let mut payload = Vec::with_capacity(values.len() * 6);
    for (id, value) in values {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(buf, kind::SETTINGS, 0, 0, &payload);
}

pub fn settings_ack(buf: &mut Vec<u8>) {
    frame(buf, kind::SETTINGS, flag::ACK, 0, &[]);
}

pub fn ping(buf: &mut Vec<u8>, ack: bool, payload: [u8; 8]) {
    let flags = if ack { flag::ACK } else { 0 };
    frame(buf, kind::PING, flags, 0, &payload);
}

/// A request HEADERS frame (END_HEADERS; END_STREAM when `end_stream`)
/// for `method path` on `stream`, authority `localhost`.
pub fn headers(buf: &mut Vec<u8>, stream: u32, method: &str, path: &str, end_stream: bool) {
    headers_with(buf, stream, method, path, "localhost", &[], end_stream);
}

/// A request HEADERS frame with an authority and extra (lower-case) fields.
pub fn headers_with(
    buf: &mut Vec<u8>,
    stream: u32,
    method: &str,
    path: &str,
    authority: &str,
    extra: &[(&str, &str)],
    end_stream: bool,
) {
    let block = request_block(method, path, authority, extra);
    let mut flags = flag::END_HEADERS;
    if end_stream {
        flags |= flag::END_STREAM;
    }
    frame(buf, kind::HEADERS, flags, stream, &block);
}

pub fn data(buf: &mut Vec<u8>, stream: u32, payload: &[u8], end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    frame(buf, kind::DATA, flags, stream, payload);
}

pub fn rst_stream(buf: &mut Vec<u8>, stream: u32, code: u32) {
    frame(buf, kind::RST_STREAM, 0, stream, &code.to_be_bytes());
}

pub fn window_update(buf: &mut Vec<u8>, stream: u32, increment: u32) {
    frame(
        buf,
        kind::WINDOW_UPDATE,
        0,
        stream,
        &(increment & 0x7fff_ffff).to_be_bytes(),
    );
}

/// An HPACK integer with an `n`-bit prefix; `first` holds the bits above
/// the prefix (RFC 7541 §5.1).
fn hpack_int(buf: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        buf.push(first | value as u8);
        return;
    }
    buf.push(first | max as u8);
    value -= max;
    while value >= 128 {
        buf.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    buf.push(value as u8);
}

/// An HPACK string literal, never Huffman-coded (RFC 7541 §5.2).
fn hpack_str(buf: &mut Vec<u8>, s: &[u8]) {
    hpack_int(buf, 0x00, 7, s.len());
    buf.extend_from_slice(s);
}

/// The header block of a request: static-table indexed fields where the
/// static table has the exact field, else literals without indexing
/// (with the static name index when there is one).
pub fn request_block(method: &str, path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    match method {
        "GET" => block.push(0x80 | 2),  // indexed: :method GET
        "POST" => block.push(0x80 | 3), // indexed: :method POST
        other => {
            hpack_int(&mut block, 0x00, 4, 2); // literal w/o indexing, name :method
            hpack_str(&mut block, other.as_bytes());
        }
    }
    block.push(0x80 | 6); // indexed: :scheme http
    if path == "/" {
        block.push(0x80 | 4); // indexed: :path /
    } else {
        hpack_int(&mut block, 0x00, 4, 4); // literal w/o indexing, name :path
        hpack_str(&mut block, path.as_bytes());
    }
    hpack_int(&mut block, 0x00, 4, 1); // literal w/o indexing, name :authority
    hpack_str(&mut block, authority.as_bytes());
    for (name, value) in extra {
        block.push(0x00); // literal w/o indexing, new name
        hpack_str(&mut block, name.as_bytes());
        hpack_str(&mut block, value.as_bytes());
    }
    block
}

// ---- decoding -------------------------------------------------------------

/// An HPACK integer with an `n`-bit prefix at `at`; advances `at`.
fn read_int(block: &[u8], at: &mut usize, n: u32) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut value = (*block.get(*at)? as usize) & max;
    *at += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*at)?;
        *at += 1;
        value = value.checked_add(((b & 0x7f) as usize).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string at `at` (`Huffman`: only digits are decoded).
fn read_str(block: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let huffman = block.get(*at)? & 0x80 != 0;
    let len = read_int(block, at, 7)?;
    let raw = block.get(*at..*at + len)?;
    *at += len;
    if huffman {
        huffman_digits(raw)
    } else {
        Some(raw.to_vec())
    }
}

/// Huffman-decode a string made only of the digits 0-9 (RFC 7541
/// Appendix B: '0'-'2' are the 5-bit codes 0-2, '3'-'9' the 6-bit codes
/// 0x19-0x1f); `None` for anything else. Padding is up to 7 one bits.
fn huffman_digits(raw: &[u8]) -> Option<Vec<u8>> {
    let total = raw.len() * 8;
    let bit = |i: usize| (raw[i / 8] >> (7 - i % 8)) & 1;
    let bits = |from: usize, n: usize| (from..from + n).fold(0u8, |v, i| (v << 1) | bit(i));
    let mut out = Vec::new();
    let mut i = 0;
    while total - i >= 5 {
        let five = bits(i, 5);
        if five <= 2 {
            out.push(b'0' + five);
            i += 5;
            continue;
        }
        if total - i >= 6 {
            let six = bits(i, 6);
            if (0x19..=0x1f).contains(&six) {
                out.push(b'3' + (six - 0x19));
                i += 6;
                continue;
            }
        }
        break;
    }
    // What is left must be padding: fewer than 8 bits, all ones.
    (total - i < 8 && (i..total).all(|j| bit(j) == 1)).then_some(out)
}

/// The static-table `:status` entries (RFC 7541 Appendix A).
fn static_status(index: usize) -> Option<u16> {
    Some(match index {
        8 => 200,
        9 => 204,
        10 => 206,
        11 => 304,
        12 => 400,
        13 => 404,
        14 => 500,
        _ => return None,
    })
}

/// `:status` from a response header block, if it is the first field and
/// encoded without the dynamic table (see the module docs).
pub fn decode_status(block: &[u8]) -> Option<u16> {
    let mut at = 0;
    // Dynamic table size updates (001xxxxx) may precede the first field.
    while block.get(at)? & 0xe0 == 0x20 {
        read_int(block, &mut at, 5)?;
    }
    let first = *block.get(at)?;
    if first & 0x80 != 0 {
        return static_status(read_int(block, &mut at, 7)?);
    }
    let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 }; // incremental indexing, or without / never
    let name = read_int(block, &mut at, prefix)?;
    if name == 0 {
        if read_str(block, &mut at)? != b":status" {
            return None;
        }
    } else if static_status(name).is_none() {
        return None;
    }
    std::str::from_utf8(&read_str(block, &mut at)?)
        .ok()?
        .parse()
        .ok()
}

/// A frame from its header fields and payload.
pub fn parse_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Frame {
    let u32_at = |i: usize| {
        payload
            .get(i..i + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    match kind {
        kind::DATA => Frame::Data {
            stream,
            len: payload.len(),
            end_stream: flags & flag::END_STREAM != 0,
        },
        kind::HEADERS => {
            let mut block = payload;
            let mut pad = 0;
            if flags & flag::PADDED != 0 && !block.is_empty() {
                pad = block[0] as usize;
                block = &block[1..];
            }
            if flags & flag::PRIORITY != 0 {
                block = block.get(5..).unwrap_or(&[]);
            }
            block = &block[..block.len().saturating_sub(pad)];
            Frame::Headers {
                stream,
                status: decode_status(block),
                end_stream: flags & flag::END_STREAM != 0,
            }
        }
        kind::RST_STREAM => Frame::RstStream {
            stream,
            code: u32_at(0),
        },
        kind::GOAWAY => Frame::GoAway {
            last_stream: u32_at(0) & 0x7fff_ffff,
            code: u32_at(4),
            debug: String::from_utf8_lossy(payload.get(8..).unwrap_or(&[])).into_owned(),
        },
        kind::SETTINGS => Frame::Settings {
            ack: flags & flag::ACK != 0,
            values: payload
                .chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect(),
        },
        kind::PING => Frame::Ping {
            ack: flags & flag::ACK != 0,
            payload: payload.try_into().unwrap_or([0; 8]),
        },
        kind::WINDOW_UPDATE => Frame::WindowUpdate {
            stream,
            increment: u32_at(0) & 0x7fff_ffff,
        },
        kind => Frame::Other { kind, stream },
    }
}

// ---- the connection -------------------------------------------------------

/// The write side, shared (the reader answers PINGs through it).
#[derive(Clone)]
pub struct Writer(Arc<Mutex<OwnedWriteHalf>>);

impl Writer {
    /// Write `bytes` whole.
    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.0.lock().await.write_all(bytes).await
    }

    /// Half-close: no more bytes from us.
    pub async fn shutdown(&self) -> io::Result<()> {
        self.0.lock().await.shutdown().await
    }
}

/// The read side.
pub struct Reader {
    read: OwnedReadHalf,
    writer: Writer,
    /// Answer PING with a PING ACK and SETTINGS with a SETTINGS ACK, like a
    /// live client (default on).
    pub auto_reply: bool,
}

impl Reader {
    /// The next frame; `None` once the server closed the connection (EOF
    /// or reset).
    pub async fn next(&mut self) -> Option<Frame> {
        self.try_next().await.ok().flatten()
    }

    /// The next frame; `Ok(None)` at EOF, `Err` on a socket error.
    pub async fn try_next(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 9];
        match self.read.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        match self.read.read_exact(&mut payload).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let frame = parse_frame(kind, flags, stream, &payload);
        if self.auto_reply {
            let mut reply = Vec::new();
            match &frame {
                Frame::Ping {
                    ack: false,
                    payload,
                } => ping(&mut reply, true, *payload),
                Frame::Settings { ack: false, .. } => settings_ack(&mut reply),
                _ => {}
            }
            if !reply.is_empty() {
                // The server may already be gone; the next read says so.
                let _ = self.writer.send(&reply).await;
            }
        }
        Ok(Some(frame))
    }

    /// Every frame until the server closes the connection or `limit`
    /// passes: the frames, and whether the connection was closed.
    pub async fn until_closed(&mut self, limit: Duration) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        let closed = tokio::time::timeout(limit, async {
            while let Some(frame) = self.next().await {
                frames.push(frame);
            }
        })
        .await
        .is_ok();
        (frames, closed)
    }
}

/// An h2c connection past the handshake.
pub struct H2Conn {
    pub reader: Reader,
    pub writer: Writer,
    /// The server's SETTINGS.
    pub server_settings: Vec<(u16, u32)>,
}

/// The settings a connection sends: no dynamic HPACK table (see the module
/// docs), no push, and windows large enough that tests never wait on flow
/// control for what the server sends.
pub const CLIENT_SETTINGS: &[(u16, u32)] = &[
    (setting::HEADER_TABLE_SIZE, 0),
    (setting::ENABLE_PUSH, 0),
    (setting::INITIAL_WINDOW_SIZE, 1 << 20),
];

impl H2Conn {
    /// Connect, send the preface, our SETTINGS and a connection window
    /// update, and wait (at most 10 s) for the server's SETTINGS, which
    /// are acknowledged.
    pub async fn connect(addr: SocketAddr) -> io::Result<H2Conn> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let writer = Writer(Arc::new(Mutex::new(write)));
        let mut hello = PREFACE.to_vec();
        settings(&mut hello, CLIENT_SETTINGS);
        window_update(&mut hello, 0, 16 << 20);
        writer.send(&hello).await?;
        let mut reader = Reader {
            read,
            writer: writer.clone(),
            auto_reply: true,
        };
        let server_settings = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match reader.try_next().await? {
                    Some(Frame::Settings { ack: false, values }) => return Ok(values),
                    Some(_) => continue,
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed before its SETTINGS",
                        ));
                    }
                }
            }
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no SETTINGS from the server"))??;
        Ok(H2Conn {
            reader,
            writer,
            server_settings,
        })
    }

    /// One of the server's SETTINGS.
    pub fn server_setting(&self, id: u16) -> Option<u32> {
        self.server_settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    /// Send a whole request (`body` empty: no DATA frame) on `stream` and
    /// read until its response ends: the status and the body length; `None`
    /// if the stream was reset or the connection closed first.
    pub async fn request(
        &mut self,
        stream: u32,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Option<(u16, usize)> {
        let mut buf = Vec::new();
        headers(&mut buf, stream, method, path, body.is_empty());
        if !body.is_empty() {
            data(&mut buf, stream, body, true);
        }
        self.writer.send(&buf).await.ok()?;
        let (mut status, mut len) = (None, 0);
        loop {
            match self.reader.next().await? {
                Frame::Headers {
                    stream: s,
                    status: st,
                    end_stream,
                } if s == stream => {
                    status = status.or(st);
                    if end_stream {
                        return Some((status?, len));
                    }
                }
                Frame::Data {
                    stream: s,
                    len: n,
                    end_stream,
                } if s == stream => {
                    len += n;
                    if end_stream {
                        return Some((status?, len));
                    }
                }
                Frame::RstStream { stream: s, .. } if s == stream => return None,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode a header block this module encodes (static names and indexed
    /// fields it uses, literals without indexing), for round trips.
    fn decode_fields(block: &[u8]) -> Vec<(String, String)> {
        const STATIC: &[(&str, &str)] = &[
            ("", ""),
            (":authority", ""),
            (":method", "GET"),
            (":method", "POST"),
            (":path", "/"),
            (":path", "/index.html"),
            (":scheme", "http"),
            (":scheme", "https"),
        ];
        let mut at = 0;
        let mut out = Vec::new();
        let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
        while at < block.len() {
            if block[at] & 0x80 != 0 {
                let (n, v) = STATIC[read_int(block, &mut at, 7).unwrap()];
                out.push((n.to_string(), v.to_string()));
            } else {
                assert_eq!(block[at] & 0xf0, 0, "only literals without indexing");
                let index = read_int(block, &mut at, 4).unwrap();
                let name = if index == 0 {
                    s(read_str(block, &mut at).unwrap())
                } else {
                    STATIC[index].0.to_string()
                };
                out.push((name, s(read_str(block, &mut at).unwrap())));
            }
        }
        out
    }

    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push(parse_frame(bytes[3], bytes[4], stream, &bytes[9..9 + len]));
            bytes = &bytes[9 + len..];
        }
        out
    }

    #[test]
    fn integers_follow_rfc_7541_examples() {
        let mut buf = Vec::new();
        hpack_int(&mut buf, 0, 5, 10);
        assert_eq!(buf, [0x0a]);
        buf.clear();
        hpack_int(&mut buf, 0, 5, 1337);
        assert_eq!(buf, [0x1f, 0x9a, 0x0a]);
        for (n, value) in [
            (4, 0),
            (4, 14),
            (4, 15),
            (4, 16),
            (7, 126),
            (7, 127),
            (7, 100_000),
        ] {
            let mut buf = Vec::new();
            hpack_int(&mut buf, 0, n, value);
            let mut at = 0;
            assert_eq!(read_int(&buf, &mut at, n), Some(value));
            assert_eq!(at, buf.len());
        }
    }

    #[test]
    fn request_blocks_round_trip() {
        let block = request_block("GET", "/", "localhost", &[]);
        assert_eq!(block[..3], [0x82, 0x86, 0x84], "indexed GET, http, /");
        assert_eq!(
            decode_fields(&block),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "localhost")
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        let long = format!("/a/echo?{}", "x".repeat(300));
        let block = request_block("PUT", &long, "h:1", &[("x-k", "v")]);
        assert_eq!(
            decode_fields(&block),
            [
                (":method", "PUT"),
                (":scheme", "http"),
                (":path", long.as_str()),
                (":authority", "h:1"),
                ("x-k", "v")
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[test]
    fn statuses_decode() {
        assert_eq!(decode_status(&[0x88]), Some(200));
        assert_eq!(decode_status(&[0x8d]), Some(404));
        assert_eq!(decode_status(&[0x8e]), Some(500));
        // A dynamic table size update (to 0) first.
        assert_eq!(decode_status(&[0x20, 0x88]), Some(200));
        // Literal with incremental indexing, name :status, plain "503".
        assert_eq!(decode_status(&[0x48, 0x03, b'5', b'0', b'3']), Some(503));
        // Literal without indexing, plain "408".
        assert_eq!(decode_status(&[0x08, 0x03, b'4', b'0', b'8']), Some(408));
        // RFC 7541 C.6.1: Huffman "302".
        assert_eq!(decode_status(&[0x48, 0x82, 0x64, 0x02]), Some(302));
        // Huffman "503": 011011 00000 011001 + 7 bits of padding.
        assert_eq!(decode_status(&[0x48, 0x83, 0x6c, 0x0c, 0xff]), Some(503));
        // Not a status: an indexed :path, a Huffman letter.
        assert_eq!(decode_status(&[0x84]), None);
        assert_eq!(decode_status(&[0x48, 0x81, 0x1f]), None);
        assert_eq!(decode_status(&[]), None);
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        headers(&mut buf, 1, "POST", "/echo", false);
        data(&mut buf, 1, b"abc", true);
        rst_stream(&mut buf, 3, code::CANCEL);
        window_update(&mut buf, 0, 1 << 20);
        settings(&mut buf, CLIENT_SETTINGS);
        settings_ack(&mut buf);
        ping(&mut buf, true, *b"12345678");
        let mut response = Vec::new();
        frame(&mut response, kind::HEADERS, flag::END_HEADERS, 5, &[0x8d]);
        let mut goaway = 7u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&code::ENHANCE_YOUR_CALM.to_be_bytes());
        goaway.extend_from_slice(b"calm");
        frame(&mut buf, kind::GOAWAY, 0, 0, &goaway);
        buf.extend_from_slice(&response);
        assert_eq!(
            frames(&buf),
            [
                Frame::Headers {
                    stream: 1,
                    status: None,
                    end_stream: false
                },
                Frame::Data {
                    stream: 1,
                    len: 3,
                    end_stream: true
                },
                Frame::RstStream {
                    stream: 3,
                    code: code::CANCEL
                },
                Frame::WindowUpdate {
                    stream: 0,
                    increment: 1 << 20
                },
                Frame::Settings {
                    ack: false,
                    values: CLIENT_SETTINGS.to_vec()
                },
                Frame::Settings {
                    ack: true,
                    values: vec![]
                },
                Frame::Ping {
                    ack: true,
                    payload: *b"12345678"
                },
                Frame::GoAway {
                    last_stream: 7,
                    code: code::ENHANCE_YOUR_CALM,
                    debug: "calm".into()
                },
                Frame::Headers {
                    stream: 5,
                    status: Some(404),
                    end_stream: false
                },
            ]
        );
    }
}
