//! Spawns the simulator and the driver on ephemeral loopback ports and gives tests a CMI
//! client plus one-line calls for the usual class.

use std::{collections::HashMap, time::Duration};

use metal_driver::{
    cmi::{
        calls::{CallError, Created, Found, MachineRef},
        server::Running,
    },
    metal::{Operation, client::ClientConfig},
    provider_id::ProviderId,
    sim::{SimArgs, SimHandle},
    testkit::{Stack, fixture},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use metal_driver::{sim::DEFAULT_PROJECT as PROJECT, testkit::fixture::ROLE_TAG};

/// The tests' cluster: the kit's class carries it (see [`spec`]).
pub const CLUSTER_TAG: &str = "kubernetes.io/cluster/shoot--it--test";

/// A running simulator + driver + client (the kit's stack, with the tests' calls on top).
pub struct Env(Stack);

impl std::ops::Deref for Env {
    type Target = Stack;

    fn deref(&self) -> &Stack {
        &self.0
    }
}

impl Env {
    pub async fn start() -> Self {
        Self::with(SimArgs::for_tests(), |_| {}).await
    }

    /// Starts with custom simulator flags and Metal client settings. Backoff is shortened
    /// so retry tests stay quick; `Retry-After` from the simulator is still honoured.
    pub async fn with(sim_args: SimArgs, tweak: impl FnOnce(&mut ClientConfig)) -> Self {
        let client = |config: &mut ClientConfig| {
            config.backoff_base = Duration::from_millis(5);
            config.backoff_max = Duration::from_millis(50);
            tweak(config);
        };
        Stack::start(sim_args, client, Duration::from_secs(60))
            .await
            .map(Self)
            .unwrap_or_else(|e| panic!("test stack: {e}"))
    }

    /// Splits the environment for tests that drive shutdown themselves.
    pub fn into_parts(self) -> Parts {
        let Stack {
            sim, server, stop, ..
        } = self.0;
        Parts { sim, server, stop }
    }

    pub async fn stop(self) {
        self.0.stop().await;
    }

    /// Devices in the simulator that are not being torn down.
    pub fn live_devices(&self) -> Vec<metal_driver::metal::Device> {
        self.sim
            .devices()
            .into_iter()
            .filter(|d| !d.state.is_some_and(|s| s.is_going_away()))
            .collect()
    }

    pub fn api_calls(&self, operation: Operation) -> u64 {
        self.sim.stats().requests_of(operation)
    }

    pub async fn create(
        &self,
        name: &str,
        spec: &Value,
        secrets: &HashMap<String, Vec<u8>>,
    ) -> Result<Created, CallError> {
        self.create_raw(name, spec.to_string().into_bytes(), secrets)
            .await
    }

    pub async fn create_raw(
        &self,
        name: &str,
        spec: Vec<u8>,
        secrets: &HashMap<String, Vec<u8>>,
    ) -> Result<Created, CallError> {
        self.cmi
            .create_machine(MachineRef::new(name, &spec, secrets))
            .await
    }

    pub async fn status(
        &self,
        name: &str,
        provider_id: &str,
        spec: &Value,
        secrets: &HashMap<String, Vec<u8>>,
    ) -> Result<Found, CallError> {
        let spec = spec.to_string().into_bytes();
        let machine = MachineRef::new(name, &spec, secrets).with_provider_id(provider_id);
        self.cmi.get_machine_status(machine).await
    }

    pub async fn delete(
        &self,
        name: &str,
        provider_id: &str,
        spec: &Value,
        secrets: &HashMap<String, Vec<u8>>,
    ) -> Result<(), CallError> {
        let spec = spec.to_string().into_bytes();
        let machine = MachineRef::new(name, &spec, secrets).with_provider_id(provider_id);
        self.cmi.delete_machine(machine).await.map(drop)
    }

    pub async fn shutdown_machine(
        &self,
        name: &str,
        provider_id: &str,
        spec: &Value,
        secrets: &HashMap<String, Vec<u8>>,
    ) -> Result<(), CallError> {
        let spec = spec.to_string().into_bytes();
        let machine = MachineRef::new(name, &spec, secrets).with_provider_id(provider_id);
        self.cmi.shut_down_machine(machine).await.map(drop)
    }

    pub async fn list(
        &self,
        spec: &Value,
        secrets: &HashMap<String, Vec<u8>>,
    ) -> Result<HashMap<String, String>, CallError> {
        let spec = spec.to_string().into_bytes();
        self.cmi.list_machines(&spec, secrets).await
    }
}

pub struct Parts {
    pub sim: SimHandle,
    pub server: Running,
    pub stop: CancellationToken,
}

/// A valid providerSpec, as Gardener emits it: the kit's class in the tests' cluster.
pub fn spec() -> Value {
    fixture::provider_spec(CLUSTER_TAG)
}

/// Valid Secret data for the simulator's default token.
pub fn secrets() -> HashMap<String, Vec<u8>> {
    fixture::secret_data("it")
}

pub fn secrets_with(token: &str, user_data: &str) -> HashMap<String, Vec<u8>> {
    fixture::secret_data_with(token, user_data)
}

/// The UUID inside a ProviderID the driver emitted, which must be in the form it emits
/// (`equinixmetal://<uuid>`).
pub fn uuid_of(provider_id: &str) -> uuid::Uuid {
    let id = ProviderId::parse(provider_id)
        .unwrap_or_else(|e| panic!("not a ProviderID: {provider_id}: {e}"));
    assert_eq!(id.to_string(), provider_id, "not the form the driver emits");
    id.uuid()
}
