//! TLS (rustls): certificates for listeners and the internal listener, re-read on
//! reload, and the client side of TLS internal links.
//!
//! A listener's certificate lives in a [`ReloadableCert`], which rustls asks for the
//! certificate of every new handshake: [`ReloadableCert::reload`] swaps it, so new
//! connections get the new certificate while established ones keep theirs. Only TLS
//! 1.2 and 1.3 are offered (rustls has nothing older).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{InternalTlsClient, TlsFiles};

/// A certificate or key that cannot be used; names the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// The file holds no PEM certificate (or key) that rustls can use.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key is not the certificate's.
    #[error("the key in {key} does not match the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads PEM certificates (at least one) from a file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            message: "no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// Loads a certificate chain and its key, and checks that they belong together.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(&files.cert)?;
    let pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Pem {
            path: files.key.clone(),
            message: format!("unsupported private key: {e}"),
        })?;
    let certified = CertifiedKey::new(certs, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // rustls cannot tell for some key types; the handshake then fails instead.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(_) => Err(TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
    }
}

/// A listener's certificate, swappable while the listener runs.
#[derive(Debug)]
pub struct ReloadableCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads the files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let key = load_certified_key(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Reads the files again. On success, new handshakes use the new certificate; on
    /// failure the old one stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(load_certified_key(&self.files)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration whose certificate comes from `cert`; `alpn` protocols are
/// offered (`http/1.1` on WebSocket listeners).
pub fn server_config(
    cert: Arc<ReloadableCert>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What a worker (or API client) needs to open TLS internal links.
#[derive(Clone)]
pub struct LinkTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl LinkTls {
    /// Trusts the certificate authorities in `cfg.ca`.
    pub fn new(cfg: &InternalTlsClient) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs(&cfg.ca)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                path: cfg.ca.clone(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Pem {
                path: cfg.ca.clone(),
                message: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = match &cfg.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone()).map_err(|e| TlsError::Pem {
                    path: cfg.ca.clone(),
                    message: format!("worker.internal_tls.server_name {name:?}: {e}"),
                })?,
            ),
            None => None,
        };
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Opens TLS on a connected socket to the gateway at `addr`, verifying its
    /// certificate for the configured server name (or `addr`'s IP).
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.connector.connect(name, tcp).await
    }
}

/// Checks every certificate and key a configuration names — the listeners' and the
/// internal listener's when `gateways` run here, the CA of `[worker.internal_tls]` when
/// `workers` do: the error names the key of the configuration and the file. Run by
/// `config check` and `start`.
pub fn check_config(
    config: &crate::Config,
    gateways: bool,
    workers: bool,
) -> Result<(), crate::config::ConfigError> {
    let invalid = |key: String, e: TlsError| crate::config::ConfigError::Invalid {
        key,
        message: e.to_string(),
    };
    if workers {
        if let Some(client) = &config.worker.internal_tls {
            LinkTls::new(&config.internal_tls_client(client))
                .map_err(|e| invalid("worker.internal_tls".into(), e))?;
        }
    }
    if !gateways {
        return Ok(());
    }
    for (i, l) in config.gateway.listeners.iter().enumerate() {
        if let Some(files) = &l.tls {
            load_certified_key(&config.tls_files(files))
                .map_err(|e| invalid(format!("gateway.listeners[{i}].tls"), e))?;
        }
    }
    if let Some(files) = &config.gateway.internal_tls {
        load_certified_key(&config.tls_files(files))
            .map_err(|e| invalid("gateway.internal_tls".into(), e))?;
    }
    Ok(())
}
