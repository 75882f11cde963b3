//! A supervised `metal-driver` subprocess (`serve`, `controller`, `sim` or the sidecar):
//! spawned with its stderr in a log file, ready once it prints its `listening on <url>` line,
//! signalled (`STOP`, `CONT`, ...), stopped with SIGTERM and a bounded wait (a rolling update)
//! or SIGKILL (a crash). The bench, the soak and the controller e2e tests all run the real
//! binary this way, so its memory, CPU and shutdown are the deployed ones. A peer that prints
//! no such line (MCM's Go binaries in the e2e tests) is supervised the same way once spawned
//! with [`Child::spawn_at`].

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

/// The `metal-driver` binary next to the running one (cargo builds every binary of the
/// crate into one directory), or `metal-driver` on the `PATH` when there is none: the
/// default driver of the bench and the soak.
pub fn sibling_driver_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("metal-driver")))
        .unwrap_or_else(|| PathBuf::from("metal-driver"))
}

/// A running child that has said where it listens.
pub struct Child {
    inner: tokio::process::Child,
    /// What it is, as its spawner named it (for messages).
    pub what: String,
    /// The URL of its `listening on` line (CMI endpoint or side port).
    pub url: String,
    /// When it was spawned.
    pub spawned_at: Instant,
    /// Spawn → the `listening on` line (zero for a child from [`Child::spawn_at`]).
    pub listening_after: Duration,
}

/// How a SIGTERM'd child ended.
#[derive(Debug)]
pub enum Terminated {
    /// It exited by itself within the bound, after this long.
    Exited(ExitStatus, Duration),
    /// Waiting for it failed.
    WaitFailed(std::io::Error),
    /// It was still running when the bound passed, and was killed.
    StillRunning,
}

impl Child {
    /// Spawns `command` (its program, arguments and environment set by the caller) with
    /// stdin closed, stderr appended to `log` and stdout read for the `listening on` line,
    /// which must come first and within `ready_within`. `what` names the child in errors.
    /// The rest of stdout is drained so the child never writes into a full pipe.
    pub async fn spawn(
        mut command: Command,
        what: &str,
        log: &Path,
        ready_within: Duration,
    ) -> Result<Self, String> {
        let log_file = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let spawned_at = Instant::now();
        let mut inner = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the {what}: {e}"))?;
        let stdout = inner.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(ready_within, lines.next_line())
            .await
            .map_err(|_| {
                format!(
                    "the {what} did not say `listening on` within {} s",
                    ready_within.as_secs()
                )
            })?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the {what} exited before listening"))?;
        let listening_after = spawned_at.elapsed();
        let Some(url) = first.strip_prefix("listening on ") else {
            return Err(format!("unexpected first line from the {what}: {first}"));
        };
        let url = url.trim().to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            inner,
            what: what.to_owned(),
            url,
            spawned_at,
            listening_after,
        })
    }

    /// Spawns `command`, a child that does not say where it listens, with stdin closed and
    /// stdout and stderr both in `log`. `url` is where the caller told it to listen; whether
    /// it answers there yet is the caller's to check.
    pub fn spawn_at(
        mut command: Command,
        what: &str,
        log: &Path,
        url: String,
    ) -> Result<Self, String> {
        let log_file = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let stdout = log_file
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
        let spawned_at = Instant::now();
        let inner = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the {what}: {e}"))?;
        Ok(Self {
            inner,
            what: what.to_owned(),
            url,
            spawned_at,
            listening_after: Duration::ZERO,
        })
    }

    /// The child's process id (for `/proc/<pid>` readings); 0 once it has been reaped.
    pub fn pid(&self) -> u32 {
        self.inner.id().unwrap_or(0)
    }

    /// Whether it has exited by itself, and how.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.inner.try_wait().ok().flatten()
    }

    /// SIGKILL, and reaps it.
    pub async fn kill(mut self) {
        let _ = self.inner.kill().await;
    }

    /// Sends the signal named `signal` (`STOP`, `CONT`, `TERM`, ...); nothing once it has
    /// been reaped.
    pub async fn signal(&self, signal: &str) {
        if let Some(pid) = self.inner.id() {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status()
                .await;
        }
    }

    /// SIGTERM, then waits up to `within` for it to exit; kills it if it does not.
    pub async fn terminate(mut self, within: Duration) -> Terminated {
        let asked = Instant::now();
        self.signal("TERM").await;
        match tokio::time::timeout(within, self.inner.wait()).await {
            Ok(Ok(status)) => Terminated::Exited(status, asked.elapsed()),
            Ok(Err(e)) => Terminated::WaitFailed(e),
            Err(_) => {
                let _ = self.inner.kill().await;
                Terminated::StillRunning
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[tokio::test]
    async fn ready_on_the_listening_line_and_terminated_by_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        let child = Child::spawn(
            sh("echo 'listening on tcp://127.0.0.1:1'; echo oops >&2; exec sleep 30"),
            "child",
            &log,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(child.url, "tcp://127.0.0.1:1");
        assert_eq!(child.what, "child");
        assert!(child.pid() > 0);
        match child.terminate(Duration::from_secs(30)).await {
            // `sleep` dies of the signal: an exit, but not a clean one.
            Terminated::Exited(status, _) => assert!(!status.success()),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "oops\n");
    }

    #[tokio::test]
    async fn a_child_that_exits_or_says_something_else_first_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        let gone = Child::spawn(sh("exit 3"), "child", &log, Duration::from_secs(30)).await;
        assert_eq!(gone.err().unwrap(), "the child exited before listening");
        let other = Child::spawn(sh("echo hello"), "child", &log, Duration::from_secs(30)).await;
        assert_eq!(
            other.err().unwrap(),
            "unexpected first line from the child: hello"
        );
    }

    #[tokio::test]
    async fn a_child_spawned_at_a_url_logs_stdout_and_stderr_to_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        let mut child = Child::spawn_at(
            sh("echo out; echo err >&2"),
            "peer",
            &log,
            "http://127.0.0.1:1".to_owned(),
        )
        .unwrap();
        assert_eq!(child.url, "http://127.0.0.1:1");
        assert_eq!(child.listening_after, Duration::ZERO);
        // It exits by itself once it has written both lines.
        let status = loop {
            if let Some(status) = child.try_wait() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(status.success(), "{status}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\n");
    }
}
