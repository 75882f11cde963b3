//! The bridge from the controller's Machine cache to MCM's scrape-time series
//! ([`crate::telemetry::mcm`]): what MCM's collector reads off each Machine, and the
//! MachineDeployment/placement labels of the duration gauges.

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, core::DeserializeGuard, runtime::reflector::Store};

use crate::telemetry::mcm::{MachineSample, MachineSource, McmMachineMetrics, PlacementLabels};

use super::{
    crd::{Machine, MachineClass},
    status::{elapsed, phase},
};

/// The work-queue key of a Machine (`namespace/name`, as client-go's).
pub fn queue_key(m: &impl Resource) -> String {
    let meta = m.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// CreateMachine succeeded: `mcm_machine_create_duration_seconds`, counted from the Machine's
/// creation as MCM does.
pub fn record_created(mcm: &McmMachineMetrics, m: &Machine, class: &MachineClass, now: Timestamp) {
    if let (Some(l), Some(created)) = (placement(m, Some(class)), &m.metadata.creation_timestamp) {
        mcm.machine_created(&l, elapsed(now, created.0));
    }
}

/// A health transition: Pending → Running is a join (`mcm_machine_join_duration_seconds`,
/// from the Machine's creation), Pending → Failed a failed join
/// (`mcm_machine_num_failed_join`).
pub fn record_phase_change(
    mcm: &McmMachineMetrics,
    m: &Machine,
    class: &MachineClass,
    to: &str,
    now: Timestamp,
) {
    if m.phase() != phase::PENDING {
        return;
    }
    let Some(l) = placement(m, Some(class)) else {
        return;
    };
    match to {
        phase::RUNNING => {
            if let Some(created) = &m.metadata.creation_timestamp {
                mcm.machine_joined(&l, elapsed(now, created.0));
            }
        }
        phase::FAILED => mcm.machine_failed_join(&l),
        _ => {}
    }
}

/// A drain of the Machine's Node finished after `took`:
/// `mcm_machine_drain_duration_seconds` (labelled by MachineDeployment only, as in MCM).
pub fn record_drained(mcm: &McmMachineMetrics, m: &Machine, took: std::time::Duration) {
    if let Some(l) = placement(m, None) {
        mcm.machine_drained(&l, took);
    }
}

/// DeleteMachine succeeded: `mcm_machine_delete_duration_seconds`, counted from the
/// Machine's deletionTimestamp as MCM does.
pub fn record_deleted(mcm: &McmMachineMetrics, m: &Machine, class: &MachineClass, now: Timestamp) {
    if let (Some(l), Some(deleted)) = (placement(m, Some(class)), &m.metadata.deletion_timestamp) {
        mcm.machine_deleted(&l, elapsed(now, deleted.0));
    }
}

/// The Machine label naming its MachineDeployment (MCM's `GetMachineDeploymentName`).
pub const DEPLOYMENT_LABEL: &str = "name";

/// The Node label holding the zone, read from the Machine's `spec.nodeTemplate`.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What MCM's collector reports about one Machine.
pub fn sample(m: &Machine) -> MachineSample {
    let created_at = m
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
        .as_second();
    MachineSample {
        name: m.metadata.name.clone().unwrap_or_default(),
        namespace: m.metadata.namespace.clone().unwrap_or_default(),
        created_at,
        provider_id: m.spec.provider_id.clone().unwrap_or_default(),
        class_api_group: m.spec.class.api_group.clone().unwrap_or_default(),
        class_kind: m.spec.class.kind.clone(),
        class_name: m.spec.class.name.clone(),
        node_name: m.node_name().unwrap_or_default().to_owned(),
        phase: m.phase().to_owned(),
        conditions: m
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .map(|c| (c.type_.clone(), c.status.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The labels of MCM's duration gauges for `m`, `None` when the Machine has no `name` label
/// (MCM records nothing then). `class` gives `instance_type`; without it (or its
/// `nodeTemplate`) the label is empty.
pub fn placement(m: &Machine, class: Option<&MachineClass>) -> Option<PlacementLabels> {
    let deployment = m.labels().get(DEPLOYMENT_LABEL).filter(|n| !n.is_empty())?;
    let instance_type = class
        .and_then(|c| c.node_template.as_ref())
        .and_then(|t| t.get("instanceType"))
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let zone = m
        .spec
        .node_template
        .as_ref()
        .and_then(|t| t.pointer("/metadata/labels"))
        .and_then(|l| l.get(ZONE_LABEL))
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    Some(PlacementLabels {
        namespace: m.metadata.namespace.clone().unwrap_or_default(),
        machine_deployment: deployment.clone(),
        instance_type: instance_type.to_owned(),
        zone: zone.to_owned(),
    })
}

/// The Machine cache as a [`MachineSource`].
pub struct CacheSource(pub Store<DeserializeGuard<Machine>>);

impl MachineSource for CacheSource {
    fn machines(&self) -> (Vec<MachineSample>, usize) {
        let mut unreadable = 0;
        let samples = self
            .0
            .state()
            .iter()
            .filter_map(|g| match &g.0 {
                Ok(m) => Some(sample(m)),
                Err(_) => {
                    unreadable += 1;
                    None
                }
            })
            .collect();
        (samples, unreadable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn machine(v: serde_json::Value) -> Machine {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_sample_carries_what_mcms_collector_reads() {
        let m = machine(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m1", "namespace": "ns", "labels": {"node": "n1"},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"class": {"kind": "MachineClass", "name": "c", "apiGroup": "machine.sapcloud.io"},
                     "providerID": "equinixmetal://u"},
            "status": {"currentStatus": {"phase": "Running"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let s = sample(&m);
        assert_eq!(s.name, "m1");
        assert_eq!(s.namespace, "ns");
        assert_eq!(s.created_at, 1_767_225_600);
        assert_eq!(s.provider_id, "equinixmetal://u");
        assert_eq!(s.class_api_group, "machine.sapcloud.io");
        assert_eq!(s.class_kind, "MachineClass");
        assert_eq!(s.class_name, "c");
        assert_eq!(s.node_name, "n1");
        assert_eq!(s.phase, "Running");
        assert_eq!(s.conditions, vec![("Ready".into(), "True".into())]);
    }

    #[test]
    fn transitions_record_mcms_durations() {
        let mcm = crate::telemetry::Metrics::new();
        let m = machine(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m1", "namespace": "ns", "labels": {"name": "pool-a"},
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "deletionTimestamp": "2026-01-01T01:00:00Z"},
            "spec": {},
            "status": {"currentStatus": {"phase": "Pending"}}
        }));
        let class: MachineClass = serde_json::from_value(json!({
            "metadata": {"name": "c"}, "nodeTemplate": {"instanceType": "c3.small.x86"}
        }))
        .unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        record_created(&mcm.mcm, &m, &class, at("2026-01-01T00:01:30Z"));
        record_phase_change(
            &mcm.mcm,
            &m,
            &class,
            phase::RUNNING,
            at("2026-01-01T00:05:00Z"),
        );
        record_phase_change(
            &mcm.mcm,
            &m,
            &class,
            phase::FAILED,
            at("2026-01-01T00:20:00Z"),
        );
        record_drained(&mcm.mcm, &m, std::time::Duration::from_secs(42));
        record_deleted(&mcm.mcm, &m, &class, at("2026-01-01T01:00:07Z"));
        let text = mcm.render();
        let l = "{namespace=\"ns\",machine_deployment=\"pool-a\",instance_type=\"c3.small.x86\",zone=\"\"}";
        for needle in [
            format!("mcm_machine_create_duration_seconds{l} 90\n"),
            format!("mcm_machine_join_duration_seconds{l} 300\n"),
            format!("mcm_machine_num_failed_join{l} 1\n"),
            "mcm_machine_drain_duration_seconds{namespace=\"ns\",machine_deployment=\"pool-a\"} 42\n".into(),
            format!("mcm_machine_delete_duration_seconds{l} 7\n"),
        ] {
            assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
        }
        // Only a Pending Machine joins (a Running → Unknown → Running return is no join).
        let mut running = m.clone();
        running
            .status
            .as_mut()
            .unwrap()
            .current_status
            .as_mut()
            .unwrap()
            .phase = "Unknown".into();
        let fresh = crate::telemetry::Metrics::new();
        record_phase_change(
            &fresh.mcm,
            &running,
            &class,
            phase::RUNNING,
            at("2026-01-01T00:05:00Z"),
        );
        assert!(
            !fresh
                .render()
                .contains("mcm_machine_join_duration_seconds{")
        );
    }

    #[test]
    fn placement_needs_the_deployment_label() {
        let bare = machine(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m1", "namespace": "ns"}, "spec": {}
        }));
        assert_eq!(placement(&bare, None), None);
        let m = machine(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m1", "namespace": "ns", "labels": {"name": "pool-a"}},
            "spec": {"nodeTemplate": {"metadata": {"labels": {ZONE_LABEL: "da"}}}}
        }));
        let class: MachineClass = serde_json::from_value(json!({
            "metadata": {"name": "c"}, "nodeTemplate": {"instanceType": "c3.small.x86"}
        }))
        .unwrap();
        assert_eq!(
            placement(&m, Some(&class)),
            Some(PlacementLabels {
                namespace: "ns".into(),
                machine_deployment: "pool-a".into(),
                instance_type: "c3.small.x86".into(),
                zone: "da".into(),
            })
        );
        let no_class = placement(&m, None).unwrap();
        assert_eq!(no_class.instance_type, "");
        assert_eq!(no_class.zone, "da");
    }
}
