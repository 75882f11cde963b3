//! The typed CMI calls: one method per RPC on [`CmiClient`], plain inputs in (machine name,
//! providerSpec bytes, Secret data, ProviderID), a typed answer or a [`CallError`] out.
//!
//! This is the one place on the client side that builds `cmi.v1` messages, and every call
//! carries the client's deadline. A [`CallError`] names its [`Rpc`], so whoever handles it
//! (the controller's retry table, a CLI message, a metric label) cannot mistake one RPC's
//! failure for another's.

use std::{collections::HashMap, fmt};

use tonic::{Code, Status};

use super::{
    client::CmiClient,
    codes::code_name,
    rpc::Rpc,
    v1::{
        CreateMachineRequest, DeleteMachineRequest, GetMachineStatusRequest,
        GetPluginCapabilitiesRequest, GetPluginInfoRequest, GetVolumeIDsRequest,
        ListMachinesRequest, ProbeRequest, ShutDownMachineRequest,
        plugin_capability::{self, rpc::Type as Capability},
    },
};

/// The machine a per-machine call is about, as MCM hands it to a driver. Borrowed, so a
/// caller making several calls for one machine builds it once. Deliberately not `Debug`:
/// `secrets` holds the API token and userData.
#[derive(Clone, Copy)]
pub struct MachineRef<'a> {
    /// The Machine object's name.
    pub name: &'a str,
    /// The MachineClass providerSpec, JSON bytes.
    pub provider_spec: &'a [u8],
    /// The merged Secret data (`apiToken`, `userData`, ...): sent to the driver and
    /// nowhere else.
    pub secrets: &'a HashMap<String, Vec<u8>>,
    /// The ProviderID when known, else empty (the driver then finds the machine by name).
    /// CreateMachine does not send it.
    pub provider_id: &'a str,
    /// `status.lastKnownState`, sent by CreateMachine, DeleteMachine and ShutDownMachine.
    pub last_known_state: &'a [u8],
}

impl<'a> MachineRef<'a> {
    /// A machine known by name only.
    pub fn new(
        name: &'a str,
        provider_spec: &'a [u8],
        secrets: &'a HashMap<String, Vec<u8>>,
    ) -> Self {
        Self {
            name,
            provider_spec,
            secrets,
            provider_id: "",
            last_known_state: &[],
        }
    }

    /// With its ProviderID.
    pub fn with_provider_id(self, provider_id: &'a str) -> Self {
        Self {
            provider_id,
            ..self
        }
    }

    /// With the `lastKnownState` MCM stored for it.
    pub fn with_last_known_state(self, last_known_state: &'a [u8]) -> Self {
        Self {
            last_known_state,
            ..self
        }
    }
}

/// CreateMachine's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The new (or adopted) machine's ProviderID.
    pub provider_id: String,
    /// The name its Node will have.
    pub node_name: String,
    /// Opaque driver state for `status.lastKnownState`.
    pub last_known_state: Vec<u8>,
}

/// GetMachineStatus's answer: the machine was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The machine's ProviderID.
    pub provider_id: String,
    /// The name of its Node.
    pub node_name: String,
}

/// GetPluginInfo's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The driver's DNS-style name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Free-form facts about it.
    pub manifest: HashMap<String, String>,
}

/// A call the driver (or the transport) answered with an error status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    rpc: Rpc,
    code: Code,
    message: String,
}

impl CallError {
    /// `rpc` failed with `code`; `message` is the driver's (drivers keep secrets out of it).
    pub fn new(rpc: Rpc, code: Code, message: impl Into<String>) -> Self {
        Self {
            rpc,
            code,
            message: message.into(),
        }
    }

    /// The error status `rpc` was answered with.
    pub fn from_status(rpc: Rpc, status: &Status) -> Self {
        Self::new(rpc, status.code(), status.message())
    }

    /// The RPC that failed.
    pub fn rpc(&self) -> Rpc {
        self.rpc
    }

    /// The gRPC code, which is also MCM's machine code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The driver's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: {}: {}",
            self.rpc,
            code_name(self.code),
            self.message
        )
    }
}

impl std::error::Error for CallError {}

/// Turns an error status of `rpc` into a [`CallError`].
fn failed(rpc: Rpc) -> impl FnOnce(Status) -> CallError {
    move |status| CallError::from_status(rpc, &status)
}

impl CmiClient {
    /// GetPluginInfo: the driver's name, version and manifest.
    pub async fn get_plugin_info(&self) -> Result<PluginInfo, CallError> {
        let request = self.request(GetPluginInfoRequest {});
        let r = self.identity.clone().get_plugin_info(request).await;
        let r = r.map_err(failed(Rpc::GetPluginInfo))?.into_inner();
        Ok(PluginInfo {
            name: r.name,
            version: r.version,
            manifest: r.manifest,
        })
    }

