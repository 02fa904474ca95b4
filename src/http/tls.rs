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

use super::settings::TlsSettings;

/// Why the certificate or key did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {0}")]
    ReadCert(PathBuf, #[source] rustls::pki_types::pem::Error),
    #[error("no certificate in {0}")]
    NoCert(PathBuf),
    #[error("cannot read private key {0}")]
    ReadKey(PathBuf, #[source] rustls::pki_types::pem::Error),
    #[error("unsupported private key in {0}")]
    Key(PathBuf, #[source] rustls::Error),
    #[error("cannot set up TLS")]
    Config(#[source] rustls::Error),
}

/// Reads a PEM certificate chain and private key.
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read_cert = |e| TlsError::ReadCert(cert.to_path_buf(), e);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(read_cert)?
        .collect::<Result<_, _>>()
        .map_err(read_cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::ReadKey(key.to_path_buf(), e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError::Key(key.to_path_buf(), e))?;
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
    fn load(settings: &TlsSettings) -> Result<ReloadingCert, TlsError> {
        let current = load_certified_key(&settings.cert, &settings.key)?;
        Ok(ReloadingCert {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
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

/// TLS for the public listener: the acceptor, and the handle that reloads its certificate.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub cert: Arc<ReloadingCert>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert.cert)
            .finish()
    }
}

impl Tls {
    /// Reads the files (once) and sets up rustls.
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
        let resolver = Arc::new(ReloadingCert::load(settings)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert: resolver,
        })
    }
}
