//! Chaos for the controller lane: what a provider sidecar lives through in a landscape.
//!
//! A pool of Machines of one MachineDeployment (label `name=soak-pool`) stays up for the
//! whole run; the soak plays both their kubelets (it writes their Nodes and Ready
//! conditions, nothing else does) and a MachineSet that replaces a Failed pool Machine once
//! an incident is over. Then, in rounds until the run's time is up (at least one), in this order:
//!
//! 1. **Network incident with the shoot API server gone**: every pool Node reports NotReady
//!    until the pool is Unknown, then the target API server is stopped for longer than the
//!    freeze timeout plus the health timeout, and started again, and the Nodes recover.
//!    Expected: the controller froze, and on the thaw reset the Unknown Machines, so not one
//!    pool Machine went Failed although its health timeout ran out while nobody could see it.
//! 2. **Every Node of the pool NotReady past the health timeout**: expected: exactly one pool
//!    Machine Failed at a time (the meltdown permit), none of the others.
//! 3. **The control API server gone**: stopped for longer than the leader lease; the controller
//!    loses the lease and exits (as client-go's leader election does), the soak restarts it
//!    as a kubelet would, and the lane carries on.
//!
//! The controller is not restarted during incident 1: the freeze is held in the process, so a
//! controller restarted mid-outage comes back unfrozen (MCM's does too) and would judge the
//! health timeouts that ran out while nobody could see the Nodes.
//!
//! Invariants reported by the soak: at most one pool Machine Failed at any sample of
//! incident 2, exactly one at its end; none Failed during incident 1; the pool back at full
//! size and Running afterwards; its devices count towards "exactly one device per machine"
//! and "zero devices left".

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use metal_driver::controller::crd::{ClassSpec, Machine, MachineSpec};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{controller_lane::LaneTally, process::Supervised};

/// The pool's MachineDeployment label value.
pub const POOL: &str = "soak-pool";
/// Pool size.
pub const POOL_SIZE: usize = 3;
/// The controller's health timeout in the chaos run (flag `--machine-health-timeout`).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// The controller's API-server status-check timeout (and period: 1 s).
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(3);
const FIELD_MANAGER: &str = "metal-driver-soak-kubelet";
const TICK: Duration = Duration::from_millis(500);

/// What the incidents showed.
#[derive(Default)]
pub struct ChaosTally {
    /// Most pool Machines Failed at one sample during the NotReady incident.
    pub max_failed_in_meltdown: AtomicU64,
    /// Pool Machines Failed at the end of each NotReady incident, in order.
    pub failed_at_meltdown_ends: Mutex<Vec<u64>>,
    /// Pool Machines seen Failed during the API-server incident.
    pub failed_in_outage: AtomicU64,
    /// Whether the frozen gauge was seen at 1 during the outage.
    pub froze: AtomicBool,
    /// Pool Machines the stand-in MachineSet replaced.
    pub replaced: AtomicU64,
    /// Incidents completed.
    pub incidents: AtomicU64,
    /// Rounds of the three incidents completed (each ends with the pool settled again).
    pub rounds: AtomicU64,
    /// Whether the pool was back at full size and Running after every round.
    pub recovered: AtomicBool,
    /// What went wrong in the chaos machinery itself.
    pub errors: Mutex<Vec<String>>,
    /// Seconds each kind of incident took at most.
    pub durations: Mutex<BTreeMap<String, f64>>,
}

/// Which incident is on (the kubelets and the MachineSet read it).
#[derive(Default)]
struct Incident {
    not_ready: AtomicBool,
    /// The MachineSet holds back while an incident is on (MCM's would replace at once; the
    /// delay keeps the Failed Machine in place, so the permit's effect is observable).
    hold_replacements: AtomicBool,
}

/// The pool and its incidents.
#[derive(Clone)]
pub struct Chaos {
    control: Client,
    target: Client,
    namespace: String,
    class: String,
    env_script: PathBuf,
    control_state: String,
    target_state: String,
    controller: Arc<tokio::sync::Mutex<Supervised>>,
    ids: Arc<LaneTally>,
    pub tally: Arc<ChaosTally>,
    incident: Arc<Incident>,
    next: Arc<AtomicU64>,
    restarts_paused: Arc<AtomicBool>,
}

