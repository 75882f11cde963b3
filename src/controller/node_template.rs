//! What the Node of a Machine should carry from the Machine's `spec.nodeTemplate` and its
//! class's `nodeTemplate.virtualCapacity` (MCM's `syncNodeTemplates`), as a pure diff
//! against the Node so every rule is unit-tested:
//!
//! - labels and annotations of the template are set (added or updated); those listed in the
//!   Node's last-applied annotation but no longer in the template are removed. Keys that
//!   someone else put on the Node are never touched.
//! - taints are matched by (key, effect): a template taint is added or replaced when the
//!   Node's differs; a last-applied taint gone from the template is removed.
//! - the last-applied annotation `node.machine.sapcloud.io/last-applied-anno-labels-taints`
//!   records the template (same JSON shape as MCM's) whenever any of that changed, so both
//!   controllers read each other's record after a migration.
//! - `virtualCapacity` entries become `status.capacity` entries (compared as quantities, so
//!   `1024Mi` equals `1Gi`), removed again when dropped from the class (annotation
//!   `node.machine.sapcloud.io/last-applied-virtual-capacity`).
//! - the label `node.gardener.cloud/machine-name` names the Machine (MCM's
//!   `syncMachineNameToNode`; Gardener's node-agent and health checks read it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// MCM's record of the template last applied to the Node.
pub const LAST_APPLIED_ALT: &str = "node.machine.sapcloud.io/last-applied-anno-labels-taints";
/// MCM's record of the virtual capacity last applied to the Node.
pub const LAST_APPLIED_VIRTUAL_CAPACITY: &str =
    "node.machine.sapcloud.io/last-applied-virtual-capacity";
/// The Node label naming its Machine.
pub const MACHINE_NAME_LABEL: &str = "node.gardener.cloud/machine-name";

/// `spec.nodeTemplate` of a Machine, as far as it is applied to the Node.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NodeTemplate {
    #[serde(default)]
    metadata: TemplateMeta,
    #[serde(default)]
    spec: TemplateSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct TemplateMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct TemplateSpec {
    #[serde(default)]
    taints: Vec<Taint>,
}

impl NodeTemplate {
    /// Reads a Machine's `spec.nodeTemplate` (absent = empty). The error names the field.
    pub fn from_machine(value: Option<&Value>) -> Result<Self, String> {
        match value {
            None | Some(Value::Null) => Ok(Self::default()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("spec.nodeTemplate is not a Node template: {e}")),
        }
    }

    /// The JSON MCM v0.62.1 writes into the last-applied annotation, byte for byte (Go's
    /// encoding of `NodeTemplateSpec`: empty maps and lists omitted, struct field order, taint
    /// fields `key`, `value`, `effect`, `timeAdded`).
    pub(crate) fn record(&self) -> String {
        #[derive(Serialize)]
        struct Meta<'a> {
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            labels: &'a BTreeMap<String, String>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            annotations: &'a BTreeMap<String, String>,
        }
        #[derive(Serialize)]
        struct GoTaint<'a> {
            key: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            value: &'a str,
            effect: &'a str,
            #[serde(rename = "timeAdded", skip_serializing_if = "Option::is_none")]
            time_added: Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
        }
        #[derive(Serialize)]
        struct Spec<'a> {
            #[serde(skip_serializing_if = "Vec::is_empty")]
            taints: Vec<GoTaint<'a>>,
        }
        #[derive(Serialize)]
        struct Record<'a> {
            metadata: Meta<'a>,
            spec: Spec<'a>,
        }
        let record = Record {
            metadata: Meta {
                labels: &self.metadata.labels,
                annotations: &self.metadata.annotations,
            },
            spec: Spec {
                taints: self
                    .spec
                    .taints
                    .iter()
                    .map(|t| GoTaint {
                        key: &t.key,
                        value: t.value.as_deref().unwrap_or_default(),
                        effect: &t.effect,
                        time_added: t.time_added.as_ref(),
                    })
                    .collect(),
            },
        };
        serde_json::to_string(&record).unwrap_or_default()
    }
}

