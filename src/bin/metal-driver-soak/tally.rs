//! The driver lane's counters and the run's anomaly list, shared by every task of the soak.
//! Tasks only add to it; the harness reads it once, after the drain, as [`Figures`].

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use metal_driver::cmi::{Rpc, codes::code_name};
use tonic::Code;

use crate::ids::IdsByMachine;

/// Counters shared by every task.
#[derive(Default)]
pub struct Tally {
    pub rpc_started: AtomicU64,
    pub rpc_answered: AtomicU64,
    pub rpc_hung: AtomicU64,
    /// (method, code) → answers.
    pub outcomes: Mutex<BTreeMap<(String, String), u64>>,
    pub machines_started: AtomicU64,
    pub machines_done: AtomicU64,
    /// Machine name → every ProviderID a create answered for it.
    pub created: IdsByMachine,
    /// Machines whose workflow began (list may show them).
    pub known: Mutex<HashSet<String>>,
    /// Problems found while running (each one fails the soak).
    anomalies: Mutex<Vec<String>>,
    pub lists: AtomicU64,
    pub list_unknown: AtomicU64,
    pub list_foreign_device: AtomicU64,
    pub concurrent_creates: AtomicU64,
}

impl Tally {
    pub fn answer(&self, rpc: Rpc, code: Code) {
        self.rpc_answered.fetch_add(1, Ordering::Relaxed);
        *self
            .outcomes
            .lock()
            .unwrap()
            .entry((rpc.name().to_owned(), code_name(code).to_owned()))
            .or_default() += 1;
    }

    /// Records a problem: it is printed at once and fails the soak.
    pub fn anomaly(&self, what: String) {
        eprintln!("soak: ANOMALY {what}");
        self.anomalies.lock().unwrap().push(what);
    }

    /// The figures the checks and the report read, taken once the run is over.
    pub fn figures(&self) -> Figures {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let created = self.created.snapshot();
        let (machines_created, multi) = self.created.devices();
        let distinct_provider_ids = created.values().flatten().collect::<HashSet<_>>().len();
        Figures {
            machines_started: load(&self.machines_started),
            machines_created,
            machines_done: load(&self.machines_done),
            concurrent_creates: load(&self.concurrent_creates),
            multi,
            distinct_provider_ids: distinct_provider_ids as u64,
            rpc_started: load(&self.rpc_started),
            rpc_answered: load(&self.rpc_answered),
            rpc_hung: load(&self.rpc_hung),
            outcomes: self.outcomes.lock().unwrap().clone(),
            anomalies: self.anomalies.lock().unwrap().clone(),
            lists: load(&self.lists),
            list_unknown: load(&self.list_unknown),
            list_foreign_device: load(&self.list_foreign_device),
        }
    }
}

/// A read of the [`Tally`] after the run.
pub struct Figures {
    pub machines_started: u64,
    /// Machines that got a device (at least one ProviderID).
    pub machines_created: u64,
    pub machines_done: u64,
    pub concurrent_creates: u64,
    /// A line for each machine answered with more than one ProviderID.
    pub multi: Vec<String>,
    /// ProviderIDs answered for any machine, each counted once.
    pub distinct_provider_ids: u64,
    pub rpc_started: u64,
    pub rpc_answered: u64,
    pub rpc_hung: u64,
    /// (method, code) → answers.
    pub outcomes: BTreeMap<(String, String), u64>,
    pub anomalies: Vec<String>,
    pub lists: u64,
    pub list_unknown: u64,
    pub list_foreign_device: u64,
}
