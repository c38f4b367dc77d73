//! Strict request framing on an HTTP/1.1 connection, checked before hyper
//! reads a request: a listener that passes bodies on (reverse-proxy mode)
//! refuses with 400 every request whose length two readers could read two
//! ways, where hyper alone would accept it in a normalised form.
//!
//! hyper reads a request carrying both `Content-Length` and
//! `Transfer-Encoding` by the latter and drops the former (RFC 9112 §6.1
//! allows that), and merges equal duplicate `Content-Length`s; the
//! handler then sees one clean header and cannot tell. [`Framing`] sits
//! between the socket and hyper, holds each request head back until it is
//! whole, and reads it with the same parser hyper uses (`httparse`):
//! - **`Content-Length` beside `Transfer-Encoding`**, or **more than one
//!   `Content-Length`** (equal or not): the head never reaches hyper. hyper
//!   is handed a request line it cannot parse instead, so it answers 400
//!   and closes the connection; nothing the client sent after it is read.
//! - **Anything else:** the head is released unchanged, and the body is
//!   followed (by its length, or chunk by chunk) to find the next head.
//!
//! The bodies are followed with hyper's own grammar (its chunked decoder's
//! states, byte for byte), so the two never disagree on where a request
//! ends. A head this reader cannot read (a bad byte, obsolete line
//! folding, too many headers, too large) is refused the same way, so that
//! nothing behind it reaches hyper whatever hyper's own settings; a body
//! hyper fails on is handed over up to the bad byte, and no more is read.
//! `CONNECT` is refused (never served here). A request asking to change
//! protocol (`Upgrade`) must carry no body; after it, reading waits for
//! the answer: a 101 hands the connection over untouched, anything else
//! goes on reading requests with the same checks. The answer is told by
//! the service that made it ([`Answers`]), never guessed from the bytes
//! written (which may still be an earlier answer's body).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a request head may take here before it is left to hyper (which
/// refuses heads over [`super::serve::MAX_HEAD_BUFFER`] with 431).
const MAX_HEAD: usize = super::serve::MAX_HEAD_BUFFER + 1024;

/// Header lines read per head; a head with more is left to hyper (which
/// refuses it).
const MAX_HEADERS: usize = 128;

/// Chunk-extension bytes per body, and trailer bytes: hyper's limits
/// (`CHUNKED_EXTENSIONS_LIMIT`, its header size); past them hyper fails.
const MAX_EXTENSIONS: u32 = 16 * 1024;
const MAX_TRAILERS: u32 = MAX_HEAD as u32;

/// What hyper is handed instead of a refused head: it cannot parse it, so
/// it answers 400 and closes.
const REFUSED: &[u8] = b"\0\r\n\r\n";

/// Held buffers larger than this are given back once empty.
const KEEP_CAPACITY: usize = 8 * 1024;

/// Where the reader is in the byte stream. The chunk states are hyper's
/// (`proto::h1::decode::ChunkedState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At (or inside) a request head.
    Head,
    /// This many body bytes before the next head.
    Body(u64),
    ChunkStart {
        ext: u32,
    },
    ChunkSize {
        size: u64,
        ext: u32,
    },
    ChunkSizeLws {
        size: u64,
        ext: u32,
    },
    ChunkExtension {
        size: u64,
        ext: u32,
    },
    ChunkSizeLf {
        size: u64,
        ext: u32,
    },
    ChunkData {
        left: u64,
        ext: u32,
    },
    ChunkDataCr {
        ext: u32,
    },
    ChunkDataLf {
        ext: u32,
    },
    EndCr {
        trailers: u32,
    },
    Trailer {
        trailers: u32,
    },
    TrailerLf {
        trailers: u32,
    },
    EndLf,
    /// A request asked to change protocol: nothing is read until its
    /// answer is known ([`Answers`]).
    AwaitAnswer,
    /// The protocol changed: bytes pass untouched.
    Through,
    /// No more is read (a refused head, or a body hyper fails on).
    Refused,
}

