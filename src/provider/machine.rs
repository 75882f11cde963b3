//! Create, status, list, delete and shutdown of machines on top of [`DeviceApi`]
//! (design §6). Every RPC decodes and validates its inputs first (so a bad spec never costs
//! an API call), then makes as few API calls as the answer needs.
//!
//! Classification rules, in one place:
//! - 404 and 403 on a device mean "gone" (the API answers 403 for failed and moved devices).
//! - A 422 whose message says the hardware is not available ([`is_out_of_capacity`]) means
//!   "try the next reservation / on-demand", and finally [`Error::NoCapacity`].
//! - A create error for which [`metal::Error::may_have_committed`] holds means "look before
//!   doing anything else": the device may exist.
//! - Every other API error has its secrets removed ([`Scrubber`]) and is classified by
//!   [`Error::api`].

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;
use uuid::Uuid;

use crate::metal::{
    self, Call, Device, DeviceActionInput, DeviceActionType, DeviceApi, DeviceCreateInput,
    DeviceState, DeviceUpdateInput, Operation,
};
use crate::provider_id::ProviderId;

use super::credentials::Credentials;
use super::error::Foreign;
use super::inflight::InFlight;
use super::lookup::{self, identity_tag, is_going_away};
use super::scope::Scope;
use super::scrub::Scrubber;
use super::spec::{Location, ProviderSpec, parse_uuid};
use super::{Error, ListRequest, MachineRequest};

/// Tunables of the provider logic.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// How many create attempts (each after a lookup that found nothing) before giving up.
    pub max_create_attempts: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            max_create_attempts: 3,
        }
    }
}

/// What CreateMachine and GetMachineStatus return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    /// `equinixmetal://<device-uuid>`.
    pub provider_id: String,
    /// The Node name the kubelet registers: the device hostname (= machine name).
    pub node_name: String,
}

/// Phrases of a 422 that mean "no hardware right now" rather than "bad request".
const OUT_OF_CAPACITY_PHRASES: &[&str] = &[
    "no provisionable",
    "not provisionable",
    "no available hardware reservations",
    "capacity",
];

/// Whether an API error is the out-of-capacity kind of 422 (a reservation that cannot be
/// used, or no on-demand hardware in the metro for the plan).
pub fn is_out_of_capacity(e: &metal::Error) -> bool {
    e.status() == Some(422)
        && e.api_message().is_some_and(|m| {
            let m = m.to_ascii_lowercase();
            OUT_OF_CAPACITY_PHRASES.iter().any(|p| m.contains(p))
        })
}

/// 404, or 403 which the API answers for failed, deleted and moved devices.
fn is_gone(e: &metal::Error) -> bool {
    matches!(e.status(), Some(403 | 404))
}

/// A 422 on delete that says the device is locked (our view of `locked` was stale).
fn is_locked_refusal(e: &metal::Error) -> bool {
    e.status() == Some(422)
        && e.api_message()
            .is_some_and(|m| m.to_ascii_lowercase().contains("lock"))
}

/// The transport-free driver: owns the API seam, the config and the in-flight guard.
pub struct Provider<A> {
    api: A,
    config: ProviderConfig,
    inflight: InFlight,
}

/// Everything a per-machine call has validated before its first API call.
struct Ctx {
    /// What every call needs from the providerSpec (create keeps its full spec apart).
    scope: Scope,
    project: Uuid,
    call: Call,
    /// Removes the call's secrets from API error texts.
    scrubber: Scrubber,
}

/// Neither the providerSpec nor the Secret names the project.
fn missing_project() -> Error {
    Error::invalid(
        "providerSpec.projectID",
        "required (in the providerSpec or as projectID in the Secret)",
    )
}

