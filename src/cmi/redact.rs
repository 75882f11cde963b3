//! `Debug` for every request message that carries a `(cmi_secret)` field.
//!
//! prost derives `Debug` on generated messages, which would print the `Secrets` map (API
//! token, userData) the moment anyone logs a request. `build.rs` switches the derive off for
//! each message with a `cmi_secret` field; these impls print the secret keys but never their
//! values. The test at the bottom walks the descriptor set, so a new secret-bearing message
//! without an impl here fails the build's tests.

use std::{collections::HashMap, fmt};

use super::v1::{
    CreateMachineRequest, DeleteMachineRequest, GetMachineStatusRequest, ListMachinesRequest,
    ShutDownMachineRequest,
};

/// Renders a secrets map as its keys only.
struct SecretKeys<'a>(&'a HashMap<String, Vec<u8>>);

impl fmt::Debug for SecretKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&str> = self.0.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_map()
            .entries(keys.into_iter().map(|k| (k, "<redacted>")))
            .finish()
    }
}

/// Renders bytes as their length: providerSpec may hold customData.
struct Len(usize);

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl fmt::Debug for CreateMachineRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateMachineRequest")
            .field("machine_name", &self.machine_name)
            .field("provider_spec", &Len(self.provider_spec.len()))
            .field("secrets", &SecretKeys(&self.secrets))
            .field("last_known_state", &Len(self.last_known_state.len()))
            .finish()
    }
}

impl fmt::Debug for DeleteMachineRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeleteMachineRequest")
            .field("machine_name", &self.machine_name)
            .field("provider_spec", &Len(self.provider_spec.len()))
            .field("secrets", &SecretKeys(&self.secrets))
            .field("provider_id", &self.provider_id)
            .field("last_known_state", &Len(self.last_known_state.len()))
            .finish()
    }
}

impl fmt::Debug for GetMachineStatusRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetMachineStatusRequest")
            .field("machine_name", &self.machine_name)
            .field("provider_spec", &Len(self.provider_spec.len()))
            .field("secrets", &SecretKeys(&self.secrets))
            .field("provider_id", &self.provider_id)
            .finish()
    }
}

impl fmt::Debug for ListMachinesRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListMachinesRequest")
            .field("provider_spec", &Len(self.provider_spec.len()))
            .field("secrets", &SecretKeys(&self.secrets))
            .finish()
    }
}

impl fmt::Debug for ShutDownMachineRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutDownMachineRequest")
            .field("machine_name", &self.machine_name)
            .field("provider_spec", &Len(self.provider_spec.len()))
            .field("secrets", &SecretKeys(&self.secrets))
            .field("provider_id", &self.provider_id)
            .field("last_known_state", &Len(self.last_known_state.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DescriptorPool, Value};

    use super::*;

    const SENTINEL: &str = "SENTINEL-secret-value-7f3a";

    fn secrets() -> HashMap<String, Vec<u8>> {
        HashMap::from([
            ("apiToken".to_string(), SENTINEL.as_bytes().to_vec()),
            ("userData".to_string(), SENTINEL.as_bytes().to_vec()),
        ])
    }

    /// The Debug output of a populated instance of each secret-bearing message, by full name.
    fn debug_of(full_name: &str) -> Option<String> {
        let spec = format!("{{\"customData\":\"{SENTINEL}\"}}").into_bytes();
        Some(match full_name {
            "cmi.v1.CreateMachineRequest" => format!(
                "{:?}",
                CreateMachineRequest {
                    machine_name: "m".into(),
                    provider_spec: spec,
                    secrets: secrets(),
                    last_known_state: SENTINEL.into()
                }
            ),
            "cmi.v1.DeleteMachineRequest" => format!(
                "{:?}",
                DeleteMachineRequest {
                    provider_spec: spec,
                    secrets: secrets(),
                    ..Default::default()
                }
            ),
            "cmi.v1.GetMachineStatusRequest" => format!(
                "{:?}",
                GetMachineStatusRequest {
                    provider_spec: spec,
                    secrets: secrets(),
                    ..Default::default()
                }
            ),
            "cmi.v1.ListMachinesRequest" => {
                format!(
                    "{:?}",
                    ListMachinesRequest {
                        provider_spec: spec,
                        secrets: secrets()
                    }
                )
            }
            "cmi.v1.ShutDownMachineRequest" => format!(
                "{:?}",
                ShutDownMachineRequest {
                    provider_spec: spec,
                    secrets: secrets(),
                    ..Default::default()
                }
            ),
            _ => return None,
        })
    }

    /// The messages build.rs found carrying a `(cmi_secret)` field (it reads the extension
    /// from the proto source with protox and switches prost's `Debug` off for them).
    const SECRET_MESSAGES: &str =
        include_str!(concat!(env!("OUT_DIR"), "/cmi_secret_messages.txt"));

    #[test]
    fn every_secret_bearing_message_has_a_redacting_debug() {
        let pool = DescriptorPool::decode(crate::cmi::FILE_DESCRIPTOR_SET).unwrap();
        let listed: Vec<&str> = SECRET_MESSAGES
            .lines()
            .map(|l| l.trim_start_matches('.'))
            .collect();
        let mut checked = 0;
        for message in pool.all_messages() {
            // Cross-check build.rs: any message with a map<string, bytes> field named
            // Secrets must have been found by the extension scan.
            let has_secrets_field = message.fields().any(|f| f.name() == "Secrets");
            let ext_marked = pool
                .get_extension_by_name("cmi.v1.cmi_secret")
                .is_some_and(|ext| {
                    message.fields().any(|f| {
                        let o = f.options();
                        o.has_extension(&ext)
                            && matches!(o.get_extension(&ext).as_ref(), Value::Bool(true))
                    })
                });
            let secret_bearing = listed.contains(&message.full_name()) || ext_marked;
            assert_eq!(
                has_secrets_field,
                secret_bearing,
                "{}: build.rs's cmi_secret scan and the Secrets fields disagree",
                message.full_name()
            );
            if !secret_bearing {
                continue;
            }
            let out = debug_of(message.full_name()).unwrap_or_else(|| {
                panic!(
                    "{} carries a cmi_secret field but has no redacting Debug",
                    message.full_name()
                )
            });
            assert!(
                !out.contains(SENTINEL),
                "{} leaks a secret: {out}",
                message.full_name()
            );
            assert!(
                out.contains("apiToken"),
                "keys stay visible for debugging: {out}"
            );
            checked += 1;
        }
        assert_eq!(
            checked, 5,
            "the reference proto has five secret-bearing requests"
        );
    }
}
