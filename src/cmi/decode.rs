//! Request → provider input: which wire field becomes which input of the provider, and the
//! caller's deadline with them.
//!
//! Nothing is checked here. The provider validates every input and names the field in its
//! InvalidArgument errors (`machineName`, `providerSpec.metro`, `providerID`, the Secret
//! keys), whichever RPC carried it. `LastKnownState` is dropped: the driver keeps none.

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;
use tonic::Request;

use super::v1::{
    CreateMachineRequest, DeleteMachineRequest, GetMachineStatusRequest, ListMachinesRequest,
    ShutDownMachineRequest,
};
use crate::provider::{ListRequest, MachineRequest};

/// MachineName, ProviderSpec, Secrets and ProviderID, moved out of a message.
pub type Fields = (String, Vec<u8>, HashMap<String, Vec<u8>>, String);

/// A request message that names one machine: Create, Delete, GetMachineStatus, ShutDown.
pub trait MachineMessage {
    /// The fields the provider needs, moved out.
    fn into_fields(self) -> Fields;
}

/// CreateMachine carries no ProviderID: the driver assigns one.
impl MachineMessage for CreateMachineRequest {
    fn into_fields(self) -> Fields {
        (
            self.machine_name,
            self.provider_spec,
            self.secrets,
            String::new(),
        )
    }
}

/// An empty ProviderID makes the driver find the device by name.
impl MachineMessage for DeleteMachineRequest {
    fn into_fields(self) -> Fields {
        (
            self.machine_name,
            self.provider_spec,
            self.secrets,
            self.provider_id,
        )
    }
}

/// By ProviderID when given, else by name.
impl MachineMessage for GetMachineStatusRequest {
    fn into_fields(self) -> Fields {
        (
            self.machine_name,
            self.provider_spec,
            self.secrets,
            self.provider_id,
        )
    }
}

/// As DeleteMachine.
impl MachineMessage for ShutDownMachineRequest {
    fn into_fields(self) -> Fields {
        (
            self.machine_name,
            self.provider_spec,
            self.secrets,
            self.provider_id,
        )
    }
}

/// A per-machine request → the provider's input.
pub fn machine<M: MachineMessage>(request: Request<M>) -> MachineRequest {
    let deadline = deadline(&request);
    let (machine_name, provider_spec, secrets, provider_id) = request.into_inner().into_fields();
    MachineRequest {
        machine_name,
        provider_spec,
        secrets,
        provider_id,
        deadline,
    }
}

/// ListMachines names no machine: the class's tags select the devices.
pub fn list(request: Request<ListMachinesRequest>) -> ListRequest {
    let deadline = deadline(&request);
    let r = request.into_inner();
    ListRequest {
        provider_spec: r.provider_spec,
        secrets: r.secrets,
        deadline,
    }
}

/// The caller's deadline from the `grpc-timeout` header, as an instant.
pub fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(raw).map(|d| Instant::now() + d)
}

/// Parses the gRPC wire format `<1-8 digits><unit>` (H, M, S, m, u, n).
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    /// Each field lands in its input; Create's ProviderID stays empty.
    #[tokio::test]
    async fn fields_move_into_the_provider_input() {
        let secrets = HashMap::from([("apiToken".to_owned(), b"t".to_vec())]);
        let mut request = Request::new(DeleteMachineRequest {
            machine_name: "m1".into(),
            provider_spec: b"{}".to_vec(),
            secrets: secrets.clone(),
            provider_id: "equinixmetal://x".into(),
            last_known_state: b"state".to_vec(),
        });
        request.set_timeout(Duration::from_secs(30));
        let input = machine(request);
        assert_eq!(input.machine_name, "m1");
        assert_eq!(input.provider_spec, b"{}");
        assert_eq!(input.secrets, secrets);
        assert_eq!(input.provider_id, "equinixmetal://x");
        let left = input.deadline.expect("deadline from grpc-timeout") - Instant::now();
        assert!(left <= Duration::from_secs(30), "{left:?}");

        let input = machine(Request::new(CreateMachineRequest {
            machine_name: "m2".into(),
            ..Default::default()
        }));
        assert_eq!(input.machine_name, "m2");
        assert!(input.provider_id.is_empty());
        assert!(input.deadline.is_none(), "no grpc-timeout, no deadline");
    }
}
