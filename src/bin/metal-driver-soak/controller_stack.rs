//! The controller lane's moving parts around the [`Lane`]: `metal-driver controller` as a
//! supervised subprocess (through the soak's driver), its restarter and watchdog, a Node
//! registrar standing in for the lane's kubelets, the chaos incidents (with `--chaos`) and
//! the lane's load. [`ControllerStack::start`] brings them up beside the driver lane;
//! [`ControllerStack::drain`] winds them down in order and keeps what the checks need.
//!
//! The lane's devices carry a cluster tag of their own, so the driver lane's ListMachines
//! never sees them and the controller's orphan collection never sees the driver lane's.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use metal_driver::{sim, testkit::fixture};
use tokio::{sync::Mutex, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    Timeline,
    args::Args,
    chaos::{self, Chaos, ChaosTally},
    controller_lane::{self, Lane},
    process::{History, Supervised},
    restart::{RestartTask, restart_loop, stop_restarter, watchdog},
    stack::Stack,
    tally::Tally,
};

/// What runs for the controller lane.
pub struct ControllerStack {
    pub lane: Lane,
    controller: Arc<Mutex<Supervised>>,
    restarter: RestartTask,
    load: JoinHandle<()>,
    registrar: JoinHandle<()>,
    /// The chaos incidents (with `--chaos`): the pool, and the task running the incidents.
    chaos: Option<(Chaos, JoinHandle<()>)>,
    /// Restarts a controller that exited by itself (a lost lease), as a kubelet would.
    watchdog: JoinHandle<()>,
    /// Stops the registrar, the watchdog and the chaos kubelets.
    stop: CancellationToken,
}

/// What the controller lane left behind, for the checks and the report.
pub struct LaneOutcome {
    pub lane: Lane,
    /// Machines still in the lane's namespace after the drain (or why they could not be
    /// listed).
    pub leftover: Result<Vec<String>, String>,
    pub controller: History,
    pub chaos: Option<Arc<ChaosTally>>,
}

impl ControllerStack {
    /// Sets the lane up on the cluster of `kubeconfig` (namespace, Secret, MachineClass of
    /// the kit's class with the lane's cluster tag), starts the controller against the
    /// stack's driver, and starts the registrar, the watchdog, the chaos (with `--chaos`),
    /// the controller's restarter (half a period after the driver's) and the lane's load.
    /// `restarts_done` ends the restarter early, as it does the driver's.
    pub async fn start(
        args: &Args,
        kubeconfig: &str,
        stack: &Stack,
        tally: &Arc<Tally>,
        stamp: u64,
        timeline: Timeline,
        restarts_done: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        let stop = CancellationToken::new();
        let client = sim::nodes::client_from(kubeconfig)
            .await
            .map_err(|e| e.to_string())?;
        let target_kubeconfig = args
            .target_kubeconfig
            .clone()
            .unwrap_or(kubeconfig.to_owned());
        let target_client = sim::nodes::client_from(&target_kubeconfig)
            .await
            .map_err(|e| e.to_string())?;
        let lane_tag = format!("kubernetes.io/cluster/soak-ctl-{stamp}");
        let lane = {
            let tally = tally.clone();
            Lane::new(
                client.clone(),
                format!("soak-{stamp}"),
                timeline.hard_stop,
                Arc::new(move |what| tally.anomaly(what)),
            )
        };
        lane.setup(
            fixture::provider_spec(&lane_tag),
            &fixture::secret_data("soak"),
        )
        .await?;
        // The kubelet's part: a Ready Node for every active device of the lane.
        let snapshot = stack.sim.device_snapshot();
        // The chaos pool's Nodes are the chaos kubelets' (they must be able to go NotReady).
        let registrar = tokio::spawn(sim::nodes::run(
            target_client.clone(),
            move || {
                let mut devices = snapshot();
                devices.retain(|d| {
                    d.tags.as_ref().is_some_and(|t| t.contains(&lane_tag))
                        && !d
                            .hostname
                            .as_deref()
                            .is_some_and(|h| h.starts_with("pool-"))
                });
                devices
            },
            stop.clone(),
        ));
        let mut controller = Supervised::new(
            "controller",
            stack.driver_bin.clone(),
            controller_args(args, kubeconfig, &target_kubeconfig, &lane, &stack.endpoint),
            stack.out_dir.clone(),
        );
        controller.start().await?;
        let controller = Arc::new(Mutex::new(controller));
        let restarts_paused = Arc::new(AtomicBool::new(false));
        let watchdog = watchdog(controller.clone(), stop.clone(), tally.clone(), timeline);
        let chaos = if args.chaos {
            let (Some(control_state), Some(target_state)) =
                (args.control_state.clone(), args.target_state.clone())
            else {
                return Err("--chaos needs --control-state and --target-state".into());
            };
            let chaos = Chaos::new(
                client.clone(),
                target_client.clone(),
                lane.namespace.clone(),
                controller_lane::CLASS.to_owned(),
                control_state,
                target_state,
                lane.tally.clone(),
                controller.clone(),
                restarts_paused.clone(),
            );
            let task = chaos.spawn_incidents(stop.clone(), timeline.run_until);
            Some((chaos, task))
        } else {
            None
        };
        let every = args.controller_restart_every.unwrap_or(args.restart_every);
        // The chaos holds controller restarts back during the target API-server outage: the
        // freeze lives in the process, so a controller restarted mid-outage comes back
        // unfrozen and would judge the health timeouts that ran out meanwhile (as MCM's
        // would; the meltdown permit still limits that to one Machine per deployment).
        let restarter = restart_loop(
            controller.clone(),
            every,
            Duration::from_secs(every / 2),
            timeline,
            restarts_done,
            restarts_paused,
        );
        // Lane machines keep starting until --seconds.
        let load = lane.spawn_load(args.controller_concurrency.max(1), timeline.run_until);
        println!(
            "soak: controller lane in namespace {} ({} Machines at once, controller restart every {every} s)",
            lane.namespace, args.controller_concurrency
        );
        Ok(Self {
            lane,
            controller,
            restarter,
            load,
            registrar,
            chaos,
            watchdog,
            stop,
        })
    }

