//! How the worker reaches PostgreSQL: `database_url` read as libpq reads its `sslmode` and
//! `sslrootcert`, the rustls configuration each mode asks for, and connection failures told in
//! words (TLS refused, certificate not trusted, host name not in the certificate).
//!
//! | `sslmode`           | TLS                                   | certificate chain checked           | host name checked |
//! |---------------------|---------------------------------------|-------------------------------------|-------------------|
//! | `disable`           | never                                 | –                                   | –                 |
//! | `prefer` (default)  | when the server offers it             | only when `sslrootcert` names a file | no               |
//! | `require`           | always                                | only when `sslrootcert` names a file | no               |
//! | `verify-ca`         | always                                | against `sslrootcert` (a file)      | no                |
//! | `verify-full`       | always                                | against `sslrootcert`, else the system roots | yes      |
//!
//! As in libpq: `require` with a CA file behaves as `verify-ca`, `sslrootcert=system` means the
//! system's trusted roots and is allowed with `verify-full` only, and a Unix socket never uses
//! TLS. Unlike libpq, no `~/.postgresql/root.crt` is read: without `sslrootcert`, `verify-full`
//! trusts the system roots and `verify-ca` is refused (against public roots it would accept any
//! publicly trusted certificate for any name).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::Host;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pg_error;
use crate::store::StoreError;

/// The bound on one connection attempt when `database_url` sets no `connect_timeout` (the store
/// sets its own default before connecting).
const FALLBACK_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// libpq's `sslmode` values that pushgate supports (`allow`, which tries without TLS first, is
/// refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err(config(
                "sslmode=allow is not supported (it tries without TLS first); \
                 use verify-full, or require, prefer or disable",
            )),
            other => Err(config(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// `sslrootcert=PATH`: a PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`, or `verify-full` without `sslrootcert`: the system's trusted roots.
    System,
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "sslrootcert {}", path.display()),
            Self::System => f.write_str("the system's trusted roots"),
        }
    }
}

/// What the client checks of the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Encryption only: any certificate is accepted (`prefer`, `require` without a CA file).
    None,
    /// The chain must end at one of these roots; the host name is not compared (`verify-ca`).
    Chain(RootCerts),
    /// The chain and the host name (`verify-full`).
    Full(RootCerts),
}

/// The TLS part of `database_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// `sslrootcert` as written (absent: `None`).
    pub root_cert: Option<RootCerts>,
}

impl TlsParams {
    /// What the client checks under these parameters, or why the combination is refused.
    pub fn verification(&self) -> Result<Verification, StoreError> {
        use SslMode::*;
        match (self.mode, &self.root_cert) {
            (Disable, _) => Ok(Verification::None),
            (Prefer | Require | VerifyCa, Some(RootCerts::System)) => Err(config(format!(
                "sslrootcert=system needs sslmode=verify-full (with sslmode={} any publicly \
                 trusted certificate would pass)",
                self.mode.as_str()
            ))),
            (Prefer | Require, None) => Ok(Verification::None),
            // libpq: "if a root CA file exists, sslmode=require behaves as verify-ca".
            (Prefer | Require, Some(file)) => Ok(Verification::Chain(file.clone())),
            (VerifyCa, None) => Err(config(
                "sslmode=verify-ca needs sslrootcert=<CA file>: against the system's roots any \
                 publicly trusted certificate for any name would pass (use verify-full)",
            )),
            (VerifyCa, Some(file)) => Ok(Verification::Chain(file.clone())),
            (VerifyFull, roots) => Ok(Verification::Full(
                roots.clone().unwrap_or(RootCerts::System),
            )),
        }
    }