impl Ctx {
    fn new(scope: Scope, creds: Credentials, deadline: Option<Instant>) -> Result<Self, Error> {
        let project = scope
            .project_id
            .or(creds.project_id)
            .ok_or_else(missing_project)?;
        let scrubber = Scrubber::new(&creds, &scope);
        let call = Call::new(creds.api_token).with_deadline(deadline);
        Ok(Self {
            scope,
            project,
            call,
            scrubber,
        })
    }

    /// An API error as the caller may see it: secrets removed from its text, classified by
    /// cause.
    fn api_err(&self, e: metal::Error) -> Error {
        Error::api(self.scrubber.scrub(e))
    }

    fn check_deadline(&self, during: &'static str) -> Result<(), Error> {
        match self.call.deadline {
            Some(d) if Instant::now() >= d => Err(Error::DeadlinePassed { during }),
            _ => Ok(()),
        }
    }
}

impl<A: DeviceApi> Provider<A> {
    /// A provider talking to the API through `api`.
    pub fn new(api: A, config: ProviderConfig) -> Self {
        Self {
            api,
            config,
            inflight: InFlight::default(),
        }
    }

    /// The API seam (the gRPC layer's readiness probe and tests use it).
    pub fn api(&self) -> &A {
        &self.api
    }

    /// CreateMachine: makes sure exactly one device stands for the machine.
    ///
    /// # Guarantees
    /// - **Idempotent.** The machine is looked up first (identity tag + hostname + cluster
    ///   tag, every page). A compatible live device (same plan, same metro or one of the
    ///   facilities) is returned as if just created; a second call creates nothing.
    /// - **At most one device**, also when a create response is lost: an ambiguous failure
    ///   (transport error, timeout, 5xx) is followed by a lookup, and a new attempt is only
    ///   made when the lookup succeeded and found nothing (at most
    ///   [`ProviderConfig::max_create_attempts`] ambiguous attempts).
    /// - A device in `failed` state is deleted and replaced; an incompatible live device is
    ///   [`Error::DeviceMismatch`] naming what differs; several live devices are
    ///   [`Error::MultipleDevices`] (the orphan collector resolves them).
    /// - `reservationIDs` are tried in order, each with a fresh request; an out-of-capacity
    ///   answer moves on; then on-demand (no reservation field at all) unless
    ///   `reservedDevicesOnly`. Nothing left → [`Error::NoCapacity`].
    /// - A concurrent mutating call for the same machine gets [`Error::MachineBusy`].
    pub async fn create_machine(&self, req: MachineRequest) -> Result<MachineInfo, Error> {
        let (spec, creds) = checked_create(&req.machine_name, &req.provider_spec, &req.secrets)?;
        let user_data = creds.user_data.clone();
        let ctx = Ctx::new(Scope::from(&spec), creds, req.deadline)?;
        let machine = req.machine_name.as_str();
        let _guard = self.inflight.try_acquire(ctx.project, machine)?;

        if let Some(device) = self.adopt_existing(&ctx, &spec, machine).await? {
            return machine_info(&device, machine);
        }

        let mut candidates: Vec<Option<&str>> = spec
            .reservation_ids
            .iter()
            .map(|r| Some(r.as_str()))
            .collect();
        if !spec.reserved_devices_only {
            candidates.push(None);
        }
        let max_ambiguous = self.config.max_create_attempts.max(1);
        let mut ambiguous = 0;
        let mut refusals: Vec<String> = Vec::new();
        let mut next = 0;
        while let Some(reservation) = candidates.get(next).copied() {
            ctx.check_deadline("creating the device")?;
            // A fresh input per attempt: nothing of a previous attempt (the reservation id
            // above all) can leak into this one.
            let input = create_input(&spec, machine, user_data.clone(), reservation);
            let result = self
                .api
                .create_device(&ctx.call, ctx.project, &input)
                .await
                .and_then(|d| {
                    if d.id.is_some() {
                        Ok(d)
                    } else {
                        Err(metal::Error::Decode {
                            endpoint: Operation::CreateDevice,
                            reason: "the device has no id".into(),
                        })
                    }
                });
            match result {
                Ok(device) => {
                    tracing::info!(machine, device = %device_id(&device), reservation, "created device");
                    return machine_info(&device, machine);
                }
                Err(e) if is_out_of_capacity(&e) => {
                    let what = reservation
                        .map_or_else(|| "on-demand".to_string(), |r| format!("reservation {r}"));
                    let e = ctx.scrubber.scrub(e);
                    tracing::info!(machine, reservation, "no capacity, trying the next option");
                    refusals.push(format!("{what}: {}", e.api_message().unwrap_or_default()));
                    next += 1;
                }
                Err(e) if e.may_have_committed() => {
                    ambiguous += 1;
                    tracing::warn!(machine, attempt = ambiguous, error = %ctx.scrubber.scrub(e.clone()),
                        "create may have committed; looking before retrying");
                    if let Some(device) = self.adopt_existing(&ctx, &spec, machine).await? {
                        return machine_info(&device, machine);
                    }
                    if ambiguous >= max_ambiguous {
                        return Err(ctx.api_err(e));
                    }
                }
                Err(e) => return Err(ctx.api_err(e)),
            }
        }
        Err(Error::NoCapacity {
            machine: machine.to_string(),
            refusals,
            reserved_only: spec.reserved_devices_only,
        })
    }