/// The verdict on one whole request head.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Released; what follows it.
    Next(State),
    /// Never released.
    Refuse(&'static str),
    /// hyper refuses it itself (and closes): released, and no more is read.
    HyperRefuses,
}

/// An HTTP/1.1 server connection's byte stream with its request framing
/// checked (see the module docs). `strict: false` passes every byte
/// untouched.
pub struct Framing<IO> {
    io: IO,
    state: State,
    /// Bytes read but not yet judged: a head not yet whole, or what came
    /// after a request that asked to change protocol. From `head_at` on.
    head: Vec<u8>,
    head_at: usize,
    /// How far `head` was searched for a head's end.
    scanned: usize,
    /// Bytes for hyper that did not go straight into its buffer.
    ready: Vec<u8>,
    ready_at: usize,
    /// The answer to a request that asked to change protocol.
    answers: Arc<Answers>,
}

/// How a connection's service tells its [`Framing`] the answer to a
/// request that asked to change protocol (`Upgrade`, see
/// [`asks_to_switch`]; `CONNECT` is refused before hyper reads it): HTTP/1.1 serves one request at a time, so the
/// answer the service gives such a request is the one awaited.
#[derive(Default)]
pub struct Answers(Mutex<Awaited>);

#[derive(Default)]
struct Awaited {
    /// Whether the protocol changed (a 101), once answered.
    switched: Option<bool>,
    /// hyper's read, waiting on the answer.
    reader: Option<Waker>,
}

impl Answers {
    /// The service answered a request that asked to change protocol.
    pub fn answered(&self, status: http::StatusCode) {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        a.switched = Some(status == http::StatusCode::SWITCHING_PROTOCOLS);
        if let Some(w) = a.reader.take() {
            w.wake();
        }
    }

    /// Drops an answer no read awaited.
    fn forget(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).switched = None;
    }

    /// The answer, once given (taken); else `cx` is woken when it is.
    fn take(&self, cx: &Context<'_>) -> Option<bool> {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let switched = a.switched.take();
        if switched.is_none() {
            a.reader = Some(cx.waker().clone());
        }
        switched
    }
}

/// Whether a request asks to change protocol, as [`Framing`] judges its
/// head: an `Upgrade` header.
pub fn asks_to_switch<B>(req: &http::Request<B>) -> bool {
    req.headers().contains_key(http::header::UPGRADE)
}

impl<IO> Framing<IO> {
    pub fn new(io: IO, strict: bool, answers: Arc<Answers>) -> Framing<IO> {
        let state = if strict { State::Head } else { State::Through };
        Framing { io, state, head: Vec::new(), head_at: 0, scanned: 0, ready: Vec::new(), ready_at: 0, answers }
    }

