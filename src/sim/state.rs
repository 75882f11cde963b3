//! The simulator's in-memory world: tokens, projects, devices, capacity and hardware
//! reservations, behind one lock.
//!
//! Every operation takes the caller's token and `now`, first applies the lifecycle
//! transitions that are due, then checks access in the real API's order (401 unknown
//! token → 404 unknown project/device → 403 no access) and finally does its work. The HTTP
//! layer (`routes.rs`) only translates requests and responses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::addresses::{self, IpRequest};
use super::args::{DEFAULT_PROJECT, DEFAULT_TOKEN, SimArgs};
use super::catalog::{self, FacilityEntry, MetroEntry, PlanEntry};
use super::error::{ApiError, MSG_LOCKED};
use super::lifecycle::{Effect, Lifecycle, Timeline, Timings};
use super::paging::ListQuery;
use super::stats::{Recorder, SimStats};
use super::validate::{self, CreateRequest, FacilityChoice, Location, ReservationRequest};
use crate::metal::Operation;
use crate::metal::types::{
    BillingCycle, Device, DeviceActionType, DeviceList, DeviceState, DeviceUpdateInput,
    HardwareReservation, Href,
};
use crate::secret::Secret;

/// What a token may see.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    All,
    Projects(HashSet<Uuid>),
}

impl Access {
    fn allows(&self, project: &Uuid) -> bool {
        match self {
            Self::All => true,
            Self::Projects(set) => set.contains(project),
        }
    }
}

/// Wall-clock rendering of monotonic instants (timestamps stay consistent with timers).
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall0: SystemTime,
    inst0: Instant,
}

