//! The simulator's HTTPS identity: a throw-away CA and a certificate it issues for `localhost`
//! and the loopback addresses. Clients trust the CA PEM ([`super::SimHandle::ca_pem`]).

use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and a server certificate signed by it.
pub struct Identity {
    pub ca_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

pub fn generate() -> anyhow::Result<Identity> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pushgate Exchange simulator CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).context("signing the CA")?;

    let key = KeyPair::generate().context("generating the server key")?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])
        .context("server certificate parameters")?;
    for ip in [
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ] {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    params
        .distinguished_name
        .push(DnType::CommonName, "outlook.simulated.invalid");
    let cert = params
        .signed_by(&key, &ca)
        .context("signing the server certificate")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = vec![
        CertificateDer::from(cert.der().to_vec()),
        CertificateDer::from(ca.der().to_vec()),
    ];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .context("the server certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        ca_pem: ca.pem(),
        config: Arc::new(config),
    })
}