    /// Follows body bytes from the start of `bytes`; how many belong to
    /// bodies (they pass as they are). Stops at the next head.
    fn follow_body(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            if let State::Body(left) | State::ChunkData { left, .. } = self.state {
                let n = left.min((bytes.len() - at) as u64);
                at += n as usize;
                self.state = match (self.state, left - n) {
                    (State::Body(_), 0) => State::Head,
                    (State::Body(_), left) => State::Body(left),
                    (State::ChunkData { ext, .. }, 0) => State::ChunkDataCr { ext },
                    (State::ChunkData { ext, .. }, left) => State::ChunkData { left, ext },
                    (s, _) => s,
                };
                continue;
            }
            match self.state {
                State::Head | State::AwaitAnswer | State::Refused => return at,
                State::Through => return bytes.len(),
                _ => {}
            }
            self.state = chunked(self.state, bytes[at]);
            at += 1;
        }
        at
    }

    /// Judges what is held: whole heads go to `self.ready` with the body
    /// bytes after each, until a head is not yet whole or reading must wait.
    fn take_heads(&mut self) {
        while self.state == State::Head && self.head_at < self.head.len() {
            // Empty lines before a request line: hyper skips them too.
            let blank = self.head[self.head_at..].iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            let blank = match self.head[self.head_at..self.head_at + blank].last() {
                // A lone CR may begin the next line: kept until it does.
                Some(b'\r') => blank - 1,
                _ => blank,
            };
            if blank > 0 {
                self.ready.extend_from_slice(&self.head[self.head_at..self.head_at + blank]);
                self.head_at += blank;
                self.scanned = self.scanned.max(self.head_at);
                continue;
            }
            let held = &self.head[self.head_at..];
            // Parsed only once the bytes could end a head: never again for
            // every byte of one sent slowly.
            let from = self.scanned.saturating_sub(self.head_at).saturating_sub(3);
            let could_end = held[from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r");
            self.scanned = self.head.len();
            let verdict = if could_end { read_head(held) } else { Ok(None) };
            match verdict {
                Ok(None) if held.len() <= MAX_HEAD => break,
                // Too large, or unreadable (hyper refuses it too): where it
                // ends is unknown, so nothing of it or after it reaches
                // hyper, which answers 400 instead.
                Ok(None) | Err(()) => {
                    tracing::debug!("a request head too large or unreadable was refused before hyper read it");
                    self.state = State::Refused;
                    self.head_at = self.head.len();
                    self.ready.extend_from_slice(REFUSED);
                }
                Ok(Some((_, Verdict::Refuse(why)))) => {
                    tracing::debug!(why, "a request with ambiguous framing was refused before hyper read it");
                    self.state = State::Refused;
                    self.head_at = self.head.len();
                    self.ready.extend_from_slice(REFUSED);
                }
                Ok(Some((len, Verdict::HyperRefuses))) => {
                    self.ready.extend_from_slice(&held[..len]);
                    self.head_at = self.head.len();
                    self.state = State::Refused;
                }
                Ok(Some((len, Verdict::Next(next)))) => {
                    if next == State::AwaitAnswer {
                        // hyper has not seen this head yet, so no answer to
                        // it can have been given: anything held is stale.
                        self.answers.forget();
                    }
                    self.ready.extend_from_slice(&held[..len]);
                    self.head_at += len;
                    self.scanned = self.head_at;
                    self.state = next;
                    let rest = std::mem::take(&mut self.head);
                    let body = self.follow_body(&rest[self.head_at..]);
                    self.ready.extend_from_slice(&rest[self.head_at..self.head_at + body]);
                    self.head = rest;
                    self.head_at += body;
                    self.scanned = self.head_at;
                }
            }
        }
        if self.head_at == self.head.len() || self.state == State::Refused {
            self.head.clear();
            self.scanned = 0;
            if self.head.capacity() > KEEP_CAPACITY {
                self.head = Vec::new();
            }
        } else {
            // What was judged goes: only a head not yet whole stays.
            self.head.drain(..self.head_at);
            self.scanned -= self.head_at.min(self.scanned);
        }
        self.head_at = 0;
    }

    /// Everything held goes to hyper as it is; then `next`.
    fn release_all(&mut self, next: State) {
        self.ready.extend_from_slice(&self.head[self.head_at..]);
        self.head_at = self.head.len();
        self.state = next;
    }
}

