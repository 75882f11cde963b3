//! The bench's machine class and the CMI calls the scenarios make with it.

use std::collections::HashMap;
use std::time::Duration;

use metal_driver::cmi::calls::{CallError, MachineRef};
use metal_driver::cmi::client::CmiClient;
use metal_driver::testkit::fixture;

use crate::stack::{Driver, Sim};

pub(crate) const CLUSTER_TAG: &str = "kubernetes.io/cluster/shoot--garden--bench";
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// The kit's class in the bench's cluster.
pub(crate) fn spec_bytes() -> Vec<u8> {
    fixture::provider_spec_bytes(CLUSTER_TAG)
}

pub(crate) fn secrets() -> HashMap<String, Vec<u8>> {
    fixture::secret_data("bench")
}

pub(crate) async fn connect(driver: &Driver) -> CmiClient {
    CmiClient::connect(&driver.endpoint, RPC_TIMEOUT)
        .await
        .expect("connects to the driver")
}

/// A machine of the bench's class, owned, for the typed calls.
#[derive(Clone)]
pub(crate) struct BenchMachine {
    pub(crate) name: String,
    pub(crate) provider_id: String,
    pub(crate) spec: Vec<u8>,
    pub(crate) secrets: HashMap<String, Vec<u8>>,
}

impl BenchMachine {
    pub(crate) fn new(name: &str, provider_id: &str) -> Self {
        Self {
            name: name.into(),
            provider_id: provider_id.into(),
            spec: spec_bytes(),
            secrets: secrets(),
        }
    }

    pub(crate) fn machine(&self) -> MachineRef<'_> {
        MachineRef::new(&self.name, &self.spec, &self.secrets).with_provider_id(&self.provider_id)
    }
}

pub(crate) async fn create(cmi: &CmiClient, name: &str) -> Result<String, CallError> {
    let machine = BenchMachine::new(name, "");
    cmi.create_machine(machine.machine())
        .await
        .map(|created| created.provider_id)
}

pub(crate) async fn list(cmi: &CmiClient) -> Result<usize, CallError> {
    cmi.list_machines(&spec_bytes(), &secrets())
        .await
        .map(|listed| listed.len())
}

/// A call's result as the tables print it: `OK` or the code.
pub(crate) fn outcome<T>(r: &Result<T, CallError>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(e) => format!("{:?}", e.code()),
    }
}

pub(crate) fn provider_id_of(name: &str, sim: &Sim) -> String {
    let device = sim
        .handle()
        .devices()
        .into_iter()
        .find(|d| d.hostname.as_deref() == Some(name))
        .expect("seeded device exists");
    format!("equinixmetal://{}", device.id.expect("device id"))
}
