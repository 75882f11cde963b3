//! A typed CMI client over TCP or a unix socket, used by the controller, the `machine` CLI,
//! the demo and the tests: connecting (plaintext or TLS) here, the calls in
//! [`super::calls`]. Every call carries a deadline so a hung driver cannot hang us.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint as TonicEndpoint, Identity, Uri},
};

use super::{
    endpoint::{Endpoint, EndpointError},
    v1::{identity_client::IdentityClient, machine_client::MachineClient},
};

/// Both CMI services on one channel. Cheap to clone (the channel is shared).
#[derive(Clone)]
pub struct CmiClient {
    pub(super) identity: IdentityClient<Channel>,
    pub(super) machine: MachineClient<Channel>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("cannot connect to the driver at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("TLS to the driver: {0}")]
    Tls(String),
}

/// Client TLS flags, for roles that call the driver (`controller`, `machine`): flatten
/// into their clap args and pass [`ClientTlsArgs::load`] to [`CmiClient::connect_tls`].
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientTlsArgs {
    /// Talk TLS to the driver, trusting this CA bundle (PEM) for its certificate.
    #[arg(long = "tls-ca", env = "CMI_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for a driver that requires mutual TLS; needs --tls-key.
    #[arg(long = "tls-cert", env = "CMI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", env = "CMI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The name to verify in the driver's certificate (default: the endpoint's host, or
    /// `localhost` for a unix socket).
    #[arg(long = "tls-server-name", env = "CMI_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// Reads the files: `None` when TLS is not asked for.
    pub fn load(&self) -> Result<Option<ClientTls>, ClientError> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ClientError::Tls(format!("{flag} {}: {e}", path.display())))
        };
        let Some(ca) = &self.tls_ca else {
            return if self.tls_cert.is_some() || self.tls_key.is_some() {
                Err(ClientError::Tls(
                    "--tls-cert/--tls-key need --tls-ca (the CA of the driver's certificate)"
                        .into(),
                ))
            } else {
                Ok(None)
            };
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((read("--tls-cert", cert)?, read("--tls-key", key)?)),
            (None, None) => None,
            _ => {
                return Err(ClientError::Tls(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        };
        Ok(Some(ClientTls {
            ca_pem: read("--tls-ca", ca)?,
            identity,
            server_name: self.tls_server_name.clone(),
        }))
    }
}

/// TLS settings of a connection to the driver (PEM contents).
#[derive(Clone, Default)]
pub struct ClientTls {
    /// The CA bundle the driver's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// Certificate chain and key for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name checked against the driver's certificate.
    pub server_name: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    fn tonic_config(&self, default_name: &str) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(
                self.server_name
                    .clone()
                    .unwrap_or_else(|| default_name.to_owned()),
            );
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

impl CmiClient {
    /// Connects to `endpoint` (`tcp://HOST:PORT` or `unix:///PATH`). `timeout` bounds every
    /// call.
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_tls(endpoint, timeout, None).await
    }

    /// [`CmiClient::connect`], over TLS when `tls` is given (on TCP and on unix sockets).
    pub async fn connect_tls(
        endpoint: &str,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Self, ClientError> {
        let parsed = Endpoint::parse(endpoint)?;
        let connect_err = |source| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let with_tls = |ep: TonicEndpoint, default_name: &str| match tls {
            Some(tls) => ep
                .tls_config(tls.tonic_config(default_name))
                .map_err(connect_err),
            None => Ok(ep),
        };
        let channel = match parsed {
            Endpoint::Tcp(addr) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                with_tls(
                    TonicEndpoint::from_shared(format!("{scheme}://{addr}"))
                        .map_err(connect_err)?,
                    &host,
                )?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(connect_err)?
            }
            Endpoint::Unix(path) => {
                // The connector ignores the URI's address; its scheme selects TLS.
                let uri = if tls.is_some() {
                    "https://localhost"
                } else {
                    "http://localhost"
                };
                with_tls(TonicEndpoint::from_static(uri), "localhost")?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            tokio::net::UnixStream::connect(path)
                                .await
                                .map(TokioIo::new)
                        }
                    }))
                    .await
                    .map_err(connect_err)?
            }
        };
        Ok(Self::from_channel(channel, timeout))
    }

    /// Over a channel that is already set up (the in-process driver, tests); `timeout`
    /// bounds every call.
    pub fn from_channel(channel: Channel, timeout: Duration) -> Self {
        Self {
            identity: IdentityClient::new(channel.clone()),
            machine: MachineClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            timeout,
        }
    }

    /// Wraps a message in a request carrying this client's deadline (`grpc-timeout`).
    pub(super) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }
}