    /// GetMachineStatus: by ProviderID when given (one GET), else by lookup (one list).
    /// "Not found" only when the device truly is not there: 404/403, deprovisioning, or no
    /// match. A device that exists but is not the class's cluster's is
    /// [`Error::DeviceNotInCluster`], as for delete and shutdown.
    pub async fn get_machine_status(&self, req: MachineRequest) -> Result<MachineInfo, Error> {
        validate_machine_name(&req.machine_name, false)?;
        let ctx = self.context(&req, "GetMachineStatus")?;
        let machine = req.machine_name.as_str();
        if !req.provider_id.is_empty() {
            let id = ProviderId::parse(&req.provider_id)?.uuid();
            let device = match self.api.get_device(&ctx.call, id).await {
                Ok(d) => d,
                Err(e) if is_gone(&e) => return Err(Error::DeviceNotFound { device: id }),
                Err(e) => return Err(ctx.api_err(e)),
            };
            if let Some(why) = not_ours(&device, &ctx) {
                return Err(Error::DeviceNotInCluster { device: id, why });
            }
            if is_going_away(&device) {
                return Err(Error::DeviceDeprovisioning { device: id });
            }
            return machine_info(&device, machine);
        }
        let devices = self.find(&ctx, machine).await?;
        match devices.as_slice() {
            [] => Err(Error::NoDeviceForMachine {
                machine: machine.to_string(),
            }),
            [device] => machine_info(device, machine),
            many => Err(multiple(machine, many)),
        }
    }

