//! A `metal-driver` subprocess the soak kills and restarts (the driver, and the controller
//! when the controller lane runs), with the history the invariants need.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{io::AsyncBufReadExt, process::Child};

/// One supervised role (`driver` or `controller`): how to start it and what happened to it.
pub struct Supervised {
    /// `driver` or `controller`: names the log files and the report lines.
    pub role: &'static str,
    pub bin: PathBuf,
    pub args: Vec<OsString>,
    pub out_dir: PathBuf,
    pub runs: u32,
    child: Option<Child>,
    pub sigkills: u32,
    pub sigterms: u32,
    /// Exit codes of SIGTERM'd runs that were not 0.
    pub bad_exits: Vec<String>,
    /// How long each SIGTERM'd run took to exit.
    pub term_exit: Vec<Duration>,
    /// The current run's side-port URL (its `listening on` line).
    pub url: Option<String>,
    /// Runs that exited on their own (and were restarted by [`Supervised::restart_if_exited`]).
    pub self_exits: Vec<String>,
}

impl Supervised {
    pub fn new(role: &'static str, bin: PathBuf, args: Vec<OsString>, out_dir: PathBuf) -> Self {
        Self {
            role,
            bin,
            args,
            out_dir,
            runs: 0,
            child: None,
            sigkills: 0,
            sigterms: 0,
            bad_exits: Vec::new(),
            term_exit: Vec::new(),
            url: None,
            self_exits: Vec::new(),
        }
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.out_dir.join(format!("{}-{run}.log", self.role))
    }

    /// Starts a run and waits for its `listening on` line (both roles print one first).
    pub async fn start(&mut self) -> Result<(), String> {
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(&self.bin)
            .args(&self.args)
            .env_remove("RUST_LOG")
            .env("METAL_DRIVER_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let role = self.role;
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| format!("the {role} did not say `listening on` within 60 s"))?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the {role} exited before listening"))?;
        let Some(url) = first.strip_prefix("listening on ") else {
            return Err(format!("unexpected first line from the {role}: {first}"));
        };
        self.url = Some(url.to_owned());
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        Ok(())
    }

    /// Stops the current run: SIGKILL (a crash) or SIGTERM (a rolling update).
    pub async fn stop(&mut self, graceful: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if graceful {
            self.sigterms += 1;
            let asked = Instant::now();
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                Ok(Ok(status)) if status.success() => self.term_exit.push(asked.elapsed()),
                Ok(Ok(status)) => self.bad_exits.push(format!("run {}: {status}", self.runs)),
                Ok(Err(e)) => self
                    .bad_exits
                    .push(format!("run {}: wait failed: {e}", self.runs)),
                Err(_) => {
                    self.bad_exits.push(format!(
                        "run {}: still running 20 s after SIGTERM",
                        self.runs
                    ));
                    let _ = child.kill().await;
                }
            }
        } else {
            self.sigkills += 1;
            let _ = child.kill().await;
        }
    }

    /// What a kubelet does: when the current run has exited by itself, records how and
    /// starts the next one. Returns whether it restarted.
    pub async fn restart_if_exited(&mut self) -> Result<bool, String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(false);
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.self_exits.push(format!("run {}: {status}", self.runs));
                self.child = None;
                self.start().await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Runs whose log mentions a panic.
    pub fn panics(&self) -> Vec<String> {
        (1..=self.runs)
            .filter_map(|run| {
                let text = std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
                text.lines()
                    .find(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE"))
                    .map(|l| format!("{}-{run}.log: {l}", self.role))
            })
            .collect()
    }

    /// The slowest SIGTERM → exit of this role, if any run was SIGTERM'd cleanly.
    pub fn slowest_term_exit(&self) -> Option<Duration> {
        self.term_exit.iter().max().copied()
    }
}
