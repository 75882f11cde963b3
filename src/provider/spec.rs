//! The MachineClass `providerSpec`: decoded from JSON with Gardener's field names, then
//! validated so that every problem is reported as [`Error::InvalidField`] naming the
//! field a user has to fix (`providerSpec.tags[1]`, `providerSpec.fooBar`, ...).
//!
//! Decoding is strict: unknown fields are rejected (a typo such as `machinetype` must not be
//! silently ignored, which is what the Go provider did with `facilities`). Validation is
//! shape-only: slugs must look like slugs, but the list of plans, operating systems and
//! metros belongs to the API, whose 422 answers become `InvalidArgument` in `cmi::status`.
//!
//! # Location
//! The create body is `oneOf [DeviceCreateInMetroInput, DeviceCreateInFacilityInput]`, so
//! exactly one of `metro` and `facility` is sent. Gardener emits both (`metro` = region,
//! `facilities` = zones); **`metro` wins when both are given** (it is the API's preferred,
//! non-deprecated concept), and `facilities` is sent as the `facility` priority list only
//! when no `metro` is set.
//!
//! # Empty strings
//! Go encoders emit `""` for unset strings, so an empty optional string (`metro`, `OS`,
//! `ipxeScriptUrl`, `billingCycle`, `description`, `terminationTime`, `projectID`) counts as
//! absent. A required field that is absent or empty is reported as required.

use std::fmt;

use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use crate::metal::{BillingCycle, IpAddressInput};
use crate::secret::Secret;

use super::Error;

/// Specs larger than this are rejected before parsing: a real one is well under 4 KiB, and
/// parsing an attacker-sized document would cost CPU and memory for nothing.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;

/// Tags whose prefix marks the cluster a device belongs to (CMI: act only on the cluster's
/// machines). Exactly one such tag is required.
pub const CLUSTER_TAG_PREFIX: &str = "kubernetes.io/cluster/";

/// Tags whose prefix marks the node role. At least one is required; ListMachines requires
/// all of them.
pub const ROLE_TAG_PREFIX: &str = "kubernetes.io/role/";

/// The driver's own identity tag (`machine.sapcloud.io/name:<machine>`, design §5). Users
/// may not set tags with this prefix: a copied tag would make a device claim a machine.
pub const IDENTITY_TAG_PREFIX: &str = "machine.sapcloud.io/name:";

/// The OS slug the API requires together with `ipxe_script_url`.
pub const CUSTOM_IPXE_OS: &str = "custom_ipxe";

/// The `reservationIDs` entry that asks the API for any free reservation.
pub const NEXT_AVAILABLE: &str = "next-available";

const MAX_SLUG_LEN: usize = 128;
const MAX_TAG_LEN: usize = 255;
const MAX_DESCRIPTION_LEN: usize = 1024;
const MAX_URL_LEN: usize = 2048;

/// The field name of the spec itself, prefixed to every error path.
const ROOT: &str = "providerSpec";

/// Where a device is placed: exactly one of the two `oneOf` branches of the create body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `metro`: a metro code, metro UUID, or `any`.
    Metro(String),
    /// `facility`: facility codes in priority order (deprecated by the API, still honoured).
    Facilities(Vec<String>),
}

/// One requested address block (`ipAddresses[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAddress {
    /// 4 or 6.
    pub address_family: i32,
    /// Public (true) or private (false) address.
    pub public: bool,
    /// Block size; the API picks a default when absent.
    pub cidr: Option<i32>,
}

impl IpAddress {
    /// The API's input shape.
    pub fn to_input(&self) -> IpAddressInput {
        IpAddressInput {
            address_family: Some(self.address_family),
            public: Some(self.public),
            cidr: self.cidr,
            ip_reservations: Vec::new(),
        }
    }
}

