//! Orphan-device collection (MCM's `machine_safety.go`): at start-up, every
//! `--machine-safety-orphan-vms-period`, after a Machine was deleted, and when a
//! lastOperation reports `OutOfRange` (more than one device for a Machine), for each
//! MachineClass, ask the driver which devices carry the class's tags (ListMachines:
//! providerID → machine name) and delete every device whose Machine is gone, or whose
//! Machine points at a different device.
//!
//! The same pass marks the target cluster's Nodes that no Machine accounts for (no Machine
//! with label `node=<name>`) and that are older than the creation timeout with the annotation
//! `node.machine.sapcloud.io/not-managed-by-mcm=1` (Gardener's worker health check leaves
//! them out), and takes it off again once a Machine claims the Node.
//!
//! Device identity is compared by UUID (`equinixmetal://<uuid>`, legacy
//! `equinixmetal://<metro>/<uuid>`, `packet://<uuid>` and a bare UUID are the same device).
//! Machines in phase `""` or `CrashLoopBackOff` are being created — their device may exist
//! before `spec.providerID` is written — so their devices are never touched.
//!
//! Classes, Secrets, Machines and Nodes are read from the caches, as MCM's safety controller
//! reads its listers. The driver is asked first and the Machine cache read second: this
//! controller creates a device only for a Machine its cache already holds, so a device
//! listed cannot belong to a Machine the cache has not seen yet. A cache that lags only ever
//! shows an older state of a Machine, and every older state of a Machine whose device is
//! being replaced is one the rule leaves alone (phase `""`/`CrashLoopBackOff`). Errors are
//! logged and the next period retries.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{Api, ResourceExt, api::Patch};
use tokio_util::sync::CancellationToken;

use crate::{cmi::calls::MachineRef, provider_id::ProviderId};

use super::{
    context::Context,
    error::{Error, Result, is_not_found},
    field_manager, secrets,
    status::{elapsed, phase},
};

/// MCM's annotation on Nodes without a Machine.
pub const NOT_MANAGED_ANNOTATION: &str = "node.machine.sapcloud.io/not-managed-by-mcm";

/// What a lastOperation description contains when the driver found several devices for one
/// Machine (the gRPC code's name, as MCM matches it).
pub const OUT_OF_RANGE: &str = "OutOfRange";

/// What the collector knows about a Machine of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// A readable Machine.
    Machine {
        /// `spec.providerID` (may be empty).
        provider_id: String,
        /// `status.currentStatus.phase`.
        phase: String,
    },
    /// A Machine that exists but could not be read; its devices are left alone.
    Unreadable,
}

/// A device to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The device's providerID as the driver listed it.
    pub provider_id: String,
    /// The machine name the driver associates with it.
    pub machine_name: String,
}

/// The devices in `listed` (providerID → machine name) that no Machine in `machines`
/// (name → what we know) accounts for.
pub fn find_orphans(
    listed: &HashMap<String, String>,
    machines: &BTreeMap<String, Known>,
) -> Vec<Orphan> {
    let mut out: Vec<Orphan> = listed
        .iter()
        .filter(
            |(provider_id, machine_name)| match machines.get(machine_name.as_str()) {
                None => true,
                Some(Known::Unreadable) => false,
                Some(Known::Machine { phase: p, .. })
                    if p.is_empty() || p == phase::CRASH_LOOP_BACK_OFF =>
                {
                    false
                }
                Some(Known::Machine {
                    provider_id: own, ..
                }) => !ProviderId::same_device(own, provider_id),
            },
        )
        .map(|(provider_id, machine_name)| Orphan {
            provider_id: provider_id.clone(),
            machine_name: machine_name.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.provider_id.cmp(&b.provider_id));
    out
}

/// Runs collection at once, then every `ctx.config.orphan_period` and whenever
/// `ctx.safety.collect_orphans` is notified, until `stop` is cancelled.
/// A pass is abandoned when `stop` fires (its driver calls are idempotent; the next leader
/// collects again at start-up).
pub async fn run(ctx: std::sync::Arc<Context>, stop: CancellationToken) {
    if !ctx.caches.ready(&stop).await {
        return;
    }
    loop {
        let started = std::time::Instant::now();
        let pass = async {
            match collect_once(&ctx).await {
                Ok(deleted) => tracing::info!(deleted, "orphan collection done"),
                Err(error) => {
                    ctx.metrics
                        .controller
                        .failed("orphans", error.metric_label());
                    tracing::warn!(%error, "orphan collection failed; retrying next period");
                }
            }
            if let Err(error) = mark_unmanaged_nodes(&ctx).await {
                ctx.metrics
                    .controller
                    .failed("orphans", error.metric_label());
                tracing::warn!(%error, "marking Nodes without a Machine failed; retrying next period");
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = pass => {}
        }
        ctx.metrics
            .controller
            .reconciled("orphans", started.elapsed());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ctx.config.orphan_period) => {}
            () = ctx.safety.collect_orphans.notified() => {
                tracing::info!("orphan collection triggered");
            }
        }
    }
}

