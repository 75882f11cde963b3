//! The stack under measurement: the Metal API simulator in this process on its own runtime
//! (devices seeded without HTTP, requests counted per operationId) and `metal-driver serve`
//! as a subprocess (so its RSS and CPU can be read from `/proc/<pid>`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metal_driver::sim::{self, DEFAULT_PROJECT, SimArgs, SimHandle};
use metal_driver::testkit::{child::Child, fixture, proc};
use tokio::runtime::{Handle, Runtime};

use crate::Ctx;

pub(crate) struct Sim {
    pub(crate) rt: Runtime,
    pub(crate) handle: Option<SimHandle>,
}

impl Sim {
    pub(crate) fn start(args: SimArgs) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-sim")
            .enable_all()
            .build()
            .expect("simulator runtime");
        let handle = rt.block_on(sim::spawn(args)).expect("simulator starts");
        Self {
            rt,
            handle: Some(handle),
        }
    }

    pub(crate) fn handle(&self) -> &SimHandle {
        self.handle.as_ref().expect("simulator running")
    }

    pub(crate) fn url(&self) -> String {
        self.handle().base_url()
    }

    pub(crate) fn requests(&self) -> BTreeMap<String, u64> {
        self.handle().stats().requests
    }

    pub(crate) fn total_requests(&self) -> u64 {
        self.requests().values().sum()
    }

    /// Adds `n` live devices carrying `cluster_tag`, the role tag and each its identity tag.
    pub(crate) fn seed(&self, prefix: &str, cluster_tag: &str, n: usize) {
        for i in 0..n {
            let name = format!("{prefix}-{i:05}");
            self.handle()
                .create_device_direct(DEFAULT_PROJECT, fixture::machine_device(&name, cluster_tag));
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.rt.block_on(handle.shutdown());
        }
    }
}

/// How long a driver may take to print `listening on`.
const READY_WITHIN: Duration = Duration::from_secs(60);

pub(crate) struct Driver {
    child: Option<Child>,
    /// The load runtime, to reap the child when the scenario drops it.
    rt: Handle,
    pub(crate) endpoint: String,
    /// exec → the `listening on` line.
    pub(crate) listening_after: Duration,
    pub(crate) spawned_at: Instant,
}

impl Driver {
    pub(crate) fn start(ctx: &Ctx, metal_url: &str, extra: &[&str], log_name: &str) -> Self {
        let mut command = tokio::process::Command::new(&ctx.driver_bin);
        command
            .arg("serve")
            .args([
                "--endpoint",
                "tcp://127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(["--metal-api-url", metal_url])
            .args(extra)
            .env("METAL_DRIVER_LOG_LEVEL", "warn")
            .env_remove("RUST_LOG")
            .env_remove("CMI_ENDPOINT");
        let log = ctx.logs.join(format!("{log_name}.log"));
        let child = ctx
            .rt
            .block_on(Child::spawn(command, "driver", &log, READY_WITHIN))
            .unwrap_or_else(|e| panic!("{e}; see {}", log.display()));
        Self {
            endpoint: child.url.clone(),
            listening_after: child.listening_after,
            spawned_at: child.spawned_at,
            child: Some(child),
            rt: ctx.rt.handle().clone(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::pid)
    }

    /// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`); 0 once the process is gone.
    pub(crate) fn status_kb(&self, key: &str) -> u64 {
        proc::status_kb(self.pid(), key).unwrap_or(0)
    }

    pub(crate) fn rss_mb(&self) -> f64 {
        self.status_kb("VmRSS") as f64 / 1024.0
    }

    pub(crate) fn hwm_mb(&self) -> f64 {
        self.status_kb("VmHWM") as f64 / 1024.0
    }

    /// CPU seconds (user + system) the driver has used so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        proc::cpu_seconds(self.pid()).unwrap_or(f64::NAN)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            self.rt.block_on(child.kill());
        }
    }
}