/// A validated providerSpec. Construct it with [`ProviderSpec::decode`]; every field is
/// already checked, so the provider logic never re-validates.
///
/// `Debug` is safe to log: `customData` is wrapped in [`Secret`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSpec {
    /// `projectID`; `None` when it must come from the Secret.
    pub project_id: Option<Uuid>,
    /// `metro` or `facilities` (see the module docs for which wins).
    pub location: Location,
    /// `machineType`: the plan slug.
    pub machine_type: String,
    /// `billingCycle`; the API's default (hourly) when absent.
    pub billing_cycle: Option<BillingCycle>,
    /// `OS`, or `custom_ipxe` when `ipxeScriptUrl` is set.
    pub operating_system: String,
    /// `ipxeScriptUrl`.
    pub ipxe_script_url: Option<String>,
    /// `tags` as given (without the identity tag, which the provider adds).
    pub tags: Vec<String>,
    /// The one `kubernetes.io/cluster/...` tag from `tags`.
    pub cluster_tag: String,
    /// Every `kubernetes.io/role/...` tag from `tags`.
    pub role_tags: Vec<String>,
    /// `sshKeys`: project SSH key UUIDs, sent as `project_ssh_keys`.
    pub ssh_keys: Vec<Uuid>,
    /// `userSSHKeys`: user UUIDs whose keys are added, sent as `user_ssh_keys`.
    pub user_ssh_keys: Vec<Uuid>,
    /// `noSSHKeys`: add no keys at all (otherwise the API adds every project key when none
    /// is given).
    pub no_ssh_keys: bool,
    /// `reservationIDs`, tried in order: reservation UUIDs or `next-available`.
    pub reservation_ids: Vec<String>,
    /// `reservedDevicesOnly`: never fall back to on-demand.
    pub reserved_devices_only: bool,
    /// `customData`: a JSON object served by the metadata service.
    pub custom_data: Option<Secret<serde_json::Value>>,
    /// `alwaysPXE` (only with `ipxeScriptUrl`).
    pub always_pxe: bool,
    /// `ipAddresses`; `None` lets the API choose (public v4, private v4, public v6).
    pub ip_addresses: Option<Vec<IpAddress>>,
    /// `locked`: create the device locked against deletion.
    pub locked: bool,
    /// `unlockOnDelete`: DeleteMachine unlocks a locked device first instead of failing.
    pub unlock_on_delete: bool,
    /// `terminationTime` (RFC 3339), the API deletes the device then.
    pub termination_time: Option<String>,
    /// `description`.
    pub description: Option<String>,
}

/// The wire shape, exactly Gardener's names. Only `decode` sees it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    /// Present in the Go provider's spec type; accepted and ignored.
    #[serde(rename = "apiVersion", default)]
    _api_version: Option<String>,
    #[serde(rename = "projectID", default)]
    project_id: Option<String>,
    #[serde(default)]
    metro: Option<String>,
    #[serde(default)]
    facilities: Option<Vec<String>>,
    #[serde(rename = "machineType", default)]
    machine_type: Option<String>,
    #[serde(rename = "billingCycle", default)]
    billing_cycle: Option<String>,
    #[serde(rename = "OS", default)]
    os: Option<String>,
    #[serde(rename = "ipxeScriptUrl", default)]
    ipxe_script_url: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "sshKeys", default)]
    ssh_keys: Option<Vec<String>>,
    #[serde(rename = "reservationIDs", default)]
    reservation_ids: Option<Vec<String>>,
    #[serde(rename = "reservedDevicesOnly", default)]
    reserved_devices_only: Option<bool>,
    #[serde(rename = "userSSHKeys", default)]
    user_ssh_keys: Option<Vec<String>>,
    #[serde(rename = "noSSHKeys", default)]
    no_ssh_keys: Option<bool>,
    #[serde(rename = "customData", default)]
    custom_data: Option<Secret<serde_json::Value>>,
    #[serde(rename = "alwaysPXE", default)]
    always_pxe: Option<bool>,
    #[serde(rename = "ipAddresses", default)]
    ip_addresses: Option<Vec<ObjectOnly<RawIpAddress>>>,
    #[serde(default)]
    locked: Option<bool>,
    #[serde(rename = "unlockOnDelete", default)]
    unlock_on_delete: Option<bool>,
    #[serde(rename = "terminationTime", default)]
    termination_time: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Every top-level field name [`RawSpec`] accepts, for "did you mean" hints.
pub(crate) const KNOWN_FIELDS: &[&str] = &[
    "apiVersion",
    "projectID",
    "metro",
    "facilities",
    "machineType",
    "billingCycle",
    "OS",
    "ipxeScriptUrl",
    "tags",
    "sshKeys",
    "reservationIDs",
    "reservedDevicesOnly",
    "userSSHKeys",
    "noSSHKeys",
    "customData",
    "alwaysPXE",
    "ipAddresses",
    "locked",
    "unlockOnDelete",
    "terminationTime",
    "description",
];

/// Accepts `T` only from a JSON object. Derived struct deserializers also accept a JSON
/// array (fields by position), which would let `[4, false]` pass as an address and `[...]`
/// as a whole spec; a positional spec is never what a user meant.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<T, M::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(ObjectOnly)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpAddress {
    #[serde(rename = "addressFamily")]
    address_family: i32,
    #[serde(default)]
    public: Option<bool>,
    #[serde(default)]
    cidr: Option<i32>,
}

