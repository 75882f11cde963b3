//! The MachineClass that the demo, the bench, the soak and the integration tests drive: the
//! providerSpec Gardener's extension emits for a worker pool (in the simulator's default
//! project), the merged Secret data that goes with it, and the device the driver creates for
//! one of its machines (for seeding the simulator directly).
//!
//! One copy, so that every in-tree caller sends the same class and a change to it (a field
//! renamed, a plan or OS retired from the catalog) is made once. What the callers vary is a
//! parameter: the cluster tag keeps their devices apart (the soak's two lanes share one
//! simulator, and ListMachines only answers for its own cluster), and the userData names the
//! caller.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::{
    metal::{BillingCycle, DeviceCreateInput},
    provider::spec::IDENTITY_TAG_PREFIX,
    sim::{DEFAULT_PROJECT, DEFAULT_TOKEN},
};

/// The class's metro, plan (`machineType`) and OS: in the simulator's catalog.
pub const METRO: &str = "sv";
pub const PLAN: &str = "c3.small.x86";
pub const OS: &str = "ubuntu_22_04";
/// The role tag Gardener puts on every worker device, next to the cluster tag.
pub const ROLE_TAG: &str = "kubernetes.io/role/node";

/// The providerSpec of the class, with `cluster_tag` (`kubernetes.io/cluster/<shoot>`), as
/// JSON (the form a MachineClass holds).
pub fn provider_spec(cluster_tag: &str) -> Value {
    json!({
        "projectID": DEFAULT_PROJECT.to_string(),
        "metro": METRO,
        "machineType": PLAN,
        "OS": OS,
        "billingCycle": "hourly",
        "tags": [cluster_tag, ROLE_TAG],
    })
}

/// The providerSpec as a CMI request carries it (JSON bytes).
pub fn provider_spec_bytes(cluster_tag: &str) -> Vec<u8> {
    provider_spec(cluster_tag).to_string().into_bytes()
}

/// The merged Secret data of the class: the simulator's default token, and a cloud-config
/// userData naming `host` (the caller, so a device says who made it).
pub fn secret_data(host: &str) -> HashMap<String, Vec<u8>> {
    secret_data_with(DEFAULT_TOKEN, &format!("#cloud-config\nhostname: {host}\n"))
}

/// Secret data with any token and userData (tests of authorisation and redaction).
pub fn secret_data_with(token: &str, user_data: &str) -> HashMap<String, Vec<u8>> {
    HashMap::from([
        ("apiToken".to_owned(), token.as_bytes().to_vec()),
        ("userData".to_owned(), user_data.as_bytes().to_vec()),
    ])
}

/// A device of the class (metro, plan, OS, billing cycle) named `hostname` with exactly
/// `tags`, for seeding the simulator directly.
pub fn device(hostname: &str, tags: Vec<String>) -> DeviceCreateInput {
    DeviceCreateInput {
        metro: Some(METRO.into()),
        plan: PLAN.into(),
        operating_system: OS.into(),
        hostname: Some(hostname.to_owned()),
        billing_cycle: Some(BillingCycle::Hourly),
        tags,
        ..Default::default()
    }
}

/// The device the driver creates for machine `name` of the class in `cluster_tag`: named
/// after the machine, with the cluster, role and identity tags, so the driver finds it as
/// that machine's.
pub fn machine_device(name: &str, cluster_tag: &str) -> DeviceCreateInput {
    device(
        name,
        vec![
            cluster_tag.to_owned(),
            ROLE_TAG.to_owned(),
            format!("{IDENTITY_TAG_PREFIX}{name}"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::spec::ProviderSpec;

    /// The class must be one the driver accepts: every caller relies on it validating.
    #[test]
    fn the_provider_spec_validates_with_its_cluster_tag() {
        let tag = "kubernetes.io/cluster/shoot--kit--fixture";
        let spec = ProviderSpec::decode(&provider_spec_bytes(tag)).expect("valid spec");
        assert_eq!(spec.project_id, Some(DEFAULT_PROJECT));
        assert_eq!(spec.machine_type, PLAN);
        assert_eq!(spec.cluster_tag, tag);
        assert_eq!(spec.role_tags, [ROLE_TAG]);
    }

    #[test]
    fn secret_data_carries_the_default_token_and_names_the_host() {
        let data = secret_data("kit");
        assert_eq!(data["apiToken"], DEFAULT_TOKEN.as_bytes());
        assert_eq!(data["userData"], b"#cloud-config\nhostname: kit\n");
    }
}
