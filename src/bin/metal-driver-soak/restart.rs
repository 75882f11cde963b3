//! What happens to the supervised processes while the soak runs: a restarter that kills each
//! one on a period (a crash, then a rolling update, alternately), and a watchdog that
//! restarts one that exited by itself, as a kubelet would. Both run as tasks beside the load.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::Mutex, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{Timeline, process::Supervised, tally::Tally};

/// A restarter; it ends with the error of the restart that failed, if one did.
pub type RestartTask = JoinHandle<Result<(), String>>;

/// Kills and restarts `proc` every `every` seconds (first after `every + offset`),
/// alternately SIGKILL and SIGTERM, until half a period before the end of the run's load or
/// `done`; while `paused`, periods pass without a restart.
pub fn restart_loop(
    proc: Arc<Mutex<Supervised>>,
    every: u64,
    offset: Duration,
    timeline: Timeline,
    done: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
) -> RestartTask {
    tokio::spawn(async move {
        if every == 0 {
            return Ok(());
        }
        tokio::time::sleep(offset).await;
        let mut graceful = false;
        loop {
            tokio::time::sleep(Duration::from_secs(every)).await;
            if Instant::now() + Duration::from_secs(every / 2) >= timeline.run_until
                || done.load(Ordering::Relaxed)
            {
                return Ok(());
            }
            if paused.load(Ordering::Relaxed) {
                continue;
            }
            let mut p = proc.lock().await;
            p.stop(graceful).await;
            println!(
                "soak: [{:>5.0}s] {} {} ({}), restarting",
                timeline.elapsed_s(),
                p.role,
                p.runs,
                if graceful { "SIGTERM" } else { "SIGKILL" }
            );
            p.start().await?;
            graceful = !graceful;
        }
    })
}

/// Stops a restarter; a restart that failed is an anomaly.
pub async fn stop_restarter(who: &str, task: RestartTask, tally: &Tally) {
    task.abort();
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(30), task).await {
        tally.anomaly(format!("{who} restart failed: {e}"));
    }
}

/// Restarts `proc` whenever it has exited by itself (a controller that lost its lease does),
/// checking every second until `stop`; a failed restart is an anomaly.
pub fn watchdog(
    proc: Arc<Mutex<Supervised>>,
    stop: CancellationToken,
    tally: Arc<Tally>,
    timeline: Timeline,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut p = proc.lock().await;
            match p.restart_if_exited().await {
                Ok(true) => println!(
                    "soak: [{:>5.0}s] {} exited by itself ({}); restarted",
                    timeline.elapsed_s(),
                    p.role,
                    p.self_exits.last().cloned().unwrap_or_default()
                ),
                Ok(false) => {}
                Err(e) => tally.anomaly(format!("{} restart failed: {e}", p.role)),
            }
        }
    })
}