impl ProviderSpec {
    /// Decodes and validates the providerSpec bytes. Every error is
    /// [`Error::InvalidField`] with a `providerSpec...` field path.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(Error::invalid(
                ROOT,
                format!(
                    "is {} bytes; at most {MAX_SPEC_BYTES} are allowed",
                    bytes.len()
                ),
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::invalid(ROOT, "is empty; expected a JSON object"));
        }
        let raw = parse(bytes)?;
        validate(raw)
    }

    /// The tags every device of this class carries, identity tag excluded: what ListMachines
    /// requires of a device.
    pub fn membership_tags(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.cluster_tag.as_str()).chain(self.role_tags.iter().map(String::as_str))
    }
}

fn parse(bytes: &[u8]) -> Result<RawSpec, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let ObjectOnly(raw): ObjectOnly<RawSpec> =
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // A syntax error's place is its line and column (in the reason); the path of a
            // half-read document ("?" for an unreadable key) would only confuse.
            let data_error = inner.classify() == serde_json::error::Category::Data;
            let field = if path == "." || path.is_empty() || !data_error {
                ROOT.to_string()
            } else {
                format!("{ROOT}.{path}")
            };
            Error::invalid(field, json_reason(&inner, &path))
        })?;
    de.end()
        .map_err(|e| Error::invalid(ROOT, format!("trailing data after the JSON object ({e})")))?;
    Ok(raw)
}

/// serde_json's message, minus the `line/column` suffix for data errors (the path already
/// says where), and a short form for unknown fields with a case-insensitive hint.
fn json_reason(e: &serde_json::Error, path: &str) -> String {
    let msg = e.to_string();
    if msg.starts_with("unknown field") {
        let name = path.rsplit('.').next().unwrap_or(path);
        return match KNOWN_FIELDS.iter().find(|k| k.eq_ignore_ascii_case(name)) {
            Some(k) if path == name => format!("unknown field (did you mean `{k}`?)"),
            _ => "unknown field".to_string(),
        };
    }
    if e.classify() == serde_json::error::Category::Data {
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        if let Some(stripped) = msg.strip_suffix(&suffix) {
            return stripped.to_string();
        }
    }
    msg
}

fn field(path: impl fmt::Display) -> String {
    format!("{ROOT}.{path}")
}

