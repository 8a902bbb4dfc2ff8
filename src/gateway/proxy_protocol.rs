//! Reading a PROXY protocol (v1 text or v2 binary) header from a trusted load balancer before
//! TLS starts. Bytes read past the header are handed back to the stream untouched.

use std::net::{IpAddr, SocketAddr};

use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A v2 header with TLVs stays far below this; v1 is at most 107 bytes.
const MAX_HEADER_BYTES: usize = 1024;

/// What the load balancer said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedPeer {
    /// The connection is for this client.
    Client(SocketAddr),
    /// v2 `LOCAL` or v1 `UNKNOWN`: the balancer's own connection (health checks).
    Local,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("no valid PROXY protocol header")]
    Invalid,
    #[error("PROXY header longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error("reading PROXY header: {0}")]
    Io(String),
}

/// Parses a complete header at the start of `buf`: the peer and the header length, `Ok(None)`
/// when more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<(ProxiedPeer, usize)>, ProxyHeaderError> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER_BYTES {
            Err(ProxyHeaderError::TooLong)
        } else {
            Ok(None)
        };
    }
    match result {
        // ppp also takes a v1 line ending in " \n" when the bytes read end there, and refuses the
        // same line once more bytes follow: only CRLF ends a v1 header, however the bytes arrive.
        HeaderResult::V1(Ok(header)) if !header.header.ends_with("\r\n") => {
            Err(ProxyHeaderError::Invalid)
        }
        HeaderResult::V1(Ok(header)) => {
            let peer = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => ProxiedPeer::Client(SocketAddr::new(
                    IpAddr::V4(a.source_address),
                    a.source_port,
                )),
                ppp::v1::Addresses::Tcp6(a) => ProxiedPeer::Client(SocketAddr::new(
                    IpAddr::V6(a.source_address),
                    a.source_port,
                )),
                ppp::v1::Addresses::Unknown => ProxiedPeer::Local,
            };
            Ok(Some((peer, header.header.len())))
        }
        HeaderResult::V2(Ok(header)) => {
            let peer = match (header.command, header.addresses) {
                (ppp::v2::Command::Local, _) => ProxiedPeer::Local,
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => ProxiedPeer::Client(
                    SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                ),
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => ProxiedPeer::Client(
                    SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                ),
                // Unix sockets or unspecified families carry no client we could check.
                (ppp::v2::Command::Proxy, _) => return Err(ProxyHeaderError::Invalid),
            };
            Ok(Some((peer, header.len())))
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(ProxyHeaderError::Invalid),
    }
}

/// Reads the header from `stream`; returns the peer and any bytes read beyond the header, which
/// the caller must put back in front of the stream.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(ProxiedPeer, Vec<u8>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProxyHeaderError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((peer, length)) = parse_header(&buf)? {
            return Ok((peer, buf.split_off(length)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_tcp6() {
        let (peer, len) = parse_header(b"PROXY TCP4 40.92.0.1 10.0.0.1 51000 443\r\nTLS...")
            .unwrap()
            .unwrap();
        assert_eq!(
            peer,
            ProxiedPeer::Client("40.92.0.1:51000".parse().unwrap())
        );
        assert_eq!(len, "PROXY TCP4 40.92.0.1 10.0.0.1 51000 443\r\n".len());
        let (peer, _) = parse_header(b"PROXY TCP6 2603:1026::5 ::1 51000 443\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            peer,
            ProxiedPeer::Client("[2603:1026::5]:51000".parse().unwrap())
        );
        let (peer, _) = parse_header(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(peer, ProxiedPeer::Local);
    }

    #[test]
    fn v2_proxy_and_local() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "40.92.0.1:51000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (peer, len) = parse_header(&bytes).unwrap().unwrap();
        assert_eq!(
            peer,
            ProxiedPeer::Client("40.92.0.1:51000".parse().unwrap())
        );
        assert_eq!(len, header.len());

        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(parse_header(&local).unwrap().unwrap().0, ProxiedPeer::Local);
    }

    #[test]
    fn v1_ends_in_crlf_however_the_bytes_arrive() {
        // Found by the proxy_header fuzz target: a line ending in " \n" was accepted when the
        // read ended right after it and refused when the next bytes came in the same read.
        for text in [
            &b"PROXY TCP6 ::0 :: 510 0 \n"[..],
            b"PROXY TCP6 ::0 :: 510 0 \n`",
            b"PROXY TCP4 40.92.0.1 10.0.0.1 51000 443 \n",
            b"PROXY TCP4 40.92.0.1 10.0.0.1 51000 443 \n\x16\x03\x01",
            b"PROXY UNKNOWN \n",
        ] {
            assert_eq!(
                parse_header(text),
                Err(ProxyHeaderError::Invalid),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        // Still waiting for the end of a line that may yet end in CRLF.
        assert_eq!(
            parse_header(b"PROXY TCP4 40.92.0.1 10.0.0.1 51000 443"),
            Ok(None)
        );
        assert_eq!(
            parse_header(b"PROXY TCP4 40.92.0.1 10.0.0.1 51000 443\r"),
            Ok(None)
        );
    }

    #[test]
    fn partial_and_invalid() {
        assert_eq!(parse_header(b"PROXY TCP4 40.92"), Ok(None));
        assert_eq!(
            parse_header(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Err(ProxyHeaderError::Invalid)
        );
        assert_eq!(
            parse_header(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ProxyHeaderError::Invalid)
        );
    }

    #[tokio::test]
    async fn read_returns_leftover_bytes() {
        let mut input: &[u8] = b"PROXY TCP4 40.92.0.1 10.0.0.1 51000 443\r\nHELLO";
        let (peer, rest) = read_header(&mut input).await.unwrap();
        assert_eq!(
            peer,
            ProxiedPeer::Client("40.92.0.1:51000".parse().unwrap())
        );
        assert_eq!(rest, b"HELLO");
        let mut closed: &[u8] = b"PROXY TCP4";
        assert_eq!(
            read_header(&mut closed).await,
            Err(ProxyHeaderError::Closed)
        );
    }
}
