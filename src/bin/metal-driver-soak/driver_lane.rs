//! The driver lane: machines driven over gRPC straight at the restarted driver, the way MCM
//! drives a CMI driver. Each machine is created (sometimes twice at once), status-polled,
//! deleted and looked up once more (it must be NotFound); a lister checks meanwhile that
//! every listed device is the one its machine's create named. Calls are retried on the codes
//! MCM retries, so a driver restart or an injected fault costs time, never a wrong answer;
//! anything else is an anomaly in the [`Tally`].

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use metal_driver::{
    cmi::{
        Rpc,
        calls::{CallError, MachineRef},
        client::CmiClient,
    },
    testkit::fixture,
};
use rand::RngExt;
use tonic::Code;

use crate::tally::Tally;

/// Codes MCM retries soon (the rest are final).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Cancelled
    )
}

/// The driver lane: its CMI client, the class it sends, and the tally it adds to. Cloned
/// into every machine task.
#[derive(Clone)]
pub struct DriverLane {
    cmi: CmiClient,
    pub tally: Arc<Tally>,
    spec: Arc<Vec<u8>>,
    secrets: Arc<HashMap<String, Vec<u8>>>,
    /// Past this instant the run is over: retry loops give up.
    hard_stop: Instant,
}

impl DriverLane {
    /// The lane on `cmi`, sending the kit's class with `cluster_tag`; retries give up at
    /// `hard_stop`.
    pub fn new(cmi: CmiClient, tally: Arc<Tally>, cluster_tag: &str, hard_stop: Instant) -> Self {
        Self {
            cmi,
            tally,
            spec: Arc::new(fixture::provider_spec_bytes(cluster_tag)),
            secrets: Arc::new(fixture::secret_data("soak")),
            hard_stop,
        }
    }
}

/// The per-call deadline the client sends; the hang guard waits this plus a margin.
pub const CALL_DEADLINE: Duration = Duration::from_secs(20);
const HANG_GUARD: Duration = Duration::from_secs(45);

impl DriverLane {
    /// One RPC with a deadline and a hang guard; the answer is tallied.
    async fn call<T, F>(&self, rpc: Rpc, fut: F) -> Result<T, CallError>
    where
        F: std::future::Future<Output = Result<T, CallError>>,
    {
        self.tally.rpc_started.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(HANG_GUARD, fut).await {
            Ok(Ok(r)) => {
                self.tally.answer(rpc, Code::Ok);
                Ok(r)
            }
            Ok(Err(e)) => {
                self.tally.answer(rpc, e.code());
                Err(e)
            }
            Err(_) => {
                self.tally.rpc_hung.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .anomaly(format!("{rpc}: no answer within {HANG_GUARD:?}"));
                Err(CallError::new(rpc, Code::DeadlineExceeded, "hang guard"))
            }
        }
    }

