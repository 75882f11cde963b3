//! The CMI driver inside the caller's process, reached over in-memory HTTP/2 connections.
//!
//! Gardener's provider sidecar is one container with no shared volume, so the controller and
//! the driver run in one process. They still talk gRPC: the same tonic services, deadlines,
//! load shedding and metrics as `serve`, over a `tokio::io::duplex` pipe instead of a socket.
//! The CMI contract between them is the one every test and peer uses, and nothing outside
//! the process can reach the driver (no port, no socket file, nothing written to disk, so a
//! read-only root filesystem is fine).

use std::{sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::{io::DuplexStream, sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint as TonicEndpoint, Server, Uri};

use super::{server::cmi_services, shed::ShedLayer};
use crate::{
    metal::DeviceApi,
    provider::Provider,
    telemetry::{Metrics, admin::Readiness},
};

/// Bytes buffered in each direction of one in-memory connection: a few HTTP/2 frames, as a
/// socket buffer would hold.
const PIPE_BYTES: usize = 256 * 1024;

/// Limits of the in-process server, as `serve` has them.
#[derive(Debug, Clone)]
pub struct InProcessConfig {
    /// Upper bound on one RPC, whatever deadline the client sent.
    pub rpc_timeout: Duration,
    /// RPCs handled at once; beyond that a call is answered Unavailable immediately.
    pub max_in_flight: usize,
    /// Largest accepted request, in bytes.
    pub max_message_bytes: usize,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self {
            rpc_timeout: Duration::from_secs(300),
            max_in_flight: 256,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    #[error("in-process driver: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("in-process driver task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A driver serving in this process.
pub struct InProcessDriver {
    channel: Channel,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl InProcessDriver {
    /// Starts the CMI services over `provider`; they serve until `stop` is cancelled.
    /// Cancel `stop` only after the last client call is done: a call made after it fails.
    pub fn start<A: DeviceApi>(
        provider: Arc<Provider<A>>,
        metrics: &Metrics,
        config: &InProcessConfig,
        stop: CancellationToken,
    ) -> Self {
        let readiness = Readiness::default();
        let (identity, machine) =
            cmi_services(provider, metrics, &readiness, config.max_message_bytes);
        let router = Server::builder()
            .timeout(config.rpc_timeout)
            .layer(ShedLayer::new(config.max_in_flight))
            .add_service(identity)
            .add_service(machine);
        // Each connection the client opens is one duplex pipe; its server half goes to the
        // server through this queue.
        let (connections, incoming) = mpsc::unbounded_channel::<std::io::Result<DuplexStream>>();
        readiness.set(true);
        let task = tokio::spawn(async move {
            let result = router
                .serve_with_incoming_shutdown(
                    UnboundedReceiverStream::new(incoming),
                    stop.cancelled_owned(),
                )
                .await;
            readiness.set(false);
            result
        });
        // The URI is never resolved: the connector below makes every connection.
        let channel = TonicEndpoint::from_static("http://in-process.invalid")
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let (client, server) = tokio::io::duplex(PIPE_BYTES);
                let sent = connections.send(Ok(server));
                async move {
                    sent.map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "the in-process driver has stopped",
                        )
                    })?;
                    Ok::<_, std::io::Error>(TokioIo::new(client))
                }
            }));
        Self { channel, task }
    }

    /// A channel to the driver (cheap to clone; connects on first use).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Waits until the server has stopped (after its `stop` token was cancelled).
    pub async fn wait(self) -> Result<(), InProcessError> {
        drop(self.channel);
        Ok(self.task.await??)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        cmi::client::CmiClient,
        provider::{ProviderConfig, fake::FakeApi},
    };

    /// The in-process driver answers the CMI calls the controller makes, counts them in the
    /// caller's registry, and refuses calls once stopped.
    #[tokio::test]
    async fn serves_cmi_over_memory_and_stops() {
        let metrics = Metrics::new();
        let provider = Arc::new(Provider::new(FakeApi::default(), ProviderConfig::default()));
        let stop = CancellationToken::new();
        let driver = InProcessDriver::start(
            provider,
            &metrics,
            &InProcessConfig::default(),
            stop.clone(),
        );
        let client = CmiClient::from_channel(driver.channel(), Duration::from_secs(5));

        let ready = client.probe().await.expect("Probe");
        assert_eq!(ready, Some(true));
        let info = client.get_plugin_info().await.expect("GetPluginInfo");
        assert_eq!(info.name, crate::cmi::PLUGIN_NAME);
        // A Machine call reaches the provider: an empty request is refused by its validation,
        // which proves the call went through the real service.
        let status = client
            .list_machines(&[], &Default::default())
            .await
            .expect_err("ListMachines without a class is invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

        let text = metrics.render();
        assert!(
            text.contains(
                r#"grpc_server_handled_total{grpc_service="cmi.v1.Identity",grpc_method="Probe",grpc_code="OK"} 1"#
            ),
            "the caller's registry counts the in-process calls:\n{text}"
        );

        stop.cancel();
        driver.wait().await.expect("clean stop");
        let after = client.probe().await;
        assert!(after.is_err(), "a stopped driver answers nothing");
    }
}
