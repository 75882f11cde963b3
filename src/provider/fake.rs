//! An in-memory [`DeviceApi`] for the provider's tests, with knobs for the failures the
//! provider must survive: lost responses after a commit, capacity 422s per reservation,
//! any HTTP status on any operation, and a gate that holds creates open to test overlap.
//!
//! It behaves like the API where the provider depends on it: list filters (`tag` exact,
//! `hostname` partial), 404 for unknown devices, 422 when deleting a locked device.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::metal::{
    Call, Device, DeviceActionInput, DeviceActionType, DeviceApi, DeviceCreateInput, DeviceState,
    DeviceUpdateInput, Error, Facility, ListQuery, Metro, Operation, Plan,
};

/// A failure injected into the next call of one operation.
#[derive(Debug, Clone)]
pub enum Fault {
    /// No failure: lets this call through (to aim a later fault at a later call).
    Pass,
    /// Answer with this HTTP status and API message.
    Status(u16, String),
    /// Connection failure before anything happened.
    Transport(String),
    /// The create commits, then the response is lost (a transport error).
    LostAfterCommit,
}

/// Everything the fake records and every knob, behind one lock.
#[derive(Debug)]
pub struct State {
    /// device → (project, device).
    pub devices: BTreeMap<Uuid, (Uuid, Device)>,
    pub calls: HashMap<Operation, usize>,
    /// Every create body received, in order.
    pub creates: Vec<DeviceCreateInput>,
    pub updates: Vec<(Uuid, DeviceUpdateInput)>,
    pub actions: Vec<(Uuid, DeviceActionInput)>,
    pub deletes: Vec<Uuid>,
    pub list_queries: Vec<ListQuery>,
    /// The token of every call.
    pub tokens: Vec<String>,
    pub faults: HashMap<Operation, VecDeque<Fault>>,
    /// `hardware_reservation_id` values (None = on-demand) that answer a capacity 422.
    pub no_capacity: HashSet<Option<String>>,
    /// When set, any other token gets 401.
    pub valid_token: Option<String>,
    /// The state a new device starts in.
    pub create_state: DeviceState,
}

impl Default for State {
    fn default() -> Self {
        Self {
            devices: BTreeMap::new(),
            calls: HashMap::new(),
            creates: Vec::new(),
            updates: Vec::new(),
            actions: Vec::new(),
            deletes: Vec::new(),
            list_queries: Vec::new(),
            tokens: Vec::new(),
            faults: HashMap::new(),
            no_capacity: HashSet::new(),
            valid_token: None,
            create_state: DeviceState::Queued,
        }
    }
}

/// The fake API.
#[derive(Debug, Default)]
pub struct FakeApi {
    state: Mutex<State>,
    gate_creates: AtomicBool,
    /// Notified when a gated create has started.
    pub create_entered: Notify,
    /// Notify to let a gated create proceed.
    pub create_release: Notify,
}

impl FakeApi {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls so far of one operation.
    pub fn calls(&self, op: Operation) -> usize {
        self.state().calls.get(&op).copied().unwrap_or(0)
    }

    /// Calls so far of all operations.
    pub fn total_calls(&self) -> usize {
        self.state().calls.values().sum()
    }

    /// Makes the next call of `op` fail with `fault` (queued: several calls fail in order).
    pub fn fail_next(&self, op: Operation, fault: Fault) {
        self.state().faults.entry(op).or_default().push_back(fault);
    }

    /// Makes creates with this reservation (None = on-demand) answer a capacity 422.
    pub fn no_capacity_for(&self, reservation: Option<&str>) {
        self.state()
            .no_capacity
            .insert(reservation.map(str::to_string));
    }

    /// Holds every create until `create_release` is notified.
    pub fn gate_creates(&self) {
        self.gate_creates.store(true, Ordering::SeqCst);
    }

    /// Adds a device to `project` and returns its id (a fresh one if `device.id` is None).
    pub fn insert(&self, project: Uuid, mut device: Device) -> Uuid {
        let id = *device.id.get_or_insert_with(Uuid::new_v4);
        self.state().devices.insert(id, (project, device));
        id
    }

    pub fn device(&self, id: Uuid) -> Option<Device> {
        self.state().devices.get(&id).map(|(_, d)| d.clone())
    }

    pub fn device_count(&self) -> usize {
        self.state().devices.len()
    }

    /// Counts the call, records the token, and returns an injected fault or a 401.
    fn enter(&self, op: Operation, call: &Call) -> Result<Option<Fault>, Error> {
        let mut s = self.state();
        *s.calls.entry(op).or_default() += 1;
        let token = call.token.expose().clone();
        s.tokens.push(token.clone());
        if s.valid_token.as_ref().is_some_and(|t| *t != token) {
            return Err(status(op, 401, "Invalid authentication token"));
        }
        match s.faults.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(Fault::Status(code, msg)) => Err(status(op, code, &msg)),
            Some(Fault::Transport(reason)) => Err(Error::Transport {
                endpoint: op,
                reason,
            }),
            Some(Fault::LostAfterCommit) => Ok(Some(Fault::LostAfterCommit)),
            Some(Fault::Pass) | None => Ok(None),
        }
    }
}