/// Treats `""` (what Go encoders emit for unset strings) as absent.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn validate(raw: RawSpec) -> Result<ProviderSpec, Error> {
    let project_id = match non_empty(raw.project_id) {
        Some(p) => Some(
            parse_uuid(&p).ok_or_else(|| Error::invalid(field("projectID"), "must be a UUID"))?,
        ),
        None => None,
    };

    let metro = non_empty(raw.metro);
    // Gardener emits both `metro` (the region) and `facilities` (the worker pool's zones,
    // which lie in that metro). The API takes exactly one; the facility list is the more
    // specific placement the user asked for, so it wins and the metro is only checked.
    let location = match (metro, raw.facilities.filter(|f| !f.is_empty())) {
        (metro, Some(fs)) => {
            if let Some(m) = &metro {
                check_slug(&field("metro"), m)?;
            }
            for (i, f) in fs.iter().enumerate() {
                check_slug(&field(format_args!("facilities[{i}]")), f)?;
            }
            Location::Facilities(fs)
        }
        (Some(m), None) => {
            check_slug(&field("metro"), &m)?;
            Location::Metro(m)
        }
        (None, None) => return Err(Error::invalid(field("metro"), "required (or facilities)")),
    };

    let machine_type = non_empty(raw.machine_type)
        .ok_or_else(|| Error::invalid(field("machineType"), "required"))?;
    check_slug(&field("machineType"), &machine_type)?;

    let billing_cycle = match non_empty(raw.billing_cycle) {
        None => None,
        Some(b) => Some(parse_billing_cycle(&b).ok_or_else(|| {
            Error::invalid(
                field("billingCycle"),
                format!("must be one of {}", BillingCycle::ALL.join(", ")),
            )
        })?),
    };

    let ipxe_script_url = non_empty(raw.ipxe_script_url);
    if let Some(url) = &ipxe_script_url {
        check_http_url(&field("ipxeScriptUrl"), url)?;
    }
    let operating_system = match (non_empty(raw.os), &ipxe_script_url) {
        // An iPXE URL forces custom_ipxe, as the Gardener extension expects.
        (_, Some(_)) => CUSTOM_IPXE_OS.to_string(),
        (Some(os), None) => {
            check_slug(&field("OS"), &os)?;
            os
        }
        (None, None) => return Err(Error::invalid(field("OS"), "required (or ipxeScriptUrl)")),
    };
    let always_pxe = raw.always_pxe.unwrap_or(false);
    if always_pxe && ipxe_script_url.is_none() {
        return Err(Error::invalid(
            field("alwaysPXE"),
            "only allowed together with ipxeScriptUrl",
        ));
    }

    let tags = raw.tags.unwrap_or_default();
    let (cluster_tag, role_tags) = check_tags(&tags)?;

    let ssh_keys = uuids("sshKeys", raw.ssh_keys)?;
    let user_ssh_keys = uuids("userSSHKeys", raw.user_ssh_keys)?;
    let no_ssh_keys = raw.no_ssh_keys.unwrap_or(false);
    if no_ssh_keys && !(ssh_keys.is_empty() && user_ssh_keys.is_empty()) {
        return Err(Error::invalid(
            field("noSSHKeys"),
            "conflicts with sshKeys/userSSHKeys",
        ));
    }

    let reservation_ids = raw.reservation_ids.unwrap_or_default();
    for (i, r) in reservation_ids.iter().enumerate() {
        let f = field(format_args!("reservationIDs[{i}]"));
        if r != NEXT_AVAILABLE && parse_uuid(r).is_none() {
            return Err(Error::invalid(
                f,
                format!("must be a reservation UUID or `{NEXT_AVAILABLE}`"),
            ));
        }
        if reservation_ids[..i].contains(r) {
            return Err(Error::invalid(f, "duplicate reservation"));
        }
    }
    let reserved_devices_only = raw.reserved_devices_only.unwrap_or(false);
    if reserved_devices_only && reservation_ids.is_empty() {
        return Err(Error::invalid(
            field("reservedDevicesOnly"),
            "requires at least one entry in reservationIDs",
        ));
    }

    let custom_data = match raw.custom_data {
        None => None,
        Some(v) if v.expose().is_null() => None,
        Some(v) if v.expose().is_object() => Some(v),
        Some(_) => return Err(Error::invalid(field("customData"), "must be a JSON object")),
    };

    let ip_addresses = match raw.ip_addresses {
        None => None,
        Some(list) => Some(check_ip_addresses(list)?),
    };

    let termination_time = non_empty(raw.termination_time);
    if let Some(t) = &termination_time
        && !is_rfc3339(t)
    {
        return Err(Error::invalid(
            field("terminationTime"),
            "must be an RFC 3339 date-time, e.g. 2030-01-02T03:04:05Z",
        ));
    }

    let description = non_empty(raw.description);
    if let Some(d) = &description
        && d.chars().count() > MAX_DESCRIPTION_LEN
    {
        return Err(Error::invalid(
            field("description"),
            format!("longer than {MAX_DESCRIPTION_LEN} characters"),
        ));
    }

    Ok(ProviderSpec {
        project_id,
        location,
        machine_type,
        billing_cycle,
        operating_system,
        ipxe_script_url,
        tags,
        cluster_tag,
        role_tags,
        ssh_keys,
        user_ssh_keys,
        no_ssh_keys,
        reservation_ids,
        reserved_devices_only,
        custom_data,
        always_pxe,
        ip_addresses,
        locked: raw.locked.unwrap_or(false),
        unlock_on_delete: raw.unlock_on_delete.unwrap_or(false),
        termination_time,
        description,
    })
}

/// A hyphenated UUID (36 characters), the only form the API documents.
pub(crate) fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

fn parse_billing_cycle(s: &str) -> Option<BillingCycle> {
    match s {
        "hourly" => Some(BillingCycle::Hourly),
        "daily" => Some(BillingCycle::Daily),
        "monthly" => Some(BillingCycle::Monthly),
        "yearly" => Some(BillingCycle::Yearly),
        _ => None,
    }
}

