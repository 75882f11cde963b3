//! MCM's `machine.sapcloud.io/v1alpha1` types, as far as the controller reads and writes them.
//!
//! Field names are MCM's exactly (`pkg/apis/machine/v1alpha1`), because MCM's own
//! MachineSet/MachineDeployment controllers run beside us and key off
//! `status.currentStatus.phase`. We never generate the CRDs (MCM's own are installed), so
//! the derive runs with `schema = "disabled"`.
//!
//! Reading is lenient: every field is optional and durations stay strings until used, so an
//! odd value in one field does not make the whole object unreadable. Writing happens through
//! merge patches built by [`super::status`], never by sending these structs back whole, so
//! fields we do not model (set by MCM or a newer MCM) are preserved.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{NodeCondition, SecretReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{CustomResource, Resource, core::DeserializeGuard};
use serde::{Deserialize, Serialize};

/// The API group of every MCM resource.
pub const GROUP: &str = "machine.sapcloud.io";
/// The only served version.
pub const VERSION: &str = "v1alpha1";

/// `spec` of a `Machine`: which class to use, the device it maps to, and per-machine
/// overrides of the controller's timeouts (MCM's inline `MachineConfiguration`).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "machine.sapcloud.io",
    version = "v1alpha1",
    kind = "Machine",
    namespaced,
    status = "MachineStatus",
    schema = "disabled",
    shortname = "mc"
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// The MachineClass this machine is created from; `kind` must be `MachineClass`.
    #[serde(default)]
    pub class: ClassSpec,
    /// `equinixmetal://<device-uuid>` once the device exists; empty before.
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
    /// Labels, annotations and taints for the Node (not synced by this controller yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_template: Option<serde_json::Value>,
    /// Per-machine override of `--machine-creation-timeout` (Go duration, e.g. `20m0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timeout: Option<String>,
    /// Per-machine override of `--machine-health-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<String>,
    /// Per-machine override of `--machine-drain-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// Per-machine override of `--machine-max-evict-retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_evict_retries: Option<i32>,
    /// Never move this machine from Unknown to Failed on the health timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_health_timeout: Option<bool>,
    /// Comma-separated Node condition types that make a machine unhealthy when not `False`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_conditions: Option<String>,
}

/// `spec.class`: a reference to the class in the machine's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClassSpec {
    /// Ignored (MCM ignores it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// Must be `MachineClass`.
    #[serde(default)]
    pub kind: String,
    /// The MachineClass name.
    #[serde(default)]
    pub name: String,
}

/// `status` of a `Machine`, MCM's field names.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Node conditions copied from the Node (only with a target cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<NodeCondition>>,
    /// The last operation the controller ran and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_operation: Option<LastOperation>,
    /// The phase MCM's other controllers read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_status: Option<CurrentStatus>,
    /// Opaque driver state, passed back on DeleteMachine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_state: Option<String>,
}

/// `status.lastOperation`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastOperation {
    /// Human-readable; MCM's delete flow keys steps off substrings of it.
    #[serde(default)]
    pub description: String,
    /// The gRPC/MCM code name of a failure (`InvalidArgument`, …); absent on success.
    /// Serialized as `null` when absent so a merge patch clears an old code.
    #[serde(default)]
    pub error_code: Option<String>,
    /// When this operation record was written.
    #[serde(default)]
    pub last_update_time: Option<Time>,
    /// `Processing`, `Successful` or `Failed`.
    #[serde(default)]
    pub state: String,
    /// `Create`, `Delete`, `HealthCheck`, …
    #[serde(default, rename = "type")]
    pub type_: String,
}

/// `status.currentStatus`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CurrentStatus {
    /// `Pending`, `Running`, `Unknown`, `Failed`, `Terminating`, `CrashLoopBackOff`,
    /// `Available`, or empty before the first create attempt.
    #[serde(default)]
    pub phase: String,
    /// Whether a creation or health timeout is being counted.
    #[serde(default)]
    pub timeout_active: bool,
    /// When the phase last changed; the health timeout counts from here.
    #[serde(default)]
    pub last_update_time: Option<Time>,
    /// Set by MCM's machine preservation; a preserved Failed machine is not being replaced,
    /// so the meltdown permit does not count it. Never written here (merge patches of
    /// `currentStatus` leave it as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_expiry_time: Option<Time>,
}

/// A `MachineClass`. MCM's class has its fields at the top level (no `spec`), which
/// `#[derive(CustomResource)]` cannot express, so [`Resource`] is implemented by hand.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineClass {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The driver's input, passed as raw JSON bytes in every CMI request.
    #[serde(default)]
    pub provider_spec: serde_json::Value,
    /// Informational (`EquinixMetal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Secret with `userData` (and possibly credentials); merged first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Secret with the cloud credentials; merged second, so its keys win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
    /// Capacity and zone information for the autoscaler (not used by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_template: Option<serde_json::Value>,
}

