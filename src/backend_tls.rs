//! TLS to backends (DESIGN §12): a pool's `[pool.NAME.tls]` made into the rustls client
//! config its connections handshake with, and the name each backend is verified by.
//!
//! Loaded when a snapshot is built (start-up and every reload), like the listeners'
//! certificates in [`crate::tls`]: a CA or client certificate rotated on disk is picked
//! up by SIGHUP, and one that fails to load fails that reload while the running config
//! keeps serving. The handshake itself is the upstream layer's
//! ([`crate::upstream::connect`]); this module only holds what it needs.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{UpstreamProtocol, UpstreamTlsConfig};
use crate::tls::{TlsError, load_chain, load_key};

/// What a pool's connections to its backends need for TLS.
#[derive(Debug)]
pub struct BackendTls {
    /// The rustls client config (roots, client certificate, ALPN).
    pub config: Arc<rustls::ClientConfig>,
    /// `server_name` from the config: SNI and the name verified for every backend.
    /// `None`: each backend is verified by its own host.
    pub server_name: Option<ServerName<'static>>,
}

impl BackendTls {
    /// Loads the CA, the client certificate and its key named by `cfg`, for a pool
    /// that speaks `protocol` (which decides the ALPN offered: `h2` or `http/1.1`).
    pub fn load(
        cfg: &UpstreamTlsConfig,
        protocol: UpstreamProtocol,
    ) -> Result<BackendTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = if cfg.verify {
            builder.with_root_certificates(roots(cfg)?)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        };
        let mut config = match &cfg.client_auth {
            None => builder.with_no_client_auth(),
            Some(auth) => {
                let chain = load_chain(&auth.cert)?;
                let key = load_key(&auth.key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Key {
                        path: auth.key.clone(),
                        reason: e.to_string(),
                    })?
            }
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => vec![b"h2".to_vec()],
            UpstreamProtocol::Https | UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        let server_name = cfg
            .server_name
            .as_deref()
            .and_then(|n| ServerName::try_from(n.to_string()).ok());
        Ok(BackendTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The name a backend is verified by: `server_name`, else its configured host
    /// (the name before the port in the pool's backend list, or its IP address).
    pub fn name_for(&self, backend: &str) -> Option<ServerName<'static>> {
        if let Some(n) = &self.server_name {
            return Some(n.clone());
        }
        ServerName::try_from(host_of(backend).to_string()).ok()
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(backend: &str) -> &str {
    if let Some(rest) = backend.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match backend.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => backend,
    }
}

/// The trust anchors: the `ca` file's certificates, or the system's trust store.
fn roots(cfg: &UpstreamTlsConfig) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match &cfg.ca {
        Some(path) => {
            for cert in load_chain(path)? {
                store.add(cert).map_err(|e| TlsError::Certificate {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "system trust store: a certificate could not be read");
            }
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "system trust store holds no certificate; backends verified against it will fail; set ca in [pool.NAME.tls]"
                );
            }
        }
    }
    Ok(store)
}

/// `verify = false`: any certificate is accepted, though the handshake's signature
/// must still be made by the certificate's key (the operator was warned at start-up).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_a_backend_address_is_what_it_is_verified_by() {
        assert_eq!(host_of("api.internal:8443"), "api.internal");
        assert_eq!(host_of("10.0.0.4:443"), "10.0.0.4");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("api.internal"), "api.internal");
    }

    #[test]
    fn server_name_overrides_every_backends_host() {
        let cfg = UpstreamTlsConfig {
            server_name: Some("api.internal".into()),
            verify: false,
            ..UpstreamTlsConfig::default()
        };
        let tls = BackendTls::load(&cfg, UpstreamProtocol::H2).expect("loads");
        assert_eq!(
            tls.name_for("127.0.0.1:9000"),
            Some(ServerName::try_from("api.internal").expect("name"))
        );
        assert_eq!(tls.config.alpn_protocols, vec![b"h2".to_vec()]);
        let plain = BackendTls::load(&UpstreamTlsConfig::default(), UpstreamProtocol::Https);
        let plain = plain.expect("loads");
        assert_eq!(
            plain.name_for("127.0.0.1:9000"),
            Some(ServerName::try_from("127.0.0.1").expect("ip"))
        );
    }
}
