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
//! Where this reader and hyper could disagree, this one steps aside and
//! hyper's own checks stand: a head hyper would refuse anyway (a bad byte,
//! obsolete line folding, too many headers, too large), a chunk size it
//! cannot read, and everything after a request asking to change protocol
//! (its answer decides whether the bytes that follow are requests at all).
//! Stepping aside never lets an ambiguous request through in its ambiguous
//! form: hyper still frames it one way only, and the proxy sends bodies on
//! with framing of its own.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a request head may take here before it is left to hyper (which
/// refuses heads over [`super::serve::MAX_HEAD_BUFFER`] with 431).
const MAX_HEAD: usize = super::serve::MAX_HEAD_BUFFER + 1024;

/// Header lines read per head; a head with more is left to hyper (which
/// refuses it).
const MAX_HEADERS: usize = 128;

/// What hyper is handed instead of a refused head: it cannot parse it, so
/// it answers 400 and closes.
const REFUSED: &[u8] = b"\0\r\n\r\n";

/// Where the reader is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At (or inside) a request head.
    Head,
    /// This many body bytes before the next head.
    Body(u64),
    /// A chunk-size line: the size so far, its hex digits, and the line's length.
    ChunkSize { size: u64, digits: u32, line: u32, ext: bool },
    /// This many bytes of chunk data.
    ChunkData(u64),
    /// The line end after chunk data.
    ChunkEnd { line: u32 },
    /// The trailer section after the last chunk: the current line's length.
    Trailers { line: u32 },
    /// No longer read: bytes pass untouched.
    Through,
    /// A request was refused: nothing more is read.
    Refused,
}

/// The verdict on one whole request head.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Released; what follows it.
    Next(State),
    /// Never released.
    Refuse(&'static str),
}

/// An HTTP/1.1 server connection's byte stream with its request framing
/// checked (see the module docs). `strict: false` passes every byte
/// untouched.
pub struct Framing<IO> {
    io: IO,
    state: State,
    /// A request head not yet whole, held back from hyper.
    head: Vec<u8>,
    /// Bytes for hyper that did not go straight into its buffer.
    ready: Vec<u8>,
    ready_at: usize,
}

impl<IO> Framing<IO> {
    pub fn new(io: IO, strict: bool) -> Framing<IO> {
        let state = if strict { State::Head } else { State::Through };
        Framing { io, state, head: Vec::new(), ready: Vec::new(), ready_at: 0 }
    }

