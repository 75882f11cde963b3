//! Create, status, list, delete and shutdown of machines on top of [`DeviceApi`].
//! (Skeleton: the provider helper fills in the bodies.)

use std::collections::BTreeMap;

use crate::metal::DeviceApi;

use super::{Error, ListRequest, MachineRequest};

/// Tunables of the provider logic.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// How many create attempts (each after a lookup that found nothing) before giving up.
    pub max_create_attempts: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self { max_create_attempts: 3 }
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

/// The transport-free driver.
pub struct Provider<A> {
    api: A,
    config: ProviderConfig,
}

impl<A: DeviceApi> Provider<A> {
    pub fn new(api: A, config: ProviderConfig) -> Self {
        Self { api, config }
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    pub async fn create_machine(&self, req: MachineRequest) -> Result<MachineInfo, Error> {
        let _ = (&req, &self.config);
        Err(Error::invalid("machineName", "not implemented yet"))
    }

    pub async fn get_machine_status(&self, req: MachineRequest) -> Result<MachineInfo, Error> {
        let _ = &req;
        Err(Error::invalid("machineName", "not implemented yet"))
    }

    pub async fn delete_machine(&self, req: MachineRequest) -> Result<(), Error> {
        let _ = &req;
        Err(Error::invalid("machineName", "not implemented yet"))
    }

    pub async fn shutdown_machine(&self, req: MachineRequest) -> Result<(), Error> {
        let _ = &req;
        Err(Error::invalid("machineName", "not implemented yet"))
    }

    pub async fn list_machines(&self, req: ListRequest) -> Result<BTreeMap<String, String>, Error> {
        let _ = &req;
        Err(Error::invalid("providerSpec", "not implemented yet"))
    }

    /// Metal has no cloud volumes: every PV spec is skipped, as CMI allows.
    pub fn get_volume_ids(&self, _pv_spec_list: &[u8]) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
}