impl Resource for MachineClass {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "MachineClass".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "machineclasses".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// kubectl's copy of the last applied manifest, on objects created with `kubectl apply`.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from a Machine what the controller never reads, before it enters the cache:
/// `managedFields` (one entry per writer — MCM, this controller, kubectl — often larger
/// than the spec) and kubectl's last-applied annotation. Safe because every write is a
/// merge patch of fields the controller sets, never the cached object sent back.
pub fn trim_for_cache(guard: &mut DeserializeGuard<Machine>) {
    if let Ok(m) = &mut guard.0 {
        m.metadata.managed_fields = None;
        if let Some(annotations) = m.metadata.annotations.as_mut() {
            annotations.remove(LAST_APPLIED_ANNOTATION);
        }
    }
}

impl Machine {
    /// The current phase, empty when none was ever written.
    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.current_status.as_ref())
            .map_or("", |c| c.phase.as_str())
    }

    /// `spec.providerID`, with empty treated as absent.
    pub fn provider_id(&self) -> Option<&str> {
        self.spec.provider_id.as_deref().filter(|p| !p.is_empty())
    }

    /// The `node` label: the Node this machine became, once created with a target cluster.
    pub fn node_name(&self) -> Option<&str> {
        self.labels()
            .get(NODE_LABEL)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }

    /// `status.lastKnownState`, passed back to the driver.
    pub fn last_known_state(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.last_known_state.as_deref())
            .unwrap_or("")
    }

    /// Labels (empty map when none).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }
}

/// Label on a Machine naming its Node.
pub const NODE_LABEL: &str = "node";
/// Annotation MCM's MachineSet controller reads to pick machines to delete first.
pub const PRIORITY_ANNOTATION: &str = "machinepriority.machine.sapcloud.io";
/// The priority a fresh machine gets ("1" = delete first).
pub const DEFAULT_PRIORITY: &str = "3";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the cache keeps: everything the controller reads, without managedFields or
    /// kubectl's copy of the manifest; other annotations stay.
    #[test]
    fn trimmed_for_cache_keeps_what_is_read() {
        let mut g: DeserializeGuard<Machine> = serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {
                "name": "m1", "namespace": "ns", "finalizers": ["machine.sapcloud.io/machine-controller-manager"],
                "annotations": {
                    LAST_APPLIED_ANNOTATION: "{\"big\": \"manifest\"}",
                    PRIORITY_ANNOTATION: "3"
                },
                "managedFields": [
                    {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:class": {}}}},
                    {"manager": "metal-driver", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:status": {}}, "subresource": "status"}
                ]
            },
            "spec": {"class": {"kind": "MachineClass", "name": "c"}, "providerID": "equinixmetal://x"},
            "status": {"currentStatus": {"phase": "Running", "timeoutActive": false}}
        }))
        .unwrap();
        let before = g.0.clone().unwrap();
        trim_for_cache(&mut g);
        let m = g.0.unwrap();
        assert!(m.metadata.managed_fields.is_none());
        let annotations = m.metadata.annotations.clone().unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED_ANNOTATION));
        assert_eq!(annotations[PRIORITY_ANNOTATION], "3");
        assert_eq!(m.metadata.finalizers, before.metadata.finalizers);
        assert_eq!(m.spec, before.spec);
        assert_eq!(m.status, before.status);
        assert_eq!(m.phase(), "Running");

        // A Machine that did not decode is left alone (its error is what gets reported).
        let mut bad: DeserializeGuard<Machine> = serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "bad", "namespace": "ns"}, "spec": {"class": 1}
        }))
        .unwrap();
        trim_for_cache(&mut bad);
        assert!(bad.0.is_err());
    }

    #[test]
    fn machine_reads_mcm_fields() {
        let m: Machine = serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "Machine",
            "metadata": {"name": "m1", "namespace": "ns", "labels": {"node": "m1"}},
            "spec": {"class": {"kind": "MachineClass", "name": "c"}, "providerID": "equinixmetal://x",
                     "creationTimeout": "20m0s"},
            "status": {"currentStatus": {"phase": "Pending", "timeoutActive": true,
                       "lastUpdateTime": "2026-01-01T00:00:00Z"},
                       "lastOperation": {"description": "d", "lastUpdateTime": null, "state": "Processing",
                       "type": "Create"}, "lastKnownState": "s"}
        }))
        .unwrap();
        assert_eq!(m.phase(), "Pending");
        assert_eq!(m.provider_id(), Some("equinixmetal://x"));
        assert_eq!(m.node_name(), Some("m1"));
        assert_eq!(m.last_known_state(), "s");
        assert_eq!(m.spec.creation_timeout.as_deref(), Some("20m0s"));
    }

    #[test]
    fn class_has_top_level_fields_and_resource_metadata() {
        let c: MachineClass = serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
            "metadata": {"name": "c", "namespace": "ns"},
            "providerSpec": {"metro": "da"},
            "secretRef": {"name": "s", "namespace": "ns"},
            "credentialsSecretRef": {"name": "cred"},
            "provider": "EquinixMetal"
        }))
        .unwrap();
        assert_eq!(c.provider_spec["metro"], "da");
        assert_eq!(
            c.credentials_secret_ref.unwrap().name.as_deref(),
            Some("cred")
        );
        assert_eq!(MachineClass::plural(&()), "machineclasses");
        assert_eq!(
            MachineClass::api_version(&()),
            "machine.sapcloud.io/v1alpha1"
        );
    }

    #[test]
    fn a_malformed_machine_is_isolated_by_the_guard() {
        let g: DeserializeGuard<Machine> = serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {"class": "not-an-object"}
        }))
        .unwrap();
        let err = g.0.unwrap_err();
        assert_eq!(err.metadata.name.as_deref(), Some("bad"));
    }
}
