//! Counters the simulator exposes at `GET /_sim/stats` and through `SimHandle::stats`, so
//! tests, the demo and benches can see what the client really did (how many creates, how
//! many retries provoked by faults) without scraping logs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::metal::Operation;

/// A snapshot of the simulator's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// API requests received, by operationId (`createDevice`, `findDeviceById`, ...),
    /// including those answered by an injected fault.
    pub requests: BTreeMap<String, u64>,
    /// Responses sent, by status code (`"201"`, `"429"`, ...). Dropped responses are
    /// counted under `faults` only.
    pub responses: BTreeMap<String, u64>,
    /// Injected faults by kind: `429`, `500`, `503`, `drop`, `rate_limit`.
    pub faults: BTreeMap<String, u64>,
    /// Device list requests filtered by hostname, by that hostname: how often a machine was
    /// looked up by name (the driver's per-machine lookup), so a test can tell that the API
    /// never heard of a machine.
    #[serde(default)]
    pub hostname_lookups: BTreeMap<String, u64>,
    /// Devices ever created (via HTTP or `create_device_direct`).
    pub devices_created: u64,
    /// Delete requests that started a deprovisioning.
    pub devices_deleted: u64,
    /// Devices that currently exist (including `deprovisioning`).
    pub devices_live: u64,
    /// Existing devices by state.
    pub devices_by_state: BTreeMap<String, u64>,
}

impl SimStats {
    /// Requests received of one operation (0 when none came).
    pub fn requests_of(&self, operation: Operation) -> u64 {
        self.requests
            .get(operation.operation_id())
            .copied()
            .unwrap_or(0)
    }
}

/// The request-side counters (the device counters come from the state).
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: BTreeMap<String, u64>,
    responses: BTreeMap<String, u64>,
    faults: BTreeMap<String, u64>,
    hostname_lookups: BTreeMap<String, u64>,
}

impl Recorder {
    /// Counts one API request of `operation` (an operationId).
    pub fn request(&self, operation: &str) {
        bump(&mut self.lock().requests, operation);
    }

    /// Counts one device list request filtered by `hostname`.
    pub fn hostname_lookup(&self, hostname: &str) {
        bump(&mut self.lock().hostname_lookups, hostname);
    }

    /// Counts one response by status code.
    pub fn response(&self, status: u16) {
        bump(&mut self.lock().responses, &status.to_string());
    }

    /// Counts one injected fault of `kind`.
    pub fn fault(&self, kind: &str) {
        bump(&mut self.lock().faults, kind);
    }

    /// Copies the request-side counters into `stats`.
    pub fn fill(&self, stats: &mut SimStats) {
        let c = self.lock();
        stats.requests = c.requests.clone();
        stats.responses = c.responses.clone();
        stats.faults = c.faults.clone();
        stats.hostname_lookups = c.hostname_lookups.clone();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}
