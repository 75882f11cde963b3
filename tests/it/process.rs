//! `metal-driver serve` as a real subprocess (the binary cargo built for this test run), for
//! tests that need signals, process memory or the process's own log output.

use std::{
    net::TcpListener,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use metal_driver::cmi::client::CmiClient;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt},
    process::{Child, Command},
};

/// A running driver process.
pub struct DriverProcess {
    child: Child,
    pub pid: u32,
    /// The bound CMI endpoint (from the `listening on` line).
    pub endpoint: String,
    /// The side port (health, metrics).
    pub http_addr: String,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// A free loopback port (bound and released: a tiny race, acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl DriverProcess {
    /// Starts `metal-driver serve` against `metal_api_url` with `extra` flags; waits for the
    /// `listening on` line (at most 60 s).
    pub async fn start(metal_api_url: &str, extra: &[&str]) -> Self {
        let http_addr = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_metal-driver"))
            .arg("serve")
            .args([
                "--endpoint",
                "tcp://127.0.0.1:0",
                "--metal-api-url",
                metal_api_url,
                "--http-addr",
                &http_addr,
            ])
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("METAL_DRIVER_LOG_LEVEL")
            .env_remove("METAL_DRIVER_LOG_FORMAT")
            .env_remove("CMI_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the metal-driver binary starts");
        let pid = child.id().expect("pid");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let sink = stderr.clone();
            let mut pipe = child.stderr.take().unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("`listening on` within 60 s")
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "the driver exited early: {}",
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                )
            });
        let endpoint = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {first}"))
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            pid,
            endpoint,
            http_addr,
            stderr,
        }
    }

    pub async fn client(&self, timeout: Duration) -> CmiClient {
        CmiClient::connect(&self.endpoint, timeout)
            .await
            .expect("connects to the driver")
    }

    /// Everything the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {}", self.pid);
    }

    /// Resident memory in KiB (VmRSS of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The `/metrics` text of the side port.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.http_addr);
        metal_driver::metal::tls::http_client_builder()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .expect("metrics reachable")
            .text()
            .await
            .unwrap()
    }

    /// Waits for the process to exit (at most `limit`); its exit code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap().code(),
            Err(_) => panic!("the driver did not exit within {limit:?}"),
        }
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
