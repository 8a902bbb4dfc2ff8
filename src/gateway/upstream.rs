//! The gateway's client to the worker: one pool of kept-alive HTTP/1.1 connections per serving
//! runtime, one request shape (an admitted notification, already written whole by `forward`), and
//! the worker's answer read whole, bounded and checked by the pure [`parse_answer_head`].
//!
//! Why not pingora's proxy: the listener has already read and checked the request, so pingora's
//! server session would parse it a second time, and its pool spawns a watcher task and tests the
//! socket on every return. Here a request costs one write and, for a small answer, one read; each
//! runtime's pool is a plain list its own tasks take from and give back to.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::{ChunkedDecoder, ChunkedError, Progress};

/// Largest answer head read from the worker; its answers carry a handful of fields.
pub const MAX_ANSWER_HEAD_BYTES: usize = 16 * 1024;
/// Largest answer body read from the worker; its SOAP answers are a few hundred bytes.
pub const MAX_ANSWER_BODY_BYTES: usize = 64 * 1024;
/// Most header fields in an answer head.
const MAX_ANSWER_FIELDS: usize = 32;
/// Most idle connections a pool keeps; more are closed when given back.
const MAX_IDLE_PER_POOL: usize = 128;

/// How the worker is reached.
#[derive(Debug, Clone, Copy)]
pub struct WorkerTarget {
    pub addr: SocketAddr,
    pub connect_timeout: Duration,
    /// From the first byte written to the last byte of the answer.
    pub exchange_timeout: Duration,
    /// A pooled connection idle for longer is closed rather than reused.
    pub idle_timeout: Duration,
}

/// The worker's answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Why a notification did not reach the worker, or its answer did not come back.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connecting to the worker at {addr}: {source}")]
    Unreachable { addr: SocketAddr, source: io::Error },
    #[error("connecting to the worker at {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("the worker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the worker closed the connection before its answer was complete")]
    Hangup,
    #[error("talking to the worker: {0}")]
    Io(io::Error),
    #[error("the worker's answer is unusable: {0}")]
    BadAnswer(AnswerFault),
}

impl ForwardError {
    /// (status the client gets, reason in the metrics and the access log).
    pub fn status_and_reason(&self) -> (u16, &'static str) {
        match self {
            ForwardError::Unreachable { .. } | ForwardError::ConnectTimeout(_) => {
                (502, "upstream_unreachable")
            }
            ForwardError::Timeout(_) => (504, "upstream_timeout"),
            ForwardError::Hangup | ForwardError::Io(_) | ForwardError::BadAnswer(_) => {
                (502, "upstream_failed")
            }
        }
    }
}

/// What is wrong with an answer head, as the log line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerFault {
    #[error("the head does not parse as HTTP/1.x")]
    Unparsable,
    #[error("the head is longer than {MAX_ANSWER_HEAD_BYTES} bytes or has too many fields")]
    HeadTooLarge,
    #[error("the body is longer than {MAX_ANSWER_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("the worker switched protocols")]
    Upgrade,
    #[error("Content-Length is not one plain number")]
    BadLength,
    #[error("a transfer coding other than chunked alone, or with a Content-Length")]
    BadTransferEncoding,
    #[error("Content-Type is not printable ASCII")]
    BadContentType,
    #[error("the chunked body is malformed")]
    BadChunks,
}

/// How the answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFraming {
    Length(usize),
    Chunked,
    /// Neither length nor chunks: the body ends when the worker closes.
    UntilClose,
}

/// An answer head, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerHead {
    pub head_len: usize,
    pub status: u16,
    pub content_type: Option<String>,
    pub framing: AnswerFraming,
    /// The worker keeps the connection open after this answer (HTTP/1.1 without `close`).
    pub keep_alive: bool,
}

