//! Which Node changes reconcile the Node's Machine.
//!
//! A kubelet writes its Node every few seconds (heartbeats), so a target cluster of 500 Nodes
//! delivers dozens of Node events a second, nearly all of which change nothing a Machine
//! reconcile reads. MCM's node update handler (`updateNode` in its machine controller)
//! enqueues the Machine only when one of these changed, and so do we:
//!
//! - the Node is being deleted (its Machine is deleted with it) or lacks our finalizer;
//! - an essential taint (Gardener's `critical-components-not-ready`, which holds a Machine
//!   Pending) was added or removed;
//! - the Node's conditions differ from the ones recorded in the Machine's status by type or
//!   status (a heartbeat only moves timestamps), unless the Machine is in CrashLoopBackOff
//!   or Terminating.
//!
//! A Node seen for the first time (added, or listed again after the watch restarted) always
//! reconciles its Machine, as MCM's add handler queues it. Everything else a reconcile
//! keeps in sync (the nodeTemplate's labels, annotations and taints) is looked at on the
//! periodic health re-check, as MCM does on its periodic re-sync.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::{
    crd::Machine, health::CRITICAL_COMPONENTS_NOT_READY_TAINT, node_finalizer::NODE_FINALIZER,
    status::phase,
};

/// The taints whose arrival or removal reconciles a Machine at once (MCM's `EssentialTaints`).
const ESSENTIAL_TAINTS: &[&str] = &[CRITICAL_COMPONENTS_NOT_READY_TAINT];

/// What the previous event of each Node showed of the facts compared between events.
#[derive(Default)]
pub struct NodeEvents {
    seen: HashMap<String, Facts>,
}

#[derive(PartialEq, Eq)]
struct Facts {
    essential_taints: Vec<bool>,
}

impl Facts {
    fn of(node: &Node) -> Self {
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref());
        let has = |key: &str| taints.is_some_and(|t| t.iter().any(|t| t.key == key));
        Self {
            essential_taints: ESSENTIAL_TAINTS.iter().map(|k| has(k)).collect(),
        }
    }
}

impl NodeEvents {
    /// Records `node` as the watch delivered it (added or changed) and says whether its
    /// Machines (those whose `node` label names it; normally one) are to be reconciled.
    pub fn changed(&mut self, node: &Node, machines: &[&Machine]) -> bool {
        let facts = Facts::of(node);
        let before = self.seen.insert(node.name_any(), facts);
        if machines.is_empty() {
            return false;
        }
        let Some(before) = before else {
            return true;
        };
        node.metadata.deletion_timestamp.is_some()
            || !node.finalizers().iter().any(|f| f == NODE_FINALIZER)
            || before != Facts::of(node)
            || machines.iter().any(|m| {
                conditions_differ(m, node)
                    && !matches!(m.phase(), phase::CRASH_LOOP_BACK_OFF | phase::TERMINATING)
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
    let recorded: BTreeMap<&str, &str> = machine
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    let current: BTreeMap<&str, &str> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    recorded != current
}

#[cfg(test)]
mod tests {
    use super::*;
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