/// The class's `nodeTemplate.virtualCapacity`: resource name → quantity (empty when unset).
pub fn virtual_capacity(class_node_template: Option<&Value>) -> BTreeMap<String, String> {
    class_node_template
        .and_then(|t| t.get("virtualCapacity"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let q = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    Some((k.clone(), q))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The writes that bring a Node in line. `None` values remove a key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Label changes.
    pub labels: BTreeMap<String, Option<String>>,
    /// Annotation changes.
    pub annotations: BTreeMap<String, Option<String>>,
    /// The Node's new taint list, when it changes.
    pub taints: Option<Vec<Taint>>,
    /// `status.capacity` changes.
    pub capacity: BTreeMap<String, Option<String>>,
}

impl Plan {
    /// Whether the Node's metadata or spec changes.
    pub fn changes_object(&self) -> bool {
        !self.labels.is_empty() || !self.annotations.is_empty() || self.taints.is_some()
    }

    /// The merge patch of the Node's `status` (capacity), if any.
    pub fn status_patch(&self) -> Option<Value> {
        (!self.capacity.is_empty()).then(|| json!({"status": {"capacity": self.capacity}}))
    }

    /// The merge patch of the Node's metadata and spec (labels, annotations, taints,
    /// finalizers), conditional on `resource_version` so a concurrent change to the taint
    /// list (Gardener removing its taint) is never overwritten.
    pub fn object_patch(
        &self,
        resource_version: Option<&str>,
        finalizers: Option<&[String]>,
    ) -> Option<Value> {
        if !self.changes_object() && finalizers.is_none() {
            return None;
        }
        let mut meta = Map::new();
        if let Some(rv) = resource_version {
            meta.insert("resourceVersion".into(), json!(rv));
        }
        if !self.labels.is_empty() {
            meta.insert("labels".into(), json!(self.labels));
        }
        if !self.annotations.is_empty() {
            meta.insert("annotations".into(), json!(self.annotations));
        }
        if let Some(f) = finalizers {
            meta.insert("finalizers".into(), json!(f));
        }
        let mut patch = Map::new();
        patch.insert("metadata".into(), Value::Object(meta));
        if let Some(t) = &self.taints {
            patch.insert("spec".into(), json!({ "taints": t }));
        }
        Some(Value::Object(patch))
    }
}

/// Decides what to change on `node` for the Machine `machine_name` with `template` and the
/// class's `virtual_capacity`. An unreadable last-applied annotation is an error (MCM
/// retries too): removing keys on a guess could strip labels someone else owns.
pub fn plan(
    machine_name: &str,
    template: &NodeTemplate,
    virtual_capacity: &BTreeMap<String, String>,
    node: &Node,
) -> Result<Plan, String> {
    let empty = BTreeMap::new();
    let node_labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let node_annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
    let last: NodeTemplate = match node_annotations.get(LAST_APPLIED_ALT) {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| format!("Node annotation {LAST_APPLIED_ALT} is unreadable: {e}"))?,
        None => NodeTemplate::default(),
    };
    let last_capacity: BTreeMap<String, String> =
        match node_annotations.get(LAST_APPLIED_VIRTUAL_CAPACITY) {
            Some(s) => {
                let v: Value = serde_json::from_str(s).map_err(|e| {
                    format!("Node annotation {LAST_APPLIED_VIRTUAL_CAPACITY} is unreadable: {e}")
                })?;
                self::virtual_capacity(Some(&json!({ "virtualCapacity": v })))
            }
            None => BTreeMap::new(),
        };

    let mut out = Plan::default();
    let labels_changed = sync_map(
        &template.metadata.labels,
        &last.metadata.labels,
        node_labels,
        &mut out.labels,
    );
    let annotations_changed = sync_map(
        &template.metadata.annotations,
        &last.metadata.annotations,
        node_annotations,
        &mut out.annotations,
    );
    let node_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    out.taints = sync_taints(&template.spec.taints, &last.spec.taints, node_taints);
    if labels_changed || annotations_changed || out.taints.is_some() || node_annotations.is_empty()
    {
        out.annotations
            .insert(LAST_APPLIED_ALT.to_owned(), Some(template.record()));
    }
    if node_labels.get(MACHINE_NAME_LABEL).map(String::as_str) != Some(machine_name) {
        out.labels
            .insert(MACHINE_NAME_LABEL.to_owned(), Some(machine_name.to_owned()));
    }

    let node_capacity = node.status.as_ref().and_then(|s| s.capacity.as_ref());
    let mut capacity_changed = false;
    for key in last_capacity.keys() {
        if !virtual_capacity.contains_key(key) {
            out.capacity.insert(key.clone(), None);
            capacity_changed = true;
        }
    }
    for (key, want) in virtual_capacity {
        let have = node_capacity.and_then(|c| c.get(key)).map(|q| q.0.as_str());
        if !have.is_some_and(|h| same_quantity(h, want)) {
            out.capacity.insert(key.clone(), Some(want.clone()));
            capacity_changed = true;
        }
    }
    // The record is written with the capacity, and on its own when it does not say what the
    // Node carries: capacity and record are two writes (status, then object), and when the
    // second fails (a conflict) the retry finds the capacity already there. Without its record
    // the capacity could never be taken off again (MCM's syncNodeTemplates has that hole).
    let record_current = last_capacity.len() == virtual_capacity.len()
        && virtual_capacity.iter().all(|(key, want)| {
            last_capacity
                .get(key)
                .is_some_and(|h| same_quantity(h, want))
        });
    if capacity_changed || !record_current {
        let record = if virtual_capacity.is_empty() {
            None
        } else {
            Some(json!(virtual_capacity).to_string())
        };
        out.annotations
            .insert(LAST_APPLIED_VIRTUAL_CAPACITY.to_owned(), record);
    }
    Ok(out)
}

/// Labels or annotations: removes last-applied keys gone from the template, sets template
/// keys whose value differs. Returns whether the template's part changed (MCM's rule: a
/// dropped key counts even when the Node no longer has it).
fn sync_map(
    want: &BTreeMap<String, String>,
    last: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
    out: &mut BTreeMap<String, Option<String>>,
) -> bool {
    let mut changed = false;
    for key in last.keys() {
        if !want.contains_key(key) {
            if have.contains_key(key) {
                out.insert(key.clone(), None);
            }
            changed = true;
        }
    }
    for (key, value) in want {
        if have.get(key) != Some(value) {
            out.insert(key.clone(), Some(value.clone()));
            changed = true;
        }
    }
    changed
}

/// Taints keyed by (key, effect): the Node's new list when anything changes. The Node's order
/// is kept; new taints are appended.
fn sync_taints(want: &[Taint], last: &[Taint], have: &[Taint]) -> Option<Vec<Taint>> {
    let same_slot = |a: &Taint, b: &Taint| a.key == b.key && a.effect == b.effect;
    let mut changed = false;
    let mut list: Vec<Taint> = have.to_vec();
    for gone in last
        .iter()
        .filter(|l| !want.iter().any(|w| same_slot(w, l)))
    {
        list.retain(|t| !same_slot(t, gone));
        changed = true;
    }
    for w in want {
        match list.iter_mut().find(|t| same_slot(t, w)) {
            Some(t) if t == w => {}
            Some(t) => {
                *t = w.clone();
                changed = true;
            }
            None => {
                list.push(w.clone());
                changed = true;
            }
        }
    }
    changed.then_some(list)
}

/// Whether two Kubernetes quantities are equal in value (`1Gi` = `1024Mi`, `1` = `1000m`).
/// Unparsable quantities compare as text.
fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity_value(a), quantity_value(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()) * 4.0,
        _ => a == b,
    }
}