/// Parses the answer head at the start of `buf`: `Ok(None)` while it is incomplete. An interim
/// (1xx) answer comes back as it is; the caller skips it and parses the next head.
pub fn parse_answer_head(buf: &[u8]) -> Result<Option<AnswerHead>, AnswerFault> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_ANSWER_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER_HEAD_BYTES => {
            return Err(AnswerFault::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(AnswerFault::HeadTooLarge),
        Err(_) => return Err(AnswerFault::Unparsable),
    };
    if head_len > MAX_ANSWER_HEAD_BYTES {
        return Err(AnswerFault::HeadTooLarge);
    }
    let status = response.code.ok_or(AnswerFault::Unparsable)?;
    if status == 101 {
        return Err(AnswerFault::Upgrade);
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = response.version != Some(1);
    let mut content_type = None;
    for field in response.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(field.value).map_err(|_| AnswerFault::BadLength)?;
            let value = value.trim_matches([' ', '\t']);
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 19 {
                return Err(AnswerFault::BadLength);
            }
            let parsed: u64 = value.parse().map_err(|_| AnswerFault::BadLength)?;
            if length.is_some_and(|earlier| earlier != parsed) {
                return Err(AnswerFault::BadLength);
            }
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = String::from_utf8_lossy(field.value);
            if chunked
                || !value
                    .trim_matches([' ', '\t'])
                    .eq_ignore_ascii_case("chunked")
            {
                return Err(AnswerFault::BadTransferEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(field.value);
            if value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
            {
                close = true;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            let printable = field.value.iter().all(|&b| (0x20..0x7f).contains(&b));
            let value = std::str::from_utf8(field.value)
                .ok()
                .filter(|_| printable)
                .ok_or(AnswerFault::BadContentType)?;
            content_type = Some(value.trim().to_string());
        }
    }
    if chunked && length.is_some() {
        return Err(AnswerFault::BadTransferEncoding);
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        AnswerFraming::Length(0)
    } else if chunked {
        AnswerFraming::Chunked
    } else if let Some(length) = length {
        let length = usize::try_from(length)
            .ok()
            .filter(|&length| length <= MAX_ANSWER_BODY_BYTES)
            .ok_or(AnswerFault::BodyTooLarge)?;
        AnswerFraming::Length(length)
    } else {
        AnswerFraming::UntilClose
    };
    Ok(Some(AnswerHead {
        head_len,
        status,
        content_type,
        framing,
        keep_alive: !close && framing != AnswerFraming::UntilClose,
    }))
}

/// A pooled connection and since when it is idle.
struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// The connections of one serving runtime to the worker. Only that runtime's tasks use it (the
/// streams are registered with its event loop); the lock is never contended across threads and
/// never held across an await.
pub struct WorkerPool {
    target: WorkerTarget,
    idle: Mutex<Vec<Idle>>,
}

impl WorkerPool {
    pub fn new(target: WorkerTarget) -> Self {
        Self {
            target,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` (a whole HTTP/1.1 request asking for keep-alive) and reads the answer.
    /// A reused connection that fails before any byte of the answer (the worker closed it while
    /// it was idle) is replaced by a new one and the request sent again: the worker absorbs
    /// duplicates, and nothing of the answer was seen.
    pub async fn forward(&self, request: &[u8]) -> Result<WorkerAnswer, ForwardError> {
        let deadline = tokio::time::Instant::now() + self.target.exchange_timeout;
        let mut stale_tolerated = true;
        loop {
            let (mut stream, reused) = match self.take_idle() {
                Some(stream) => (stream, true),
                None => (self.connect().await?, false),
            };
            let outcome = tokio::time::timeout_at(deadline, exchange(&mut stream, request)).await;
            match outcome {
                Err(_elapsed) => return Err(ForwardError::Timeout(self.target.exchange_timeout)),
                Ok(Ok((answer, keep_alive))) => {
                    if keep_alive {
                        self.give_back(stream);
                    }
                    return Ok(answer);
                }
                Ok(Err(Exchange::BeforeAnswer(_))) if reused && stale_tolerated => {
                    stale_tolerated = false;
                }
                Ok(Err(Exchange::BeforeAnswer(e))) => {
                    return Err(match e.kind() {
                        io::ErrorKind::UnexpectedEof => ForwardError::Hangup,
                        _ => ForwardError::Io(e),
                    })
                }
                Ok(Err(Exchange::Failed(e))) => return Err(e),
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream, ForwardError> {
        let addr = self.target.addr;
        let stream =
            match tokio::time::timeout(self.target.connect_timeout, TcpStream::connect(addr)).await
            {
                Err(_elapsed) => return Err(ForwardError::ConnectTimeout(addr)),
                Ok(Err(source)) => return Err(ForwardError::Unreachable { addr, source }),
                Ok(Ok(stream)) => stream,
            };
        // The request is one write; waiting for an ACK of its first segment only adds latency.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The most recently returned idle connection younger than the idle timeout; older ones
    /// are closed on the way.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(pooled) = idle.pop() {
            if pooled.since.elapsed() < self.target.idle_timeout {
                return Some(pooled.stream);
            }
        }
        None
    }

    fn give_back(&self, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_PER_POOL {
            idle.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Connections idle in the pool (for tests and the metrics of a future release).
    pub fn idle_connections(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// How one exchange on one connection failed.
enum Exchange {
    /// The write failed, or the connection closed or broke before the first byte of the answer.
    BeforeAnswer(io::Error),
    Failed(ForwardError),
}

/// Writes the request and reads one whole answer: (answer, connection reusable).
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
) -> Result<(WorkerAnswer, bool), Exchange> {
    stream
        .write_all(request)
        .await
        .map_err(Exchange::BeforeAnswer)?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut received = false;
    let head = loop {
        let read = stream.read_buf(&mut buf).await;
        match read {
            Ok(0) if !received => {
                return Err(Exchange::BeforeAnswer(io::ErrorKind::UnexpectedEof.into()))
            }
            Err(e) if !received => return Err(Exchange::BeforeAnswer(e)),
            Ok(0) => return Err(Exchange::Failed(ForwardError::Hangup)),
            Err(e) => return Err(Exchange::Failed(ForwardError::Io(e))),
            Ok(_) => received = true,
        }
        // Interim answers (100 Continue and the like) are skipped.
        let parsed = loop {
            match parse_answer_head(&buf) {
                Err(fault) => return Err(Exchange::Failed(ForwardError::BadAnswer(fault))),
                Ok(Some(head)) if (100..200).contains(&head.status) => buf.advance(head.head_len),
                Ok(parsed) => break parsed,
            }
        };
        if let Some(head) = parsed {
            break head;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
    };
    buf.advance(head.head_len);
    let failed = |e: ForwardError| Exchange::Failed(e);
    let (body, leftover) = read_answer_body(stream, buf, head.framing)
        .await
        .map_err(failed)?;
    let answer = WorkerAnswer {
        status: head.status,
        content_type: head.content_type,
        body,
    };
    // Bytes after the answer would be read as the next request's answer: never reuse then.
    Ok((answer, head.keep_alive && !leftover))
}

/// Reads the body as framed, starting with what `buf` already holds: (body, bytes followed it).
async fn read_answer_body(
    stream: &mut TcpStream,
    mut buf: BytesMut,
    framing: AnswerFraming,
) -> Result<(Bytes, bool), ForwardError> {
    let read_more = |n: io::Result<usize>| match n {
        Ok(0) => Err(ForwardError::Hangup),
        Ok(n) => Ok(n),
        Err(e) => Err(ForwardError::Io(e)),
    };
    match framing {
        AnswerFraming::Length(length) => {
            while buf.len() < length {
                buf.reserve(length - buf.len());
                read_more(stream.read_buf(&mut buf).await)?;
            }
            let body = buf.split_to(length).freeze();
            Ok((body, !buf.is_empty()))
        }
        AnswerFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new(MAX_ANSWER_BODY_BYTES);
            let mut body = Vec::new();
            loop {
                match decoder.feed(&buf, &mut body) {
                    Ok(Progress::Done { consumed }) => {
                        return Ok((Bytes::from(body), consumed < buf.len()))
                    }
                    Ok(Progress::NeedMore) => buf.clear(),
                    Err(ChunkedError::TooLarge) => {
                        return Err(ForwardError::BadAnswer(AnswerFault::BodyTooLarge))
                    }
                    Err(ChunkedError::Malformed(_)) => {
                        return Err(ForwardError::BadAnswer(AnswerFault::BadChunks))
                    }
                }
                buf.reserve(4096);
                read_more(stream.read_buf(&mut buf).await)?;
            }
        }
        AnswerFraming::UntilClose => loop {
            if buf.len() > MAX_ANSWER_BODY_BYTES {
                return Err(ForwardError::BadAnswer(AnswerFault::BodyTooLarge));
            }
            buf.reserve(4096);
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Ok((buf.freeze(), false)),
                Ok(_) => {}
                Err(e) => return Err(ForwardError::Io(e)),
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<AnswerHead>, AnswerFault> {
        parse_answer_head(text.as_bytes())
    }

    #[test]
    fn a_framed_answer_keeps_the_connection() {
        let parsed = head("HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: 12\r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.framing, AnswerFraming::Length(12));
        assert_eq!(
            parsed.content_type.as_deref(),
            Some("text/xml; charset=utf-8")
        );
        assert!(parsed.keep_alive);
        assert_eq!(parsed.head_len, "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: 12\r\n\r\n".len());
    }

    #[test]
    fn close_http10_and_unframed_answers_end_the_connection() {
        let closing =
            head("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n");
        assert!(!closing.unwrap().unwrap().keep_alive);
        let old = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!old.unwrap().unwrap().keep_alive);
        let unframed = head("HTTP/1.1 500 Internal Server Error\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(unframed.framing, AnswerFraming::UntilClose);
        assert!(!unframed.keep_alive);
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(chunked.framing, AnswerFraming::Chunked);
        assert!(chunked.keep_alive);
    }

    #[test]
    fn incomplete_heads_wait_and_long_ones_are_refused() {
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        let long = format!(
            "HTTP/1.1 200 OK\r\nX: {}",
            "a".repeat(MAX_ANSWER_HEAD_BYTES)
        );
        assert_eq!(head(&long), Err(AnswerFault::HeadTooLarge));
        let many: String = (0..MAX_ANSWER_FIELDS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            Err(AnswerFault::HeadTooLarge)
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (text, fault) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                AnswerFault::BadLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
                AnswerFault::BadLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
                AnswerFault::BadLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                AnswerFault::BadTransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                AnswerFault::BadTransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n",
                AnswerFault::BodyTooLarge,
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                AnswerFault::Upgrade,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Type: text/\x01xml\r\n\r\n",
                AnswerFault::Unparsable,
            ),
            ("SMTP 220 hello\r\n\r\n", AnswerFault::Unparsable),
        ] {
            assert_eq!(head(text), Err(fault), "{text:?}");
        }
        // The same length twice is one length.
        let twice = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(twice.unwrap().unwrap().framing, AnswerFraming::Length(3));
    }

    #[test]
    fn interim_and_bodiless_answers_have_no_body() {
        let interim = head("HTTP/1.1 100 Continue\r\n\r\n").unwrap().unwrap();
        assert_eq!(interim.status, 100);
        assert_eq!(interim.framing, AnswerFraming::Length(0));
        let empty = head("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(empty.framing, AnswerFraming::Length(0));
    }

    #[test]
    fn forward_errors_map_to_gateway_statuses() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            ForwardError::ConnectTimeout(addr).status_and_reason(),
            (502, "upstream_unreachable")
        );
        assert_eq!(
            ForwardError::Timeout(Duration::from_secs(1)).status_and_reason(),
            (504, "upstream_timeout")
        );
        assert_eq!(
            ForwardError::BadAnswer(AnswerFault::BadChunks).status_and_reason(),
            (502, "upstream_failed")
        );
        assert_eq!(
            ForwardError::Hangup.status_and_reason(),
            (502, "upstream_failed")
        );
    }
}
