//! The Metal API simulator (`metal-driver sim`): a stateful, spec-conformant stand-in for
//! the Equinix Metal device API, which no longer exists (end of life 2026-06-30).
//!
//! It serves the device endpoints the driver uses (create, list with pagination and
//! filters, get, update, delete, actions) with the real API's auth rules (401/403/404),
//! a device lifecycle with configurable timings, capacity per metro and plan, hardware
//! reservations, and injected faults (429, 5xx, latency, rate limits, and "commit then
//! drop the response"). Responses use the shared `metal::types`, omit unset fields and
//! never contain `null`, so a validating proxy (Prism) accepts them.
//!
//! Layout: [`args`] flags, [`catalog`] metros/plans/OSes, [`validate`] create bodies,
//! [`state`] the world and its operations, [`lifecycle`] the state machine and timers,
//! [`addresses`] IPs and passwords, [`paging`] list queries and `Meta`, [`routes`] HTTP,
//! [`faults`] fault injection, [`server`] the accept loop, [`stats`] counters.

pub mod addresses;
pub mod args;
pub mod catalog;
pub mod error;
pub mod faults;
pub mod lifecycle;
pub mod nodes;
pub mod paging;
pub mod routes;
pub mod server;
pub mod state;
pub mod stats;
pub mod validate;

#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use args::{CapacitySpec, DEFAULT_PROJECT, DEFAULT_TOKEN, ReservationSpec, SimArgs, TokenSpec};
pub use faults::Fault;
pub use stats::SimStats;

use crate::metal::Operation;
use crate::metal::types::{Device, DeviceCreateInput};
use faults::{FaultConfig, Faults};
use state::SimState;

/// The simulator's world and its fault decisions, from the flags.
fn build(args: &SimArgs) -> (Arc<SimState>, Arc<Faults>) {
    (
        Arc::new(SimState::new(args)),
        Arc::new(Faults::new(FaultConfig::from_args(args), args.seed)),
    )
}

fn log_config(args: &SimArgs, addr: SocketAddr) {
    // Tokens and userdata are never logged; counts and rates are.
    tracing::info!(
        %addr,
        tokens = args.tokens.len(),
        projects = args.projects.len(),
        provision_seconds = args.provision_seconds,
        deprovision_seconds = args.deprovision_seconds,
        fail_rate = args.fail_rate,
        fault_rate_429 = args.fault_rate_429,
        fault_rate_5xx = args.fault_rate_5xx,
        fault_rate_drop = args.fault_rate_drop,
        latency_ms = args.latency_ms,
        rate_limit = args.rate_limit.unwrap_or(0.0),
        capacity_limits = args.capacity.len(),
        reservations = args.reservations.len(),
        "Metal API simulator listening"
    );
}

/// Runs the simulator in the foreground (the `sim` subcommand): binds `--listen`, prints
/// `listening on http://<bound addr>` as the first stdout line (so scripts can use port
/// 0), and serves until `shutdown` is cancelled, then drains open connections.
pub async fn run(args: SimArgs, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    log_config(&args, addr);
    let (sim, faults) = build(&args);
    let registrar = match &args.register_nodes_kubeconfig {
        Some(path) => {
            let client = nodes::client_from(path)
                .await
                .map_err(std::io::Error::other)?;
            let state = sim.clone();
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                nodes::run(client, move || state.all_devices(Instant::now()), stop).await;
            }))
        }
        None => None,
    };
    server::serve(listener, routes::router(sim, faults), shutdown).await;
    if let Some(task) = registrar {
        let _ = task.await;
    }
    tracing::info!("Metal API simulator stopped");
    Ok(())
}

/// Starts the simulator in-process on a background task (tests, demo, benches).
pub async fn spawn(args: SimArgs) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    log_config(&args, addr);
    let (sim, faults) = build(&args);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::serve(
        listener,
        routes::router(sim.clone(), faults.clone()),
        shutdown.clone(),
    ));
    Ok(SimHandle {
        addr,
        state: sim,
        faults,
        shutdown,
        task,
    })
}

/// A running in-process simulator. Dropping it without [`SimHandle::shutdown`] leaves the
/// server running until the runtime ends.
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<SimState>,
    faults: Arc<Faults>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// Makes the next `times` requests of `operation` fail with `fault`, deterministically,
    /// for tests.
    pub fn inject(&self, operation: Operation, fault: Fault, times: usize) {
        self.faults.script(operation, fault, times);
    }

    /// The bound address (the real port when `--listen` used port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the API is served both here and under `/metal/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The current counters (same as `GET /_sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.state.stats(Instant::now())
    }

    /// Every existing device of every project, including `deprovisioning` ones, in
    /// creation order.
    pub fn devices(&self) -> Vec<Device> {
        self.state.all_devices(Instant::now())
    }

    /// A snapshot function over every device, for observers that outlive a borrow of the
    /// handle (e.g. [`nodes::run`], the Node-join stand-in, run beside an in-process sim).
    pub fn device_snapshot(&self) -> impl Fn() -> Vec<Device> + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.all_devices(Instant::now())
    }

    /// Creates a device without HTTP, auth or faults, e.g. a "foreign" device in a project
    /// the driver's token cannot see. The project is registered if it is new.
    ///
    /// # Panics
    /// If `input` fails validation (unknown slug, no capacity...): this is a test helper,
    /// and a silently missing fixture would make the test meaningless.
    pub fn create_device_direct(&self, project: Uuid, input: DeviceCreateInput) -> Device {
        match self.state.create_direct(project, input, Instant::now()) {
            Ok(d) => d,
            Err(e) => panic!("create_device_direct rejected the input: {:?}", e.messages),
        }
    }

    /// Stops accepting, drains open connections (up to a grace period) and waits.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}