impl Clock {
    fn rfc3339(&self, at: Instant) -> String {
        let t = if at >= self.inst0 {
            self.wall0 + (at - self.inst0)
        } else {
            self.wall0 - (self.inst0 - at)
        };
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

#[derive(Debug, Clone, Copy)]
struct Capacity {
    limit: u64,
    used: u64,
}

#[derive(Debug, Clone)]
struct Reservation {
    id: Uuid,
    metro: &'static MetroEntry,
    plan: &'static PlanEntry,
    /// `None`: any project may use it.
    project: Option<Uuid>,
    device: Option<Uuid>,
}

#[derive(Debug, Clone)]
struct DeviceRecord {
    project: Uuid,
    seq: u64,
    device: Device,
    life: Lifecycle,
    reservation: Option<Uuid>,
    capacity_key: Option<(String, String)>,
    ips: IpRequest,
}

impl DeviceRecord {
    fn render(&self, now: Instant) -> Device {
        let mut d = self.device.clone();
        d.state = Some(self.life.state);
        d.provisioning_percentage = self.life.percentage(now);
        d
    }

    fn matches(&self, q: &ListQuery) -> bool {
        let d = &self.device;
        if let Some(tag) = &q.tag
            && !d.has_tag(tag)
        {
            return false;
        }
        let contains = |hay: &Option<String>, needle: &str| {
            hay.as_deref()
                .is_some_and(|h| h.to_lowercase().contains(needle))
        };
        if let Some(h) = &q.hostname
            && !contains(&d.hostname, &h.to_lowercase())
        {
            return false;
        }
        if let Some(s) = &q.search {
            let s = s.to_lowercase();
            let hit = contains(&d.hostname, &s)
                || contains(&d.description, &s)
                || contains(&d.short_id, &s)
                || d.tags
                    .iter()
                    .flatten()
                    .any(|t| t.to_lowercase().contains(&s))
                || d.plan
                    .as_ref()
                    .is_some_and(|p| contains(&p.slug, &s) || contains(&p.name, &s))
                || d.facility
                    .as_ref()
                    .is_some_and(|f| contains(&f.code, &s) || contains(&f.name, &s))
                || d.metro.as_ref().is_some_and(|m| contains(&m.code, &s))
                || d.operating_system
                    .as_ref()
                    .is_some_and(|o| contains(&o.slug, &s) || contains(&o.name, &s))
                || d.ip_addresses
                    .iter()
                    .flatten()
                    .any(|ip| contains(&ip.address, &s));
            if !hit {
                return false;
            }
        }
        true
    }
}

struct Inner {
    tokens: HashMap<String, Access>,
    projects: HashSet<Uuid>,
    devices: HashMap<Uuid, DeviceRecord>,
    /// Creation order, for stable listing.
    order: BTreeMap<u64, Uuid>,
    next_seq: u64,
    timeline: Timeline,
    capacity: HashMap<(String, String), Capacity>,
    reservations: Vec<Reservation>,
    rng: StdRng,
    next_ip: u32,
    clock: Clock,
    created: u64,
    deleted: u64,
}

/// The shared simulator state.
pub struct SimState {
    inner: Mutex<Inner>,
    timings: Timings,
    per_page_max: u32,
    fail_rate: f64,
    /// Request-side counters, filled by the HTTP layer.
    pub recorder: Recorder,
}

/// A validated update body: the shared [`DeviceUpdateInput`] plus the remaining
/// `DeviceUpdateInput` fields of the spec that the simulator stores.
#[derive(Debug, Default, Deserialize)]
struct UpdateExtras {
    #[serde(default)]
    billing_cycle: Option<String>,
    #[serde(default)]
    userdata: Option<Secret<String>>,
    #[serde(default)]
    customdata: Option<Secret<serde_json::Map<String, Value>>>,
    #[serde(default)]
    always_pxe: Option<bool>,
    #[serde(default)]
    ipxe_script_url: Option<String>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl SimState {
    /// Builds the world described by the flags.
    pub fn new(args: &SimArgs) -> Self {
        let mut tokens = HashMap::new();
        let mut projects: HashSet<Uuid> = args.projects.iter().copied().collect();
        for t in &args.tokens {
            let access = match &t.projects {
                None => Access::All,
                Some(list) => {
                    projects.extend(list.iter().copied());
                    Access::Projects(list.iter().copied().collect())
                }
            };
            tokens.insert(t.token.expose().clone(), access);
        }
        if tokens.is_empty() {
            tokens.insert(DEFAULT_TOKEN.to_string(), Access::All);
        }
        if projects.is_empty() {
            projects.insert(DEFAULT_PROJECT);
        }
        // A reservation's project exists too (without replacing the default one).
        for r in &args.reservations {
            projects.extend(r.project);
        }
        let capacity = args
            .capacity
            .iter()
            .map(|c| {
                (
                    (c.metro.clone(), c.plan.clone()),
                    Capacity {
                        limit: c.count,
                        used: 0,
                    },
                )
            })
            .collect();
        let reservations = args
            .reservations
            .iter()
            .filter_map(|r| {
                Some(Reservation {
                    id: r.id,
                    metro: catalog::metro_by_code_or_id(&r.metro)?,
                    plan: catalog::plan_by_slug(&r.plan)?,
                    project: r.project,
                    device: None,
                })
            })
            .collect();
        let seed = args
            .seed
            .map_or_else(|| rand::rng().random(), |s| s ^ 0x5eed_f00d);
        Self {
            inner: Mutex::new(Inner {
                tokens,
                projects,
                devices: HashMap::new(),
                order: BTreeMap::new(),
                next_seq: 0,
                timeline: Timeline::default(),
                capacity,
                reservations,
                rng: StdRng::seed_from_u64(seed),
                next_ip: 0,
                clock: Clock {
                    wall0: SystemTime::now(),
                    inst0: Instant::now(),
                },
                created: 0,
                deleted: 0,
            }),
            timings: Timings {
                provision: secs(args.provision_seconds),
                deprovision: secs(args.deprovision_seconds),
                power: secs(args.power_seconds),
            },
            per_page_max: args.per_page_max.max(1),
            fail_rate: args.fail_rate.clamp(0.0, 1.0),
            recorder: Recorder::default(),
        }
    }

    fn lock(&self, now: Instant) -> MutexGuard<'_, Inner> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.sweep(now);
        g
    }

    /// `createDevice`.
    pub fn create(
        &self,
        token: Option<&str>,
        project: &str,
        body: &[u8],
        now: Instant,
    ) -> Result<Device, ApiError> {
        let mut inner = self.lock(now);
        let project = inner.authorize_project(token, project)?;
        let req = validate::parse_create(body)?;
        inner.create(project, req, now, self)
    }

    /// Creates a device without HTTP or auth; the project is registered if new.
    pub fn create_direct(
        &self,
        project: Uuid,
        input: crate::metal::types::DeviceCreateInput,
        now: Instant,
    ) -> Result<Device, ApiError> {
        let mut inner = self.lock(now);
        inner.projects.insert(project);
        let req = validate::validate_create(input)?;
        inner.create(project, req, now, self)
    }

    /// `findProjectDevices`.
    pub fn list(
        &self,
        token: Option<&str>,
        project: &str,
        query: &ListQuery,
        now: Instant,
    ) -> Result<DeviceList, ApiError> {
        let inner = self.lock(now);
        let project = inner.authorize_project(token, project)?;
        let per_page = query.per_page.min(self.per_page_max);
        let matching: Vec<&DeviceRecord> = inner
            .order
            .values()
            .filter_map(|id| inner.devices.get(id))
            .filter(|r| r.project == project && r.matches(query))
            .collect();
        let skip = (query.page as usize - 1).saturating_mul(per_page as usize);
        let devices = matching
            .iter()
            .skip(skip)
            .take(per_page as usize)
            .map(|r| r.render(now))
            .collect();
        let meta = query.meta(
            &Operation::FindProjectDevices.path(project),
            matching.len(),
            per_page,
        );
        Ok(DeviceList {
            devices,
            meta: Some(meta),
        })
    }

    /// `findDeviceById`.
    pub fn get(&self, token: Option<&str>, id: &str, now: Instant) -> Result<Device, ApiError> {
        let inner = self.lock(now);
        let id = inner.authorize_device(token, id)?;
        Ok(inner.devices[&id].render(now))
    }

    /// `updateDevice`.
    pub fn update(
        &self,
        token: Option<&str>,
        id: &str,
        body: &[u8],
        now: Instant,
    ) -> Result<Device, ApiError> {
        let mut inner = self.lock(now);
        let id = inner.authorize_device(token, id)?;
        let value = parse_object(body)?;
        let base: DeviceUpdateInput = typed(value.clone())?;
        let extras: UpdateExtras = typed(value)?;
        let mut errors = Vec::new();
        if let Some(h) = &base.hostname
            && !validate::valid_hostname(h)
        {
            errors.push(format!("Hostname {h:?} is invalid"));
        }
        if let Some(b) = &extras.billing_cycle
            && !BillingCycle::ALL.contains(&b.as_str())
        {
            errors.push(format!(
                "billing_cycle must be one of {}",
                BillingCycle::ALL.join(", ")
            ));
        }
        if !errors.is_empty() {
            return Err(ApiError::unprocessable_all(errors));
        }
        let stamp = inner.clock.rfc3339(now);
        let rec = inner.devices.get_mut(&id).ok_or_else(ApiError::not_found)?;
        if rec.life.state == DeviceState::Deprovisioning {
            return Err(ApiError::unprocessable("Device is being deprovisioned"));
        }
        let d = &mut rec.device;
        if let Some(v) = base.locked {
            d.locked = Some(v);
        }
        if let Some(v) = base.description {
            d.description = Some(v);
        }
        if let Some(v) = base.hostname {
            d.hostname = Some(v);
        }
        if let Some(v) = base.tags {
            d.tags = Some(v);
        }
        if let Some(v) = extras.billing_cycle {
            d.billing_cycle = Some(v);
        }
        if let Some(v) = extras.userdata {
            d.userdata = Some(v);
        }
        if let Some(v) = extras.customdata {
            d.customdata = Some(Secret::new(Value::Object(v.into_inner())));
        }
        if let Some(v) = extras.always_pxe {
            d.always_pxe = Some(v);
        }
        if let Some(v) = extras.ipxe_script_url {
            d.ipxe_script_url = Some(v);
        }
        d.updated_at = Some(stamp);
        tracing::info!(device_id = %id, "device updated");
        Ok(rec.render(now))
    }

    /// `deleteDevice`: 422 while locked; otherwise deprovisioning (idempotent).
    pub fn delete(&self, token: Option<&str>, id: &str, now: Instant) -> Result<(), ApiError> {
        let mut inner = self.lock(now);
        let id = inner.authorize_device(token, id)?;
        let stamp = inner.clock.rfc3339(now);
        let Inner {
            devices,
            timeline,
            deleted,
            ..
        } = &mut *inner;
        let rec = devices.get_mut(&id).ok_or_else(ApiError::not_found)?;
        if rec.device.locked == Some(true) {
            return Err(ApiError::unprocessable(MSG_LOCKED));
        }
        if rec.life.state != DeviceState::Deprovisioning {
            rec.life.deprovision(now, &self.timings);
            rec.device.updated_at = Some(stamp);
            timeline.schedule(id, &rec.life);
            *deleted += 1;
            tracing::info!(device_id = %id, "device deprovisioning");
        }
        Ok(())
    }

    /// `performAction`.
    pub fn action(
        &self,
        token: Option<&str>,
        id: &str,
        body: &[u8],
        now: Instant,
    ) -> Result<(), ApiError> {
        let mut inner = self.lock(now);
        let id = inner.authorize_device(token, id)?;
        let value = parse_object(body)?;
        let kind = match value.get("type") {
            None | Some(Value::Null) => return Err(ApiError::unprocessable("type is required")),
            Some(v) => serde_json::from_value::<DeviceActionType>(v.clone()).map_err(|_| {
                ApiError::unprocessable(
                    "type must be one of power_on, power_off, reboot, rescue, reinstall",
                )
            })?,
        };
        let new_os = match value.get("operating_system") {
            Some(Value::String(slug)) if kind == DeviceActionType::Reinstall => {
                Some(catalog::os_by_slug(slug).ok_or_else(|| {
                    ApiError::unprocessable(format!(
                        "Operating system {slug} is not a valid operating system"
                    ))
                })?)
            }
            _ => None,
        };
        let stamp = inner.clock.rfc3339(now);
        let Inner {
            devices, timeline, ..
        } = &mut *inner;
        let rec = devices.get_mut(&id).ok_or_else(ApiError::not_found)?;
        let t = &self.timings;
        let before = rec.life.generation;
        let result = match kind {
            DeviceActionType::PowerOn => rec.life.power_on(now, t),
            DeviceActionType::PowerOff => rec.life.power_off(now, t),
            DeviceActionType::Reboot => rec.life.reboot(now, t),
            DeviceActionType::Rescue => rec.life.rescue(),
            DeviceActionType::Reinstall => rec.life.reinstall(now, t),
        };
        result.map_err(|r| ApiError::unprocessable(r.0))?;
        if let Some(os) = new_os {
            rec.device.operating_system = Some(os.to_api());
        }
        if rec.life.generation != before {
            rec.device.updated_at = Some(stamp);
            timeline.schedule(id, &rec.life);
        }
        tracing::info!(device_id = %id, action = ?kind, "device action accepted");
        Ok(())
    }

    /// Every existing device, in creation order (including `deprovisioning` ones).
    pub fn all_devices(&self, now: Instant) -> Vec<Device> {
        let inner = self.lock(now);
        inner
            .order
            .values()
            .filter_map(|id| inner.devices.get(id))
            .map(|r| r.render(now))
            .collect()
    }

    /// Device counters plus the request counters.
    pub fn stats(&self, now: Instant) -> SimStats {
        let mut stats = SimStats::default();
        {
            let inner = self.lock(now);
            stats.devices_created = inner.created;
            stats.devices_deleted = inner.deleted;
            stats.devices_live = inner.devices.len() as u64;
            for r in inner.devices.values() {
                *stats
                    .devices_by_state
                    .entry(r.life.state.as_str().to_string())
                    .or_default() += 1;
            }
        }
        self.recorder.fill(&mut stats);
        stats
    }
}

impl Inner {
    /// Applies every lifecycle step due by `now`, in time order.
    fn sweep(&mut self, now: Instant) {
        let Inner {
            devices,
            order,
            timeline,
            capacity,
            reservations,
            next_ip,
            clock,
            ..
        } = self;
        while let Some((at, id, generation)) = timeline.pop_due(now) {
            let Some(rec) = devices.get_mut(&id) else {
                continue;
            };
            if rec.life.generation != generation {
                continue;
            }
            let effect = rec.life.advance(at);
            rec.device.updated_at = Some(clock.rfc3339(at));
            match effect {
                Effect::Activated => {
                    if rec.device.ip_addresses.is_none() {
                        rec.device.ip_addresses = Some(addresses::assign(*next_ip, rec.ips));
                        *next_ip = next_ip.wrapping_add(1);
                    }
                    rec.device.root_password = Some(Secret::new(addresses::root_password()));
                    tracing::debug!(device_id = %id, "device active");
                }
                Effect::Failed => tracing::debug!(device_id = %id, "device failed"),
                Effect::Gone => {
                    let Some(rec) = devices.remove(&id) else {
                        continue;
                    };
                    order.remove(&rec.seq);
                    if let Some(key) = &rec.capacity_key
                        && let Some(c) = capacity.get_mut(key)
                    {
                        c.used = c.used.saturating_sub(1);
                    }
                    if let Some(rid) = rec.reservation
                        && let Some(r) = reservations.iter_mut().find(|r| r.id == rid)
                    {
                        r.device = None;
                    }
                    tracing::debug!(device_id = %id, "device gone");
                    continue;
                }
                Effect::None => {}
            }
            timeline.schedule(id, &rec.life);
        }
    }

    fn access(&self, token: Option<&str>) -> Result<&Access, ApiError> {
        token
            .and_then(|t| self.tokens.get(t))
            .ok_or_else(ApiError::unauthenticated)
    }

    fn authorize_project(&self, token: Option<&str>, project: &str) -> Result<Uuid, ApiError> {
        let access = self.access(token)?;
        let id = Uuid::parse_str(project).map_err(|_| ApiError::not_found())?;
        if !self.projects.contains(&id) {
            return Err(ApiError::not_found());
        }
        if !access.allows(&id) {
            return Err(ApiError::forbidden());
        }
        Ok(id)
    }

    fn authorize_device(&self, token: Option<&str>, device: &str) -> Result<Uuid, ApiError> {
        let access = self.access(token)?;
        let id = Uuid::parse_str(device).map_err(|_| ApiError::not_found())?;
        let rec = self.devices.get(&id).ok_or_else(ApiError::not_found)?;
        if !access.allows(&rec.project) {
            // Also for `performAction`, whose spec declares no 403: the real API answers
            // 403 for another project's device everywhere.
            return Err(ApiError::forbidden());
        }
        Ok(id)
    }

    fn create(
        &mut self,
        project: Uuid,
        req: CreateRequest,
        now: Instant,
        state: &SimState,
    ) -> Result<Device, ApiError> {
        let placement = self.place(project, &req)?;
        let CreateRequest {
            input, plan, os, ..
        } = req;
        let id = Uuid::new_v4();
        let short_id = id.to_string()[..8].to_string();
        let stamp = self.clock.rfc3339(now);
        let termination_time = match &input.termination_time {
            Some(t) => Some(validate::normalize_date_time(t)?),
            None => None,
        };
        let fails = state.fail_rate > 0.0 && self.rng.random_bool(state.fail_rate);
        let hardware_reservation = placement.reservation.map(|rid| HardwareReservation {
            id: Some(rid),
            short_id: Some(rid.to_string()[..8].to_string()),
            href: Some(format!("/metal/v1/hardware-reservations/{rid}")),
            provisionable: Some(false),
        });
        let device = Device {
            id: Some(id),
            short_id: Some(short_id.clone()),
            href: Some(format!("/metal/v1/devices/{id}")),
            hostname: Some(
                input
                    .hostname
                    .clone()
                    .unwrap_or_else(|| format!("{}-{short_id}", plan.slug.replace('.', "-"))),
            ),
            description: input.description.clone(),
            tags: Some(input.tags.clone()),
            state: Some(DeviceState::Queued),
            created_at: Some(stamp.clone()),
            updated_at: Some(stamp),
            locked: Some(input.locked.unwrap_or(false)),
            billing_cycle: Some(
                input
                    .billing_cycle
                    .unwrap_or(BillingCycle::Hourly)
                    .as_str()
                    .to_string(),
            ),
            always_pxe: Some(input.always_pxe.unwrap_or(false)),
            ipxe_script_url: input.ipxe_script_url.clone(),
            termination_time,
            metro: Some(placement.metro.to_api()),
            facility: Some(placement.facility.to_api()),
            plan: Some(plan.to_api()),
            operating_system: Some(os.to_api()),
            project_lite: Some(Href {
                href: format!("/metal/v1/projects/{project}"),
            }),
            hardware_reservation,
            userdata: input.userdata.clone(),
            customdata: Some(
                input
                    .customdata
                    .clone()
                    .unwrap_or_else(|| Secret::new(serde_json::json!({}))),
            ),
            ..Device::default()
        };
        let life = Lifecycle::provisioning(now, &state.timings, fails);
        if let Some(key) = &placement.capacity_key
            && let Some(c) = self.capacity.get_mut(key)
        {
            c.used += 1;
        }
        if let Some(rid) = placement.reservation
            && let Some(r) = self.reservations.iter_mut().find(|r| r.id == rid)
        {
            r.device = Some(id);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let rec = DeviceRecord {
            project,
            seq,
            device,
            life,
            reservation: placement.reservation,
            capacity_key: placement.capacity_key,
            ips: IpRequest::from_input(input.ip_addresses.as_deref()),
        };
        let rendered = rec.render(now);
        self.timeline.schedule(id, &rec.life);
        self.devices.insert(id, rec);
        self.order.insert(seq, id);
        self.created += 1;
        tracing::info!(
            device_id = %id,
            project = %project,
            metro = placement.metro.code,
            plan = plan.slug,
            hostname = rendered.hostname.as_deref().unwrap_or_default(),
            "device created"
        );
        Ok(rendered)
    }

    /// Chooses metro, facility and reservation, or the capacity 422.
    fn place(&self, project: Uuid, req: &CreateRequest) -> Result<Placement, ApiError> {
        let plan = req.plan;
        let fits = |r: &Reservation| {
            r.device.is_none()
                && r.project.is_none_or(|p| p == project)
                && r.plan.slug == plan.slug
                && location_allows(&req.location, r.metro)
        };
        let reserved = match req.reservation {
            ReservationRequest::None => None,
            ReservationRequest::Id(rid) => {
                let r = self
                    .reservations
                    .iter()
                    .find(|r| r.id == rid && fits(r))
                    .ok_or_else(|| {
                        ApiError::unprocessable(format!(
                            "Hardware reservation {rid} is not provisionable"
                        ))
                    })?;
                Some(r)
            }
            ReservationRequest::NextAvailable => {
                let r = self.reservations.iter().find(|r| fits(r)).ok_or_else(|| {
                    ApiError::unprocessable("There are no available hardware reservations")
                })?;
                Some(r)
            }
        };
        if let Some(r) = reserved {
            return Ok(Placement {
                metro: r.metro,
                facility: facility_in(&req.location, r.metro),
                reservation: Some(r.id),
                capacity_key: None,
            });
        }
        let candidates: Vec<(&'static MetroEntry, &'static FacilityEntry)> = match &req.location {
            Location::Metro(m) => vec![(*m, catalog::default_facility(m))],
            Location::AnyMetro => catalog::METROS
                .iter()
                .map(|m| (m, catalog::default_facility(m)))
                .collect(),
            Location::Facilities(list) => list
                .iter()
                .flat_map(|c| match c {
                    FacilityChoice::Facility(f) => vec![(catalog::metro_of(f), *f)],
                    FacilityChoice::Any => catalog::FACILITIES
                        .iter()
                        .map(|f| (catalog::metro_of(f), f))
                        .collect(),
                })
                .collect(),
        };
        for (metro, facility) in candidates {
            let key = (metro.code.to_string(), plan.slug.to_string());
            match self.capacity.get(&key) {
                Some(c) if c.used >= c.limit => continue,
                Some(_) => {
                    return Ok(Placement {
                        metro,
                        facility,
                        reservation: None,
                        capacity_key: Some(key),
                    });
                }
                None => {
                    return Ok(Placement {
                        metro,
                        facility,
                        reservation: None,
                        capacity_key: None,
                    });
                }
            }
        }
        Err(ApiError::unprocessable(match &req.location {
            Location::Metro(m) => format!(
                "The metro {} has no provisionable {} servers matching your criteria",
                m.code, plan.slug
            ),
            Location::AnyMetro => format!(
                "There are no provisionable {} servers matching your criteria in any metro",
                plan.slug
            ),
            Location::Facilities(list) => match list.as_slice() {
                [FacilityChoice::Facility(f)] => format!(
                    "The facility {} has no provisionable {} servers matching your criteria",
                    f.code, plan.slug
                ),
                _ => format!(
                    "The requested facilities have no provisionable {} servers matching your criteria",
                    plan.slug
                ),
            },
        }))
    }
}

struct Placement {
    metro: &'static MetroEntry,
    facility: &'static FacilityEntry,
    reservation: Option<Uuid>,
    capacity_key: Option<(String, String)>,
}

fn location_allows(location: &Location, metro: &MetroEntry) -> bool {
    match location {
        Location::Metro(m) => m.code == metro.code,
        Location::AnyMetro => true,
        Location::Facilities(list) => list.iter().any(|c| match c {
            FacilityChoice::Facility(f) => f.metro == metro.code,
            FacilityChoice::Any => true,
        }),
    }
}

/// The requested facility inside `metro`, else the metro's default.
fn facility_in(location: &Location, metro: &'static MetroEntry) -> &'static FacilityEntry {
    if let Location::Facilities(list) = location {
        for c in list {
            if let FacilityChoice::Facility(f) = c
                && f.metro == metro.code
            {
                return f;
            }
        }
    }
    catalog::default_facility(metro)
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::unprocessable(format!("Request body is not valid JSON: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::unprocessable(
            "Request body must be a JSON object",
        ))
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ApiError::unprocessable(format!("Invalid value for {path}: {}", e.into_inner()))
    })
}