    /// DeleteMachine: makes sure no device stands for the machine.
    ///
    /// # Guarantees
    /// - **Idempotent, and tolerates create never having run.** A device that is already
    ///   gone (404, 403), deprovisioning, or was never created is success.
    /// - With a ProviderID: one GET (cluster membership) and one DELETE. Without: every
    ///   device the lookup finds is deleted (several may claim one machine).
    /// - A device that is not the class's cluster's is never deleted
    ///   ([`Error::DeviceNotInCluster`]).
    /// - A locked device is unlocked first only when the spec says `unlockOnDelete: true`;
    ///   otherwise [`Error::DeviceLocked`] says how to proceed.
    /// - userData is not needed: deletion must work after its Secret is gone.
    pub async fn delete_machine(&self, req: MachineRequest) -> Result<(), Error> {
        validate_machine_name(&req.machine_name, false)?;
        let ctx = self.context(&req, "DeleteMachine")?;
        let machine = req.machine_name.as_str();
        let _guard = self.inflight.try_acquire(ctx.project, machine)?;
        let targets = match self.targets_by_provider_id(&ctx, &req.provider_id).await? {
            Target::Gone => return Ok(()),
            Target::Device(d) => vec![*d],
            Target::Lookup => self.find(&ctx, machine).await?,
        };
        let mut first_err = None;
        for device in &targets {
            if let Err(e) = self.remove_device(&ctx, device).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// ShutDownMachine: powers the machine's device(s) off (`power_off` action). Success
    /// when already off, powering off, going away or gone (CMI: OK if already terminated).
    pub async fn shutdown_machine(&self, req: MachineRequest) -> Result<(), Error> {
        validate_machine_name(&req.machine_name, false)?;
        let ctx = self.context(&req, "ShutDownMachine")?;
        let machine = req.machine_name.as_str();
        let _guard = self.inflight.try_acquire(ctx.project, machine)?;
        let targets = match self.targets_by_provider_id(&ctx, &req.provider_id).await? {
            Target::Gone => return Ok(()),
            Target::Device(d) => vec![*d],
            Target::Lookup => self.find(&ctx, machine).await?,
        };
        for device in &targets {
            let Some(id) = device.id else { continue };
            match device.state {
                // Already off, going away, or never came up: nothing is running.
                Some(DeviceState::Inactive | DeviceState::PoweringOff | DeviceState::Failed) => {
                    continue;
                }
                _ if is_going_away(device) => continue,
                // The API refuses power actions until provisioning ends; say so plainly
                // instead of passing its 422 on as if the request were malformed.
                Some(
                    state @ (DeviceState::Queued
                    | DeviceState::Provisioning
                    | DeviceState::Reinstalling
                    | DeviceState::PoweringOn),
                ) => {
                    return Err(Error::DeviceNotReady { device: id, state });
                }
                _ => {}
            }
            let action = DeviceActionInput {
                type_: DeviceActionType::PowerOff,
                force_delete: None,
            };
            match self.api.perform_action(&ctx.call, id, &action).await {
                Ok(()) => tracing::info!(machine, device = %id, "powering off"),
                Err(e) if is_gone(&e) => {}
                Err(e) if e.status() == Some(422) => {
                    return Err(Error::PowerOffRefused {
                        device: id,
                        source: ctx.scrubber.scrub(e),
                    });
                }
                Err(e) => return Err(ctx.api_err(e)),
            }
        }
        Ok(())
    }

    /// ListMachines: `equinixmetal://<uuid>` → hostname for every live device carrying the
    /// class's cluster and role tags (devices made by other tools included). One paged list
    /// call filtered server-side by the cluster tag.
    pub async fn list_machines(&self, req: ListRequest) -> Result<BTreeMap<String, String>, Error> {
        let scope = lenient_scope(&req.provider_spec, "ListMachines")?;
        let creds = Credentials::from_secrets(&req.secrets, false)?;
        let ctx = Ctx::new(scope, creds, req.deadline)?;
        let required = ctx.scope.membership_tags()?;
        let devices = lookup::find_class_devices(
            &self.api,
            &ctx.call,
            ctx.project,
            &ctx.scope.cluster_tag,
            &required,
        )
        .await
        .map_err(|e| ctx.api_err(e))?;
        Ok(devices
            .into_iter()
            .map(|(id, host)| (ProviderId(id).to_string(), host))
            .collect())
    }

    /// Metal has no cloud volumes: every PV spec is skipped, as CMI allows.
    pub fn get_volume_ids(&self, _pv_spec_list: &[u8]) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }

    /// The lenient spec + credentials (no userData) + project for the non-create RPCs.
    fn context(&self, req: &MachineRequest, rpc: &str) -> Result<Ctx, Error> {
        let scope = lenient_scope(&req.provider_spec, rpc)?;
        let creds = Credentials::from_secrets(&req.secrets, false)?;
        Ctx::new(scope, creds, req.deadline)
    }

    async fn find(&self, ctx: &Ctx, machine: &str) -> Result<Vec<Device>, Error> {
        lookup::find_machine_devices(
            &self.api,
            &ctx.call,
            ctx.project,
            machine,
            &ctx.scope.cluster_tag,
        )
        .await
        .map_err(|e| ctx.api_err(e))
    }

    /// The create-time view of existing devices: failed ones are removed, one compatible
    /// live device is adopted, anything else is an error.
    async fn adopt_existing(
        &self,
        ctx: &Ctx,
        spec: &ProviderSpec,
        machine: &str,
    ) -> Result<Option<Device>, Error> {
        let (failed, live): (Vec<Device>, Vec<Device>) = self
            .find(ctx, machine)
            .await?
            .into_iter()
            .partition(|d| d.state == Some(DeviceState::Failed));
        for device in &failed {
            tracing::info!(machine, device = %device_id(device), "replacing failed device");
            self.remove_device(ctx, device).await?;
        }
        let device = match <[Device; 1]>::try_from(live) {
            Ok([device]) => device,
            Err(live) if live.is_empty() => return Ok(None),
            Err(live) => return Err(multiple(machine, &live)),
        };
        let differences = incompatibilities(&device, spec);
        if differences.is_empty() {
            return Ok(Some(device));
        }
        let Some(id) = device.id else {
            return Err(Error::DeviceWithoutId {
                machine: machine.to_string(),
            });
        };
        Err(Error::DeviceMismatch {
            device: id,
            machine: machine.to_string(),
            differences,
        })
    }

    /// Resolves a ProviderID (if any) for delete/shutdown.
    async fn targets_by_provider_id(&self, ctx: &Ctx, provider_id: &str) -> Result<Target, Error> {
        if provider_id.is_empty() {
            return Ok(Target::Lookup);
        }
        let id = ProviderId::parse(provider_id)?.uuid();
        let device = match self.api.get_device(&ctx.call, id).await {
            Ok(d) => d,
            Err(e) if is_gone(&e) => return Ok(Target::Gone),
            Err(e) => return Err(ctx.api_err(e)),
        };
        if let Some(why) = not_ours(&device, ctx) {
            return Err(Error::DeviceNotInCluster { device: id, why });
        }
        if is_going_away(&device) {
            return Ok(Target::Gone);
        }
        let device = Device {
            id: Some(id),
            ..device
        };
        Ok(Target::Device(Box::new(device)))
    }

    /// Deletes one device, unlocking it first if the spec allows. Gone is success.
    async fn remove_device(&self, ctx: &Ctx, device: &Device) -> Result<(), Error> {
        let Some(id) = device.id else { return Ok(()) };
        if is_going_away(device) {
            return Ok(());
        }
        if device.locked == Some(true) && !self.unlock(ctx, id).await? {
            return Ok(());
        }
        match self.api.delete_device(&ctx.call, id, false).await {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            // Our view of `locked` was stale: unlock (if allowed) and try once more.
            Err(e) if is_locked_refusal(&e) && device.locked != Some(true) => {
                if !self.unlock(ctx, id).await? {
                    return Ok(());
                }
                match self.api.delete_device(&ctx.call, id, false).await {
                    Ok(()) => {}
                    Err(e) if is_gone(&e) => {}
                    Err(e) => return Err(ctx.api_err(e)),
                }
            }
            Err(e) => return Err(ctx.api_err(e)),
        }
        tracing::info!(device = %id, "deleted device");
        Ok(())
    }

    /// Unlocks a device if `unlockOnDelete` allows it. `Ok(false)` when the device is gone.
    async fn unlock(&self, ctx: &Ctx, id: Uuid) -> Result<bool, Error> {
        if !ctx.scope.unlock_on_delete {
            return Err(Error::DeviceLocked { device: id });
        }
        let input = DeviceUpdateInput {
            locked: Some(false),
            ..Default::default()
        };
        match self.api.update_device(&ctx.call, id, &input).await {
            Ok(_) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(ctx.api_err(e)),
        }
    }
}

/// What a ProviderID resolved to.
enum Target {
    /// No ProviderID: find the machine's devices by lookup.
    Lookup,
    /// The device no longer exists (or is deprovisioning).
    Gone,
    /// The device, verified to belong to the cluster.
    Device(Box<Device>),
}

/// Everything CreateMachine checks before its first API call: the machine name as a
/// hostname, the providerSpec (strictly: an unknown field is refused), the Secret (token and
/// userData) and the project. `Err` means CreateMachine refuses the request without calling
/// the API, so a caller that gets it here knows the request would reach nothing.
pub fn create_refusal(
    machine_name: &str,
    provider_spec: &[u8],
    secrets: &HashMap<String, Vec<u8>>,
) -> Result<(), Error> {
    checked_create(machine_name, provider_spec, secrets).map(drop)
}

/// [`create_refusal`]'s checks, keeping what create goes on with.
fn checked_create(
    machine_name: &str,
    provider_spec: &[u8],
    secrets: &HashMap<String, Vec<u8>>,
) -> Result<(ProviderSpec, Credentials), Error> {
    validate_machine_name(machine_name, true)?;
    let spec = ProviderSpec::decode(provider_spec)?;
    let creds = Credentials::from_secrets(secrets, true)?;
    if spec.project_id.is_none() && creds.project_id.is_none() {
        return Err(missing_project());
    }
    Ok((spec, creds))
}

/// Machine names become hostnames and tag values. Create enforces a DNS label (the device
/// hostname); the other RPCs accept any Kubernetes object name so that a machine created by
/// another tool can still be deleted.
fn validate_machine_name(name: &str, strict: bool) -> Result<(), Error> {
    const FIELD: &str = "machineName";
    if name.is_empty() {
        return Err(Error::invalid(FIELD, "required"));
    }
    let (max, extra): (usize, &[u8]) = if strict { (63, b"-") } else { (253, b"-.") };
    if name.len() > max {
        return Err(Error::invalid(
            FIELD,
            format!("longer than {max} characters"),
        ));
    }
    let bytes = name.as_bytes();
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(b))
    {
        return Err(Error::invalid(
            FIELD,
            if strict {
                "may contain only lowercase letters, digits and '-' (it becomes the device hostname)"
            } else {
                "may contain only lowercase letters, digits, '-' and '.'"
            },
        ));
    }
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return Err(Error::invalid(
            FIELD,
            "must start and end with a letter or digit",
        ));
    }
    Ok(())
}