/// Slug shape only (plan, OS, metro, facility): the API owns the list of valid values.
fn check_slug(field: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_SLUG_LEN {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_SLUG_LEN} characters"),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::invalid(
            field,
            "may contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

fn check_http_url(field: &str, url: &str) -> Result<(), Error> {
    if url.len() > MAX_URL_LEN {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_URL_LEN} characters"),
        ));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| Error::invalid(field, "must be an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err(Error::invalid(field, "must name a host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Checks every tag and returns (the cluster tag, the role tags).
fn check_tags(tags: &[String]) -> Result<(String, Vec<String>), Error> {
    let mut cluster: Option<&String> = None;
    let mut roles = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let f = field(format_args!("tags[{i}]"));
        if tag.trim().is_empty() {
            return Err(Error::invalid(f, "must not be empty"));
        }
        if tag.len() > MAX_TAG_LEN {
            return Err(Error::invalid(
                f,
                format!("longer than {MAX_TAG_LEN} bytes"),
            ));
        }
        if tag.chars().any(char::is_control) {
            return Err(Error::invalid(f, "must not contain control characters"));
        }
        if tag.starts_with(IDENTITY_TAG_PREFIX) || tag == IDENTITY_TAG_PREFIX.trim_end_matches(':')
        {
            return Err(Error::invalid(
                f,
                format!(
                    "the prefix `{IDENTITY_TAG_PREFIX}` is reserved for the driver's identity tag"
                ),
            ));
        }
        if tags[..i].contains(tag) {
            return Err(Error::invalid(f, "duplicate tag"));
        }
        if let Some(name) = tag.strip_prefix(CLUSTER_TAG_PREFIX) {
            if name.is_empty() {
                return Err(Error::invalid(
                    f,
                    format!("`{CLUSTER_TAG_PREFIX}` needs a cluster name"),
                ));
            }
            if cluster.is_some() {
                return Err(Error::invalid(
                    f,
                    format!("only one `{CLUSTER_TAG_PREFIX}...` tag is allowed"),
                ));
            }
            cluster = Some(tag);
        } else if let Some(role) = tag.strip_prefix(ROLE_TAG_PREFIX) {
            if role.is_empty() {
                return Err(Error::invalid(
                    f,
                    format!("`{ROLE_TAG_PREFIX}` needs a role name"),
                ));
            }
            roles.push(tag.clone());
        }
    }
    let cluster = cluster.ok_or_else(|| {
        Error::invalid(
            field("tags"),
            format!("must contain a `{CLUSTER_TAG_PREFIX}<cluster>` tag"),
        )
    })?;
    if roles.is_empty() {
        return Err(Error::invalid(
            field("tags"),
            format!("must contain a `{ROLE_TAG_PREFIX}<role>` tag"),
        ));
    }
    Ok((cluster.clone(), roles))
}

fn uuids(name: &str, list: Option<Vec<String>>) -> Result<Vec<Uuid>, Error> {
    let list = list.unwrap_or_default();
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let id = parse_uuid(s)
            .ok_or_else(|| Error::invalid(field(format_args!("{name}[{i}]")), "must be a UUID"))?;
        if out.contains(&id) {
            return Err(Error::invalid(
                field(format_args!("{name}[{i}]")),
                "duplicate",
            ));
        }
        out.push(id);
    }
    Ok(out)
}

