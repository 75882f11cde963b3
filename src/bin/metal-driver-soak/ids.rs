//! Every ProviderID seen for each machine, by either lane: the soak's evidence for "exactly
//! one device per machine" (a machine seen with two ProviderIDs got two devices).

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

/// Machine name → every ProviderID an answer or an object named for it.
#[derive(Default)]
pub struct IdsByMachine(Mutex<HashMap<String, HashSet<String>>>);

impl IdsByMachine {
    /// Counts `machine` as started even before any ProviderID is seen for it.
    pub fn start(&self, machine: &str) {
        self.0
            .lock()
            .unwrap()
            .entry(machine.to_owned())
            .or_default();
    }

    pub fn record(&self, machine: &str, provider_id: &str) {
        self.0
            .lock()
            .unwrap()
            .entry(machine.to_owned())
            .or_default()
            .insert(provider_id.to_owned());
    }

    pub fn snapshot(&self) -> HashMap<String, HashSet<String>> {
        self.0.lock().unwrap().clone()
    }

    /// Machines with at least one ProviderID, and a line for each one with more than one.
    pub fn devices(&self) -> (u64, Vec<String>) {
        let ids = self.0.lock().unwrap();
        let several = ids
            .iter()
            .filter(|(_, p)| p.len() > 1)
            .map(|(m, p)| format!("{m}: ProviderIDs {p:?}"))
            .collect();
        (
            ids.values().filter(|p| !p.is_empty()).count() as u64,
            several,
        )
    }
}