/// hyper's chunked decoder, one byte at a time: the next state, or
/// `Refused` where hyper fails.
fn chunked(state: State, b: u8) -> State {
    let hex = (b as char).to_digit(16).map(u64::from);
    match state {
        State::ChunkStart { ext } => match hex {
            Some(v) => State::ChunkSize { size: v, ext },
            None => State::Refused,
        },
        State::ChunkSize { size, ext } => match (hex, b) {
            (Some(v), _) => match size.checked_mul(16).and_then(|s| s.checked_add(v)) {
                Some(size) => State::ChunkSize { size, ext },
                None => State::Refused,
            },
            (None, b'\t' | b' ') => State::ChunkSizeLws { size, ext },
            (None, b';') => State::ChunkExtension { size, ext },
            (None, b'\r') => State::ChunkSizeLf { size, ext },
            _ => State::Refused,
        },
        State::ChunkSizeLws { size, ext } => match b {
            b'\t' | b' ' => State::ChunkSizeLws { size, ext },
            b';' => State::ChunkExtension { size, ext },
            b'\r' => State::ChunkSizeLf { size, ext },
            _ => State::Refused,
        },
        State::ChunkExtension { size, ext } => match b {
            b'\r' => State::ChunkSizeLf { size, ext },
            b'\n' => State::Refused,
            _ if ext + 1 >= MAX_EXTENSIONS => State::Refused,
            _ => State::ChunkExtension { size, ext: ext + 1 },
        },
        State::ChunkSizeLf { size, ext } => match (b, size) {
            (b'\n', 0) => State::EndCr { trailers: 0 },
            (b'\n', left) => State::ChunkData { left, ext },
            _ => State::Refused,
        },
        State::ChunkDataCr { ext } if b == b'\r' => State::ChunkDataLf { ext },
        State::ChunkDataLf { ext } if b == b'\n' => State::ChunkStart { ext },
        State::EndCr { trailers } => match b {
            b'\r' => State::EndLf,
            _ => State::Trailer { trailers: trailers + 1 },
        },
        State::Trailer { trailers } if trailers >= MAX_TRAILERS => State::Refused,
        State::Trailer { trailers } => match b {
            b'\r' => State::TrailerLf { trailers: trailers + 1 },
            _ => State::Trailer { trailers: trailers + 1 },
        },
        State::TrailerLf { trailers } if b == b'\n' => State::EndCr { trailers: trailers + 1 },
        State::EndLf if b == b'\n' => State::Head,
        _ => State::Refused,
    }
}

/// One request head, if whole: its length and verdict. `Err` when hyper's
/// parser refuses it (hyper answers it itself).
fn read_head(bytes: &[u8]) -> Result<Option<(usize, Verdict)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    if req.method == Some("CONNECT") {
        // Never served here; hyper would take a 2xx to it as a switch.
        return Ok(Some((len, Verdict::Refuse("CONNECT"))));
    }
    let (mut lengths, mut encodings, mut upgrade) = (Vec::new(), 0usize, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encodings += 1;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if !lengths.is_empty() && encodings > 0 {
        // Whatever the length says: hyper would drop it unread.
        return Ok(Some((len, Verdict::Refuse("both Content-Length and Transfer-Encoding"))));
    }
    if lengths.len() > 1 {
        return Ok(Some((len, Verdict::Refuse("more than one Content-Length"))));
    }
    let length = match lengths.first() {
        None => None,
        Some(v) => match std::str::from_utf8(v).ok().filter(|v| v.bytes().all(|b| b.is_ascii_digit())) {
            Some(v) => match v.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return Ok(Some((len, Verdict::HyperRefuses))),
            },
            None => return Ok(Some((len, Verdict::HyperRefuses))),
        },
    };
    let verdict = if upgrade && (encodings > 0 || length.is_some_and(|n| n > 0)) {
        Verdict::Refuse("a body on a request asking to change protocol")
    } else if upgrade {
        Verdict::Next(State::AwaitAnswer)
    } else if encodings > 0 {
        Verdict::Next(State::ChunkStart { ext: 0 })
    } else {
        match length {
            Some(n) if n > 0 => Verdict::Next(State::Body(n)),
            _ => Verdict::Next(State::Head),
        }
    };
    Ok(Some((len, verdict)))
}

