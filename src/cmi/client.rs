//! A typed CMI client over TCP or a unix socket, used by the controller, the `machine` CLI,
//! the demo and the tests. Every call carries a deadline so a hung driver cannot hang us.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::{
    Request,
    transport::{Channel, Endpoint as TonicEndpoint, Uri},
};

use super::{
    endpoint::{Endpoint, EndpointError},
    v1::{identity_client::IdentityClient, machine_client::MachineClient},
};

/// Both CMI services on one channel.
#[derive(Clone)]
pub struct CmiClient {
    pub identity: IdentityClient<Channel>,
    pub machine: MachineClient<Channel>,
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
}

impl CmiClient {
    /// Connects to `endpoint` (`tcp://HOST:PORT` or `unix:///PATH`). `timeout` bounds every
    /// call made through [`CmiClient::request`].
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Self, ClientError> {
        let parsed = Endpoint::parse(endpoint)?;
        let connect_err = |source| ClientError::Connect { endpoint: endpoint.to_owned(), source };
        let channel = match parsed {
            Endpoint::Tcp(addr) => TonicEndpoint::from_shared(format!("http://{addr}"))
                .map_err(connect_err)?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(connect_err)?,
            Endpoint::Unix(path) => {
                // The URI is ignored by the connector; it only has to parse.
                TonicEndpoint::from_static("http://localhost")
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
                    }))
                    .await
                    .map_err(connect_err)?
            }
        };
        Ok(Self::from_channel(channel, timeout))
    }

    pub fn from_channel(channel: Channel, timeout: Duration) -> Self {
        Self {
            identity: IdentityClient::new(channel.clone()),
            machine: MachineClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            timeout,
        }
    }

    /// Wraps a message in a request carrying this client's deadline (`grpc-timeout`).
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }
}