/// The create body for one attempt. Unset options stay unset (never `false`/`""`, which
/// the API has rejected in the past); exactly one of `metro` and `facility`.
fn create_input(
    spec: &ProviderSpec,
    machine: &str,
    user_data: Option<crate::secret::Secret<String>>,
    reservation: Option<&str>,
) -> DeviceCreateInput {
    let (metro, facility) = match &spec.location {
        Location::Metro(m) => (Some(m.clone()), None),
        Location::Facilities(f) => (None, Some(f.clone())),
    };
    let mut tags = spec.tags.clone();
    tags.push(identity_tag(machine));
    DeviceCreateInput {
        metro,
        facility,
        plan: spec.machine_type.clone(),
        operating_system: spec.operating_system.clone(),
        hostname: Some(machine.to_string()),
        description: spec.description.clone(),
        billing_cycle: spec.billing_cycle,
        userdata: user_data,
        customdata: spec.custom_data.clone(),
        tags,
        locked: spec.locked.then_some(true),
        project_ssh_keys: spec.ssh_keys.clone(),
        user_ssh_keys: spec.user_ssh_keys.clone(),
        no_ssh_keys: spec.no_ssh_keys.then_some(true),
        ipxe_script_url: spec.ipxe_script_url.clone(),
        always_pxe: spec.always_pxe.then_some(true),
        hardware_reservation_id: reservation.map(str::to_string),
        termination_time: spec.termination_time.clone(),
        ip_addresses: spec
            .ip_addresses
            .as_ref()
            .map(|l| l.iter().map(|a| a.to_input()).collect()),
    }
}