/// A change to a Node's not-managed annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMark {
    /// Add `not-managed-by-mcm: "1"`.
    Annotate(String),
    /// Remove it.
    Unannotate(String),
}

/// What the collector knows about a Node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// Whether it carries the not-managed annotation.
    pub annotated: bool,
}

/// MCM's rule: a Node no Machine claims, older than the creation timeout, is annotated; a
/// Node exactly one Machine claims loses the annotation; a Node several Machines claim is
/// left alone (logged).
pub fn node_marks(
    nodes: &[NodeInfo],
    claims: &HashMap<String, usize>,
    now: Timestamp,
    creation_timeout: Duration,
) -> Vec<NodeMark> {
    let mut out = Vec::new();
    for n in nodes {
        match claims.get(&n.name).copied().unwrap_or(0) {
            0 => {
                let old_enough = n
                    .created
                    .is_some_and(|c| elapsed(now, c) >= creation_timeout);
                if old_enough && !n.annotated {
                    out.push(NodeMark::Annotate(n.name.clone()));
                }
            }
            1 if n.annotated => out.push(NodeMark::Unannotate(n.name.clone())),
            1 => {}
            several => {
                tracing::warn!(node = %n.name, machines = several, "several Machines claim one Node")
            }
        }
    }
    out
}

/// Annotates (and un-annotates) the target cluster's Nodes as [`node_marks`] says, reading
/// Nodes and Machines from the caches (MCM's node and Machine listers).
pub async fn mark_unmanaged_nodes(ctx: &Context) -> Result<usize> {
    let (Some(target), Some(node_cache)) = (&ctx.target, &ctx.caches.nodes) else {
        return Ok(0);
    };
    let nodes: Api<Node> = Api::all(target.clone());
    let mut claims: HashMap<String, usize> = HashMap::new();
    for guard in ctx.caches.machines() {
        // An unreadable Machine may claim any Node: annotate nothing rather than wrongly.
        let Ok(m) = &guard.0 else { return Ok(0) };
        if let Some(node) = m.node_name() {
            *claims.entry(node.to_owned()).or_default() += 1;
        }
    }
    let infos: Vec<NodeInfo> = node_cache
        .state()
        .iter()
        .map(|n| NodeInfo {
            name: n.name_any(),
            created: n.metadata.creation_timestamp.as_ref().map(|t| t.0),
            annotated: n.annotations().contains_key(NOT_MANAGED_ANNOTATION),
        })
        .collect();
    let marks = node_marks(
        &infos,
        &claims,
        Timestamp::now(),
        ctx.config.creation_timeout,
    );
    let mut changed = 0;
    for mark in &marks {
        let (name, value) = match mark {
            NodeMark::Annotate(n) => (n, serde_json::json!("1")),
            NodeMark::Unannotate(n) => (n, serde_json::Value::Null),
        };
        let patch =
            serde_json::json!({"metadata": {"annotations": {NOT_MANAGED_ANNOTATION: value}}});
        match nodes
            .patch_metadata(name, &field_manager::patch(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                changed += 1;
                tracing::info!(node = %name, annotated = matches!(mark, NodeMark::Annotate(_)), "Node not-managed-by-mcm annotation updated");
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::kube("annotate Node")(e)),
        }
    }
    Ok(changed)
}

