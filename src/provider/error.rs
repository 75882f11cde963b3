//! Why a machine operation failed, in the provider's own terms. `cmi::status` maps each
//! variant to exactly one gRPC code; nothing here knows about gRPC.

use crate::metal;
use crate::provider_id::ProviderIdError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The caller sent something unusable. `field` is the path a user can find, e.g.
    /// `providerSpec.metro`, `secrets.apiToken`, `machineName`, `providerID`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// The device does not exist (404, 403 on a failed device, or no lookup match).
    #[error("{0}")]
    NotFound(String),

    /// A device exists for this machine but does not match the requested spec.
    #[error("{0}")]
    AlreadyExists(String),

    /// The device is in a state that forbids the operation (e.g. locked on delete).
    #[error("{0}")]
    FailedPrecondition(String),

    /// No capacity, no usable hardware reservation, or a quota.
    #[error("{0}")]
    ResourceExhausted(String),

    /// Another call for the same machine is in flight in this driver.
    #[error("another operation on machine {machine} is in progress; retry later")]
    Concurrent { machine: String },

    /// More than one device claims this machine (the orphan collector resolves it).
    #[error("machine {machine} maps to {count} devices: {ids}")]
    MultipleDevices {
        machine: String,
        count: usize,
        ids: String,
    },

    /// The caller's deadline passed.
    #[error("deadline exceeded: {0}")]
    Deadline(String),

    /// The Metal API failed; `cmi::status` maps by HTTP status.
    #[error(transparent)]
    Api(#[from] metal::Error),
}

impl Error {
    /// An [`Error::InvalidArgument`]: the one constructor, so every caller-side mistake names
    /// the field a user has to fix.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A ProviderID that does not parse is an invalid `providerID` field.
impl From<ProviderIdError> for Error {
    fn from(error: ProviderIdError) -> Self {
        Self::invalid("providerID", error.to_string())
    }
}
