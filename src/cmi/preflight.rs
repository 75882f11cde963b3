//! What a CreateMachine request would meet in the driver before the driver calls any API,
//! known on the client side when the driver is this very build.
//!
//! The controller must be able to prove that a Machine never got a device, so that deleting
//! it needs no lookup (a lookup is an API call, and a class that never validated may not even
//! name a project a lookup could use). The proof is "no CreateMachine that could reach the
//! API was ever sent", which the controller can only keep if it knows, before sending, that
//! the driver would refuse the request on its own. For a driver of this build it does: the
//! check below is the driver's own (`provider::create_refusal`), mapped to the code through
//! the one table ([`super::status`]). For any other driver nothing is known, and every
//! request counts as one that may create.

use std::collections::HashMap;

use crate::provider;

use super::{
    PLUGIN_NAME, PLUGIN_VERSION, Rpc,
    calls::{CallError, PluginInfo},
    status,
};

/// Whether the driver's refusals can be told in advance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preflight {
    /// The driver reported this build's plugin name and version.
    same_build: bool,
}

impl Preflight {
    /// For the driver that reported `info` (GetPluginInfo); `None` when it did not answer.
    pub fn for_driver(info: Option<&PluginInfo>) -> Self {
        Self {
            same_build: info.is_some_and(|i| i.name == PLUGIN_NAME && i.version == PLUGIN_VERSION),
        }
    }

    /// For a driver known to be this build (the one in this process).
    pub fn this_build() -> Self {
        Self { same_build: true }
    }

    /// The error CreateMachine would answer without calling any API, or `None` when the
    /// request may reach the API (always `None` for a driver of another build).
    pub fn create_refusal(
        &self,
        machine_name: &str,
        provider_spec: &[u8],
        secrets: &HashMap<String, Vec<u8>>,
    ) -> Option<CallError> {
        if !self.same_build {
            return None;
        }
        provider::create_refusal(machine_name, provider_spec, secrets)
            .err()
            .map(|e| CallError::from_status(Rpc::CreateMachine, &status::to_status(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn info(name: &str, version: &str) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            manifest: Default::default(),
        }
    }

    fn secrets() -> HashMap<String, Vec<u8>> {
        [
            ("apiToken".to_owned(), b"t0ken".to_vec()),
            ("userData".to_owned(), b"#cloud-config".to_vec()),
        ]
        .into()
    }

    const SPEC: &str = r#"{"projectID": "5c4ae4ba-fbd6-4b5b-a8b4-2d9d3a05a1f5", "metro": "sv",
        "machineType": "c3.small.x86", "OS": "ubuntu_22_04", "billingCycle": "hourly",
        "tags": ["kubernetes.io/cluster/c1", "kubernetes.io/role/node"]}"#;

    #[test]
    fn only_this_builds_driver_is_known() {
        assert!(Preflight::for_driver(Some(&info(PLUGIN_NAME, PLUGIN_VERSION))).same_build);
        assert!(!Preflight::for_driver(Some(&info(PLUGIN_NAME, "0.0.0-other"))).same_build);
        assert!(!Preflight::for_driver(Some(&info("other.driver", PLUGIN_VERSION))).same_build);
        assert!(!Preflight::for_driver(None).same_build);
    }

    #[test]
    fn an_unknown_field_is_refused_with_the_drivers_code_and_message() {
        let spec = SPEC.replace("\"machineType\"", "\"machineTyp\"");
        let e = Preflight::this_build()
            .create_refusal("m-1", spec.as_bytes(), &secrets())
            .expect("refused");
        assert_eq!(
            (e.rpc(), e.code()),
            (Rpc::CreateMachine, Code::InvalidArgument)
        );
        assert!(e.message().contains("machineTyp"), "{}", e.message());
    }

    #[test]
    fn a_valid_request_and_a_foreign_driver_may_create() {
        let p = Preflight::this_build();
        assert!(
            p.create_refusal("m-1", SPEC.as_bytes(), &secrets())
                .is_none()
        );
        let mut no_user_data = secrets();
        no_user_data.remove("userData");
        assert_eq!(
            p.create_refusal("m-1", SPEC.as_bytes(), &no_user_data)
                .map(|e| e.code()),
            Some(Code::InvalidArgument)
        );
        let foreign = Preflight::for_driver(Some(&info("other.driver", "1.0")));
        assert!(foreign.create_refusal("m-1", b"{", &no_user_data).is_none());
    }
}
