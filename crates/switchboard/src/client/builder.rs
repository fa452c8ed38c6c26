//! [`Builder`]: a [`Gateway`] handle for a program that has no configuration file,
//! only the few settings an API client needs — the deployment's name, its secret and
//! where its store is.

use std::path::PathBuf;
use std::time::Duration;

use switchboard_store::StoreConfig;

use super::Gateway;
use crate::config::{Config, InternalTlsClient};
use crate::Error;

/// Settings of an API client made without a configuration file; from
/// [`Gateway::builder`].
///
/// Everything not set keeps the default of the configuration file
/// (`docs/configuration.md`): deployment name `switchboard`, secret `change-me`, the
/// file store `data/store.sqlite`, `worker.query_timeout` 3 s,
/// `worker.discovery_interval` 1 s. A handle made this way reports no statistics and
/// has no database instances; use [`Gateway::connect`] with the deployment's
/// configuration for those.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard::store::StoreConfig;
/// use switchboard::Gateway;
///
/// # async fn demo() -> Result<(), switchboard::Error> {
/// let gateway = Gateway::builder()
///     .name("chat")
///     .secret("the deployment's secret")
///     .store(StoreConfig::Redis { url: "redis://10.0.0.5:6379".into() })
///     .timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// gateway.send_to_uid(&["alice"], "your order has shipped").await?;
/// gateway.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    config: Config,
    /// The name gateways log for this peer.
    peer_name: Option<String>,
}

impl Gateway {
    /// Settings for an API client made without a configuration file: give at least the
    /// deployment's [`name`](Builder::name), [`secret`](Builder::secret) and
    /// [`store`](Builder::store), then [`connect`](Builder::connect).
    pub fn builder() -> Builder {
        Builder {
            config: Config::default(),
            peer_name: None,
        }
    }
}

impl Builder {
    /// The deployment's name (`name` in its configuration): the prefix of its store
    /// keys, through which its gateways are found.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The deployment's shared secret (`secret`), proved to every gateway.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.config.secret = secret.into();
        self
    }

    /// The deployment's store (`[store]`). A relative file store path is relative to
    /// the working directory's `data/`; give an absolute one.
    pub fn store(mut self, store: StoreConfig) -> Self {
        self.config.store = store;
        self
    }

    /// How long a call waits for room on a gateway's link and for its answer
    /// (`worker.query_timeout`, default 3 s). Greater than zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.worker.query_timeout = timeout;
        self
    }

    /// How often the gateway list is re-read from the store
    /// (`worker.discovery_interval`, default 1 s).
    pub fn discovery_interval(mut self, interval: Duration) -> Self {
        self.config.worker.discovery_interval = interval;
        self
    }

    /// Verify gateways whose internal listener speaks TLS against the authorities in
    /// the PEM file `ca`, expecting `server_name` in their certificates (default: their
    /// advertised IP) — `[worker.internal_tls]`.
    pub fn internal_tls(mut self, ca: impl Into<PathBuf>, server_name: Option<String>) -> Self {
        self.config.worker.internal_tls = Some(InternalTlsClient {
            ca: ca.into(),
            server_name,
        });
        self
    }

    /// The largest internal frame, as the gateways have it
    /// (`gateway.max_internal_frame`, default 16 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.config.gateway.max_internal_frame = bytes;
        self
    }

    /// The largest session, as the gateways have it (`gateway.max_session`, default
    /// 64 KiB): larger ones are refused before they are sent.
    pub fn max_session(mut self, bytes: usize) -> Self {
        self.config.gateway.max_session = bytes;
        self
    }

    /// The name gateways log for this peer (default `api-PID`).
    pub fn peer_name(mut self, name: impl Into<String>) -> Self {
        self.peer_name = Some(name.into());
        self
    }

    /// Checks the settings as the configuration file's would be checked, opens the
    /// store and connects, as [`Gateway::connect`] does (returning once the gateways
    /// published now are connected, at most the timeout later).
    pub async fn connect(self) -> Result<Gateway, Error> {
        self.config.validate()?;
        let name = self
            .peer_name
            .unwrap_or_else(|| format!("api-{}", std::process::id()));
        Gateway::connect_as(&self.config, name, false).await
    }
}