/// What makes an existing device unusable for this spec. Only what decides the machine's
/// shape and place (plan, metro/facility); what the device does not report counts as equal.
fn incompatibilities(device: &Device, spec: &ProviderSpec) -> Vec<String> {
    let mut diffs = Vec::new();
    if let Some(plan) = device.plan.as_ref().and_then(|p| p.slug.as_deref())
        && plan != spec.machine_type
    {
        diffs.push(format!(
            "plan {plan} (providerSpec.machineType {})",
            spec.machine_type
        ));
    }
    match &spec.location {
        Location::Metro(want) if want.eq_ignore_ascii_case("any") => {}
        Location::Metro(want) => {
            if let Some(metro) = &device.metro {
                let same = match parse_uuid(want) {
                    Some(want_id) => metro.id.is_none_or(|id| id == want_id),
                    None => metro
                        .code
                        .as_deref()
                        .is_none_or(|c| c.eq_ignore_ascii_case(want)),
                };
                if !same {
                    let have = metro
                        .code
                        .clone()
                        .or(metro.id.map(|i| i.to_string()))
                        .unwrap_or_default();
                    diffs.push(format!("metro {have} (providerSpec.metro {want})"));
                }
            }
        }
        Location::Facilities(want) => {
            if !want.iter().any(|f| f.eq_ignore_ascii_case("any"))
                && let Some(code) = device.facility.as_ref().and_then(|f| f.code.as_deref())
                && !want.iter().any(|f| f.eq_ignore_ascii_case(code))
            {
                diffs.push(format!(
                    "facility {code} (providerSpec.facilities {})",
                    want.join(",")
                ));
            }
        }
    }
    diffs
}

