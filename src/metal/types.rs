//! Serde types for the Equinix Metal device API, named as in the OpenAPI spec
//! (`../shared/reference/metal-api/metal-openapi.bundled.yaml`, `components/schemas`).
//!
//! Shared by the client (which sends inputs and decodes responses) and the simulator
//! (which decodes inputs and sends responses), so the two cannot disagree on a name.
//!
//! Rules that keep us inside the spec:
//! - every optional field is `Option` with `skip_serializing_if`, so nothing unset is sent
//!   and no `null` appears (the spec marks nothing nullable; Prism rejects `null`);
//! - responses tolerate missing, `null` and unknown fields (the real API sent `null`s);
//! - secret-bearing fields (`userdata`, `customdata`, `root_password`) are [`Secret`], so a
//!   `Debug` of a device or an input never prints them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::secret::Secret;

/// `Href` — a link; the only required field is `href`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Href {
    pub href: String,
}

/// `Meta` — pagination links and counters on every list response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<Href>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Href>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Href>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Href>,
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub self_: Option<Href>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_page: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_page: Option<i64>,
}

/// `Device.state`. Unknown future states decode as [`DeviceState::Unknown`] instead of
/// failing the whole page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Queued,
    Provisioning,
    Deprovisioning,
    Reinstalling,
    Active,
    Inactive,
    Failed,
    PoweringOn,
    PoweringOff,
    Deleted,
    #[serde(other)]
    Unknown,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Provisioning => "provisioning",
            Self::Deprovisioning => "deprovisioning",
            Self::Reinstalling => "reinstalling",
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Failed => "failed",
            Self::PoweringOn => "powering_on",
            Self::PoweringOff => "powering_off",
            Self::Deleted => "deleted",
            Self::Unknown => "unknown",
        }
    }

    /// Being torn down: such a device no longer stands for a machine.
    pub fn is_going_away(self) -> bool {
        matches!(self, Self::Deprovisioning | Self::Deleted)
    }
}

/// `Metro` as embedded in a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metro {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// `Facility` as embedded in a device (a deprecated concept the API still reports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facility {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `Plan` as embedded in a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `OperatingSystem` as embedded in a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatingSystem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `HardwareReservation` as embedded in a device; we only need its identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareReservation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisionable: Option<bool>,
}

/// `IPAssignment` — one address of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAssignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_family: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `Device` — every field optional, as in the spec (which has no `required` list).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DeviceState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_cycle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_pxe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipxe_script_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_percentage: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metro: Option<Metro>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<Facility>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_system: Option<OperatingSystem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_lite: Option<Href>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_reservation: Option<HardwareReservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Vec<IpAssignment>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userdata: Option<Secret<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customdata: Option<Secret<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password: Option<Secret<String>>,
}

impl Device {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags
            .as_deref()
            .is_some_and(|tags| tags.iter().any(|t| t == tag))
    }
}

/// `DeviceList` — one page of `GET /projects/{id}/devices`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceList {
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
}

/// `DeviceCreateInput.billing_cycle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BillingCycle {
    Hourly,
    Daily,
    Monthly,
    Yearly,
}

impl BillingCycle {
    pub const ALL: [&'static str; 4] = ["hourly", "daily", "monthly", "yearly"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
        }
    }
}

/// `IPAddress` — one requested address block on create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddressInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_family: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_reservations: Vec<String>,
}

/// The body of `POST /projects/{id}/devices`: `oneOf [DeviceCreateInMetroInput,
/// DeviceCreateInFacilityInput]`. Exactly one of `metro` and `facility` must be set,
/// otherwise both `oneOf` branches match (or none does) and a validator rejects it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceCreateInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<Vec<String>>,
    pub plan: String,
    pub operating_system: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_cycle: Option<BillingCycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userdata: Option<Secret<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customdata: Option<Secret<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub project_ssh_keys: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_ssh_keys: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_ssh_keys: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipxe_script_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_pxe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_reservation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Vec<IpAddressInput>>,
}

/// `DeviceUpdateInput` — the subset the driver changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceUpdateInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// `DeviceActionInput.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceActionType {
    PowerOn,
    PowerOff,
    Reboot,
    Rescue,
    Reinstall,
}

/// `DeviceActionInput` — body of `POST /devices/{id}/actions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceActionInput {
    #[serde(rename = "type")]
    pub type_: DeviceActionType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_delete: Option<bool>,
}

/// `Error` — "Either `error` or `errors` will be set."
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

impl ErrorBody {
    pub fn one(message: impl Into<String>) -> Self {
        Self {
            error: None,
            errors: Some(vec![message.into()]),
        }
    }

    /// All messages joined with `; `, whichever shape the body had.
    pub fn message(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if let Some(e) = &self.error {
            parts.push(e);
        }
        if let Some(es) = &self.errors {
            parts.extend(es.iter().map(String::as_str));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tolerates_nulls_unknown_fields_and_states() {
        let d: Device = serde_json::from_str(
            r#"{"id":"5d1ef2a4-0000-4000-8000-000000000009","description":null,
                "state":"brand_new_state","surprise":{"x":1},"root_password":"hunter2",
                "tags":["a"],"meta":null}"#,
        )
        .unwrap();
        assert_eq!(d.state, Some(DeviceState::Unknown));
        assert!(d.description.is_none());
        assert!(d.has_tag("a"));
        assert!(!format!("{d:?}").contains("hunter2"));
    }

    #[test]
    fn create_input_omits_unset_fields() {
        let input = DeviceCreateInput {
            metro: Some("sv".into()),
            plan: "c3.small.x86".into(),
            operating_system: "ubuntu_22_04".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&input).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"metro":"sv","plan":"c3.small.x86","operating_system":"ubuntu_22_04"})
        );
    }

    #[test]
    fn error_body_both_shapes() {
        let a: ErrorBody = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
        let b: ErrorBody = serde_json::from_str(r#"{"errors":["y","z"]}"#).unwrap();
        assert_eq!(a.message(), "x");
        assert_eq!(b.message(), "y; z");
    }
}
