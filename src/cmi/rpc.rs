//! The one table of CMI RPCs: for each, its wire name and service, the `operation` label
//! MCM's driver metrics use, the capability that advertises it, and which of MCM's retry
//! tables the controller applies when it fails.
//!
//! Every place that names an RPC (handler spans, gRPC and MCM metrics, the controller's
//! errors and retry periods, the client's errors) takes an [`Rpc`], so a misspelt name does
//! not compile instead of silently picking another row.

use std::fmt;

use super::v1::plugin_capability::rpc::Type as Capability;

/// A CMI RPC, of either service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rpc {
    /// `cmi.v1.Identity/GetPluginInfo`.
    GetPluginInfo,
    /// `cmi.v1.Identity/GetPluginCapabilities`.
    GetPluginCapabilities,
    /// `cmi.v1.Identity/Probe`.
    Probe,
    /// `cmi.v1.Machine/CreateMachine`.
    CreateMachine,
    /// `cmi.v1.Machine/DeleteMachine`.
    DeleteMachine,
    /// `cmi.v1.Machine/GetMachineStatus`.
    GetMachineStatus,
    /// `cmi.v1.Machine/ListMachines`.
    ListMachines,
    /// `cmi.v1.Machine/ShutDownMachine`.
    ShutDownMachine,
    /// `cmi.v1.Machine/GetVolumeIDs`.
    GetVolumeIds,
}

/// Which of MCM's retry tables applies after a failed call (`reference/notes/mcm.md` §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// The create flow's table: transient codes soon, ResourceExhausted after its own
    /// period, anything else after the medium period. Also every call outside the delete
    /// flow, as MCM has no other table.
    CreateFlow,
    /// The delete flow's table: transient codes soon, anything else after the long period.
    DeleteFlow,
}

/// One row of the table.
struct Row {
    service: &'static str,
    name: &'static str,
    /// The Go providers' constant for MCM's `operation` label; Identity calls have none.
    mcm_operation: Option<&'static str>,
    capability: Option<Capability>,
    retry: RetryClass,
}

const IDENTITY: &str = "cmi.v1.Identity";
const MACHINE: &str = "cmi.v1.Machine";

impl Rpc {
    /// Every RPC, Identity first, in the proto's order.
    pub const ALL: [Self; 9] = [
        Self::GetPluginInfo,
        Self::GetPluginCapabilities,
        Self::Probe,
        Self::CreateMachine,
        Self::DeleteMachine,
        Self::GetMachineStatus,
        Self::ListMachines,
        Self::ShutDownMachine,
        Self::GetVolumeIds,
    ];

    /// The table itself: one row per RPC.
    const fn row(self) -> Row {
        use RetryClass::{CreateFlow, DeleteFlow};
        let (service, name, mcm_operation, capability, retry) = match self {
            Self::GetPluginInfo => (IDENTITY, "GetPluginInfo", None, None, CreateFlow),
            Self::GetPluginCapabilities => {
                (IDENTITY, "GetPluginCapabilities", None, None, CreateFlow)
            }
            Self::Probe => (IDENTITY, "Probe", None, None, CreateFlow),
            Self::CreateMachine => (
                MACHINE,
                "CreateMachine",
                Some("create_machine"),
                Some(Capability::CreateMachine),
                CreateFlow,
            ),
            Self::DeleteMachine => (
                MACHINE,
                "DeleteMachine",
                Some("delete_machine"),
                Some(Capability::DeleteMachine),
                DeleteFlow,
            ),
            Self::GetMachineStatus => (
                MACHINE,
                "GetMachineStatus",
                Some("get_machine_status"),
                Some(Capability::GetMachineStatus),
                CreateFlow,
            ),
            Self::ListMachines => (
                MACHINE,
                "ListMachines",
                Some("list_machine"),
                Some(Capability::ListMachines),
                CreateFlow,
            ),
            Self::ShutDownMachine => (
                MACHINE,
                "ShutDownMachine",
                Some("shutdown_machine"),
                Some(Capability::ShutdownMachine),
                CreateFlow,
            ),
            Self::GetVolumeIds => (
                MACHINE,
                "GetVolumeIDs",
                Some("get_volume_ids"),
                Some(Capability::GetVolumeIds),
                CreateFlow,
            ),
        };
        Row {
            service,
            name,
            mcm_operation,
            capability,
            retry,
        }
    }

    /// The method name on the wire (`CreateMachine`, `GetVolumeIDs`, ...).
    pub const fn name(self) -> &'static str {
        self.row().name
    }

    /// The fully qualified service (`cmi.v1.Identity` or `cmi.v1.Machine`).
    pub const fn service(self) -> &'static str {
        self.row().service
    }

    /// MCM's `operation` label value (`create_machine`, `list_machine`, ...); `None` for
    /// the Identity calls, which MCM's driver metrics do not count.
    pub const fn mcm_operation(self) -> Option<&'static str> {
        self.row().mcm_operation
    }

    /// The capability a driver advertises for this RPC; `None` for the Identity calls,
    /// which every driver serves.
    pub const fn capability(self) -> Option<Capability> {
        self.row().capability
    }

    /// The RPC a capability advertises (`None` for `UNKNOWN`).
    pub fn from_capability(capability: Capability) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|rpc| rpc.capability() == Some(capability))
    }

    /// The retry table the controller applies when this call fails.
    pub const fn retry_class(self) -> RetryClass {
        self.row().retry
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    use super::*;

    /// Every row names a method the proto declares in that service, and every method of
    /// the proto has a row.
    #[test]
    fn the_table_matches_the_proto() {
        let pool = DescriptorPool::decode(crate::cmi::FILE_DESCRIPTOR_SET).unwrap();
        let mut declared: Vec<String> = pool
            .services()
            .flat_map(|s| {
                s.methods()
                    .map(|m| format!("{}/{}", s.full_name(), m.name()))
                    .collect::<Vec<_>>()
            })
            .collect();
        declared.sort();
        let mut ours: Vec<String> = Rpc::ALL
            .iter()
            .map(|rpc| format!("{}/{}", rpc.service(), rpc.name()))
            .collect();
        ours.sort();
        assert_eq!(ours, declared);
    }

    #[test]
    fn capabilities_round_trip_and_cover_every_machine_rpc() {
        for rpc in Rpc::ALL {
            match rpc.capability() {
                Some(c) => assert_eq!(Rpc::from_capability(c), Some(rpc)),
                None => assert_eq!(rpc.service(), "cmi.v1.Identity", "{rpc}"),
            }
        }
        assert_eq!(Rpc::from_capability(Capability::Unknown), None);
        assert_eq!(Rpc::ShutDownMachine.capability().map(|c| c as i32), Some(5));
        assert_eq!(Rpc::ListMachines.capability().map(|c| c as i32), Some(4));
    }

    #[test]
    fn mcm_operation_labels_are_the_go_providers() {
        assert_eq!(Rpc::ListMachines.mcm_operation(), Some("list_machine"));
        assert_eq!(Rpc::CreateMachine.mcm_operation(), Some("create_machine"));
        assert_eq!(Rpc::Probe.mcm_operation(), None);
    }

    #[test]
    fn only_delete_machine_uses_the_delete_flow_table() {
        for rpc in Rpc::ALL {
            let expected = if rpc == Rpc::DeleteMachine {
                RetryClass::DeleteFlow
            } else {
                RetryClass::CreateFlow
            };
            assert_eq!(rpc.retry_class(), expected, "{rpc}");
        }
    }
}