impl<IO: AsyncRead + Unpin> AsyncRead for Framing<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = (this.ready.len() - this.ready_at).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                    if this.ready.capacity() > KEEP_CAPACITY {
                        this.ready = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Through => return Pin::new(&mut this.io).poll_read(cx, buf),
                // hyper has its 400 to send, or a body it fails on: no more.
                State::Refused => return Poll::Ready(Ok(())),
                State::AwaitAnswer => match this.answers.take(cx) {
                    Some(true) => this.release_all(State::Through),
                    Some(false) => {
                        this.state = State::Head;
                        this.take_heads();
                    }
                    None => return Poll::Pending,
                },
                _ => {}
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            let after = buf.filled().len();
            if after == before {
                // The end: a partial head goes to hyper as it is.
                if this.head_at == this.head.len() {
                    return Poll::Ready(Ok(()));
                }
                this.release_all(State::Refused);
                continue;
            }
            // Body bytes stay where they are; a head is held back until whole.
            let body = this.follow_body(&buf.filled()[before..after]);
            if before + body < after {
                this.head.extend_from_slice(&buf.filled()[before + body..after]);
                buf.set_filled(before + body);
                this.take_heads();
            }
            if body > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Framing<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What hyper would read from `input` arriving in pieces of `step`.
    async fn through(input: &[u8], step: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(step) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut framed = Framing::new(server, true, Arc::default());
        let mut out = Vec::new();
        framed.read_to_end(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        out
    }

    #[tokio::test]
    async fn well_framed_requests_pass_byte_for_byte_in_any_pieces() {
        let pipelined: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: a\r\n\r\n\
POST /d HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n\
\r\nGET /e HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(through(pipelined, step).await, pipelined, "step {step}");
        }
    }

