//! A `metal-driver` subprocess the soak kills and restarts (the driver, and the controller
//! when the controller lane runs), with the history the invariants need.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use metal_driver::testkit::child::{Child, Terminated};

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
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(&self.args)
            .env_remove("RUST_LOG")
            .env("METAL_DRIVER_LOG_LEVEL", "info");
        let child = Child::spawn(
            command,
            self.role,
            &self.log_path(self.runs),
            Duration::from_secs(60),
        )
        .await?;
        self.url = Some(child.url.clone());
        self.child = Some(child);
        Ok(())
    }

    /// Stops the current run: SIGKILL (a crash) or SIGTERM (a rolling update).
    pub async fn stop(&mut self, graceful: bool) {
        let Some(child) = self.child.take() else {
            return;
        };
        if !graceful {
            self.sigkills += 1;
            child.kill().await;
            return;
        }
        self.sigterms += 1;
        match child.terminate(Duration::from_secs(20)).await {
            Terminated::Exited(status, took) if status.success() => self.term_exit.push(took),
            Terminated::Exited(status, _) => {
                self.bad_exits.push(format!("run {}: {status}", self.runs))
            }
            Terminated::WaitFailed(e) => self
                .bad_exits
                .push(format!("run {}: wait failed: {e}", self.runs)),
            Terminated::StillRunning => self.bad_exits.push(format!(
                "run {}: still running 20 s after SIGTERM",
                self.runs
            )),
        }
    }

    /// What a kubelet does: when the current run has exited by itself, records how and
    /// starts the next one. Returns whether it restarted.
    pub async fn restart_if_exited(&mut self) -> Result<bool, String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(false);
        };
        match child.try_wait() {
            Some(status) => {
                self.self_exits.push(format!("run {}: {status}", self.runs));
                self.child = None;
                self.start().await?;
                Ok(true)
            }
            None => Ok(false),
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

    /// What happened to this role over the run (read after its last stop).
    pub fn history(&self) -> History {
        History {
            runs: self.runs,
            sigkills: self.sigkills,
            sigterms: self.sigterms,
            bad_exits: self.bad_exits.clone(),
            slowest_term_exit: self.slowest_term_exit(),
            self_exits: self.self_exits.clone(),
            panics: self.panics(),
        }
    }
}

/// What happened to a supervised role over the run, for the checks and the report.
pub struct History {
    pub runs: u32,
    pub sigkills: u32,
    pub sigterms: u32,
    /// SIGTERM'd runs that did not exit 0 (see [`Supervised::bad_exits`]).
    pub bad_exits: Vec<String>,
    pub slowest_term_exit: Option<Duration>,
    /// Runs that exited on their own and were restarted.
    pub self_exits: Vec<String>,
    /// Runs whose log mentions a panic.
    pub panics: Vec<String>,
}
