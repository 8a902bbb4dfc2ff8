//! The client connection as the listener lends it to pingora: reads yield the request the gateway
//! rebuilt from what it checked, then nothing ever again; writes go to the client. Pingora thus
//! never reads a byte the client sent, so nothing the client sends after its request can change
//! what pingora does with it. When pingora drops the connection, it goes back to the listener,
//! which closes it gently (or, with keep-alive, reads the next request from it). Writes are held
//! until pingora flushes (it does once an answer is complete), so the head and body of an answer
//! leave in one TLS record and one system call instead of one each.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::Stream;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// Most bytes held before they are passed on without waiting for a flush: one TLS record.
const MAX_HELD: usize = 16 * 1024;

/// A connection lent to pingora; see the module documentation.
pub struct LentStream {
    /// `None` only while being dropped.
    inner: Option<Stream>,
    /// What pingora reads: one complete request.
    request: Bytes,
    /// Written by pingora, not yet passed to the client (`held[passed..]` is left).
    held: Vec<u8>,
    passed: usize,
    give_back: Option<oneshot::Sender<Returned>>,
}

/// The connection given back, with whatever pingora wrote but did not flush (the listener sends
/// it before anything else).
pub struct Returned {
    pub stream: Stream,
    pub unflushed: Vec<u8>,
}

impl LentStream {
    /// Lends `inner`; the receiver gets it back when pingora drops the lent stream.
    pub fn lend(inner: Stream, request: Bytes) -> (Stream, oneshot::Receiver<Returned>) {
        let (give_back, returned) = oneshot::channel();
        let lent = LentStream {
            inner: Some(inner),
            request,
            held: Vec::new(),
            passed: 0,
            give_back: Some(give_back),
        };
        (Box::new(lent), returned)
    }

    fn inner(&mut self) -> io::Result<&mut Stream> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("connection already returned"))
    }

    /// Passes every held byte to the client's stream.
    fn poll_pass_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.passed < self.held.len() {
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(Err(io::Error::other("connection already returned")));
            };
            let n = match Pin::new(inner).poll_write(cx, &self.held[self.passed..]) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.passed += n;
        }
        self.held.clear();
        self.passed = 0;
        Poll::Ready(Ok(()))
    }
}

impl Drop for LentStream {
    fn drop(&mut self) {
        if let (Some(stream), Some(give_back)) = (self.inner.take(), self.give_back.take()) {
            let unflushed = self.held.split_off(self.passed);
            // The listener may have stopped waiting (shutdown); then the connection just closes.
            let _ = give_back.send(Returned { stream, unflushed });
        }
    }
}

impl fmt::Debug for LentStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentStream")
            .field("request_left", &self.request.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for LentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.request.is_empty() {
            // Never ready: pingora sees neither more bytes nor an end of stream (which it would
            // take for a client that gave up), so it waits for the worker and relays its answer.
            // Nothing needs waking: pingora only polls this beside the upstream's progress.
            return Poll::Pending;
        }
        let n = this.request.len().min(buf.remaining());
        buf.put_slice(&this.request[..n]);
        this.request.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() + data.len() > MAX_HELD {
            match this.poll_pass_held(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|result| result.map(|()| 0)),
            }
            if data.len() > MAX_HELD {
                return match this.inner() {
                    Ok(inner) => Pin::new(inner).poll_write(cx, data),
                    Err(e) => Poll::Ready(Err(e)),
                };
            }
        }
        this.held.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_pass_held(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        match this.inner() {
            Ok(inner) => Pin::new(inner).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_pass_held(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        match this.inner() {
            Ok(inner) => Pin::new(inner).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[async_trait]
impl Shutdown for LentStream {
    async fn shutdown(&mut self) {
        // Closing is the listener's job once the stream is back: it drains what the client still
        // sends, so the answer is not lost to a reset. Flushing here makes the answer leave now.
        let _ = tokio::io::AsyncWriteExt::flush(self).await;
    }
}

impl UniqueID for LentStream {
    fn id(&self) -> UniqueIDType {
        self.inner.as_ref().map_or(0, |inner| inner.id())
    }
}

impl Ssl for LentStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.as_ref().and_then(|inner| inner.get_ssl())
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.as_ref().and_then(|inner| inner.get_ssl_digest())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner
            .as_ref()
            .and_then(|inner| inner.selected_alpn_proto())
    }
}

impl GetTimingDigest for LentStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner
            .as_ref()
            .map(|inner| inner.get_timing_digest())
            .unwrap_or_default()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |inner| inner.get_read_pending_time())
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |inner| inner.get_write_pending_time())
    }
}

impl GetProxyDigest for LentStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner
            .as_ref()
            .and_then(|inner| inner.get_proxy_digest())
    }
}

impl GetSocketDigest for LentStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner
            .as_ref()
            .and_then(|inner| inner.get_socket_digest())
    }
}

// Peeking would read the client; the default answers "not supported".
impl Peek for LentStream {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_only_the_given_request_then_waits_and_gives_the_connection_back() {
        let (client, server) = tokio::io::duplex(1024);
        let mut client = client;
        let inner: Stream = Box::new(server);
        let (mut lent, returned) =
            LentStream::lend(inner, Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"));
        // What the client sends is never read through the lent stream.
        client.write_all(b"smuggled").await.unwrap();
        let mut buf = [0u8; 64];
        let n = lent.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        let mut rest = [0u8; 64];
        let mut read_buf = ReadBuf::new(&mut rest);
        let polled = std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut *lent).poll_read(cx, &mut read_buf))
        })
        .await;
        assert!(
            polled.is_pending(),
            "no byte after the request, and no end either"
        );
        // Writes reach the client once flushed, together.
        lent.write_all(b"head ").await.unwrap();
        lent.write_all(b"answer").await.unwrap();
        lent.flush().await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"head answer");
        // Bytes written but never flushed come back with the connection.
        lent.write_all(b"left").await.unwrap();
        drop(lent);
        let Returned {
            stream: mut back,
            unflushed,
        } = returned.await.expect("connection returned");
        assert_eq!(unflushed, b"left");
        let n = back.read(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            b"smuggled",
            "the client's bytes are still unread"
        );
    }

    #[tokio::test]
    async fn large_writes_are_passed_on_without_waiting_for_a_flush() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (mut lent, _returned) = LentStream::lend(Box::new(server), Bytes::new());
        let big = vec![7u8; MAX_HELD + 10];
        lent.write_all(b"x").await.unwrap();
        lent.write_all(&big).await.unwrap();
        let mut got = vec![0u8; big.len() + 1];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got[0], b'x');
        assert!(got[1..].iter().all(|&b| b == 7));
    }
}
