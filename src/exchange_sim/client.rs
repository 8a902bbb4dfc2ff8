//! A raw HTTP/1.1 client that talks as Exchange does (one TLS connection per request, no
//! keep-alive) and lets tests and the demo send exactly the bytes they want, from a chosen
//! loopback address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// The SOAPAction Exchange sends with every notification.
pub const SEND_NOTIFICATION_ACTION: &str =
    "http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification";

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// TLS with this connector and server name; `None` for plain HTTP.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Local address to bind before connecting (e.g. `127.0.0.3` to play a denied source).
    pub bind: Option<IpAddr>,
    /// Bytes sent before TLS starts (a PROXY protocol header, when playing a load balancer).
    pub preamble: Option<Vec<u8>>,
}

impl Target {
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            bind: None,
            preamble: None,
        }
    }

    /// TLS to `addr`, trusting only `ca_pem` (the gateway's self-signed certificate in tests).
    pub fn tls(addr: SocketAddr, ca_pem: &str, server_name: &str) -> std::io::Result<Self> {
        let connector = connector_trusting(ca_pem)?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(Self {
            addr,
            tls: Some((connector, name)),
            bind: None,
            preamble: None,
        })
    }

    pub fn from(mut self, bind: IpAddr) -> Self {
        self.bind = Some(bind);
        self
    }

    pub fn with_preamble(mut self, bytes: &[u8]) -> Self {
        self.preamble = Some(bytes.to_vec());
        self
    }
}

/// A rustls client that trusts exactly the certificates in `ca_pem`.
pub fn connector_trusting(ca_pem: &str) -> std::io::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert: CertificateDer<'static> = cert?;
        roots
            .add(cert)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A byte stream to the target, TLS or not.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// Opens a connection (bound to `target.bind` when set) and completes the TLS handshake.
pub async fn connect(target: &Target) -> std::io::Result<Box<dyn Duplex>> {
    let tcp = match target.bind {
        Some(local) => {
            let socket = if target.addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(local, 0))?;
            socket.connect(target.addr).await?
        }
        None => TcpStream::connect(target.addr).await?,
    };
    tcp.set_nodelay(true)?;
    let mut tcp = tcp;
    if let Some(preamble) = &target.preamble {
        tcp.write_all(preamble).await?;
    }
    match &target.tls {
        Some((connector, name)) => Ok(Box::new(connector.connect(name.clone(), tcp).await?)),
        None => Ok(Box::new(tcp)),
    }
}

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First header value with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (skipping `100 Continue`), its body delimited by `Content-Length` or by the
/// end of the connection.
pub async fn read_response<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
) -> std::io::Result<RawResponse> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response
            .parse(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if let httparse::Status::Complete(head_len) = parsed {
            let status = response.code.unwrap_or(0);
            if (100..200).contains(&status) {
                buf.drain(..head_len);
                continue;
            }
            let headers: Vec<(String, String)> = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            let mut body = buf[head_len..].to_vec();
            loop {
                if length.is_some_and(|length| body.len() >= length) {
                    break;
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            if let Some(length) = length {
                body.truncate(length);
            }
            return Ok(RawResponse {
                status,
                headers,
                body,
            });
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a complete response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `request` as is and reads the answer, all within `timeout`.
pub async fn exchange(
    target: &Target,
    request: &[u8],
    timeout: Duration,
) -> std::io::Result<RawResponse> {
    let work = async {
        let mut stream = connect(target).await?;
        stream.write_all(request).await?;
        stream.flush().await?;
        read_response(&mut stream).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

/// The request Exchange Online sends for a notification body.
pub fn notification_request(path_and_query: &str, host: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path_and_query} HTTP/1.1\r\nContent-Type: text/xml; charset=utf-8\r\nAccept: text/xml\r\n\
         SOAPAction: {SEND_NOTIFICATION_ACTION}\r\nHost: {host}\r\nContent-Length: {}\r\n\
         Accept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}
