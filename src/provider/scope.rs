//! What DeleteMachine, GetMachineStatus, ShutDownMachine and ListMachines need from the
//! providerSpec: which project, which cluster's devices, and how to treat a locked device.
//!
//! Only CreateMachine decodes the spec strictly ([`super::spec::ProviderSpec::decode`]): a
//! typo must never create a wrong server. Everything else reads the spec leniently, because
//! a class that became invalid (a field renamed, a field a newer driver added, a value out of
//! range) must never trap its Machines: MCM cannot delete a Machine whose DeleteMachine
//! answers InvalidArgument, so its finalizer stays forever and its device keeps billing, and
//! MCM's orphan collection stops at the first class whose ListMachines fails. So here:
//! unknown fields are ignored with a warning, fields these calls do not use are not looked
//! at, and only a missing or broken field they *do* use is an error naming it.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::secret::Secret;

use super::{
    Error,
    spec::{
        CLUSTER_TAG_PREFIX, KNOWN_FIELDS, MAX_SPEC_BYTES, ProviderSpec, ROLE_TAG_PREFIX, parse_uuid,
    },
};

/// The providerSpec as the non-create calls read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// `projectID`; `None` when it must come from the Secret.
    pub project_id: Option<Uuid>,
    /// The one `kubernetes.io/cluster/...` tag: devices without it are never touched.
    pub cluster_tag: String,
    /// Every `kubernetes.io/role/...` tag (ListMachines requires at least one).
    pub role_tags: Vec<String>,
    /// `unlockOnDelete`.
    pub unlock_on_delete: bool,
    /// `customData`, only so its strings are scrubbed from error texts.
    pub custom_data: Option<Secret<Value>>,
}

impl From<&ProviderSpec> for Scope {
    fn from(spec: &ProviderSpec) -> Self {
        Self {
            project_id: spec.project_id,
            cluster_tag: spec.cluster_tag.clone(),
            role_tags: spec.role_tags.clone(),
            unlock_on_delete: spec.unlock_on_delete,
            custom_data: spec.custom_data.clone(),
        }
    }
}

