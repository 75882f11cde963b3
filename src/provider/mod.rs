//! The driver's decisions, free of any transport: decode and validate the providerSpec and
//! Secret, find a machine's device, create idempotently, and map devices to machines.
//!
//! `cmi::server` moves fields from the gRPC request into these types and back; tests drive
//! [`Provider`] with a fake [`DeviceApi`](crate::metal::DeviceApi).

pub mod credentials;
pub mod error;
#[cfg(test)]
pub mod fake;
pub mod inflight;
pub mod lookup;
pub mod machine;
pub mod scope;
pub mod scrub;
pub mod spec;

use std::collections::HashMap;

use tokio::time::Instant;

pub use error::Error;
pub use machine::{MachineInfo, Provider, ProviderConfig, create_refusal};

/// The inputs every per-machine RPC shares (Create/Delete/GetMachineStatus/ShutDown).
/// Deliberately not `Debug`: `secrets` holds the API token and userData.
#[derive(Clone, Default)]
pub struct MachineRequest {
    /// `MachineName`: the Machine object's name; becomes the device hostname.
    pub machine_name: String,
    /// `ProviderSpec`: the MachineClass providerSpec as JSON bytes.
    pub provider_spec: Vec<u8>,
    /// `Secrets`: merged Secret data (apiToken, userData, ...).
    pub secrets: HashMap<String, Vec<u8>>,
    /// `ProviderID`, empty when unknown.
    pub provider_id: String,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
}

/// The inputs of ListMachines. Not `Debug` for the same reason as [`MachineRequest`].
#[derive(Clone, Default)]
pub struct ListRequest {
    /// `ProviderSpec`: the MachineClass providerSpec as JSON bytes (its cluster and role
    /// tags select the devices).
    pub provider_spec: Vec<u8>,
    /// `Secrets`: merged Secret data; only the token (and optionally projectID) is used.
    pub secrets: HashMap<String, Vec<u8>>,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
}
