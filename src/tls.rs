//! TLS termination: PEM certificates and keys into a rustls server config, with SNI
//! choosing the certificate whose names cover the requested host.
//!
//! Loaded when a snapshot is built (start-up and every reload), so a certificate
//! rotated on disk is picked up by SIGHUP, and a bad one fails that reload while the
//! running config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::TlsConfig;

/// Why TLS settings (a listener's, or a pool's to its backends) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file could not be read or holds no certificate.
    #[error("certificate {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key file could not be read, holds no key, or holds an unsupported one.
    #[error("private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// One loaded certificate: its chain as DER (for name checks) and the signing key.
#[derive(Debug)]
struct Loaded {
    leaf: CertificateDer<'static>,
    key: Arc<CertifiedKey>,
}

/// Picks a certificate by SNI; the first certificate is the default.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Loaded>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|sni| ServerName::try_from(sni).ok())
            .and_then(|name| self.certs.iter().find(|c| covers(&c.leaf, &name)));
        chosen.or(self.certs.first()).map(|c| Arc::clone(&c.key))
    }
}

fn covers(leaf: &CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    webpki::EndEntityCert::try_from(leaf)
        .map(|c| c.verify_is_valid_for_subject_name(name).is_ok())
        .unwrap_or(false)
}

/// Builds the rustls server config for a listener.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = Vec::with_capacity(cfg.certificates.len());
    for c in &cfg.certificates {
        let chain = load_chain(&c.cert)?;
        let key_der = load_key(&c.key)?;
        let key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| TlsError::Key {
                path: c.key.clone(),
                reason: e.to_string(),
            })?;
        let leaf = chain[0].clone();
        certs.push(Loaded {
            leaf,
            key: Arc::new(CertifiedKey::new(chain, key)),
        });
    }
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    sc.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(sc))
}

pub(crate) fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if chain.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(chain)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