fn machine_info(device: &Device, machine: &str) -> Result<MachineInfo, Error> {
    let id = device.id.ok_or_else(|| Error::DeviceWithoutId {
        machine: machine.to_string(),
    })?;
    let node_name = device
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| machine.to_string());
    Ok(MachineInfo {
        provider_id: ProviderId(id).to_string(),
        node_name,
    })
}

fn device_id(device: &Device) -> String {
    device
        .id
        .map_or_else(|| "<no id>".to_string(), |id| id.to_string())
}

/// Several devices claim `machine`. The lookup only returns devices with an id.
fn multiple(machine: &str, devices: &[Device]) -> Error {
    Error::MultipleDevices {
        machine: machine.to_string(),
        devices: devices.iter().filter_map(|d| d.id).collect(),
    }
}

/// Why a device found by ProviderID is not this class's to act on (CMI: act only on the
/// cluster's machines), or `None` when it is.
fn not_ours(device: &Device, ctx: &Ctx) -> Option<Foreign> {
    if !lookup::in_project(device, ctx.project) {
        return Some(Foreign::OtherProject {
            project: ctx.project,
        });
    }
    if !device.has_tag(&ctx.scope.cluster_tag) {
        return Some(Foreign::MissingClusterTag {
            tag: ctx.scope.cluster_tag.clone(),
        });
    }
    None
}

/// The providerSpec as the non-create calls read it (see [`Scope`]): unknown fields are
/// logged and ignored, so a class that no longer validates cannot trap its Machines.
fn lenient_scope(provider_spec: &[u8], rpc: &str) -> Result<Scope, Error> {
    let (scope, unknown) = Scope::decode(provider_spec)?;
    if !unknown.is_empty() {
        tracing::warn!(
            rpc,
            fields = %unknown.join(", "),
            "ignoring unknown providerSpec fields (CreateMachine would refuse this class)"
        );
    }
    Ok(scope)
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
