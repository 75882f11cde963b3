//! Which Node changes reconcile the Node's Machine.
//!
//! A kubelet writes its Node every few seconds (heartbeats), so a target cluster of 500 Nodes
//! delivers dozens of Node events a second, nearly all of which change nothing a Machine
//! reconcile reads. MCM's node update handler (`updateNode` in its machine controller)
//! enqueues the Machine only when the Node is being deleted, an essential taint (Gardener's
//! `critical-components-not-ready`) came or went, or the Node's conditions differ from the
//! Machine's by type or status (not while the Machine crash-loops or terminates: its next
//! create attempt keeps its retry period). We do the same, and also when anything else a
//! reconcile reads or keeps in sync changed since the Node's previous event: its labels,
//! annotations, taints, `unschedulable`, capacity, allocatable or finalizers. That keeps the
//! nodeTemplate sync (labels, annotations, taints, virtual capacity) prompt, and lets a
//! reconcile that read a Node cache still behind its own last Node write run again once the
//! write is back. A heartbeat, which moves only condition timestamps, reconciles nothing.
//!
//! A Node seen for the first time (added, or listed again after the watch restarted) always
//! reconciles its Machine, as MCM's add handler queues it.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
};

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::ResourceExt;

use super::{crd::Machine, node_finalizer::NODE_FINALIZER, status::phase};

/// What the previous event of each Node showed, as a digest of the facts compared.
#[derive(Default)]
pub struct NodeEvents {
    seen: HashMap<String, u64>,
}

/// A digest of what a Machine reconcile reads from a Node besides its conditions (those are
/// compared with the Machine's, as MCM does).
fn facts(node: &Node) -> u64 {
    let spec = node.spec.as_ref();
    let status = node.status.as_ref();
    // k8s-openapi types are not `Hash`; their JSON is (and is deterministic: maps are sorted).
    let json = serde_json::to_vec(&(
        node.labels(),
        node.annotations(),
        node.finalizers(),
        node.metadata.deletion_timestamp.is_some(),
        spec.and_then(|s| s.taints.as_ref()),
        spec.and_then(|s| s.unschedulable),
        status.and_then(|s| s.capacity.as_ref()),
        status.and_then(|s| s.allocatable.as_ref()),
    ))
    .unwrap_or_default();
    let mut h = DefaultHasher::new();
    json.hash(&mut h);
    h.finish()
}

impl NodeEvents {
    /// Records `node` as the watch delivered it (added or changed) and says whether its
    /// Machines (those whose `node` label names it; normally one) are to be reconciled.
    pub fn changed(&mut self, node: &Node, machines: &[&Machine]) -> bool {
        let now = facts(node);
        let before = self.seen.insert(node.name_any(), now);
        if machines.is_empty() {
            return false;
        }
        let Some(before) = before else {
            return true;
        };
        node.metadata.deletion_timestamp.is_some()
            || !node.finalizers().iter().any(|f| f == NODE_FINALIZER)
            || machines.iter().any(|m| {
                !matches!(m.phase(), phase::CRASH_LOOP_BACK_OFF | phase::TERMINATING)
                    && (before != now || conditions_differ(m, node))
            })
    }

    /// The Node is gone; its Machine is reconciled (MCM deletes the Machine of a deleted Node).
    pub fn deleted(&mut self, node: &Node) {
        self.seen.remove(&node.name_any());
    }
}

/// Whether the Node's conditions differ from the Machine's recorded ones by type or status
/// (MCM's `nodeConditionsHaveChanged`: a condition added, removed, or with another status).
fn conditions_differ(machine: &Machine, node: &Node) -> bool {
    let recorded = machine
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref());
    let current = node.status.as_ref().and_then(|s| s.conditions.as_deref());
    statuses_by_type(recorded) != statuses_by_type(current)
}