/// One pass over every MachineClass; returns how many devices were deleted.
/// Classes, Secrets and Machines come from the caches, as MCM's safety controller reads its
/// listers.
pub async fn collect_once(ctx: &Context) -> Result<usize> {
    let mut deleted = 0;
    for class in ctx.caches.classes.state() {
        let class_name = class.name_any();
        let secrets = secrets::load(&ctx.caches, &class).to_cmi();
        let provider_spec = serde_json::to_vec(&class.provider_spec).unwrap_or_default();
        let listed = match ctx.cmi.list_machines(&provider_spec, &secrets).await {
            Ok(listed) => listed,
            Err(e) => {
                let error = Error::Cmi(e);
                ctx.metrics
                    .controller
                    .failed("orphans", error.metric_label());
                tracing::warn!(class = %class_name, %error, "ListMachines failed; class skipped this period");
                continue;
            }
        };
        // Machines are read after the driver answered (see the module docs).
        let known: BTreeMap<String, Known> = ctx
            .caches
            .machines()
            .iter()
            .map(|g| match &g.0 {
                Ok(m) => (
                    m.name_any(),
                    Known::Machine {
                        provider_id: m.provider_id().unwrap_or_default().to_owned(),
                        phase: m.phase().to_owned(),
                    },
                ),
                Err(invalid) => (
                    invalid.metadata.name.clone().unwrap_or_default(),
                    Known::Unreadable,
                ),
            })
            .collect();
        for orphan in find_orphans(&listed, &known) {
            let machine = MachineRef::new(&orphan.machine_name, &provider_spec, &secrets)
                .with_provider_id(&orphan.provider_id);
            match ctx.cmi.delete_machine(machine).await {
                Ok(_) => {
                    deleted += 1;
                    ctx.metrics.controller.orphan_deleted();
                    tracing::info!(class = %class_name, machine = %orphan.machine_name, provider_id = %orphan.provider_id, "deleted orphan device");
                }
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => {
                    let error = Error::Cmi(e);
                    ctx.metrics
                        .controller
                        .failed("orphans", error.metric_label());
                    tracing::warn!(machine = %orphan.machine_name, provider_id = %orphan.provider_id, %error, "deleting orphan device failed");
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    const B: &str = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";

    fn m(provider_id: &str, ph: &str) -> Known {
        Known::Machine {
            provider_id: provider_id.into(),
            phase: ph.into(),
        }
    }

    #[test]
    fn decides_per_device() {
        let listed: HashMap<String, String> = [
            (format!("equinixmetal://{A}"), "kept".to_owned()),
            (format!("equinixmetal://{B}"), "gone".to_owned()),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000001".to_owned(),
                "replaced".to_owned(),
            ),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000002".to_owned(),
                "creating".to_owned(),
            ),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000003".to_owned(),
                "crashloop".to_owned(),
            ),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000004".to_owned(),
                "unreadable".to_owned(),
            ),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000005".to_owned(),
                "failed-no-id".to_owned(),
            ),
        ]
        .into_iter()
        .collect();
        let machines: BTreeMap<String, Known> = [
            (
                "kept".to_owned(),
                m(&format!("equinixmetal://da/{A}"), "Running"),
            ),
            (
                "replaced".to_owned(),
                m(&format!("equinixmetal://{B}"), "Pending"),
            ),
            ("creating".to_owned(), m("", "")),
            ("crashloop".to_owned(), m("", "CrashLoopBackOff")),
            ("unreadable".to_owned(), Known::Unreadable),
            ("failed-no-id".to_owned(), m("", "Failed")),
        ]
        .into_iter()
        .collect();
        let names: Vec<String> = find_orphans(&listed, &machines)
            .into_iter()
            .map(|o| o.machine_name)
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["failed-no-id", "gone", "replaced"]);
    }

    fn node(name: &str, created: &str, annotated: bool) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            created: Some(created.parse().unwrap()),
            annotated,
        }
    }

    #[test]
    fn nodes_without_a_machine_are_marked_once_old_enough() {
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let timeout = Duration::from_secs(20 * 60);
        let nodes = [
            node("young-orphan", "2026-01-01T00:50:00Z", false),
            node("old-orphan", "2026-01-01T00:00:00Z", false),
            node("old-orphan-marked", "2026-01-01T00:00:00Z", true),
            node("claimed", "2026-01-01T00:00:00Z", false),
            node("claimed-marked", "2026-01-01T00:00:00Z", true),
            node("twice", "2026-01-01T00:00:00Z", true),
        ];
        let claims: HashMap<String, usize> = [
            ("claimed".to_owned(), 1),
            ("claimed-marked".to_owned(), 1),
            ("twice".to_owned(), 2),
        ]
        .into();
        assert_eq!(
            node_marks(&nodes, &claims, now, timeout),
            vec![
                NodeMark::Annotate("old-orphan".into()),
                NodeMark::Unannotate("claimed-marked".into()),
            ]
        );
    }
}