    /// Follows body bytes from the start of `bytes`; how many belong to
    /// bodies (they pass as they are). Stops at the next head.
    fn follow_body(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.state {
                State::Head => return at,
                State::Through | State::Refused => return bytes.len(),
                State::Body(left) | State::ChunkData(left) => {
                    let n = (*left).min((bytes.len() - at) as u64);
                    *left -= n;
                    at += n as usize;
                    if *left == 0 {
                        self.state = match self.state {
                            State::Body(_) => State::Head,
                            _ => State::ChunkEnd { line: 0 },
                        };
                    }
                }
                State::ChunkSize { size, digits, line, ext } => {
                    let (mut size, mut digits, line, mut ext) = (*size, *digits, *line + 1, *ext);
                    let b = bytes[at];
                    at += 1;
                    self.state = if b == b'\n' {
                        match (digits, size) {
                            (0, _) => State::Through,
                            (_, 0) => State::Trailers { line: 0 },
                            (_, size) => State::ChunkData(size),
                        }
                    } else {
                        match (ext, (b as char).to_digit(16)) {
                            (false, Some(v)) => {
                                digits += 1;
                                size = (size << 4) | u64::from(v);
                            }
                            // An extension, whitespace or the CR: to the line's end.
                            _ => ext = true,
                        }
                        if digits > 15 || line > 4096 {
                            State::Through
                        } else {
                            State::ChunkSize { size, digits, line, ext }
                        }
                    };
                }
                State::ChunkEnd { line } => {
                    let b = bytes[at];
                    at += 1;
                    *line += 1;
                    if b == b'\n' {
                        self.state = State::ChunkSize { size: 0, digits: 0, line: 0, ext: false };
                    } else if *line > 2 {
                        self.state = State::Through;
                    }
                }
                State::Trailers { line } => {
                    let b = bytes[at];
                    at += 1;
                    match b {
                        b'\n' if *line == 0 => self.state = State::Head,
                        b'\n' => *line = 0,
                        b'\r' => {}
                        _ => *line = line.saturating_add(1),
                    }
                }
            }
        }
        at
    }

    /// Reads whole heads out of `self.head` into `self.ready`, and the body
    /// bytes after each, until a head is not yet whole.
    fn take_heads(&mut self) {
        while self.state == State::Head && !self.head.is_empty() {
            let verdict = match read_head(&self.head) {
                Ok(Some((len, verdict))) => Some((len, verdict)),
                Ok(None) if self.head.len() <= MAX_HEAD => return,
                // Too large, or hyper refuses it too: left to hyper.
                Ok(None) | Err(()) => None,
            };
            match verdict {
                None => {
                    self.state = State::Through;
                    self.ready.append(&mut self.head);
                }
                Some((_, Verdict::Refuse(why))) => {
                    tracing::debug!(why, "a request with ambiguous framing was refused before hyper read it");
                    self.state = State::Refused;
                    self.head = Vec::new();
                    self.ready.extend_from_slice(REFUSED);
                }
                Some((len, Verdict::Next(next))) => {
                    self.state = next;
                    let rest = self.head.split_off(len);
                    self.ready.append(&mut self.head);
                    let body = self.follow_body(&rest);
                    self.ready.extend_from_slice(&rest[..body]);
                    self.head = rest[body..].to_vec();
                }
            }
        }
        if self.state == State::Through {
            self.ready.append(&mut self.head);
        }
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
    let (mut lengths, mut encodings, mut upgrade) = (Vec::new(), 0usize, req.method == Some("CONNECT"));
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encodings += 1;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let verdict = if !lengths.is_empty() && encodings > 0 {
        Verdict::Refuse("both Content-Length and Transfer-Encoding")
    } else if lengths.len() > 1 {
        Verdict::Refuse("more than one Content-Length")
    } else if upgrade {
        // What follows may not be HTTP at all: the answer decides.
        Verdict::Next(State::Through)
    } else if encodings > 0 {
        Verdict::Next(State::ChunkSize { size: 0, digits: 0, line: 0, ext: false })
    } else if let Some(value) = lengths.first() {
        match std::str::from_utf8(value).ok().filter(|v| v.bytes().all(|b| b.is_ascii_digit())) {
            Some(v) => match v.parse::<u64>() {
                Ok(0) => Verdict::Next(State::Head),
                Ok(n) => Verdict::Next(State::Body(n)),
                Err(_) => Verdict::Next(State::Through),
            },
            // hyper refuses it.
            None => Verdict::Next(State::Through),
        }
    } else {
        Verdict::Next(State::Head)
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
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Through => return Pin::new(&mut this.io).poll_read(cx, buf),
                // hyper has its 400 to send, and reads no further.
                State::Refused => return Poll::Ready(Ok(())),
                _ => {}
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            let after = buf.filled().len();
            if after == before {
                // The end: a partial head goes to hyper as it is.
                if this.head.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.state = State::Through;
                this.ready.append(&mut this.head);
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
        let mut framed = Framing::new(server, true);
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
    async fn what_hyper_refuses_itself_or_cannot_be_followed_is_left_to_hyper() {
        for input in [
            // Obsolete line folding and a bad byte: hyper answers 400.
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
            // A WebSocket: what follows its head is not ours to read.
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello".to_vec(),
            // A chunk size no one can read.
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            // A head that never ends.
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}", "a".repeat(MAX_HEAD + 10)).into_bytes(),
        ] {
            assert_eq!(through(&input, 1000).await, input);
        }
    }

    #[tokio::test]
    async fn off_it_passes_everything() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, input).await.unwrap();
        drop(client);
        let mut out = Vec::new();
        Framing::new(server, false).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn body_lengths_are_followed() {
        let mut f = Framing::new((), true);
        f.state = State::Body(3);
        assert_eq!(f.follow_body(b"abcGET"), 3);
        assert_eq!(f.state, State::Head);
        f.state = State::ChunkSize { size: 0, digits: 0, line: 0, ext: false };
        assert_eq!(f.follow_body(b"3\r\nabc\r\n0\r\n\r\nGET"), 13);
        assert_eq!(f.state, State::Head);
    }
}