    /// GetPluginCapabilities: the RPCs the driver advertises (capabilities this client does
    /// not know are left out).
    pub async fn get_plugin_capabilities(&self) -> Result<Vec<Rpc>, CallError> {
        let request = self.request(GetPluginCapabilitiesRequest {});
        let r = self.identity.clone().get_plugin_capabilities(request).await;
        let r = r.map_err(failed(Rpc::GetPluginCapabilities))?.into_inner();
        Ok(r.capabilities
            .into_iter()
            .filter_map(|c| match c.r#type {
                Some(plugin_capability::Type::Rpc(rpc)) => Capability::try_from(rpc.r#type).ok(),
                None => None,
            })
            .filter_map(Rpc::from_capability)
            .collect())
    }

    /// Probe: `Some(ready)`, or `None` when the driver leaves `ready` unset. An unhealthy
    /// driver answers with an error.
    pub async fn probe(&self) -> Result<Option<bool>, CallError> {
        let request = self.request(ProbeRequest {});
        let r = self.identity.clone().probe(request).await;
        Ok(r.map_err(failed(Rpc::Probe))?.into_inner().ready)
    }

    /// CreateMachine.
    pub async fn create_machine(&self, m: MachineRef<'_>) -> Result<Created, CallError> {
        let request = self.request(CreateMachineRequest {
            machine_name: m.name.to_owned(),
            provider_spec: m.provider_spec.to_vec(),
            secrets: m.secrets.clone(),
            last_known_state: m.last_known_state.to_vec(),
        });
        let r = self.machine.clone().create_machine(request).await;
        let r = r.map_err(failed(Rpc::CreateMachine))?.into_inner();
        Ok(Created {
            provider_id: r.provider_id,
            node_name: r.node_name,
            last_known_state: r.last_known_state,
        })
    }

    /// GetMachineStatus.
    pub async fn get_machine_status(&self, m: MachineRef<'_>) -> Result<Found, CallError> {
        let request = self.request(GetMachineStatusRequest {
            machine_name: m.name.to_owned(),
            provider_spec: m.provider_spec.to_vec(),
            secrets: m.secrets.clone(),
            provider_id: m.provider_id.to_owned(),
        });
        let r = self.machine.clone().get_machine_status(request).await;
        let r = r.map_err(failed(Rpc::GetMachineStatus))?.into_inner();
        Ok(Found {
            provider_id: r.provider_id,
            node_name: r.node_name,
        })
    }

    /// DeleteMachine; answers the driver's `LastKnownState`.
    pub async fn delete_machine(&self, m: MachineRef<'_>) -> Result<Vec<u8>, CallError> {
        let request = self.request(DeleteMachineRequest {
            machine_name: m.name.to_owned(),
            provider_spec: m.provider_spec.to_vec(),
            secrets: m.secrets.clone(),
            provider_id: m.provider_id.to_owned(),
            last_known_state: m.last_known_state.to_vec(),
        });
        let r = self.machine.clone().delete_machine(request).await;
        Ok(r.map_err(failed(Rpc::DeleteMachine))?
            .into_inner()
            .last_known_state)
    }

    /// ShutDownMachine; answers the driver's `LastKnownState`.
    pub async fn shut_down_machine(&self, m: MachineRef<'_>) -> Result<Vec<u8>, CallError> {
        let request = self.request(ShutDownMachineRequest {
            machine_name: m.name.to_owned(),
            provider_spec: m.provider_spec.to_vec(),
            secrets: m.secrets.clone(),
            provider_id: m.provider_id.to_owned(),
            last_known_state: m.last_known_state.to_vec(),
        });
        let r = self.machine.clone().shut_down_machine(request).await;
        Ok(r.map_err(failed(Rpc::ShutDownMachine))?
            .into_inner()
            .last_known_state)
    }

    /// ListMachines: ProviderID → machine name, for the class `provider_spec` describes.
    pub async fn list_machines(
        &self,
        provider_spec: &[u8],
        secrets: &HashMap<String, Vec<u8>>,
    ) -> Result<HashMap<String, String>, CallError> {
        let request = self.request(ListMachinesRequest {
            provider_spec: provider_spec.to_vec(),
            secrets: secrets.clone(),
        });
        let r = self.machine.clone().list_machines(request).await;
        Ok(r.map_err(failed(Rpc::ListMachines))?
            .into_inner()
            .machine_list)
    }

    /// GetVolumeIDs: the driver's volume IDs for a JSON list of PersistentVolume specs.
    pub async fn get_volume_ids(&self, pv_spec_list: &[u8]) -> Result<Vec<String>, CallError> {
        let request = self.request(GetVolumeIDsRequest {
            pv_spec_list: pv_spec_list.to_vec(),
        });
        let r = self.machine.clone().get_volume_i_ds(request).await;
        Ok(r.map_err(failed(Rpc::GetVolumeIds))?
            .into_inner()
            .volume_i_ds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_error_names_the_rpc_code_and_message() {
        let e = CallError::from_status(Rpc::DeleteMachine, &Status::aborted("busy"));
        assert_eq!(e.rpc(), Rpc::DeleteMachine);
        assert_eq!(e.code(), Code::Aborted);
        assert_eq!(e.message(), "busy");
        assert_eq!(e.to_string(), "DeleteMachine failed: Aborted: busy");
    }
}
