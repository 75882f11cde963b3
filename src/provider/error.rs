//! Why a machine operation failed, in the provider's own terms: each variant names a cause
//! and carries what a message needs. `cmi::status` picks the gRPC code for each; nothing
//! here knows about gRPC.
//!
//! A Metal API failure the provider does not turn into a device fact (gone, locked, ...) is
//! classified once, in [`Error::api`], by what it means for the caller: the token was
//! refused, the request was rejected, the API is unavailable, and so on. Every such variant
//! keeps the API error (scrubbed of secrets) as its message.

use std::fmt;

use uuid::Uuid;

use crate::metal::{self, DeviceState};
use crate::provider_id::ProviderIdError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The caller sent something unusable. `field` is the path a user can find, e.g.
    /// `providerSpec.metro`, `secrets.apiToken`, `machineName`, `providerID`.
    #[error("{field}: {why}")]
    InvalidField { field: String, why: String },

    /// The device named by a ProviderID does not exist (404, or the 403 the API answers for
    /// failed and deleted devices).
    #[error("device {device} not found")]
    DeviceNotFound { device: Uuid },

    /// The device named by a ProviderID is being deprovisioned.
    #[error("device {device} is being deprovisioned")]
    DeviceDeprovisioning { device: Uuid },

    /// No device stands for the machine (nothing matched the lookup).
    #[error("no device found for machine {machine}")]
    NoDeviceForMachine { machine: String },

    /// The API handed back a device without an id; nothing can be done with it.
    #[error("device for machine {machine} has no id")]
    DeviceWithoutId { machine: String },

    /// The device named by a ProviderID exists but is not this cluster's, so it is not ours
    /// to act on (CMI: act only on the cluster's machines).
    #[error("device {device} is not part of this cluster ({why}); refusing to act on it")]
    DeviceNotInCluster { device: Uuid, why: Foreign },

    /// The device is locked against deletion and the spec does not allow unlocking it.
    #[error(
        "device {device} is locked against deletion; unlock it (PUT /devices/{device} locked=false) \
         or set providerSpec.unlockOnDelete: true"
    )]
    DeviceLocked { device: Uuid },

    /// A device for this machine exists but differs from the providerSpec.
    #[error(
        "device {device} already exists for machine {machine} but differs from the providerSpec: {}",
        differences.join(", ")
    )]
    DeviceMismatch {
        device: Uuid,
        machine: String,
        /// What differs, e.g. `plan c3.large.x86 (providerSpec.machineType c3.small.x86)`.
        differences: Vec<String>,
    },

    /// The device cannot be powered off before provisioning ends.
    #[error("device {device} is {}; it can be powered off once it is active", state.as_str())]
    DeviceNotReady { device: Uuid, state: DeviceState },

    /// The API refused a power-off (422) for the device's current state.
    #[error("device {device} cannot be powered off now: {source}")]
    PowerOffRefused {
        device: Uuid,
        #[source]
        source: metal::Error,
    },

    /// No capacity: every reservation and the on-demand pool (unless `reservedDevicesOnly`)
    /// refused the create.
    #[error(
        "no capacity for machine {machine}: {}{}",
        refusals.join("; "),
        if *reserved_only { " (reservedDevicesOnly: no on-demand fallback)" } else { "" }
    )]
    NoCapacity {
        machine: String,
        /// One entry per option tried: `reservation <id>: <API message>`, `on-demand: ...`.
        refusals: Vec<String>,
        reserved_only: bool,
    },

    /// Another call for the same machine is in flight in this driver.
    #[error("another operation on machine {machine} is in progress; retry later")]
    MachineBusy { machine: String },

    /// More than one device claims this machine (the orphan collector resolves it).
    #[error(
        "machine {machine} maps to {} devices: {}",
        devices.len(),
        devices.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
    )]
    MultipleDevices { machine: String, devices: Vec<Uuid> },

    /// The caller's deadline passed before the next step.
    #[error("deadline exceeded: {during}")]
    DeadlinePassed { during: &'static str },

    /// The API refused the token (401).
    #[error(transparent)]
    TokenRefused(metal::Error),

    /// The token may not do this (403 where it does not mean "device gone").
    #[error(transparent)]
    AccessDenied(metal::Error),

    /// The API rejected the request as invalid (400/422: unknown plan, OS, metro, ...).
    #[error(transparent)]
    RequestRejected(metal::Error),

    /// Something the request refers to does not exist (404 beyond a device lookup, e.g. the
    /// project).
    #[error(transparent)]
    ResourceMissing(metal::Error),

    /// The API reported a conflicting change in progress (409).
    #[error(transparent)]
    ApiConflict(metal::Error),

    /// The API is throttling or failing (429, 5xx after our retries) or unreachable.
    #[error(transparent)]
    UpstreamUnavailable(metal::Error),

    /// The API did not answer within the deadline.
    #[error(transparent)]
    UpstreamTimeout(metal::Error),

    /// The API answered in a way we cannot use: off-spec data or an unexpected status.
    #[error(transparent)]
    UpstreamUnexpected(metal::Error),
}

