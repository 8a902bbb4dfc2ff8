//! TLS for the gateway's listener: TLS 1.2 and 1.3 only (rustls with ring), HTTP/1.1, and a
//! certificate that is re-read from disk when it changes, without a restart and without touching
//! open connections (each handshake picks the key pair current at that moment).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::filestamp::FileStamp;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("{path}: malformed PEM: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("certificate and key do not belong together or the key is unsupported: {0}")]
    Mismatch(rustls::Error),
    #[error("building the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// With two providers compiled in, rustls has no process default, and any config built from the
/// default (pingora's TLS helpers, a library's client) would panic: name ring, which the clients
/// have always used. The gateway's own listener names aws-lc-rs explicitly. A default already
/// installed is kept.
pub fn install_process_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads a PEM certificate chain and private key and checks that they belong together.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert_path).map_err(|source| TlsError::Read {
        path: cert_path.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key_path).map_err(|source| TlsError::Read {
        path: key_path.to_path_buf(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: key_path.to_path_buf(),
            detail: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.to_path_buf(),
        })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Mismatch)
}

/// `notAfter` of the leaf certificate (Unix seconds), for the expiry metric; `None` when the
/// leaf does not parse as X.509.
pub fn expiry_timestamp(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(certificate.validity().not_after.timestamp())
}

/// Hands every handshake the key pair loaded last.
#[derive(Debug)]
pub struct ReloadingCertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadingCertResolver {
    pub fn new(initial: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The server configuration: TLS 1.2 and 1.3, no client certificates, ALPN `http/1.1`, and
/// session resumption through stateless tickets (keys made at start and rotated every 6 hours, as
/// rustls' ticketer does), as nginx is set up in the benchmark: no server-side session cache to
/// size (rustls' default stateful cache holds 256 sessions).
pub fn server_config(resolver: Arc<ReloadingCertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

/// Outcome of one look at the certificate files, for the caller's metrics and log.
#[derive(Debug)]
pub enum CertCheck {
    Unchanged,
    Reloaded,
    /// New files that do not load; the previous certificate stays in use.
    Refused(TlsError),
}

/// Watches the certificate and key files; swaps in a new key pair once both load and match.
/// A half-written renewal (certificate replaced, key not yet) is refused and retried on the next
/// look, so the old pair serves until the new one is complete.
pub struct CertWatcher {
    resolver: Arc<ReloadingCertResolver>,
    cert_path: PathBuf,
    key_path: PathBuf,
    loaded: (Option<FileStamp>, Option<FileStamp>),
    last_refused: Option<(Option<FileStamp>, Option<FileStamp>)>,
}

impl CertWatcher {
    pub fn new(
        resolver: Arc<ReloadingCertResolver>,
        cert_path: PathBuf,
        key_path: PathBuf,
    ) -> Self {
        let loaded = (
            FileStamp::of(&cert_path).ok(),
            FileStamp::of(&key_path).ok(),
        );
        Self {
            resolver,
            cert_path,
            key_path,
            loaded,
            last_refused: None,
        }
    }

    /// The key pair in use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.resolver.current()
    }

    pub fn check(&mut self) -> CertCheck {
        let stamps = (
            FileStamp::of(&self.cert_path).ok(),
            FileStamp::of(&self.key_path).ok(),
        );
        if stamps == self.loaded {
            return CertCheck::Unchanged;
        }
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                self.resolver.replace(key);
                self.loaded = stamps;
                self.last_refused = None;
                CertCheck::Reloaded
            }
            Err(e) => {
                if self.last_refused == Some(stamps) {
                    // Already reported for these very files.
                    return CertCheck::Unchanged;
                }
                self.last_refused = Some(stamps);
                CertCheck::Refused(e)
            }
        }
    }
}

/// A throw-away self-signed certificate for the given DNS names and IP addresses, as PEM
/// (certificate, private key). For the demo and tests; production certificates come from a CA,
/// so the DMZ build leaves it out.
#[cfg(feature = "demo")]
pub fn self_signed(
    names: &[&str],
    ips: &[std::net::IpAddr],
) -> Result<(String, String), rcgen::Error> {
    self_signed_until(names, ips, None)
}

/// [`self_signed`] with a chosen `notAfter` (rcgen's default when `None`).
#[cfg(feature = "demo")]
pub fn self_signed_until(
    names: &[&str],
    ips: &[std::net::IpAddr],
    not_after: Option<time::OffsetDateTime>,
) -> Result<(String, String), rcgen::Error> {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    for ip in ips {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(*ip));
    }
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("pushgate"),
    );
    if let Some(not_after) = not_after {
        params.not_after = not_after;
    }
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_the_leaf_not_after() {
        let dir = tempfile::tempdir().unwrap();
        let not_after = time::macros::datetime!(2031-03-04 05:06:07 UTC);
        let (cert, key) = self_signed_until(&["localhost"], &[], Some(not_after)).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(dir.path().join("k.pem"), key).unwrap();
        let loaded =
            load_certified_key(&dir.path().join("c.pem"), &dir.path().join("k.pem")).unwrap();
        assert_eq!(expiry_timestamp(&loaded), Some(not_after.unix_timestamp()));
    }
}