impl Chaos {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        control: Client,
        target: Client,
        namespace: String,
        class: String,
        control_state: String,
        target_state: String,
        ids: Arc<LaneTally>,
        controller: Arc<tokio::sync::Mutex<Supervised>>,
        restarts_paused: Arc<AtomicBool>,
    ) -> Self {
        Self {
            control,
            target,
            namespace,
            class,
            env_script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/e2e-env.sh"),
            control_state,
            target_state,
            controller,
            ids,
            tally: Arc::new(ChaosTally::default()),
            incident: Arc::new(Incident::default()),
            next: Arc::new(AtomicU64::new(0)),
            restarts_paused,
        }
    }

    fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.control.clone(), &self.namespace)
    }

    fn error(&self, what: String) {
        println!("soak: chaos: {what}");
        self.tally.errors.lock().unwrap().push(what);
    }

    /// The pool's Machines, or `None` while the control API server cannot be asked.
    async fn pool(&self) -> Option<Vec<Machine>> {
        let lp = ListParams::default().labels(&format!("name={POOL}"));
        let list = self.machines().list(&lp).await.ok()?.items;
        for m in &list {
            if let Some(pid) = m.provider_id() {
                self.ids.provider_ids.record(&m.name_any(), pid);
            }
        }
        Some(list)
    }

    async fn create_pool_machine(&self) {
        let name = format!("pool-{:03}", self.next.fetch_add(1, Ordering::Relaxed));
        self.ids.provider_ids.start(&name);
        let mut m = Machine::new(
            &name,
            MachineSpec {
                class: ClassSpec {
                    api_group: None,
                    kind: "MachineClass".into(),
                    name: self.class.clone(),
                },
                ..Default::default()
            },
        );
        m.metadata.namespace = Some(self.namespace.clone());
        m.metadata.labels = Some([("name".to_owned(), POOL.to_owned())].into());
        for _ in 0..120 {
            match self.machines().create(&PostParams::default(), &m).await {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 409 => return,
                Err(_) => tokio::time::sleep(TICK).await,
            }
        }
        self.error(format!("cannot create pool Machine {name}"));
    }

    /// Creates the pool and starts its kubelets and MachineSet; returns once the pool is
    /// Running (or after `within`).
    pub async fn start(&self, stop: CancellationToken, within: Duration) -> bool {
        for _ in 0..POOL_SIZE {
            self.create_pool_machine().await;
        }
        tokio::spawn(self.clone().kubelets(stop.clone()));
        tokio::spawn(self.clone().machineset(stop));
        self.wait_pool_running(within).await
    }

    /// Waits until the pool is exactly its size, all Running, and no replaced Machine is
    /// still being deleted (so the next round starts from a clean pool).
    async fn wait_pool_running(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(pool) = self.pool().await
                && pool.len() == POOL_SIZE
                && pool
                    .iter()
                    .all(|m| m.phase() == "Running" && m.metadata.deletion_timestamp.is_none())
            {
                return true;
            }
            tokio::time::sleep(TICK).await;
        }
        false
    }

    /// The pool's kubelets: a Node per pool Machine with a `node` label, Ready unless the
    /// NotReady incident is on.
    async fn kubelets(self, stop: CancellationToken) {
        let nodes: Api<Node> = Api::all(self.target.clone());
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        while !stop.is_cancelled() {
            let not_ready = self.incident.not_ready.load(Ordering::Relaxed);
            if let Some(pool) = self.pool().await {
                for m in pool
                    .iter()
                    .filter(|m| m.metadata.deletion_timestamp.is_none())
                {
                    let (Some(node), Some(pid)) = (m.node_name(), m.provider_id()) else {
                        continue;
                    };
                    let manifest = json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": node}, "spec": {"providerID": pid}});
                    let _ = nodes.patch(node, &pp, &Patch::Apply(manifest)).await;
                    let (status, reason) = if not_ready {
                        ("False", "KubeletNotReady")
                    } else {
                        ("True", "KubeletReady")
                    };
                    let now = k8s_openapi::jiff::Timestamp::now().to_string();
                    let cond = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                        "status": {"conditions": [{"type": "Ready", "status": status, "reason": reason,
                            "message": "soak kubelet", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
                    let _ = nodes.patch_status(node, &pp, &Patch::Apply(cond)).await;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// The MachineSet stand-in: a Failed pool Machine is replaced (new Machine first, then
    /// the Failed one deleted), except while an incident holds replacements back.
    async fn machineset(self, stop: CancellationToken) {
        // Failed Machines a replacement was made for; their delete is retried until it sticks.
        let mut replaced = std::collections::HashSet::new();
        while !stop.is_cancelled() {
            if !self.incident.hold_replacements.load(Ordering::Relaxed)
                && let Some(pool) = self.pool().await
            {
                for m in pool
                    .iter()
                    .filter(|m| m.phase() == "Failed" && m.metadata.deletion_timestamp.is_none())
                {
                    let name = m.name_any();
                    if replaced.insert(name.clone()) {
                        self.create_pool_machine().await;
                        self.tally.replaced.fetch_add(1, Ordering::Relaxed);
                        println!("soak: chaos: replacing Failed pool Machine {name}");
                    }
                    let _ = self
                        .machines()
                        .delete(&name, &DeleteParams::default())
                        .await;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn env(&self, state: &str, cmd: &str) -> bool {
        let out = tokio::process::Command::new(&self.env_script)
            .args(["apiserver", cmd])
            .env("METAL_DRIVER_STATE", state)
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                self.error(format!(
                    "apiserver {cmd} ({state}): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                false
            }
            Err(e) => {
                self.error(format!("apiserver {cmd}: {e}"));
                false
            }
        }
    }

    /// Failed pool Machines not being deleted yet: one the stand-in MachineSet already
    /// replaced (deleted) after an earlier incident is not a new failure, however long its
    /// delete flow takes while the controller is restarted.
    async fn failed_in_pool(&self) -> Option<u64> {
        let pool = self.pool().await?;
        Some(
            pool.iter()
                .filter(|m| m.phase() == "Failed" && m.metadata.deletion_timestamp.is_none())
                .count() as u64,
        )
    }

    async fn frozen_gauge(&self) -> Option<bool> {
        let url = self.controller.lock().await.url.clone()?;
        let text = metal_driver::metal::tls::http_client_builder()
            .build()
            .ok()?
            .get(format!("{url}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(text.contains("mcm_machine_controller_frozen 1"))
    }

    /// Samples the pool for `d`, folding the Failed count into `f`.
    async fn sample_for(&self, d: Duration, mut f: impl FnMut(u64)) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Some(n) = self.failed_in_pool().await {
                f(n);
            }
            tokio::time::sleep(TICK).await;
        }
    }

    fn done(&self, what: &str, since: Instant) {
        let secs = since.elapsed().as_secs_f64();
        println!("soak: chaos: {what} over after {secs:.0} s");
        let mut durations = self.tally.durations.lock().unwrap();
        let longest = durations.entry(what.to_owned()).or_default();
        *longest = longest.max(secs);
        drop(durations);
        self.tally.incidents.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs the incidents in a task: the pool up (within two minutes, else the incidents
    /// are skipped), then rounds of the target API-server outage, the meltdown, the control
    /// API-server outage and the pool settling again. A round always runs; another starts
    /// while one more (as long as the longest so far) still ends before `run_until`, so a
    /// long soak lives through the incidents again and again, with whatever the earlier
    /// rounds left behind (replaced Machines, restarted controllers, re-listed caches).
    pub fn spawn_incidents(
        &self,
        stop: CancellationToken,
        run_until: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let chaos = self.clone();
        tokio::spawn(async move {
            if !chaos.start(stop, Duration::from_secs(120)).await {
                println!("soak: chaos: the pool never became Running; incidents skipped");
                return;
            }
            let mut longest = Duration::ZERO;
            loop {
                let round = Instant::now();
                chaos.outage().await;
                chaos.meltdown().await;
                chaos.control_outage().await;
                let settled = chaos.settle(Duration::from_secs(120)).await;
                let n = chaos.tally.rounds.fetch_add(1, Ordering::Relaxed) + 1;
                longest = longest.max(round.elapsed());
                println!(
                    "soak: chaos: round {n} over after {:.0} s",
                    round.elapsed().as_secs_f64()
                );
                if !settled || Instant::now() + longest >= run_until {
                    break;
                }
            }
        })
    }

    /// Incident 1: pool NotReady, then the target API server gone past freeze + health
    /// timeout, then back.
    pub async fn outage(&self) {
        let t = Instant::now();
        println!("soak: chaos: pool NotReady, then the target API server stopped");
        self.restarts_paused.store(true, Ordering::Relaxed);
        self.incident
            .hold_replacements
            .store(true, Ordering::Relaxed);
        self.incident.not_ready.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + HEALTH_TIMEOUT / 2;
        while Instant::now() < deadline {
            if let Some(pool) = self.pool().await
                && pool.iter().all(|m| m.phase() == "Unknown")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if self.env(&self.target_state, "stop").await {
            let tally = self.tally.clone();
            let down = FREEZE_TIMEOUT + HEALTH_TIMEOUT + Duration::from_secs(3);
            let end = Instant::now() + down;
            while Instant::now() < end {
                if let Some(n) = self.failed_in_pool().await {
                    tally.failed_in_outage.fetch_max(n, Ordering::Relaxed);
                }
                if self.frozen_gauge().await == Some(true) {
                    tally.froze.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(TICK).await;
            }
            self.env(&self.target_state, "start").await;
        }
        self.incident.not_ready.store(false, Ordering::Relaxed);
        // The thaw and the recovery of the Nodes: still no Machine may fail.
        let tally = self.tally.clone();
        self.sample_for(Duration::from_secs(8), |n| {
            tally.failed_in_outage.fetch_max(n, Ordering::Relaxed);
        })
        .await;
        self.incident
            .hold_replacements
            .store(false, Ordering::Relaxed);
        self.restarts_paused.store(false, Ordering::Relaxed);
        self.done("target API server outage", t);
    }

    /// Incident 2: every pool Node NotReady well past the health timeout.
    pub async fn meltdown(&self) {
        let t = Instant::now();
        println!("soak: chaos: every pool Node NotReady past the health timeout");
        self.incident
            .hold_replacements
            .store(true, Ordering::Relaxed);
        self.incident.not_ready.store(true, Ordering::Relaxed);
        let tally = self.tally.clone();
        self.sample_for(HEALTH_TIMEOUT + Duration::from_secs(10), |n| {
            tally.max_failed_in_meltdown.fetch_max(n, Ordering::Relaxed);
        })
        .await;
        let at_end = self.failed_in_pool().await.unwrap_or(0);
        self.tally
            .failed_at_meltdown_ends
            .lock()
            .unwrap()
            .push(at_end);
        self.incident.not_ready.store(false, Ordering::Relaxed);
        self.incident
            .hold_replacements
            .store(false, Ordering::Relaxed);
        self.done("pool NotReady", t);
    }

    /// Incident 3: the control API server gone past the leader lease.
    pub async fn control_outage(&self) {
        let t = Instant::now();
        println!("soak: chaos: control API server stopped");
        // The controller loses its lease and exits 1 by itself here; a SIGTERM racing that
        // exit would be counted as a bad one, so the restarter holds back meanwhile.
        self.restarts_paused.store(true, Ordering::Relaxed);
        if self.env(&self.control_state, "stop").await {
            tokio::time::sleep(Duration::from_secs(8)).await;
            self.env(&self.control_state, "start").await;
        }
        self.restarts_paused.store(false, Ordering::Relaxed);
        self.done("control API server outage", t);
    }

    /// After a round of incidents: the pool back at full size and Running. `recovered`
    /// stays true only while every round recovered.
    pub async fn settle(&self, within: Duration) -> bool {
        let ok = self.wait_pool_running(within).await;
        let first = self.tally.rounds.load(Ordering::Relaxed) == 0;
        let all = ok && (first || self.tally.recovered.load(Ordering::Relaxed));
        self.tally.recovered.store(all, Ordering::Relaxed);
        if !ok {
            self.error(format!(
                "pool not back at {POOL_SIZE} Running Machines within {} s",
                within.as_secs()
            ));
        }
        ok
    }

    /// Deletes the pool and waits until it is released.
    pub async fn teardown(&self, within: Duration) {
        let lp = ListParams::default().labels(&format!("name={POOL}"));
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let _ = self
                .machines()
                .delete_collection(&DeleteParams::default(), &lp)
                .await;
            if self.pool().await.is_some_and(|p| p.is_empty()) {
                return;
            }
            tokio::time::sleep(TICK).await;
        }
        self.error("pool Machines not released after delete".into());
    }
}
