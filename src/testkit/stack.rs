//! The Metal API simulator and the CMI driver on ephemeral loopback ports inside this
//! process, wired as `metal-driver serve` wires them, with a CMI client connected to the
//! driver. One place builds this stack so the demo and the tests exercise the same wiring.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    cmi::{
        client::CmiClient,
        server::{Running, ServerConfig, start},
    },
    metal::client::{ClientConfig, MetalClient},
    provider::{Provider, ProviderConfig},
    sim::{self, SimArgs, SimHandle},
    telemetry::Metrics,
};

/// A running simulator + driver + client.
pub struct Stack {
    pub sim: SimHandle,
    pub server: Running,
    pub cmi: CmiClient,
    pub metrics: Metrics,
    /// Cancelling it starts the driver's graceful shutdown.
    pub stop: CancellationToken,
}

/// Which step of starting the stack failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct StackError {
    /// The step as the demo prints it: `start simulator`, `build Metal client`,
    /// `start driver` or `connect`.
    pub step: &'static str,
    pub reason: String,
}

fn failed(step: &'static str, e: impl std::fmt::Display) -> StackError {
    StackError {
        step,
        reason: e.to_string(),
    }
}

impl Stack {
    /// Starts the simulator with `sim_args`, a driver whose Metal client points at it
    /// (`client` may adjust the client's settings; the base URL is already set), and a CMI
    /// client with `rpc_timeout`.
    pub async fn start(
        sim_args: SimArgs,
        client: impl FnOnce(&mut ClientConfig),
        rpc_timeout: Duration,
    ) -> Result<Self, StackError> {
        let sim = sim::spawn(sim_args)
            .await
            .map_err(|e| failed("start simulator", e))?;
        let metrics = Metrics::new();
        let mut config = ClientConfig {
            base_url: sim.base_url(),
            ..ClientConfig::default()
        };
        client(&mut config);
        let metal = MetalClient::new(config, Some(metrics.metal.clone()))
            .map_err(|e| failed("build Metal client", e))?;
        let provider = Arc::new(Provider::new(metal, ProviderConfig::default()));
        let stop = CancellationToken::new();
        let server = start(
            ServerConfig::loopback(),
            provider,
            metrics.clone(),
            stop.clone(),
        )
        .await
        .map_err(|e| failed("start driver", e))?;
        let cmi = CmiClient::connect(&server.endpoint.to_string(), rpc_timeout)
            .await
            .map_err(|e| failed("connect", e))?;
        Ok(Self {
            sim,
            server,
            cmi,
            metrics,
            stop,
        })
    }

    /// Stops the driver (graceful drain) and then the simulator.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.wait().await;
        self.sim.shutdown().await;
    }
}