    /// Retries `op` on the retryable codes with a jittered backoff, as MCM would.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match op().await {
                Err(e) if retryable(e.code()) && Instant::now() < self.hard_stop => {
                    let jitter = rand::rng().random_range(0.5..1.5);
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) if retryable(e.code()) => {
                    return Err(CallError::new(
                        e.rpc(),
                        e.code(),
                        format!("{what}: gave up at the end of the run: {}", e.message()),
                    ));
                }
                other => return other,
            }
        }
    }

    /// The lane's machine `name`, with `provider_id` when known.
    fn machine_ref<'a>(&'a self, name: &'a str, provider_id: &'a str) -> MachineRef<'a> {
        MachineRef::new(name, &self.spec, &self.secrets).with_provider_id(provider_id)
    }

    async fn create(&self, name: &str) -> Result<String, CallError> {
        self.retrying("create", || async {
            let created = self.cmi.create_machine(self.machine_ref(name, ""));
            let created = self.call(Rpc::CreateMachine, created).await?;
            Ok(created.provider_id)
        })
        .await
    }

    async fn status(&self, name: &str, provider_id: &str) -> Result<String, CallError> {
        self.retrying("status", || async {
            let status = self
                .cmi
                .get_machine_status(self.machine_ref(name, provider_id));
            let status = self.call(Rpc::GetMachineStatus, status).await?;
            Ok(status.provider_id)
        })
        .await
    }

    async fn delete(&self, name: &str, provider_id: &str) -> Result<(), CallError> {
        self.retrying("delete", || async {
            let deleted = self.cmi.delete_machine(self.machine_ref(name, provider_id));
            self.call(Rpc::DeleteMachine, deleted).await.map(drop)
        })
        .await
    }

    pub async fn list(&self) -> Result<HashMap<String, String>, CallError> {
        self.retrying("list", || async {
            let listed = self.cmi.list_machines(&self.spec, &self.secrets);
            self.call(Rpc::ListMachines, listed).await
        })
        .await
    }

    fn record_create(&self, name: &str, provider_id: &str) {
        self.tally.created.record(name, provider_id);
    }

    /// One machine's life: create (sometimes twice at once), status polls, delete, and a
    /// final status that must say NotFound.
    pub async fn machine(&self, name: String) {
        self.tally.known.lock().unwrap().insert(name.clone());
        let twice = rand::rng().random_bool(0.1);
        let created = if twice {
            self.tally
                .concurrent_creates
                .fetch_add(1, Ordering::Relaxed);
            let (a, b) = tokio::join!(self.create(&name), self.create(&name));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    self.record_create(&name, &a);
                    self.record_create(&name, &b);
                    Ok(a)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        } else {
            self.create(&name)
                .await
                .inspect(|pid| self.record_create(&name, pid))
        };
        let provider_id = match created {
            Ok(pid) => pid,
            Err(e) => {
                self.tally.anomaly(format!(
                    "{name}: create ended {:?}: {}",
                    e.code(),
                    e.message()
                ));
                // Clean up whatever may exist (lookup by name, no ProviderID).
                let _ = self.delete(&name, "").await;
                self.tally.machines_done.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let polls = rand::rng().random_range(1..=3);
        for _ in 0..polls {
            let pause = Duration::from_millis(rand::rng().random_range(100..600));
            tokio::time::sleep(pause).await;
            match self.status(&name, &provider_id).await {
                Ok(pid) if pid == provider_id => {}
                Ok(pid) => self.tally.anomaly(format!(
                    "{name}: status names {pid}, create said {provider_id}"
                )),
                Err(e) => self.tally.anomaly(format!(
                    "{name}: status ended {:?}: {}",
                    e.code(),
                    e.message()
                )),
            }
        }
        if let Err(e) = self.delete(&name, &provider_id).await {
            self.tally.anomaly(format!(
                "{name}: delete ended {:?}: {}",
                e.code(),
                e.message()
            ));
        }
        match self.status(&name, &provider_id).await {
            Err(e) if e.code() == Code::NotFound => {}
            Ok(_) => self
                .tally
                .anomaly(format!("{name}: still found after delete")),
            Err(e) => self.tally.anomaly(format!(
                "{name}: final status ended {:?}: {}",
                e.code(),
                e.message()
            )),
        }
        self.tally.machines_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Lists while the run lasts: every listed device must belong to a machine we started,
    /// and be the device its create named.
    pub async fn lister(&self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(list) = self.list().await {
                self.tally.lists.fetch_add(1, Ordering::Relaxed);
                let known = self.tally.known.lock().unwrap().clone();
                let created = self.tally.created.snapshot();
                for (pid, host) in list {
                    if !known.contains(&host) {
                        self.tally.list_unknown.fetch_add(1, Ordering::Relaxed);
                        self.tally
                            .anomaly(format!("list shows {pid} for unknown machine {host}"));
                    } else if let Some(pids) = created.get(&host)
                        && !pids.contains(&pid)
                    {
                        self.tally
                            .list_foreign_device
                            .fetch_add(1, Ordering::Relaxed);
                        self.tally.anomaly(format!(
                            "list shows a second device {pid} for {host} (create said {pids:?})"
                        ));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
}