fn quantity_value(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn template(v: Value) -> NodeTemplate {
        NodeTemplate::from_machine(Some(&v)).unwrap()
    }

    fn taint(key: &str, value: &str, effect: &str) -> Value {
        json!({"key": key, "value": value, "effect": effect})
    }

    #[test]
    fn a_fresh_node_gets_the_template_the_record_and_the_machine_name() {
        let t = template(json!({
            "metadata": {"labels": {"pool": "a"}, "annotations": {"note": "x"}},
            "spec": {"taints": [taint("dedicated", "db", "NoSchedule")]}
        }));
        let n = node(json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux"}}}));
        let p = plan("m1", &t, &BTreeMap::new(), &n).unwrap();
        assert_eq!(p.labels["pool"], Some("a".into()));
        assert_eq!(p.labels[MACHINE_NAME_LABEL], Some("m1".into()));
        assert!(!p.labels.contains_key("kubernetes.io/os"));
        assert_eq!(p.annotations["note"], Some("x".into()));
        let record = p.annotations[LAST_APPLIED_ALT].clone().unwrap();
        assert_eq!(
            record,
            r#"{"metadata":{"labels":{"pool":"a"},"annotations":{"note":"x"}},"spec":{"taints":[{"key":"dedicated","value":"db","effect":"NoSchedule"}]}}"#
        );
        let taints = p.taints.clone().unwrap();
        assert_eq!(taints.len(), 1);
        assert_eq!(taints[0].key, "dedicated");
        assert!(p.capacity.is_empty() && p.status_patch().is_none());
        let patch = p.object_patch(Some("5"), None).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "5");
        assert_eq!(patch["spec"]["taints"][0]["value"], "db");
    }

    #[test]
    fn an_applied_template_needs_no_write() {
        let t = template(json!({"metadata": {"labels": {"pool": "a"}},
                                "spec": {"taints": [taint("k", "v", "NoSchedule")]}}));
        let n = node(json!({
            "metadata": {"name": "n1",
                "labels": {"pool": "a", MACHINE_NAME_LABEL: "m1"},
                "annotations": {LAST_APPLIED_ALT: t.record()}},
            "spec": {"taints": [taint("other", "", "NoExecute"), taint("k", "v", "NoSchedule")]}
        }));
        let p = plan("m1", &t, &BTreeMap::new(), &n).unwrap();
        assert_eq!(p, Plan::default());
        assert!(p.object_patch(Some("5"), None).is_none());
    }

    #[test]
    fn dropped_entries_are_removed_and_foreign_ones_kept() {
        let old = template(json!({
            "metadata": {"labels": {"pool": "a", "gone": "1"}, "annotations": {"gone-a": "1"}},
            "spec": {"taints": [taint("gone", "", "NoSchedule"), taint("k", "v1", "NoSchedule")]}
        }));
        let n = node(json!({
            "metadata": {"name": "n1",
                "labels": {"pool": "a", "gone": "1", "foreign": "f", MACHINE_NAME_LABEL: "m1"},
                "annotations": {"gone-a": "1", "foreign-a": "f", LAST_APPLIED_ALT: old.record()}},
            "spec": {"taints": [
                taint("foreign", "", "NoSchedule"),
                taint("gone", "", "NoSchedule"),
                taint("k", "v1", "NoSchedule")]}
        }));
        let new = template(json!({"metadata": {"labels": {"pool": "b"}},
                                  "spec": {"taints": [taint("k", "v2", "NoSchedule")]}}));
        let p = plan("m1", &new, &BTreeMap::new(), &n).unwrap();
        assert_eq!(p.labels.get("gone"), Some(&None));
        assert_eq!(p.labels.get("pool"), Some(&Some("b".into())));
        assert!(!p.labels.contains_key("foreign"));
        assert_eq!(p.annotations.get("gone-a"), Some(&None));
        assert!(!p.annotations.contains_key("foreign-a"));
        assert_eq!(
            p.annotations[LAST_APPLIED_ALT].as_deref(),
            Some(new.record().as_str())
        );
        let taints = p.taints.unwrap();
        let keys: Vec<(&str, Option<&str>)> = taints
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_deref()))
            .collect();
        assert_eq!(keys, [("foreign", Some("")), ("k", Some("v2"))]);
    }

    #[test]
    fn an_mcm_written_record_is_read() {
        // As MCM's Go code encodes it.
        let record = r#"{"metadata":{"creationTimestamp":null,"labels":{"x":"1"}},"spec":{}}"#;
        let n = node(json!({"metadata": {"name": "n1",
            "labels": {"x": "1", MACHINE_NAME_LABEL: "m1"},
            "annotations": {LAST_APPLIED_ALT: record}}}));
        let p = plan("m1", &NodeTemplate::default(), &BTreeMap::new(), &n).unwrap();
        assert_eq!(p.labels.get("x"), Some(&None));
        let broken = node(json!({"metadata": {"name": "n1",
            "annotations": {LAST_APPLIED_ALT: "{not json"}}}));
        let err = plan("m1", &NodeTemplate::default(), &BTreeMap::new(), &broken).unwrap_err();
        assert!(err.contains(LAST_APPLIED_ALT), "{err}");
    }

    #[test]
    fn a_bad_template_is_an_error_naming_the_field() {
        let err =
            NodeTemplate::from_machine(Some(&json!({"metadata": {"labels": ["x"]}}))).unwrap_err();
        assert!(err.contains("spec.nodeTemplate"), "{err}");
        assert_eq!(
            NodeTemplate::from_machine(None).unwrap(),
            NodeTemplate::default()
        );
    }

    #[test]
    fn virtual_capacity_is_added_compared_by_value_and_removed() {
        let class = json!({"virtualCapacity": {"hana.sap/memory": "1024Mi", "x/y": 2}});
        let vc = virtual_capacity(Some(&class));
        assert_eq!(vc["x/y"], "2");
        let n = node(
            json!({"metadata": {"name": "n1", "labels": {MACHINE_NAME_LABEL: "m1"},
                                          "annotations": {"a": "b"}},
                            "status": {"capacity": {"cpu": "4", "hana.sap/memory": "1Gi"}}}),
        );
        let p = plan("m1", &NodeTemplate::default(), &vc, &n).unwrap();
        assert_eq!(
            p.capacity,
            BTreeMap::from([("x/y".to_owned(), Some("2".to_owned()))])
        );
        assert_eq!(
            p.annotations[LAST_APPLIED_VIRTUAL_CAPACITY].as_deref(),
            Some(r#"{"hana.sap/memory":"1024Mi","x/y":"2"}"#)
        );
        assert_eq!(p.status_patch().unwrap()["status"]["capacity"]["x/y"], "2");

        let applied = node(
            json!({"metadata": {"name": "n1", "labels": {MACHINE_NAME_LABEL: "m1"},
                "annotations": {LAST_APPLIED_VIRTUAL_CAPACITY: r#"{"hana.sap/memory":"1Gi","x/y":"2"}"#}},
            "status": {"capacity": {"cpu": "4", "hana.sap/memory": "1Gi", "x/y": "2"}}}),
        );
        let p = plan("m1", &NodeTemplate::default(), &BTreeMap::new(), &applied).unwrap();
        assert_eq!(p.capacity.get("x/y"), Some(&None));
        assert_eq!(p.capacity.get("hana.sap/memory"), Some(&None));
        assert!(!p.capacity.contains_key("cpu"));
        assert_eq!(
            p.annotations.get(LAST_APPLIED_VIRTUAL_CAPACITY),
            Some(&None)
        );
    }

    /// Capacity applied by a sync whose record write then failed: the record is written on
    /// its own; a record in other units of the same quantities is left alone.
    #[test]
    fn a_missing_virtual_capacity_record_is_written_alone() {
        let vc = virtual_capacity(Some(&json!({"virtualCapacity": {"x/y": "1024Mi"}})));
        let without_record = node(
            json!({"metadata": {"name": "n1", "labels": {MACHINE_NAME_LABEL: "m1"}, "annotations": {"a": "b"}},
                   "status": {"capacity": {"x/y": "1Gi"}}}),
        );
        let p = plan("m1", &NodeTemplate::default(), &vc, &without_record).unwrap();
        assert!(p.capacity.is_empty(), "{:?}", p.capacity);
        assert_eq!(
            p.annotations[LAST_APPLIED_VIRTUAL_CAPACITY].as_deref(),
            Some(r#"{"x/y":"1024Mi"}"#)
        );
        let with_record = node(
            json!({"metadata": {"name": "n1", "labels": {MACHINE_NAME_LABEL: "m1"},
                                "annotations": {"a": "b", LAST_APPLIED_VIRTUAL_CAPACITY: r#"{"x/y":"1Gi"}"#}},
                   "status": {"capacity": {"x/y": "1Gi"}}}),
        );
        let p = plan("m1", &NodeTemplate::default(), &vc, &with_record).unwrap();
        assert!(
            p.capacity.is_empty() && !p.annotations.contains_key(LAST_APPLIED_VIRTUAL_CAPACITY)
        );
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(same_quantity("1Gi", "1024Mi"));
        assert!(same_quantity("1", "1000m"));
        assert!(same_quantity("1.5k", "1500"));
        assert!(same_quantity("1e3", "1k"));
        assert!(!same_quantity("1G", "1Gi"));
        assert!(!same_quantity("bogus", "1"));
    }
}
