//! The stack under measurement: the Metal API simulator in this process on its own runtime
//! (devices seeded without HTTP, requests counted per operationId) and `metal-driver serve`
//! as a subprocess (so its RSS and CPU can be read from `/proc/<pid>`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use metal_driver::metal::DeviceCreateInput;
use metal_driver::sim::{self, DEFAULT_PROJECT, SimArgs, SimHandle};
use metal_driver::testkit::proc;
use tokio::runtime::Runtime;

use crate::Ctx;
use crate::calls::{IDENTITY_PREFIX, ROLE_TAG};

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
                .create_device_direct(DEFAULT_PROJECT, device_input(&name, cluster_tag));
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

pub(crate) fn device_input(name: &str, cluster_tag: &str) -> DeviceCreateInput {
    DeviceCreateInput {
        metro: Some("sv".into()),
        plan: "c3.small.x86".into(),
        operating_system: "ubuntu_22_04".into(),
        hostname: Some(name.to_owned()),
        billing_cycle: Some(metal_driver::metal::BillingCycle::Hourly),
        tags: vec![
            cluster_tag.to_owned(),
            ROLE_TAG.to_owned(),
            format!("{IDENTITY_PREFIX}{name}"),
        ],
        ..Default::default()
    }
}

pub(crate) struct Driver {
    pub(crate) child: Child,
    // Kept open: the driver's stdout must not become a broken pipe.
    pub(crate) _stdout: BufReader<ChildStdout>,
    pub(crate) endpoint: String,
    /// exec → the `listening on` line.
    pub(crate) listening_after: Duration,
    pub(crate) spawned_at: Instant,
}

impl Driver {
    pub(crate) fn start(ctx: &Ctx, metal_url: &str, extra: &[&str], log_name: &str) -> Self {
        let log = std::fs::File::create(ctx.logs.join(format!("{log_name}.log")))
            .expect("driver log file");
        let spawned_at = Instant::now();
        let mut child = Command::new(&ctx.driver_bin)
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
            .env_remove("CMI_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("driver starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("driver stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let listening_after = spawned_at.elapsed();
        let endpoint = match (read, line.trim().strip_prefix("listening on ")) {
            (Ok(n), Some(ep)) if n > 0 => ep.to_owned(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "driver did not print `listening on` (got {line:?}); see {}/{log_name}.log",
                    ctx.logs.display()
                );
            }
        };
        Self {
            child,
            _stdout: stdout,
            endpoint,
            listening_after,
            spawned_at,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
