//! The stack under soak: the Metal API simulator in this process with the run's faults, and
//! `metal-driver serve` as a supervised subprocess on a private unix socket, pointed at it.
//! Both lanes go through this one driver and this one simulator, so the simulator's own
//! counts (devices created, devices left) judge both.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use metal_driver::{
    metal::Device,
    sim::{self, SimArgs, SimHandle, SimStats},
    testkit::child::sibling_driver_bin,
};
use tokio::sync::Mutex;

use crate::{
    args::Args,
    process::{History, Supervised},
};

/// The running simulator and driver, and where the run writes.
pub struct Stack {
    /// Driver (and controller) logs and report.json.
    pub out_dir: PathBuf,
    /// The driver's CMI endpoint (`unix://…`).
    pub endpoint: String,
    /// The `metal-driver` binary (the driver, and the controller of the controller lane).
    pub driver_bin: PathBuf,
    pub sim: SimHandle,
    /// Shared with the restarter.
    pub driver: Arc<Mutex<Supervised>>,
}

/// What the stack left after the run, read as it stops.
pub struct StackOutcome {
    pub stats: SimStats,
    /// Devices still in the simulator once deprovisioning had time to finish.
    pub leftover: Vec<Device>,
    pub driver: History,
}

impl Stack {
    /// Creates the output directory (default `target/soak/<stamp>`), starts the simulator
    /// with the flags' faults and `seed`, and starts the driver (waiting for its
    /// `listening on` line).
    pub async fn start(args: &Args, seed: u64, stamp: u64) -> Result<Self, String> {
        let out_dir = args
            .out_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("target/soak/{stamp}")));
        std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
        let out_dir =
            std::fs::canonicalize(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
        let socket = private_socket(&out_dir)?;

        let sim = sim::spawn(sim_args(args, seed))
            .await
            .map_err(|e| format!("simulator: {e}"))?;

        let endpoint = format!("unix://{}", socket.display());
        let driver_bin = args.driver_bin.clone().unwrap_or_else(sibling_driver_bin);
        let mut driver = Supervised::new(
            "driver",
            driver_bin.clone(),
            [
                "serve",
                "--endpoint",
                &endpoint,
                "--metal-api-url",
                &sim.base_url(),
                "--http-addr",
                "127.0.0.1:0",
                "--grace-period",
                "5s",
                "--log-format",
                "json",
                "--api-request-timeout",
                "10s",
                "--api-max-retries",
                "5",
            ]
            .map(Into::into)
            .to_vec(),
            out_dir.clone(),
        );
        driver.start().await?;
        Ok(Self {
            out_dir,
            endpoint,
            driver_bin,
            sim,
            driver: Arc::new(Mutex::new(driver)),
        })
    }

    /// Waits (up to 10 s) for the simulator to have no device left, stops the driver
    /// gracefully and then the simulator.
    pub async fn stop(self) -> StackOutcome {
        let mut leftover = self.sim.devices();
        for _ in 0..40 {
            if leftover.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            leftover = self.sim.devices();
        }
        let stats = self.sim.stats();
        let driver = {
            let mut driver = self.driver.lock().await;
            driver.stop(true).await;
            driver.history()
        };
        self.sim.shutdown().await;
        StackOutcome {
            stats,
            leftover,
            driver,
        }
    }
}

/// The simulator of the soak: quick lifecycles (so machines turn over), the flags' fault
/// rates and latency, a short Retry-After, and the run's seed for the fault draws.
fn sim_args(args: &Args, seed: u64) -> SimArgs {
    let mut sim_args = SimArgs::for_tests();
    sim_args.provision_seconds = 1.0;
    sim_args.deprovision_seconds = 0.5;
    sim_args.power_seconds = 0.5;
    sim_args.fault_rate_429 = args.fault_rate_429;
    sim_args.fault_rate_5xx = args.fault_rate_5xx;
    sim_args.fault_rate_drop = args.fault_rate_drop;
    sim_args.latency_ms = args.latency_ms;
    sim_args.retry_after_seconds = 1;
    sim_args.seed = Some(seed);
    sim_args
}

/// The driver's socket path, in a directory only we can enter (the driver refuses
/// world-writable ones).
fn private_socket(out_dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let sock_dir = out_dir.join("sock");
    std::fs::create_dir_all(&sock_dir).map_err(|e| format!("{}: {e}", sock_dir.display()))?;
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    Ok(sock_dir.join("cmi.sock"))
}