fn status(endpoint: Operation, status: u16, message: &str) -> Error {
    Error::Status {
        endpoint,
        status,
        message: message.to_string(),
        retry_after: None,
    }
}

fn not_found(op: Operation) -> Error {
    status(op, 404, "Not found")
}

impl DeviceApi for FakeApi {
    async fn create_device(
        &self,
        call: &Call,
        project: Uuid,
        input: &DeviceCreateInput,
    ) -> Result<Device, Error> {
        if self.gate_creates.load(Ordering::SeqCst) {
            self.create_entered.notify_one();
            self.create_release.notified().await;
        }
        let fault = self.enter(Operation::CreateDevice, call)?;
        let mut s = self.state();
        s.creates.push(input.clone());
        if s.no_capacity.contains(&input.hardware_reservation_id) {
            let msg = match &input.hardware_reservation_id {
                Some(r) => format!("Oh snap, something went wrong! Reservation {r} is not provisionable"),
                None => "Oh snap, something went wrong! We do not have enough capacity to provision this device"
                    .to_string(),
            };
            return Err(status(Operation::CreateDevice, 422, &msg));
        }
        let id = Uuid::new_v4();
        let device = Device {
            id: Some(id),
            hostname: input.hostname.clone(),
            description: input.description.clone(),
            tags: Some(input.tags.clone()),
            state: Some(s.create_state),
            locked: input.locked,
            billing_cycle: input.billing_cycle.map(|b| b.as_str().to_string()),
            metro: input.metro.clone().map(|code| Metro {
                code: Some(code),
                ..Default::default()
            }),
            facility: input
                .facility
                .as_ref()
                .and_then(|f| f.first())
                .map(|code| Facility {
                    code: Some(code.clone()),
                    ..Default::default()
                }),
            plan: Some(Plan {
                slug: Some(input.plan.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        s.devices.insert(id, (project, device.clone()));
        match fault {
            Some(Fault::LostAfterCommit) => Err(Error::Transport {
                endpoint: Operation::CreateDevice,
                reason: "connection reset after request was sent".into(),
            }),
            _ => Ok(device),
        }
    }

    async fn get_device(&self, call: &Call, id: Uuid) -> Result<Device, Error> {
        self.enter(Operation::FindDeviceById, call)?;
        self.state()
            .devices
            .get(&id)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| not_found(Operation::FindDeviceById))
    }

    async fn list_project_devices_kept<T, K>(
        &self,
        call: &Call,
        project: Uuid,
        query: &ListQuery,
        keep: K,
    ) -> Result<Vec<T>, Error>
    where
        T: Send,
        K: FnMut(Device) -> Option<T> + Send,
    {
        self.enter(Operation::FindProjectDevices, call)?;
        let mut s = self.state();
        s.list_queries.push(query.clone());
        Ok(s.devices
            .values()
            .filter(|(p, _)| *p == project)
            .map(|(_, d)| d)
            .filter(|d| query.tag.as_ref().is_none_or(|t| d.has_tag(t)))
            .filter(|d| {
                query.hostname.as_ref().is_none_or(|h| {
                    d.hostname
                        .as_deref()
                        .is_some_and(|dh| dh.contains(h.as_str()))
                })
            })
            .cloned()
            .filter_map(keep)
            .collect())
    }

    async fn update_device(
        &self,
        call: &Call,
        id: Uuid,
        input: &DeviceUpdateInput,
    ) -> Result<Device, Error> {
        self.enter(Operation::UpdateDevice, call)?;
        let mut s = self.state();
        s.updates.push((id, input.clone()));
        let (_, device) = s
            .devices
            .get_mut(&id)
            .ok_or_else(|| not_found(Operation::UpdateDevice))?;
        if let Some(locked) = input.locked {
            device.locked = Some(locked);
        }
        if let Some(tags) = &input.tags {
            device.tags = Some(tags.clone());
        }
        Ok(device.clone())
    }

    async fn delete_device(&self, call: &Call, id: Uuid, _force: bool) -> Result<(), Error> {
        self.enter(Operation::DeleteDevice, call)?;
        let mut s = self.state();
        let locked = s
            .devices
            .get(&id)
            .ok_or_else(|| not_found(Operation::DeleteDevice))?
            .1
            .locked
            == Some(true);
        if locked {
            return Err(status(
                Operation::DeleteDevice,
                422,
                "Cannot delete a locked device",
            ));
        }
        s.deletes.push(id);
        s.devices.remove(&id);
        Ok(())
    }

    async fn perform_action(
        &self,
        call: &Call,
        id: Uuid,
        input: &DeviceActionInput,
    ) -> Result<(), Error> {
        self.enter(Operation::PerformAction, call)?;
        let mut s = self.state();
        s.actions.push((id, input.clone()));
        let (_, device) = s
            .devices
            .get_mut(&id)
            .ok_or_else(|| not_found(Operation::PerformAction))?;
        match input.type_ {
            DeviceActionType::PowerOff => device.state = Some(DeviceState::Inactive),
            DeviceActionType::PowerOn => device.state = Some(DeviceState::Active),
            _ => {}
        }
        Ok(())
    }
}
