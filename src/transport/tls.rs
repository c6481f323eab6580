//! TLS for listeners and dialers: rustls configurations built from PEM files.
//!
//! Every configuration is built with the ring provider explicitly, so a second provider
//! elsewhere in the build can never make a builder panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A listener's certificate files (absolute paths; existence is checked when it binds). The
/// topology builds them; they live here so that transport depends on nothing else of meshmq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by it.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}; check the tls_* paths in the topology, or create development certificates with `meshmq certs TOPOLOGY --out DIR`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM {what} ({detail}); it should hold a -----BEGIN {what}----- block")]
    Pem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: {detail}")]
    Rejected { path: PathBuf, detail: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |detail: String| TlsError::Pem {
        path: path.to_path_buf(),
        what: "CERTIFICATE",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: "PRIVATE KEY",
        detail: e.to_string(),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Rejected {
            path: path.to_path_buf(),
            detail: format!("not a usable CA certificate ({e})"),
        })?;
    }
    Ok(roots)
}

fn rejected(path: &Path) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Rejected {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// The rustls server configuration of a TLS listener: its certificate chain and key, and when
/// `client_ca` is set, a requirement that clients present a certificate signed by it.
pub fn load_server_config(tls: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(&tls.cert)?;
    let key = read_key(&tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rejected(&tls.cert))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Rejected {
                        path: ca.clone(),
                        detail: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rejected {
            path: tls.key.clone(),
            detail: format!("does not fit certificate {} ({e})", tls.cert.display()),
        })
}

/// A rustls client configuration trusting only the CA certificate(s) in `ca`.
pub fn client_config(ca: &Path) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rejected(ca))?
        .with_root_certificates(read_roots(ca)?)
        .with_no_client_auth())
}

/// Like [`client_config`], also presenting `cert`/`key` to servers that ask for a client
/// certificate (listeners with `tls_client_ca`; bridges between members).
pub fn client_config_with_identity(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<ClientConfig, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rejected(ca))?
        .with_root_certificates(read_roots(ca)?)
        .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| TlsError::Rejected {
            path: key.to_path_buf(),
            detail: format!("does not fit certificate {} ({e})", cert.display()),
        })
}

/// Dials `addr` and completes a TLS handshake for `server_name` (a host name or IP address
/// the server's certificate names).
pub async fn dial(
    addr: std::net::SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
    local: Option<std::net::IpAddr>,
) -> Result<super::Stream, super::TransportError> {
    let tcp = super::dial(addr, local).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| {
        super::TransportError::Connect {
            addr,
            source: std::io::Error::other(format!(
                "{server_name:?} is not a valid TLS server name: {e}"
            )),
        }
    })?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| super::TransportError::Connect { addr, source })?;
    Ok(Box::new(tls))
}
