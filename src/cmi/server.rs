//! The `serve` role: bind `CMI_ENDPOINT`, serve `cmi.v1.Identity` + `cmi.v1.Machine`, gRPC
//! health and reflection, and the HTTP side port; drain gracefully on shutdown.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::{
    FILE_DESCRIPTOR_SET,
    endpoint::{Endpoint, EndpointError, Listener, bind},
    identity::IdentityService,
    machine::MachineService,
    shed::ShedLayer,
    v1::{identity_server::IdentityServer, machine_server::MachineServer},
};
use crate::{
    metal::{
        DeviceApi,
        client::{ClientConfig, MetalClient},
    },
    provider::{Provider, ProviderConfig},
    telemetry::{
        Metrics,
        admin::{self, Readiness},
    },
};

/// Flags of `metal-driver serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where to listen for CMI calls: tcp://HOST:PORT or unix:///PATH (port 0 picks a free
    /// port; the first stdout line says which). CMI requires the supervisor to set it.
    #[arg(long, env = "CMI_ENDPOINT")]
    pub endpoint: String,

    /// The Metal API client.
    #[command(flatten)]
    pub metal: MetalApiArgs,

    /// Side HTTP port for /healthz, /readyz and /metrics.
    #[arg(long, env = "METAL_DRIVER_HTTP_ADDR", default_value = "0.0.0.0:10260")]
    pub http_addr: SocketAddr,

    /// How long in-flight calls may run after SIGTERM before the process exits anyway.
    #[arg(long, env = "METAL_DRIVER_GRACE_PERIOD", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace_period: Duration,

    /// Upper bound on one RPC, whatever deadline the client sent.
    #[arg(long, env = "METAL_DRIVER_RPC_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub rpc_timeout: Duration,

    /// RPCs handled at once; beyond this a call is answered Unavailable immediately.
    #[arg(long, env = "METAL_DRIVER_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Largest accepted gRPC request, in bytes.
    #[arg(long, env = "METAL_DRIVER_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "METAL_DRIVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "METAL_DRIVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA bundle (PEM): mutual TLS. Needs
    /// --tls-cert; clients without a valid certificate are refused during the handshake.
    #[arg(long, env = "METAL_DRIVER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Flags of the Metal API client: shared by `serve` and the one-process sidecar (no
/// subcommand), so both read the same flags and environment variables.
#[derive(clap::Args, Debug, Clone)]
pub struct MetalApiArgs {
    /// Base URL of the Equinix Metal API (or of `metal-driver sim`, or a Prism proxy).
    #[arg(
        long,
        env = "METAL_API_URL",
        default_value = "https://api.equinix.com/metal/v1"
    )]
    pub metal_api_url: String,

    /// Timeout of one HTTP attempt to the Metal API.
    #[arg(long, env = "METAL_API_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub api_request_timeout: Duration,

    /// TCP/TLS connect timeout to the Metal API.
    #[arg(long, env = "METAL_API_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub api_connect_timeout: Duration,

    /// Retries of a retryable Metal API call (429, 5xx, transport) before giving up.
    #[arg(long, env = "METAL_API_MAX_RETRIES", default_value_t = 5)]
    pub api_max_retries: u32,

    /// Client-side limit on Metal API requests per second across all calls (0 = off).
    #[arg(long, env = "METAL_API_RATE_LIMIT", default_value_t = 0.0)]
    pub api_rate_limit: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("side HTTP port {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Metal API client: {0}")]
    Client(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// TLS for the gRPC port: the server's certificate chain and key, and optionally the CA
/// that client certificates must chain to (mutual TLS). PEM contents, read at start-up.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// `Some`: every client must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

impl ServerTls {
    /// Reads the PEM files named by the flags; errors name the flag and the file.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, ServeError> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ServeError::Tls(format!("{flag} {}: {e}", path.display())))
        };
        Ok(Self {
            cert_pem: read("--tls-cert", cert)?,
            key_pem: read("--tls-key", key)?,
            client_ca_pem: client_ca.map(|p| read("--tls-client-ca", p)).transpose()?,
        })
    }

    /// From the `serve` flags: `None` when no TLS flag is given.
    pub fn from_args(args: &ServeArgs) -> Result<Option<Self>, ServeError> {
        match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                Self::from_files(cert, key, args.tls_client_ca.as_deref()).map(Some)
            }
            (None, None) if args.tls_client_ca.is_none() => Ok(None),
            _ => Err(ServeError::Tls(
                "--tls-cert, --tls-key (and --tls-client-ca) go together".into(),
            )),
        }
    }

    fn tonic_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            // A client that opens a connection and never finishes the handshake is cut off.
            .timeout(Duration::from_secs(10));
        match &self.client_ca_pem {
            Some(ca) => config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false),
            None => config,
        }
    }
}

/// Server settings that do not concern the Metal API.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub endpoint: Endpoint,
    pub http_addr: SocketAddr,
    pub grace_period: Duration,
    pub rpc_timeout: Duration,
    pub max_in_flight: usize,
    pub max_message_bytes: usize,
    /// `None`: plaintext gRPC (fine on a unix socket or a Pod-local port).
    pub tls: Option<ServerTls>,
}

impl ServerConfig {
    /// Loopback, port 0 everywhere: for tests, the demo and benchmarks.
    pub fn loopback() -> Self {
        Self {
            endpoint: Endpoint::Tcp("127.0.0.1:0".into()),
            http_addr: ([127, 0, 0, 1], 0).into(),
            grace_period: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(300),
            max_in_flight: 256,
            max_message_bytes: 4 * 1024 * 1024,
            tls: None,
        }
    }
}