fn check_ip_addresses(list: Vec<ObjectOnly<RawIpAddress>>) -> Result<Vec<IpAddress>, Error> {
    let mut out = Vec::with_capacity(list.len());
    for (i, ObjectOnly(raw)) in list.into_iter().enumerate() {
        let max_cidr = match raw.address_family {
            4 => 32,
            6 => 128,
            _ => {
                return Err(Error::invalid(
                    field(format_args!("ipAddresses[{i}].addressFamily")),
                    "must be 4 or 6",
                ));
            }
        };
        if let Some(c) = raw.cidr
            && !(1..=max_cidr).contains(&c)
        {
            return Err(Error::invalid(
                field(format_args!("ipAddresses[{i}].cidr")),
                format!("must be between 1 and {max_cidr}"),
            ));
        }
        // The API's default for `public` is true.
        out.push(IpAddress {
            address_family: raw.address_family,
            public: raw.public.unwrap_or(true),
            cidr: raw.cidr,
        });
    }
    if !out.iter().any(|a| a.address_family == 4 && !a.public) {
        return Err(Error::invalid(
            field("ipAddresses"),
            "must include a private IPv4 entry ({addressFamily: 4, public: false}); the API requires one",
        ));
    }
    Ok(out)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with field ranges checked. No calendar
/// arithmetic (Feb 30 passes); the API has the last word.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0u32, |acc, d| Some(acc * 10 + u32::from(d - b'0')))
    };
    let ok = (|| {
        let _year = digits(0..4)?;
        let month = digits(5..7)?;
        let day = digits(8..10)?;
        let hour = digits(11..13)?;
        let minute = digits(14..16)?;
        let second = digits(17..19)?;
        if b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        match b.get(i)? {
            b'Z' | b'z' => (i + 1 == b.len()).then_some(()),
            b'+' | b'-' => {
                let oh = digits(i + 1..i + 3)?;
                let om = digits(i + 4..i + 6)?;
                (b.get(i + 3) == Some(&b':') && oh <= 23 && om <= 59 && i + 6 == b.len())
                    .then_some(())
            }
            _ => None,
        }
    })();
    ok.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn base() -> Value {
        json!({
            "projectID": "5d1ef2a4-0000-4000-8000-000000000001",
            "metro": "sv",
            "machineType": "c3.small.x86",
            "billingCycle": "hourly",
            "OS": "flatcar_stable",
            "tags": ["kubernetes.io/cluster/shoot--a--b", "kubernetes.io/role/node"],
            "sshKeys": ["5d1ef2a4-0000-4000-8000-0000000000aa"],
        })
    }

    fn decode(v: &Value) -> Result<ProviderSpec, Error> {
        ProviderSpec::decode(&serde_json::to_vec(v).unwrap())
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    fn without(key: &str) -> Value {
        let mut v = base();
        v.as_object_mut().unwrap().remove(key);
        v
    }

    /// Asserts an InvalidField on exactly `want_field` whose reason contains `want`.
    #[track_caller]
    fn assert_invalid(r: Result<ProviderSpec, Error>, want_field: &str, want: &str) {
        match r {
            Err(Error::InvalidField { field, why: reason }) => {
                assert_eq!(field, want_field, "reason: {reason}");
                assert!(
                    reason.contains(want),
                    "{field}: {reason:?} does not contain {want:?}"
                );
            }
            other => panic!("expected InvalidField on {want_field}, got {other:?}"),
        }
    }

    #[test]
    fn decodes_gardener_class() {
        let mut v = base();
        v["facilities"] = json!(["sv15"]);
        v["reservationIDs"] = json!(["next-available"]);
        v["reservedDevicesOnly"] = json!(false);
        let s = decode(&v).unwrap();
        assert_eq!(
            s.location,
            Location::Facilities(vec!["sv15".into()]),
            "Gardener's zones (facilities) are honoured, not dropped for the metro"
        );
        assert_eq!(s.machine_type, "c3.small.x86");
        assert_eq!(s.billing_cycle, Some(BillingCycle::Hourly));
        assert_eq!(s.cluster_tag, "kubernetes.io/cluster/shoot--a--b");
        assert_eq!(s.role_tags, vec!["kubernetes.io/role/node".to_string()]);
        assert_eq!(s.reservation_ids, vec!["next-available".to_string()]);
        assert_eq!(s.ssh_keys.len(), 1);
    }

    #[test]
    fn facilities_used_without_metro() {
        let mut v = without("metro");
        v["facilities"] = json!(["sv15", "sv16"]);
        assert_eq!(
            decode(&v).unwrap().location,
            Location::Facilities(vec!["sv15".into(), "sv16".into()])
        );
        // An empty metro string (Go's zero value) counts as absent.
        v["metro"] = json!("");
        assert!(matches!(
            decode(&v).unwrap().location,
            Location::Facilities(_)
        ));
    }

    #[test]
    fn each_required_field_missing_is_named() {
        for (key, want_field, want) in [
            ("metro", "providerSpec.metro", "required"),
            ("machineType", "providerSpec.machineType", "required"),
            ("OS", "providerSpec.OS", "required"),
            ("tags", "providerSpec.tags", "kubernetes.io/cluster/"),
        ] {
            assert_invalid(decode(&without(key)), want_field, want);
        }
        // projectID is optional here (it may come from the Secret); the provider checks it.
        assert_eq!(decode(&without("projectID")).unwrap().project_id, None);
    }

    #[test]
    fn ipxe_url_replaces_os() {
        let mut v = without("OS");
        v["ipxeScriptUrl"] = json!("https://boot.example.com/x.ipxe");
        v["alwaysPXE"] = json!(true);
        let s = decode(&v).unwrap();
        assert_eq!(s.operating_system, CUSTOM_IPXE_OS);
        assert!(s.always_pxe);
        v["OS"] = json!("ubuntu_22_04");
        assert_eq!(decode(&v).unwrap().operating_system, CUSTOM_IPXE_OS);
        assert_invalid(
            decode(&with("ipxeScriptUrl", json!("ftp://x/y"))),
            "providerSpec.ipxeScriptUrl",
            "http",
        );
        assert_invalid(
            decode(&with("ipxeScriptUrl", json!("https:///x"))),
            "providerSpec.ipxeScriptUrl",
            "host",
        );
        assert_invalid(
            decode(&with("alwaysPXE", json!(true))),
            "providerSpec.alwaysPXE",
            "ipxeScriptUrl",
        );
    }

    #[test]
    fn type_errors_and_unknown_fields_name_the_path() {
        let mut v = base();
        v["tags"] = json!(["kubernetes.io/cluster/x", 5]);
        assert_invalid(
            decode(&v),
            "providerSpec.tags[1]",
            "invalid type: integer `5`, expected a string",
        );
        assert_invalid(
            decode(&with("fooBar", json!(1))),
            "providerSpec.fooBar",
            "unknown field",
        );
        assert_invalid(
            decode(&with("os", json!("x"))),
            "providerSpec.os",
            "did you mean `OS`?",
        );
        assert_invalid(
            decode(&with("locked", json!("yes"))),
            "providerSpec.locked",
            "expected a boolean",
        );
        assert_invalid(
            decode(&with(
                "ipAddresses",
                json!([{"addressFamily": 4, "public": false, "size": 2}]),
            )),
            "providerSpec.ipAddresses[0].size",
            "unknown field",
        );
    }

    #[test]
    fn invalid_billing_cycle_lists_allowed_values() {
        assert_invalid(
            decode(&with("billingCycle", json!("weekly"))),
            "providerSpec.billingCycle",
            "hourly, daily, monthly, yearly",
        );
    }

    #[test]
    fn bad_tags() {
        let cases = [
            (
                json!(["kubernetes.io/role/node"]),
                "providerSpec.tags",
                "kubernetes.io/cluster/",
            ),
            (
                json!(["kubernetes.io/cluster/x"]),
                "providerSpec.tags",
                "kubernetes.io/role/",
            ),
            (
                json!(["kubernetes.io/cluster/x", "kubernetes.io/role/node", ""]),
                "providerSpec.tags[2]",
                "empty",
            ),
            (
                json!([
                    "kubernetes.io/cluster/x",
                    "kubernetes.io/role/node",
                    "machine.sapcloud.io/name:m"
                ]),
                "providerSpec.tags[2]",
                "reserved",
            ),
            (
                json!([
                    "kubernetes.io/cluster/x",
                    "kubernetes.io/role/node",
                    "machine.sapcloud.io/name"
                ]),
                "providerSpec.tags[2]",
                "reserved",
            ),
            (
                json!(["kubernetes.io/cluster/", "kubernetes.io/role/node"]),
                "providerSpec.tags[0]",
                "cluster name",
            ),
            (
                json!([
                    "kubernetes.io/cluster/a",
                    "kubernetes.io/cluster/b",
                    "kubernetes.io/role/node"
                ]),
                "providerSpec.tags[1]",
                "only one",
            ),
            (
                json!(["kubernetes.io/cluster/a", "kubernetes.io/role/node", "a\nb"]),
                "providerSpec.tags[2]",
                "control",
            ),
            (
                json!([
                    "kubernetes.io/cluster/a",
                    "kubernetes.io/role/node",
                    "x",
                    "x"
                ]),
                "providerSpec.tags[3]",
                "duplicate",
            ),
        ];
        for (tags, f, want) in cases {
            assert_invalid(decode(&with("tags", tags)), f, want);
        }
    }

    #[test]
    fn non_object_empty_and_oversized_input() {
        assert_invalid(ProviderSpec::decode(b""), "providerSpec", "empty");
        assert_invalid(ProviderSpec::decode(b"  \n"), "providerSpec", "empty");
        assert_invalid(
            ProviderSpec::decode(b"[1,2]"),
            "providerSpec",
            "expected a JSON object",
        );
        assert_invalid(
            ProviderSpec::decode(b"\"x\""),
            "providerSpec",
            "expected a JSON object",
        );
        assert_invalid(
            ProviderSpec::decode(b"null"),
            "providerSpec",
            "expected a JSON object",
        );
        assert_invalid(ProviderSpec::decode(b"{not json"), "providerSpec", "line 1");
        assert_invalid(ProviderSpec::decode(b"{} {}"), "providerSpec", "trailing");
        let huge = vec![b' '; 1024 * 1024];
        let started = std::time::Instant::now();
        assert_invalid(ProviderSpec::decode(&huge), "providerSpec", "at most 65536");
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    fn slug_uuid_and_list_checks() {
        let cases = [
            (
                "machineType",
                json!("c3 small"),
                "providerSpec.machineType",
                "letters",
            ),
            (
                "machineType",
                json!("x".repeat(200)),
                "providerSpec.machineType",
                "longer",
            ),
            ("metro", json!("s/v"), "providerSpec.metro", "letters"),
            ("OS", json!("ubuntu;rm"), "providerSpec.OS", "letters"),
            (
                "projectID",
                json!("not-a-uuid"),
                "providerSpec.projectID",
                "UUID",
            ),
            ("sshKeys", json!(["abc"]), "providerSpec.sshKeys[0]", "UUID"),
            (
                "userSSHKeys",
                json!(["5d1ef2a4-0000-4000-8000-0000000000aa", "x"]),
                "providerSpec.userSSHKeys[1]",
                "UUID",
            ),
            (
                "reservationIDs",
                json!(["next-available", "nope"]),
                "providerSpec.reservationIDs[1]",
                "next-available",
            ),
            (
                "reservationIDs",
                json!(["next-available", "next-available"]),
                "providerSpec.reservationIDs[1]",
                "duplicate",
            ),
            (
                "reservedDevicesOnly",
                json!(true),
                "providerSpec.reservedDevicesOnly",
                "reservationIDs",
            ),
            (
                "noSSHKeys",
                json!(true),
                "providerSpec.noSSHKeys",
                "conflicts",
            ),
            (
                "customData",
                json!([1]),
                "providerSpec.customData",
                "JSON object",
            ),
            (
                "terminationTime",
                json!("tomorrow"),
                "providerSpec.terminationTime",
                "RFC 3339",
            ),
            (
                "description",
                json!("d".repeat(2000)),
                "providerSpec.description",
                "longer",
            ),
            (
                "facilities",
                json!("sv15"),
                "providerSpec.facilities",
                "expected a sequence",
            ),
        ];
        for (key, value, f, want) in cases {
            assert_invalid(decode(&with(key, value)), f, want);
        }
        let mut v = without("metro");
        v["facilities"] = json!(["sv15", "bad facility"]);
        assert_invalid(decode(&v), "providerSpec.facilities[1]", "letters");
    }

    #[test]
    fn ip_addresses() {
        let ok = json!([{"addressFamily": 4, "public": false, "cidr": 31}, {"addressFamily": 6}]);
        let s = decode(&with("ipAddresses", ok)).unwrap();
        let ips = s.ip_addresses.unwrap();
        assert_eq!(
            ips[1],
            IpAddress {
                address_family: 6,
                public: true,
                cidr: None
            }
        );
        assert_invalid(
            decode(&with(
                "ipAddresses",
                json!([{"addressFamily": 4, "public": true}]),
            )),
            "providerSpec.ipAddresses",
            "private IPv4",
        );
        assert_invalid(
            decode(&with("ipAddresses", json!([]))),
            "providerSpec.ipAddresses",
            "private IPv4",
        );
        assert_invalid(
            decode(&with(
                "ipAddresses",
                json!([{"addressFamily": 5, "public": false}]),
            )),
            "providerSpec.ipAddresses[0].addressFamily",
            "4 or 6",
        );
        assert_invalid(
            decode(&with(
                "ipAddresses",
                json!([{"addressFamily": 4, "public": false, "cidr": 33}]),
            )),
            "providerSpec.ipAddresses[0].cidr",
            "between",
        );
        assert_invalid(
            decode(&with("ipAddresses", json!([{"public": false}]))),
            "providerSpec.ipAddresses[0]",
            "missing field `addressFamily`",
        );
        assert_invalid(
            decode(&with("ipAddresses", json!([[4, false]]))),
            "providerSpec.ipAddresses[0]",
            "expected a JSON object",
        );
    }

    #[test]
    fn rfc3339_forms() {
        for ok in [
            "2030-01-02T03:04:05Z",
            "2030-01-02t03:04:05.123z",
            "2030-01-02T03:04:05+02:00",
            "2030-12-31T23:59:60-11:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2030-01-02",
            "2030-13-02T03:04:05Z",
            "2030-01-02T03:04:05",
            "2030-01-02T03:04:05.Z",
            "2030-01-02T03:04:05+0200",
            "2030-01-02T03:04:05Zx",
            "２030-01-02T03:04:05Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn debug_hides_custom_data() {
        let s = decode(&with("customData", json!({"token": "s3cr3t-custom"}))).unwrap();
        assert!(!format!("{s:?}").contains("s3cr3t-custom"));
        assert_eq!(s.custom_data.unwrap().expose()["token"], "s3cr3t-custom");
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            prop_oneof![
                "[a-zA-Z0-9:/._-]{0,24}",
                Just("kubernetes.io/cluster/x".to_string()),
                Just("kubernetes.io/role/node".to_string()),
                Just("5d1ef2a4-0000-4000-8000-000000000001".to_string()),
                any::<String>(),
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let keys = prop_oneof![
                proptest::sample::select(KNOWN_FIELDS).prop_map(str::to_string),
                Just("addressFamily".to_string()),
                Just("public".to_string()),
                "[a-zA-Z]{1,8}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = ProviderSpec::decode(&bytes);
        }

        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let r = decode(&v);
            if let Err(e) = r {
                let named = matches!(e, Error::InvalidField { ref field, .. } if field.starts_with("providerSpec"));
                proptest::prop_assert!(named, "unexpected error {:?}", e);
            }
        }

        #[test]
        fn arbitrary_fields_into_base_never_panic(key in proptest::sample::select(KNOWN_FIELDS), v in arb_json()) {
            let _ = decode(&with(key, v));
        }

        #[test]
        fn arbitrary_time_strings_never_panic(s in "\\PC{0,40}") {
            let _ = is_rfc3339(&s);
        }
    }
}
