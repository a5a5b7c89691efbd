//! A certificate authority for tests of TLS to backends: its certificate in a PEM file
//! a pool's `ca` can name, server configs for backends with certificates it issued,
//! and leaf certificates (server or client) written as PEM files a pool can name.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::common::scratch_dir;

/// A certificate and its key, as DER and as PEM files.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    /// The key, PKCS#8 DER.
    pub key: Vec<u8>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A CA made for one test.
pub struct TestCa {
    /// Where `ca.pem` is.
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl TestCa {
    /// A fresh CA, its certificate written to `ca.pem` in a scratch directory.
    pub fn new(tag: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Named apart, so a certificate of another test CA is never taken for this one's.
        params
            .distinguished_name
            .push(DnType::CommonName, format!("maitred test CA {tag}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = scratch_dir(tag);
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa {
            dir,
            issuer: Issuer::new(params, key),
            der: cert.der().clone(),
        }
    }

    /// The path of the CA's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA's certificate.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// A certificate named `name` for `sans`, for `usage` (server or client), issued by
    /// this CA and written to `NAME.crt` and `NAME.key` in its directory.
    pub fn leaf(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            der: cert.der().clone(),
            key: key.serialize_der(),
            cert_path,
            key_path,
        }
    }

    /// A rustls server config with a certificate for `names` issued by this CA,
    /// offering `alpn`.
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone(), self.der.clone()], key)
        .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}
