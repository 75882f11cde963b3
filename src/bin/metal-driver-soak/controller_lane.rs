//! The controller lane of the soak: `Machine` objects on a real kube-apiserver, reconciled by
//! `metal-driver controller` (restarted like the driver), through the same faulty simulator
//! and the same restarted driver.
//!
//! Each lane machine is created as a `Machine`, must reach `Running` (the soak registers a
//! Ready Node for every active device of the lane's cluster tag, standing in for the
//! kubelet), is deleted, and must be released (finalizer gone, object gone). Every
//! `spec.providerID` ever observed is recorded: a machine whose providerID changed would mean
//! a second device. The lane's devices carry their own cluster tag, so the driver lane's
//! ListMachines never sees them (and the controller's orphan collection never sees the
//! driver lane's).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret, SecretReference},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use metal_driver::controller::crd::{ClassSpec, Machine, MachineClass, MachineSpec};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::{ids::IdsByMachine, starter::Starter};

/// How long a lane machine may take to reach Running, and to be released after delete.
/// Generous: faults, driver restarts and controller restarts (a SIGKILL'd leader's Lease
/// must expire first) all stand in the way, and the point is that it gets there.
const PHASE_TIMEOUT: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(400);
const FIELD_MANAGER: &str = "metal-driver-soak";
pub const CLASS: &str = "soak-class";
const SECRET: &str = "soak-secret";

/// Counters and observations of the lane.
#[derive(Default)]
pub struct LaneTally {
    pub started: AtomicU64,
    pub running: AtomicU64,
    pub released: AtomicU64,
    pub finished: AtomicU64,
    /// Machine → every `spec.providerID` observed on it.
    pub provider_ids: IdsByMachine,
    /// Seconds from `create` to `Running`, and from `delete` to gone.
    pub to_running: Mutex<Vec<f64>>,
    pub to_released: Mutex<Vec<f64>>,
    /// Phases observed at least once, with how many machines showed them.
    pub phases: Mutex<BTreeMap<String, u64>>,
}

/// The lane: a namespace with a Secret and a MachineClass, and the Machines it drives.
#[derive(Clone)]
pub struct Lane {
    pub client: Client,
    pub namespace: String,
    pub tally: Arc<LaneTally>,
    /// Past this instant, waits give up.
    pub hard_stop: Instant,
    anomaly: Arc<dyn Fn(String) + Send + Sync>,
}

impl Lane {
    pub fn new(
        client: Client,
        namespace: String,
        hard_stop: Instant,
        anomaly: Arc<dyn Fn(String) + Send + Sync>,
    ) -> Self {
        Self {
            client,
            namespace,
            tally: Arc::new(LaneTally::default()),
            hard_stop,
            anomaly,
        }
    }

    fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Namespace, Secret (credentials + userData) and MachineClass (`provider_spec`).
    pub async fn setup(
        &self,
        provider_spec: Value,
        secret_data: &HashMap<String, Vec<u8>>,
    ) -> Result<(), String> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let ns = &self.namespace;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .patch(
                ns,
                &pp,
                &Patch::Apply(with_kind(&namespace, "v1", "Namespace")),
            )
            .await
            .map_err(|e| format!("namespace {ns}: {e}"))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(SECRET.into()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            data: Some(
                secret_data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .patch(
                SECRET,
                &pp,
                &Patch::Apply(with_kind(&secret, "v1", "Secret")),
            )
            .await
            .map_err(|e| format!("secret {ns}/{SECRET}: {e}"))?;
        let secret_ref = SecretReference {
            name: Some(SECRET.into()),
            namespace: Some(ns.clone()),
        };
        let class = MachineClass {
            metadata: ObjectMeta {
                name: Some(CLASS.into()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            provider_spec,
            provider: Some("EquinixMetal".into()),
            secret_ref: Some(secret_ref.clone()),
            credentials_secret_ref: Some(secret_ref),
            node_template: None,
        };
        Api::<MachineClass>::namespaced(self.client.clone(), ns)
            .patch(
                CLASS,
                &pp,
                &Patch::Apply(with_kind(
                    &class,
                    "machine.sapcloud.io/v1alpha1",
                    "MachineClass",
                )),
            )
            .await
            .map_err(|e| format!("machineclass {ns}/{CLASS}: {e}"))?;
        Ok(())
    }

    fn note_phase(&self, seen: &mut HashSet<String>, phase: &str) {
        if !phase.is_empty() && seen.insert(phase.to_owned()) {
            *self
                .tally
                .phases
                .lock()
                .unwrap()
                .entry(phase.to_owned())
                .or_default() += 1;
        }
    }

    fn record_provider_id(&self, name: &str, m: &Machine) {
        if let Some(pid) = m.provider_id().filter(|p| !p.is_empty()) {
            self.tally.provider_ids.record(name, pid);
        }
    }

    /// Counts a wait that ended well (and how long it took since `since`), or reports the
    /// one that did not: `{secs}` in the message becomes the seconds waited.
    fn outcome(
        &self,
        ok: bool,
        since: Instant,
        (count, took): (&AtomicU64, &Mutex<Vec<f64>>),
        failure: impl FnOnce() -> String,
    ) {
        let secs = since.elapsed().as_secs_f64();
        if ok {
            count.fetch_add(1, Ordering::Relaxed);
            took.lock().unwrap().push(secs);
        } else {
            (self.anomaly)(failure().replace("{secs}", &format!("{secs:.0}")));
        }
    }

    /// One lane machine: create → Running → delete → gone.
    pub async fn machine(&self, name: String) {
        self.tally.started.fetch_add(1, Ordering::Relaxed);
        self.tally.provider_ids.start(&name);
        let api = self.machines();
        let mut obj = Machine::new(
            &name,
            MachineSpec {
                class: ClassSpec {
                    api_group: None,
                    kind: "MachineClass".into(),
                    name: CLASS.into(),
                },
                ..Default::default()
            },
        );
        obj.metadata.namespace = Some(self.namespace.clone());
        let created = Instant::now();
        // Retried while the API server is away (the chaos incidents stop it); a create whose
        // answer was lost comes back as AlreadyExists.
        let mut create = api.create(&PostParams::default(), &obj).await.map(|_| ());
        while create.is_err() && created.elapsed() < PHASE_TIMEOUT {
            if let Err(kube::Error::Api(s)) = &create
                && s.code == 409
            {
                create = Ok(());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            create = api.create(&PostParams::default(), &obj).await.map(|_| ());
        }
        if let Err(e) = create {
            (self.anomaly)(format!("{name}: cannot create the Machine: {e}"));
            self.tally.finished.fetch_add(1, Ordering::Relaxed);
            return;
        }

        let mut seen = HashSet::new();
        let deadline = (created + PHASE_TIMEOUT).min(self.hard_stop);
        let mut running = false;
        while Instant::now() < deadline {
            if let Ok(m) = api.get(&name).await {
                self.record_provider_id(&name, &m);
                self.note_phase(&mut seen, m.phase());
                if m.phase() == "Running" && m.provider_id().is_some() {
                    running = true;
                    break;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        self.outcome(
            running,
            created,
            (&self.tally.running, &self.tally.to_running),
            || format!("{name}: not Running {{secs}} s after create (phases seen {seen:?})"),
        );

        // Delete even when it never ran: the controller must release it either way.
        let deleting = Instant::now();
        let mut delete = api
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ());
        while delete.is_err() && deleting.elapsed() < PHASE_TIMEOUT {
            if let Err(kube::Error::Api(s)) = &delete
                && s.code == 404
            {
                delete = Ok(());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            delete = api
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ());
        }
        if let Err(e) = delete {
            (self.anomaly)(format!("{name}: delete refused: {e}"));
        }
        let deadline = (deleting + PHASE_TIMEOUT).min(self.hard_stop);
        let mut released = false;
        while Instant::now() < deadline {
            match api.get_opt(&name).await {
                Ok(None) => {
                    released = true;
                    break;
                }
                Ok(Some(m)) => {
                    self.record_provider_id(&name, &m);
                    self.note_phase(&mut seen, m.phase());
                }
                Err(_) => {}
            }
            tokio::time::sleep(POLL).await;
        }
        self.outcome(
            released,
            deleting,
            (&self.tally.released, &self.tally.to_released),
            || format!("{name}: still present {{secs}} s after delete"),
        );
        self.tally.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// The lane's load: Machines `ctl-00000`, `ctl-00001`, … keep starting, `concurrency` at
    /// once, until `run_until`; the task ends when the last one has finished.
    pub fn spawn_load(&self, concurrency: usize, run_until: Instant) -> JoinHandle<()> {
        let lane = self.clone();
        tokio::spawn(async move {
            let mut starter = Starter::new("ctl", concurrency);
            while Instant::now() < run_until {
                let lane = lane.clone();
                starter
                    .start_next(|name| async move { lane.machine(name).await })
                    .await;
            }
            let mut tasks = starter.into_tasks();
            while tasks.join_next().await.is_some() {}
        })
    }

    /// Machines still in the namespace (all should be gone at the end).
    pub async fn leftover_machines(&self) -> Result<Vec<String>, String> {
        self.machines()
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|m| m.metadata.name)
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    /// Deletes the namespace (best effort; the environment is thrown away anyway).
    pub async fn teardown(&self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

/// A typed object as a server-side-apply body (apply needs `apiVersion` and `kind`).
fn with_kind<T: serde::Serialize>(obj: &T, api_version: &str, kind: &str) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    v
}

/// Median and maximum of a sample, for the report.
pub fn median_max(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[s.len() - 1])
}