    /// tokio-postgres's own mode: whether to ask for TLS and whether a refusal ends the attempt.
    fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl Default for TlsParams {
    /// libpq's default: TLS when the server offers it, nothing verified.
    fn default() -> Self {
        Self {
            mode: SslMode::Prefer,
            root_cert: None,
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query (tokio-postgres knows
/// neither `verify-*` nor `sslrootcert`); the rest of the URL is returned as it was written.
/// Later occurrences win, as in tokio-postgres.
pub fn split_tls_params(url: &str) -> Result<(String, TlsParams), StoreError> {
    let mut params = TlsParams::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || -> Result<String, StoreError> {
            percent_decode_str(raw_value)
                .decode_utf8()
                .map(|value| value.into_owned())
                .map_err(|_| config(format!("{key} is not UTF-8 once percent-decoded")))
        };
        match key {
            "sslmode" => params.mode = SslMode::parse(&value()?)?,
            "sslrootcert" => {
                let value = value()?;
                params.root_cert = match value.as_str() {
                    "" => return Err(config("sslrootcert is empty (a CA file, or `system`)")),
                    "system" => Some(RootCerts::System),
                    path => Some(RootCerts::File(PathBuf::from(path))),
                };
            }
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(config(format!(
                    "{key}: client certificates are not supported; authenticate with a \
                     password (SCRAM) over sslmode=verify-full"
                )))
            }
            "sslcrl"
            | "sslcrldir"
            | "sslsni"
            | "ssl_min_protocol_version"
            | "ssl_max_protocol_version"
            | "sslcompression"
            | "requiressl"
            | "gssencmode" => {
                return Err(config(format!(
                    "{key} is not supported (pushgate reads sslmode and sslrootcert)"
                )))
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// A parsed `database_url`: the driver's configuration and the TLS connector its `sslmode`
/// asks for, used for the first connection and every reconnect.
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    params: TlsParams,
    verification: Verification,
}

impl PgTarget {
    /// Reads `database_url` and, when the mode checks certificates, the CA certificates (read
    /// once: a new CA file takes effect at the worker's next start).
    pub fn parse(database_url: &str) -> Result<Self, StoreError> {
        let (rest, params) = split_tls_params(database_url)?;
        // tokio-postgres's message names the bad option or value, never the URL itself (which
        // may hold the password).
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            let mut text = format!("not a PostgreSQL URL: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(current) = cause {
                text.push_str(&format!(": {current}"));
                cause = current.source();
            }
            config(text)
        })?;
        let verification = params.verification()?;
        let only_unix_sockets = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, Host::Tcp(_)));
        // libpq: "sslmode is ignored for Unix domain socket communication".
        config.ssl_mode(if only_unix_sockets {
            tokio_postgres::config::SslMode::Disable
        } else {
            params.driver_mode()
        });
        let tls = MakeRustlsConnect::new(client_config(&verification)?);
        Ok(Self {
            config,
            tls,
            params,
            verification,
        })
    }

    #[cfg(test)]
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// Opens a connection and drives it on a task of its own. `connect_timeout` bounds the
    /// whole attempt per host, as in libpq (the driver bounds only the TCP connect): a server
    /// that accepts and then says nothing, to the TLS request or the login, cannot hold a
    /// start or a reconnect forever.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        let per_host = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(FALLBACK_CONNECT_TIMEOUT);
        let hosts = u32::try_from(self.config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
        let limit = per_host.saturating_mul(hosts);
        let (client, connection) =
            match tokio::time::timeout(limit, self.config.connect(self.tls.clone())).await {
                Ok(connected) => connected.map_err(|e| self.connect_error(e))?,
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "PostgreSQL at {} did not complete the connection (TLS handshake, \
                         login) within {limit:?} (connect_timeout)",
                        self.servers()
                    )))
                }
            };
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// `host:port[,host:port...]`, for messages (never the user's password).
    fn servers(&self) -> String {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let port = ports
                    .get(index)
                    .or_else(|| ports.first())
                    .copied()
                    .unwrap_or(5432);
                match host {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A connection failure in words: TLS refused, certificate not trusted, host name not in
    /// the certificate, TLS demanded by the server; else the driver's own chain of causes.
    fn connect_error(&self, error: tokio_postgres::Error) -> StoreError {
        let servers = self.servers();
        let mode = self.params.mode.as_str();
        if let Some(db) = error.as_db_error() {
            // "no pg_hba.conf entry for host ..., no encryption": only hostssl lines match.
            if db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && db.message().contains("no encryption")
            {
                return StoreError::Unavailable(format!(
                    "PostgreSQL at {servers} accepts this connection only over TLS, and \
                     sslmode={mode} sent none: set sslmode=verify-full (server: {})",
                    db.message()
                ));
            }
            return pg_error(&format!("connecting to PostgreSQL at {servers}"), error);
        }
        if let Some(tls) = find_rustls_error(&error) {
            return StoreError::Unavailable(format!(
                "PostgreSQL at {servers}: TLS (sslmode={mode}): {}",
                describe_tls_failure(tls, &self.verification)
            ));
        }
        if std::error::Error::source(&error)
            .is_some_and(|cause| cause.to_string() == "server does not support TLS")
        {
            return StoreError::Unavailable(format!(
                "PostgreSQL at {servers} refused TLS (ssl = off in its postgresql.conf, or a \
                 proxy in front of it without TLS), and sslmode={mode} does not allow a \
                 connection without it"
            ));
        }
        pg_error(&format!("connecting to PostgreSQL at {servers}"), error)
    }
}

/// The rustls error under a connection error (tokio-rustls wraps it in an `io::Error`, whose
/// `source()` skips it, so each `io::Error` is opened by hand).
fn find_rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
        }
        cause = current.source();
    }
    None
}