impl Scope {
    /// Reads the fields the non-create calls use; every unknown field is returned as a
    /// warning (`providerSpec.<name>`) and otherwise ignored.
    pub fn decode(bytes: &[u8]) -> Result<(Self, Vec<String>), Error> {
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(Error::invalid(
                "providerSpec",
                format!(
                    "is {} bytes; at most {MAX_SPEC_BYTES} are allowed",
                    bytes.len()
                ),
            ));
        }
        let object: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid("providerSpec", format!("not a JSON object: {e}")))?;
        let unknown = object
            .keys()
            .filter(|k| !KNOWN_FIELDS.contains(&k.as_str()))
            .map(|k| format!("providerSpec.{k}"))
            .collect();

        let project_id = match object.get("projectID") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(
                parse_uuid(s)
                    .ok_or_else(|| Error::invalid("providerSpec.projectID", "must be a UUID"))?,
            ),
            Some(_) => {
                return Err(Error::invalid(
                    "providerSpec.projectID",
                    "must be a UUID string",
                ));
            }
        };

        let tags = match object.get("tags") {
            Some(Value::Array(tags)) => tags,
            _ => {
                return Err(Error::invalid(
                    "providerSpec.tags",
                    format!("must be a list containing a `{CLUSTER_TAG_PREFIX}<cluster>` tag"),
                ));
            }
        };
        let strings = tags.iter().filter_map(Value::as_str);
        let clusters: Vec<&str> = strings
            .clone()
            .filter(|t| t.len() > CLUSTER_TAG_PREFIX.len() && t.starts_with(CLUSTER_TAG_PREFIX))
            .collect();
        let cluster_tag = match clusters.as_slice() {
            [one] => (*one).to_owned(),
            [] => {
                return Err(Error::invalid(
                    "providerSpec.tags",
                    format!("must contain a `{CLUSTER_TAG_PREFIX}<cluster>` tag"),
                ));
            }
            _ => {
                return Err(Error::invalid(
                    "providerSpec.tags",
                    format!("only one `{CLUSTER_TAG_PREFIX}...` tag is allowed"),
                ));
            }
        };
        let mut role_tags: Vec<String> = Vec::new();
        for role in
            strings.filter(|t| t.len() > ROLE_TAG_PREFIX.len() && t.starts_with(ROLE_TAG_PREFIX))
        {
            if !role_tags.iter().any(|r| r == role) {
                role_tags.push(role.to_owned());
            }
        }

        // Used by DeleteMachine only; a value of the wrong type reads as `false`, the safe
        // side (a locked device is then reported, never unlocked).
        let unlock_on_delete = object
            .get("unlockOnDelete")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let custom_data = object
            .get("customData")
            .filter(|v| v.is_object())
            .cloned()
            .map(Secret::from);

        Ok((
            Self {
                project_id,
                cluster_tag,
                role_tags,
                unlock_on_delete,
                custom_data,
            },
            unknown,
        ))
    }

    /// What ListMachines requires of a device: the cluster tag and every role tag. Without
    /// a role tag the class would claim every pool's devices, so that is an error here.
    pub fn membership_tags(&self) -> Result<Vec<&str>, Error> {
        if self.role_tags.is_empty() {
            return Err(Error::invalid(
                "providerSpec.tags",
                format!("must contain a `{ROLE_TAG_PREFIX}<role>` tag"),
            ));
        }
        Ok(std::iter::once(self.cluster_tag.as_str())
            .chain(self.role_tags.iter().map(String::as_str))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PROJECT: &str = "8a1e5a4e-3b3a-4c0e-9f3e-1f2a3b4c5d6e";

    fn decode(v: Value) -> Result<(Scope, Vec<String>), Error> {
        Scope::decode(&serde_json::to_vec(&v).unwrap())
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidField { field, .. } => field,
            other => panic!("not InvalidField: {other:?}"),
        }
    }

    #[test]
    fn unknown_and_unused_broken_fields_are_ignored() {
        let (scope, unknown) = decode(json!({
            "projectID": PROJECT,
            "metro": "not a slug!",
            "machineType": 42,
            "OS": "",
            "machinetype": "c3.small.x86",
            "fooBar": {"x": 1},
            "tags": ["kubernetes.io/cluster/shoot--a", "kubernetes.io/role/node", 7, "other"],
            "unlockOnDelete": true,
        }))
        .unwrap();
        assert_eq!(
            unknown,
            vec!["providerSpec.fooBar", "providerSpec.machinetype"]
        );
        assert_eq!(scope.project_id, Some(PROJECT.parse().unwrap()));
        assert_eq!(scope.cluster_tag, "kubernetes.io/cluster/shoot--a");
        assert_eq!(scope.role_tags, vec!["kubernetes.io/role/node"]);
        assert!(scope.unlock_on_delete);
        assert_eq!(
            scope.membership_tags().unwrap(),
            vec!["kubernetes.io/cluster/shoot--a", "kubernetes.io/role/node"]
        );
        // The same spec is refused by CreateMachine, naming the first problem.
        assert!(ProviderSpec::decode(&serde_json::to_vec(&json!({"fooBar": 1})).unwrap()).is_err());
    }

    #[test]
    fn what_the_calls_need_must_be_there_and_valid() {
        let tags = json!(["kubernetes.io/cluster/c", "kubernetes.io/role/node"]);
        assert_eq!(
            field_of(decode(json!({"projectID": "nope", "tags": tags})).unwrap_err()),
            "providerSpec.projectID"
        );
        assert_eq!(
            field_of(decode(json!({"projectID": PROJECT})).unwrap_err()),
            "providerSpec.tags"
        );
        assert_eq!(
            field_of(decode(json!({"tags": ["kubernetes.io/role/node"]})).unwrap_err()),
            "providerSpec.tags"
        );
        assert_eq!(
            field_of(
                decode(json!({"tags": ["kubernetes.io/cluster/a", "kubernetes.io/cluster/b"]}))
                    .unwrap_err()
            ),
            "providerSpec.tags"
        );
        assert_eq!(field_of(Scope::decode(b"[1]").unwrap_err()), "providerSpec");
        assert_eq!(field_of(Scope::decode(b"").unwrap_err()), "providerSpec");
        // No project in the spec is fine (it may come from the Secret), and no role tag is
        // fine until ListMachines needs one.
        let (scope, _) = decode(json!({"tags": ["kubernetes.io/cluster/c"]})).unwrap();
        assert_eq!(scope.project_id, None);
        assert!(!scope.unlock_on_delete);
        assert_eq!(
            field_of(scope.membership_tags().unwrap_err()),
            "providerSpec.tags"
        );
    }

    #[test]
    fn a_valid_spec_reads_the_same_both_ways() {
        let v = json!({
            "projectID": PROJECT, "metro": "da", "machineType": "c3.small.x86", "OS": "flatcar_stable",
            "tags": ["kubernetes.io/cluster/c", "kubernetes.io/role/node"], "unlockOnDelete": true,
            "customData": {"k": "v"}
        });
        let bytes = serde_json::to_vec(&v).unwrap();
        let strict = ProviderSpec::decode(&bytes).unwrap();
        let (lenient, unknown) = Scope::decode(&bytes).unwrap();
        assert!(unknown.is_empty());
        assert_eq!(lenient, Scope::from(&strict));
    }
}