    /// The lane's progress, for the harness's periodic line.
    pub fn progress(&self) -> String {
        let t = &self.lane.tally;
        format!(
            " · Machines started {} Running {} released {}",
            t.started.load(Ordering::Relaxed),
            t.running.load(Ordering::Relaxed),
            t.released.load(Ordering::Relaxed)
        )
    }

    /// Drains the lane after the driver lane has drained: no more controller restarts, the
    /// lane's Machines finish (by `hard_stop` plus a minute), the chaos incidents finish and
    /// the pool is torn down, the leftover Machines are listed, and the controller stops
    /// gracefully (before the driver does). Overruns are anomalies.
    pub async fn drain(self, tally: &Tally, hard_stop: Instant) -> LaneOutcome {
        stop_restarter("controller", self.restarter, tally).await;
        let wait = hard_stop.saturating_duration_since(Instant::now()) + Duration::from_secs(60);
        if tokio::time::timeout(wait, self.load).await.is_err() {
            tally.anomaly("controller-lane Machines still running after the drain".into());
        }
        let mut chaos_tally = None;
        if let Some((chaos, task)) = self.chaos {
            if tokio::time::timeout(Duration::from_secs(300), task)
                .await
                .is_err()
            {
                tally.anomaly("chaos incidents did not finish".into());
            }
            chaos.teardown(Duration::from_secs(120)).await;
            chaos_tally = Some(chaos.tally.clone());
        }
        let leftover = self.lane.leftover_machines().await;
        self.stop.cancel();
        let _ = self.watchdog.await;
        let controller = {
            let mut controller = self.controller.lock().await;
            controller.stop(true).await;
            controller.history()
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), self.registrar).await;
        self.lane.teardown().await;
        LaneOutcome {
            lane: self.lane,
            leftover,
            controller,
            chaos: chaos_tally,
        }
    }
}

/// `metal-driver controller` for the lane's namespace, against the stack's driver: short
/// leases (a SIGKILL'd leader is replaced quickly), frequent orphan and health passes, and
/// with `--chaos` the health and freeze timeouts the incidents run past.
fn controller_args(
    args: &Args,
    kubeconfig: &str,
    target_kubeconfig: &str,
    lane: &Lane,
    endpoint: &str,
) -> Vec<std::ffi::OsString> {
    let mut chaos_args: Vec<std::ffi::OsString> = Vec::new();
    if args.chaos {
        chaos_args.extend(
            [
                format!(
                    "--machine-health-timeout={}s",
                    chaos::HEALTH_TIMEOUT.as_secs()
                ),
                "--machine-safety-apiserver-statuscheck-period=1s".to_owned(),
                format!(
                    "--machine-safety-apiserver-statuscheck-timeout={}s",
                    chaos::FREEZE_TIMEOUT.as_secs()
                ),
            ]
            .map(Into::into),
        );
    }
    [
        "controller",
        &format!("--control-kubeconfig={kubeconfig}"),
        &format!("--target-kubeconfig={target_kubeconfig}"),
        &format!("--namespace={}", lane.namespace),
        &format!("--cmi-endpoint={endpoint}"),
        "--address=127.0.0.1",
        "--port=0",
        "--machine-safety-orphan-vms-period=20s",
        "--machine-health-recheck-period=5s",
        "--leader-elect-lease-duration=3s",
        "--leader-elect-renew-deadline=2s",
        "--leader-elect-retry-period=500ms",
        "--log-format=json",
    ]
    .map(Into::into)
    .into_iter()
    .chain(chaos_args)
    .collect()
}