/// What went wrong in the handshake, for an operator.
pub fn describe_tls_failure(error: &rustls::Error, verification: &Verification) -> String {
    let roots = match verification {
        Verification::Chain(roots) | Verification::Full(roots) => roots.to_string(),
        Verification::None => "no CA".to_string(),
    };
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("the server's certificate does not verify: it is not issued by a CA in {roots}")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate is not valid for the host name in database_url \
             (sslmode=verify-full compares them; {error})"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("the server's certificate has expired ({error})"),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => format!("the server's certificate is not valid yet ({error})"),
        rustls::Error::InvalidCertificate(_) => {
            format!("the server's certificate does not verify against {roots}: {error}")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the handshake with the alert {alert:?}")
        }
        other => format!("the handshake failed: {other}"),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `verification`.
fn client_config(verification: &Verification) -> Result<rustls::ClientConfig, StoreError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config(format!("TLS: {e}")))?;
    let verifier = match verification {
        Verification::None => PolicyVerifier {
            webpki: None,
            check_name: false,
            provider,
        },
        Verification::Chain(roots) => PolicyVerifier {
            webpki: Some(webpki_verifier(roots, provider.clone())?),
            check_name: false,
            provider,
        },
        Verification::Full(roots) => PolicyVerifier {
            webpki: Some(webpki_verifier(roots, provider.clone())?),
            check_name: true,
            provider,
        },
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // What libpq 17 sends; servers before 17 ignore it, 17 and later check it when present.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn webpki_verifier(
    roots: &RootCerts,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, StoreError> {
    let store = root_store(roots)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| config(format!("{roots}: {e}")))
}

fn root_store(roots: &RootCerts) -> Result<rustls::RootCertStore, StoreError> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            for cert in read_pem_certificates(path)? {
                store
                    .add(cert)
                    .map_err(|e| config(format!("sslrootcert {}: {e}", path.display())))?;
            }
        }
        RootCerts::System => {
            let certs = rustls_native_certs::load_native_certs()
                .map_err(|e| config(format!("loading the system's trusted roots: {e}")))?;
            store.add_parsable_certificates(certs);
            if store.is_empty() {
                return Err(config(
                    "the system has no trusted root certificates (install ca-certificates, or \
                     set sslrootcert to the database's CA file)",
                ));
            }
        }
    }
    Ok(store)
}

fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let pem =
        std::fs::read(path).map_err(|e| config(format!("sslrootcert {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config(format!("sslrootcert {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config(format!(
            "sslrootcert {} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// What `prefer`/`require` (nothing), `verify-ca` (the chain) and `verify-full` (the chain and
/// the name) check of the server's certificate. The handshake's signatures are always checked.
#[derive(Debug)]
struct PolicyVerifier {
    /// rustls's own chain-and-name check; `None`: the certificate is not checked (libpq's
    /// `prefer` and `require` without a CA file).
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Whether a certificate that does not name the host is refused (`verify-full`).
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // rustls checks the chain before the name: a name error means the chain passed.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn config(message: impl Into<String>) -> StoreError {
    StoreError::Config(message.into())
}

/// `database_url` with its password (in the authority or as `password=`) replaced by `***`,
/// for messages and logs.
pub fn redact_database_url(url: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut redacted = match without_query.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) if credentials.contains(':') => {
                let user = credentials.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            _ => without_query.to_string(),
        },
        None => without_query.to_string(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => pair.to_string(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&pairs.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsParams) {
        split_tls_params(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn refused(url: &str) -> String {
        match split_tls_params(url).and_then(|(_, params)| params.verification().map(|_| ())) {
            Err(StoreError::Config(text)) => text,
            other => panic!("{url}: expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn tls_parameters_leave_the_rest_of_the_url_as_written() {
        let (rest, params) = split(
            "postgres://app:p%40ss@db.example:5433/pushgate?sslmode=verify-full\
             &application_name=w1&sslrootcert=%2Fetc%2Fpushgate%2Fdb-ca.pem&options=-csearch_path%3Dx",
        );
        assert_eq!(
            rest,
            "postgres://app:p%40ss@db.example:5433/pushgate?application_name=w1&options=-csearch_path%3Dx"
        );
        assert_eq!(
            params,
            TlsParams {
                mode: SslMode::VerifyFull,
                root_cert: Some(RootCerts::File(PathBuf::from("/etc/pushgate/db-ca.pem"))),
            }
        );
        let (rest, params) = split("postgres://db/x?sslmode=require");
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(params.mode, SslMode::Require);
        let (rest, params) = split("postgresql://db/x");
        assert_eq!(rest, "postgresql://db/x");
        assert_eq!(params, TlsParams::default());
        // The last occurrence wins, as in tokio-postgres.
        assert_eq!(
            split("postgres://db/x?sslmode=disable&sslmode=verify-ca&sslrootcert=/ca.pem")
                .1
                .mode,
            SslMode::VerifyCa
        );
    }

    #[test]
    fn each_mode_checks_what_libpq_checks() {
        let file = || RootCerts::File(PathBuf::from("/ca.pem"));
        let verification = |url: &str| split(url).1.verification().map_err(|e| e.to_string());
        assert_eq!(
            verification("postgres://db/x?sslmode=disable"),
            Ok(Verification::None)
        );
        assert_eq!(verification("postgres://db/x"), Ok(Verification::None));
        assert_eq!(
            verification("postgres://db/x?sslmode=require"),
            Ok(Verification::None)
        );
        assert_eq!(
            verification("postgres://db/x?sslmode=require&sslrootcert=/ca.pem"),
            Ok(Verification::Chain(file()))
        );
        assert_eq!(
            verification("postgres://db/x?sslmode=verify-ca&sslrootcert=/ca.pem"),
            Ok(Verification::Chain(file()))
        );
        assert_eq!(
            verification("postgres://db/x?sslmode=verify-full&sslrootcert=/ca.pem"),
            Ok(Verification::Full(file()))
        );
        assert_eq!(
            verification("postgres://db/x?sslmode=verify-full"),
            Ok(Verification::Full(RootCerts::System))
        );
        assert_eq!(
            verification("postgres://db/x?sslmode=verify-full&sslrootcert=system"),
            Ok(Verification::Full(RootCerts::System))
        );
    }

    #[test]
    fn weak_or_unknown_combinations_are_refused_with_a_reason() {
        assert!(refused("postgres://db/x?sslmode=verify-ca").contains("needs sslrootcert"));
        assert!(
            refused("postgres://db/x?sslmode=require&sslrootcert=system")
                .contains("needs sslmode=verify-full")
        );
        assert!(refused("postgres://db/x?sslmode=allow").contains("not supported"));
        assert!(refused("postgres://db/x?sslmode=verify_full").contains("is not one of"));
        assert!(refused("postgres://db/x?sslrootcert=").contains("empty"));
        assert!(refused("postgres://db/x?sslcert=/c.pem").contains("client certificates"));
        assert!(refused("postgres://db/x?sslcrl=/crl.pem").contains("not supported"));
    }

    #[test]
    fn a_bad_url_is_described_without_its_password() {
        let error = PgTarget::parse("postgres://app:hunter2@db/x?sslmode=require&nonsense=1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("nonsense"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("missing.pem");
        let url = format!(
            "postgres://db/x?sslmode=verify-full&sslrootcert={}",
            missing.display()
        );
        let error = PgTarget::parse(&url).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("missing.pem") && e.contains("No such file")),
            "{error:?}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "postgres://db/x?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        );
        let error = PgTarget::parse(&url).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("holds no certificate")),
            "{error:?}"
        );
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let target = PgTarget::parse("postgres://%2Frun%2Fpostgresql/x?sslmode=require")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            target.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let target = PgTarget::parse("postgres://db.example/x?sslmode=require")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            target.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact_database_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_database_url("postgres://app@db/x?password=s3cret&sslmode=verify-full"),
            "postgres://app@db/x?password=***&sslmode=verify-full"
        );
        assert_eq!(
            redact_database_url("sqlite://data/pushgate.db"),
            "sqlite://data/pushgate.db"
        );
    }
}
