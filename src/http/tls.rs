//! Optional TLS on the public listener (rustls), with certificate reload.
//!
//! Certificates are renewed often (ACME: every 60–90 days); restarting the bridge for that
//! would cut connections Eduzz has open. The listener instead asks [`ReloadingCert`] for the
//! current certificate on every handshake, and `reload` (SIGHUP) swaps in the files' new
//! content. A file that does not load leaves the current certificate in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// Reads a PEM certificate chain and private key.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("unsupported private key in {}: {e}", key.display()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The listener's certificate, replaceable while serving.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    pub fn load(settings: &TlsSettings) -> Result<ReloadingCert, String> {
        let current = load_certified_key(&settings.cert, &settings.key)?;
        Ok(ReloadingCert {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = load_certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap() = Arc::new(fresh);
        Ok(())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}

/// A TLS acceptor for the public listener, and the handle that reloads its certificate.
pub fn acceptor(settings: &TlsSettings) -> Result<(TlsAcceptor, Arc<ReloadingCert>), String> {
    let resolver = Arc::new(ReloadingCert::load(settings)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), resolver))
}