/// A started server.
pub struct Running {
    /// The bound CMI endpoint (real port).
    pub endpoint: Endpoint,
    /// The bound side HTTP address (real port).
    pub http_addr: SocketAddr,
    pub metrics: Metrics,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Waits until the server has drained and stopped.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(ServeError::Client(format!("server task failed: {join}"))),
        }
    }
}

/// Builds the Metal client from the flags; its calls are counted in `metrics`.
pub fn metal_client(args: &MetalApiArgs, metrics: &Metrics) -> Result<MetalClient, ServeError> {
    let config = ClientConfig {
        base_url: args.metal_api_url.clone(),
        connect_timeout: args.api_connect_timeout,
        request_timeout: args.api_request_timeout,
        max_retries: args.api_max_retries,
        rate_limit: (args.api_rate_limit > 0.0).then_some(args.api_rate_limit),
        ..ClientConfig::default()
    };
    MetalClient::new(config, Some(metrics.metal.clone()))
        .map_err(|e| ServeError::Client(e.to_string()))
}

/// `metal-driver serve`: runs until `shutdown`, then drains.
pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> Result<(), ServeError> {
    let metrics = Metrics::new();
    let client = metal_client(&args.metal, &metrics)?;
    let provider = Arc::new(Provider::new(client, ProviderConfig::default()));
    let config = ServerConfig {
        endpoint: Endpoint::parse(&args.endpoint)?,
        http_addr: args.http_addr,
        grace_period: args.grace_period,
        rpc_timeout: args.rpc_timeout,
        max_in_flight: args.max_in_flight,
        max_message_bytes: args.max_message_bytes,
        tls: ServerTls::from_args(&args)?,
    };
    let tls = match &config.tls {
        None => "off",
        Some(t) if t.client_ca_pem.is_some() => "mutual",
        Some(_) => "on",
    };
    let running = start(config, provider, metrics, shutdown).await?;
    println!("listening on {}", running.endpoint);
    tracing::info!(endpoint = %running.endpoint, http = %running.http_addr, metal_api = %args.metal.metal_api_url, tls, "metal-driver serving");
    running.wait().await
}

/// The two CMI services over `provider`, as every transport serves them.
pub(crate) fn cmi_services<A: DeviceApi>(
    provider: Arc<Provider<A>>,
    metrics: &Metrics,
    readiness: &Readiness,
    max_message_bytes: usize,
) -> (
    IdentityServer<IdentityService>,
    MachineServer<MachineService<A>>,
) {
    let identity = IdentityServer::new(IdentityService::new(readiness.clone(), metrics.clone()))
        .max_decoding_message_size(max_message_bytes);
    let machine = MachineServer::new(MachineService::new(provider, metrics.clone()))
        .max_decoding_message_size(max_message_bytes);
    (identity, machine)
}

/// Binds and starts serving in the background; returns once both ports are bound.
pub async fn start<A: DeviceApi>(
    config: ServerConfig,
    provider: Arc<Provider<A>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<Running, ServeError> {
    let listener = bind(&config.endpoint).await?;
    let endpoint = listener.endpoint();
    let readiness = Readiness::default();
    let admin = admin::bind(config.http_addr, metrics.clone(), readiness.clone())
        .await
        .map_err(|source| ServeError::Admin {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = admin.local_addr();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<IdentityServer<IdentityService>>()
        .await;
    health
        .set_serving::<MachineServer<MachineService<A>>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let (identity, machine) =
        cmi_services(provider, &metrics, &readiness, config.max_message_bytes);

    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.tonic_config())
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let router = builder
        .timeout(config.rpc_timeout)
        .layer(ShedLayer::new(config.max_in_flight))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(identity)
        .add_service(machine);

    readiness.set(true);
    let grace = config.grace_period;
    let drain = shutdown.clone();
    let task = tokio::spawn(async move {
        let stop = {
            let readiness = readiness.clone();
            let health = health.clone();
            async move {
                drain.cancelled().await;
                readiness.set(false);
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                health
                    .set_not_serving::<MachineServer<MachineService<A>>>()
                    .await;
                tracing::info!(grace = ?grace, "draining: no new calls, waiting for in-flight ones");
            }
        };
        let serve = async move {
            match listener {
                Listener::Tcp(l, _) => {
                    // TCP_NODELAY on every accepted connection (as the client sets it):
                    // without it, Nagle holds small gRPC frames back until the peer's
                    // delayed ACK, a 40 ms stall at the tail under concurrency.
                    let incoming =
                        tokio_stream::StreamExt::map(TcpListenerStream::new(l), |conn| {
                            conn.inspect(|s| {
                                let _ = s.set_nodelay(true);
                            })
                        });
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
                Listener::Unix(l, _) => {
                    router
                        .serve_with_incoming_shutdown(UnixListenerStream::new(l), stop)
                        .await
                }
            }
        };
        tokio::pin!(serve);
        let result = tokio::select! {
            r = &mut serve => r.map_err(ServeError::from),
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("grace period over; abandoning calls still in flight");
                Ok(())
            }
        };
        admin.stop().await;
        if let Endpoint::Unix(path) = &config.endpoint {
            let _ = std::fs::remove_file(path);
        }
        result
    });
    Ok(Running {
        endpoint,
        http_addr,
        metrics,
        task,
    })
}