fn statuses_by_type(conditions: Option<&[NodeCondition]>) -> BTreeMap<&str, &str> {
    conditions
        .unwrap_or_default()
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::health::CRITICAL_COMPONENTS_NOT_READY_TAINT;
    use serde_json::{Value, json};

    fn node(ready: &str, heartbeat: &str, taint: bool, finalizer: bool) -> Node {
        let taints: Vec<Value> = if taint {
            vec![json!({"key": CRITICAL_COMPONENTS_NOT_READY_TAINT, "effect": "NoSchedule"})]
        } else {
            vec![]
        };
        let finalizers: Vec<&str> = if finalizer {
            vec![NODE_FINALIZER]
        } else {
            vec![]
        };
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "finalizers": finalizers},
            "spec": {"taints": taints},
            "status": {"conditions": [
                {"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat},
                {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": heartbeat},
            ]},
        }))
        .expect("Node")
    }

    fn machine(phase: &str, ready: &str) -> Machine {
        serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m", "labels": {"node": "n1"}},
            "spec": {"class": {"kind": "MachineClass", "name": "c"}},
            "status": {"currentStatus": {"phase": phase},
                       "conditions": [{"type": "Ready", "status": ready},
                                      {"type": "DiskPressure", "status": "False"}]},
        }))
        .expect("Machine")
    }

    const T1: &str = "2026-12-02T10:00:00Z";
    const T2: &str = "2026-12-02T10:00:10Z";

    #[test]
    fn heartbeats_do_not_reconcile_but_a_new_node_does() {
        let mut events = NodeEvents::default();
        let m = machine("Running", "True");
        assert!(
            events.changed(&node("True", T1, false, true), &[&m]),
            "first sight"
        );
        assert!(
            !events.changed(&node("True", T2, false, true), &[&m]),
            "heartbeat"
        );
        events.deleted(&node("True", T2, false, true));
        assert!(
            events.changed(&node("True", T2, false, true), &[&m]),
            "seen again"
        );
    }

    #[test]
    fn a_condition_status_different_from_the_machines_reconciles() {
        let mut events = NodeEvents::default();
        events.changed(&node("True", T1, false, true), &[]);
        let running = machine("Running", "True");
        assert!(events.changed(&node("False", T2, false, true), &[&running]));
        // Until the Machine records the new status, every event reconciles it, as in MCM.
        assert!(events.changed(&node("False", T2, false, true), &[&running]));
        assert!(!events.changed(
            &node("False", T2, false, true),
            &[&machine("Unknown", "False")]
        ));
        // Not while it crash-loops or terminates.
        for ph in ["CrashLoopBackOff", "Terminating"] {
            assert!(
                !events.changed(&node("True", T2, false, true), &[&machine(ph, "False")]),
                "{ph}"
            );
        }
    }

    #[test]
    fn the_essential_taint_deletion_and_finalizer_reconcile() {
        let mut events = NodeEvents::default();
        let m = machine("Pending", "True");
        events.changed(&node("True", T1, true, true), &[&m]);
        assert!(!events.changed(&node("True", T2, true, true), &[&m]));
        assert!(
            events.changed(&node("True", T2, false, true), &[&m]),
            "taint removed"
        );
        assert!(
            events.changed(&node("True", T2, false, false), &[&m]),
            "no finalizer"
        );
        let mut deleting = node("True", T2, false, true);
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(T2.parse().expect("time")),
        );
        assert!(events.changed(&deleting, &[&m]), "being deleted");
    }

    #[test]
    fn a_label_or_capacity_change_reconciles() {
        let mut events = NodeEvents::default();
        let m = machine("Running", "True");
        events.changed(&node("True", T1, false, true), &[&m]);
        let mut labelled = node("True", T2, false, true);
        labelled.metadata.labels = Some([("pool".to_owned(), "a".to_owned())].into());
        assert!(events.changed(&labelled, &[&m]), "label added");
        let mut sized = labelled.clone();
        sized.status.as_mut().expect("status").capacity = Some(
            [(
                "hana.hc.sap.com/hcu".to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            )]
            .into(),
        );
        assert!(events.changed(&sized, &[&m]), "capacity");
        assert!(!events.changed(&sized, &[&m]), "nothing new");
        // A crash-looping Machine keeps its retry period.
        labelled.metadata.labels = None;
        assert!(!events.changed(&labelled, &[&machine("CrashLoopBackOff", "True")]));
    }

    #[test]
    fn a_node_without_a_machine_reconciles_nothing_but_is_remembered() {
        let mut events = NodeEvents::default();
        assert!(!events.changed(&node("True", T1, true, false), &[]));
        let m = machine("Pending", "True");
        // The Machine appears (its node label set): the next change is judged against it.
        assert!(
            events.changed(&node("True", T2, false, true), &[&m]),
            "taint removed"
        );
    }
}
