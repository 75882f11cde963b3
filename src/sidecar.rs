//! `metal-driver` with no subcommand: Gardener's provider sidecar in one process.
//!
//! Gardener adds a provider's machine controller to the machine-controller-manager Pod with a
//! stock helper that gives the container the provider's image and MCM's machine-controller
//! flags, nothing else: no subcommand, no second container, no shared volume. So this role
//! takes exactly the flags of `metal-driver controller` (plus the driver's Metal API flags)
//! and runs the CMI driver inside the same process ([`crate::cmi::in_process`]), still
//! speaking CMI to it. One metrics registry serves both on the controller's side port
//! (`--port`, 10259): the controller's series and the driver's `mcm_cloud_api_*` and
//! `grpc_server_*` series together, where Gardener's ServiceMonitor scrapes.
//!
//! With `--cmi-endpoint` the driver is not started here and the role is exactly
//! `metal-driver controller` (for those who keep the two-process form).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    cmi::{
        client::CmiClient,
        in_process::{InProcessConfig, InProcessDriver, InProcessError},
        server::{MetalApiArgs, ServeError, metal_client},
    },
    controller::{self, ControllerArgs},
    provider::{Provider, ProviderConfig},
    telemetry::Metrics,
};

/// Flags of the one-process sidecar: the controller's, and the Metal API client's.
#[derive(clap::Args, Debug, Clone)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,

    #[command(flatten)]
    pub metal: MetalApiArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(transparent)]
    Controller(#[from] controller::error::Error),
    #[error(transparent)]
    Driver(#[from] ServeError),
    #[error(transparent)]
    InProcess(#[from] InProcessError),
}

/// Runs the controller with the driver in this process until `shutdown` (or until leadership
/// is lost, like `metal-driver controller`).
pub async fn run(args: SidecarArgs, shutdown: CancellationToken) -> Result<(), SidecarError> {
    if args.controller.cmi_endpoint.is_some() {
        tracing::info!("--cmi-endpoint given: using that driver, none in this process");
        return Ok(controller::run(args.controller, shutdown).await?);
    }
    let metrics = Metrics::new();
    let provider = Arc::new(Provider::new(
        metal_client(&args.metal, &metrics)?,
        ProviderConfig::default(),
    ));
    // The driver outlives the controller: it stops only after the controller has finished
    // its in-flight reconciles (which call it) and released its Lease.
    let driver_stop = CancellationToken::new();
    let driver = InProcessDriver::start(
        provider,
        &metrics,
        &InProcessConfig::default(),
        driver_stop.clone(),
    );
    tracing::info!(metal_api = %args.metal.metal_api_url, "CMI driver running in this process");
    let cmi = CmiClient::from_channel(driver.channel(), args.controller.cmi_timeout);
    let result = controller::run_with_driver(args.controller, shutdown, metrics, Some(cmi)).await;
    driver_stop.cancel();
    let stopped = driver.wait().await;
    result?;
    Ok(stopped?)
}