/// Why a device is not this cluster's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Foreign {
    /// It is in another project than the class's.
    OtherProject { project: Uuid },
    /// It lacks the class's cluster tag.
    MissingClusterTag { tag: String },
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OtherProject { project } => {
                write!(f, "it belongs to another project than {project}")
            }
            Self::MissingClusterTag { tag } => write!(f, "it lacks the tag {tag}"),
        }
    }
}

impl Error {
    /// An [`Error::InvalidField`]: the one constructor, so every caller-side mistake names the
    /// field a user has to fix.
    pub fn invalid(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            why: why.into(),
        }
    }

    /// A Metal API failure by what it means for the caller. The provider calls this after
    /// scrubbing secrets from the error and after deciding the device facts (gone, locked,
    /// no capacity) itself.
    pub fn api(error: metal::Error) -> Self {
        match &error {
            metal::Error::Status { status, .. } => match *status {
                401 => Self::TokenRefused(error),
                403 => Self::AccessDenied(error),
                400 | 422 => Self::RequestRejected(error),
                404 => Self::ResourceMissing(error),
                409 => Self::ApiConflict(error),
                429 | 500..=599 => Self::UpstreamUnavailable(error),
                _ => Self::UpstreamUnexpected(error),
            },
            metal::Error::Transport { .. } => Self::UpstreamUnavailable(error),
            metal::Error::Deadline { .. } => Self::UpstreamTimeout(error),
            metal::Error::Decode { .. } => Self::UpstreamUnexpected(error),
        }
    }

    /// The Metal API error this one passes on (not one the provider turned into a device
    /// fact, such as a refused power-off).
    pub fn api_error(&self) -> Option<&metal::Error> {
        match self {
            Self::TokenRefused(e)
            | Self::AccessDenied(e)
            | Self::RequestRejected(e)
            | Self::ResourceMissing(e)
            | Self::ApiConflict(e)
            | Self::UpstreamUnavailable(e)
            | Self::UpstreamTimeout(e)
            | Self::UpstreamUnexpected(e) => Some(e),
            _ => None,
        }
    }
}

/// A ProviderID that does not parse is an invalid `providerID` field.
impl From<ProviderIdError> for Error {
    fn from(error: ProviderIdError) -> Self {
        Self::invalid("providerID", error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metal::Operation;

    fn status(status: u16) -> metal::Error {
        metal::Error::Status {
            endpoint: Operation::FindDeviceById,
            status,
            message: "x".into(),
            retry_after: None,
        }
    }

    #[test]
    fn api_failures_are_classified_by_cause() {
        type Is = fn(&Error) -> bool;
        let cases: [(metal::Error, Is); 13] = [
            (status(401), |e| matches!(e, Error::TokenRefused(_))),
            (status(403), |e| matches!(e, Error::AccessDenied(_))),
            (status(400), |e| matches!(e, Error::RequestRejected(_))),
            (status(422), |e| matches!(e, Error::RequestRejected(_))),
            (status(404), |e| matches!(e, Error::ResourceMissing(_))),
            (status(409), |e| matches!(e, Error::ApiConflict(_))),
            (status(429), |e| matches!(e, Error::UpstreamUnavailable(_))),
            (status(500), |e| matches!(e, Error::UpstreamUnavailable(_))),
            (status(503), |e| matches!(e, Error::UpstreamUnavailable(_))),
            (status(418), |e| matches!(e, Error::UpstreamUnexpected(_))),
            (
                metal::Error::Transport {
                    endpoint: Operation::CreateDevice,
                    reason: "reset".into(),
                },
                |e| matches!(e, Error::UpstreamUnavailable(_)),
            ),
            (
                metal::Error::Deadline {
                    endpoint: Operation::CreateDevice,
                },
                |e| matches!(e, Error::UpstreamTimeout(_)),
            ),
            (
                metal::Error::Decode {
                    endpoint: Operation::CreateDevice,
                    reason: "x".into(),
                },
                |e| matches!(e, Error::UpstreamUnexpected(_)),
            ),
        ];
        for (api, is) in cases {
            let text = api.to_string();
            let error = Error::api(api);
            assert!(is(&error), "{error:?}");
            assert_eq!(error.to_string(), text, "the API's message is kept");
            assert!(error.api_error().is_some());
        }
    }

    #[test]
    fn a_bad_provider_id_is_an_invalid_field() {
        let error = Error::from(crate::provider_id::ProviderId::parse("aws:///x").unwrap_err());
        assert!(
            matches!(&error, Error::InvalidField { field, .. } if field == "providerID"),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("providerID: must be equinixmetal://")
        );
    }
}