    #[tokio::test]
    async fn ambiguous_lengths_become_a_line_hyper_refuses_and_nothing_after_it_is_read() {
        let good = "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        for framing in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
            "Content-Length: 5\r\nContent-Length: 5",
            "content-length: 5\r\nCONTENT-LENGTH: 6",
            "Content-Length: 5\r\nTransfer-Encoding: identity",
            // A length hyper would drop unread, and so never refuse.
            "Transfer-Encoding: chunked\r\nContent-Length: +1",
        ] {
            let input = format!("{good}POST /x HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n0\r\n\r\n{smuggled}");
            for step in [1, 5, 4096] {
                let out = through(input.as_bytes(), step).await;
                let want = [good.as_bytes(), REFUSED].concat();
                assert_eq!(out, want, "{framing:?} in steps of {step}: {}", String::from_utf8_lossy(&out));
            }
        }
    }

    #[tokio::test]
    async fn what_hyper_refuses_itself_reaches_hyper_and_nothing_after_it() {
        let next = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
        let chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let refused = Some(usize::MAX);
        for (input, passed) in [
            // Obsolete line folding, a bad byte, CONNECT: refused, nothing
            // of them or after them reaches hyper.
            (b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".to_vec(), refused),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".to_vec(), refused),
            (b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n".to_vec(), refused),
            // A length hyper refuses: its head, and no more.
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n".to_vec(), None),
            // A chunk size no one can read, and chunk lines hyper fails on
            // (a bare LF, data not ended by CRLF): up to the bad byte.
            ([&chunked[..], b"zz\r\n"].concat(), Some(chunked.len() + 1)),
            ([&chunked[..], b"5\nhello\r\n0\r\n\r\n"].concat(), Some(chunked.len() + 2)),
            ([&chunked[..], b"5\r\nhelloX\r\n0\r\n\r\n"].concat(), Some(chunked.len() + 9)),
            ([&chunked[..], b"FFFFFFFFFFFFFFFFF\r\n"].concat(), Some(chunked.len() + 17)),
        ] {
            let sent = [&input[..], next].concat();
            let out = through(&sent, 1000).await;
            if passed == refused {
                assert_eq!(out, REFUSED, "{}", String::from_utf8_lossy(&input));
            } else {
                assert_eq!(out, &sent[..passed.unwrap_or(input.len())], "{}", String::from_utf8_lossy(&input));
            }
        }
        // A head that never ends, and one with more lines than are read.
        let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}", "a".repeat(2 * MAX_HEAD)).into_bytes();
        assert_eq!(through(&long, 1000).await, REFUSED);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS + 1)).into_bytes();
        assert_eq!(through(&[&many[..], next].concat(), 1000).await, REFUSED);
    }

    #[tokio::test]
    async fn chunks_are_followed_as_hyper_reads_them() {
        // Leading zeros, whitespace and extensions; a bare LF inside the
        // trailers is no line end to hyper, so it is none here either: the
        // "head" behind it is trailer bytes, and the CL+TE request after
        // the real end is refused.
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
000000000000000000005 ;a=b\r\nhello\r\n0\r\n\nGET /t HTTP/1.1\r\nContent-Length: 9\r\n\r\n\
POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let end = input.windows(8).position(|w| w == b"POST /s ").unwrap();
        for step in [1, 9, 4096] {
            assert_eq!(through(input, step).await, [&input[..end], REFUSED].concat(), "step {step}");
        }
    }

    /// A request asking to change protocol, then the service's `answer`:
    /// what hyper reads after it.
    async fn after_upgrade(answer: http::StatusCode, after: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[&head[..], after].concat()).await.unwrap();
        client.shutdown().await.unwrap();
        let answers = Arc::new(Answers::default());
        // An answer given before the head was read (to nothing awaited) is
        // no answer to it.
        answers.answered(http::StatusCode::SWITCHING_PROTOCOLS);
        let mut framed = Framing::new(server, true, answers.clone());
        let mut got = vec![0u8; head.len()];
        framed.read_exact(&mut got).await.unwrap();
        assert_eq!(got, head);
        // Nothing more is read until the answer is written.
        let mut one = [0u8; 1];
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), framed.read(&mut one)).await;
        assert!(waiting.is_err(), "read on before the answer");
        // Bytes hyper writes meanwhile (an earlier answer's body, say) decide nothing.
        framed.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), framed.read(&mut one)).await;
        assert!(waiting.is_err(), "read on after bytes that only look like an answer");
        answers.answered(answer);
        let mut rest = Vec::new();
        framed.read_to_end(&mut rest).await.unwrap();
        drop(client);
        rest
    }

    #[tokio::test]
    async fn after_a_protocol_change_only_a_101_stops_the_checks() {
        let smuggle =
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // Switched: what follows is the new protocol's, untouched.
        let frames = b"\x81\x05hello";
        let switched = http::StatusCode::SWITCHING_PROTOCOLS;
        assert_eq!(after_upgrade(switched, frames).await, frames);
        let both = [&frames[..], smuggle].concat();
        assert_eq!(after_upgrade(switched, &both).await, both);
        // Refused (401): requests again, still checked.
        assert_eq!(after_upgrade(http::StatusCode::UNAUTHORIZED, smuggle).await, REFUSED);
        // A body on such a request is refused at once.
        let body = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(through(body, 4096).await, REFUSED);
    }

    #[tokio::test]
    async fn what_was_judged_is_not_kept() {
        use tokio::io::AsyncWriteExt;
        // Many pipelined heads, each read split in the middle of one, and
        // blank lines between them: all pass, and only the unfinished head
        // is ever held.
        let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\n";
        let input = one.repeat(2_000);
        let (mut client, server) = tokio::io::duplex(64);
        let mut framed = Framing::new(server, true, Arc::default());
        let writer = tokio::spawn(async move {
            for piece in input.chunks(13) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        let (mut read, mut held) = (0, 0);
        let mut buf = [0u8; 64];
        while read < one.len() * 2_000 {
            read += framed.read(&mut buf).await.unwrap();
            held = held.max(framed.head.capacity());
        }
        drop(writer.await.unwrap());
        // Bounded by a head, not by the 70 KB of requests that went through.
        assert!(held <= 1024, "held {held} bytes");
    }

    #[tokio::test]
    async fn off_it_passes_everything() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, input).await.unwrap();
        drop(client);
        let mut out = Vec::new();
        Framing::new(server, false, Arc::default()).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn body_lengths_are_followed() {
        let mut f = Framing::new((), true, Arc::default());
        f.state = State::Body(3);
        assert_eq!(f.follow_body(b"abcGET"), 3);
        assert_eq!(f.state, State::Head);
        f.state = State::ChunkStart { ext: 0 };
        assert_eq!(f.follow_body(b"3\r\nabc\r\n0\r\n\r\nGET"), 13);
        assert_eq!(f.state, State::Head);
    }
}
