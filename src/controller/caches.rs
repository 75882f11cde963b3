//! The controller's caches: one reflector store per kind it reads — Machines, MachineClasses
//! and Secrets of `--namespace`, Nodes of the target cluster — each filled by one watch.
//!
//! Reconciles read from them exactly where MCM's machine controller reads its listers: the
//! Machine's class and the class's Secrets (`ValidateMachineClass`), the Machine's Node
//! (`reconcileMachineHealth` and the Node syncs), the Machines of a class (the class
//! reconcile), of a MachineDeployment (the meltdown permit), the Machines, classes and Nodes
//! of the safety controller (orphan collection, the not-managed Node annotation, the reset
//! after a freeze). Reads stay live where MCM's are live: the bootstrap token before a create,
//! the Node reads of the delete flow and the drain, the API-server status check, and the
//! Secret finalizer's view of the classes.
//!
//! A cache lags the API server by the watch's delay, as MCM's listers do, and every write
//! that acts on a cached object is conditional (a merge patch carrying the `resourceVersion`
//! read) or idempotent, so a stale read costs a retry, never a lost update. Nothing reads a
//! cache before all of them were filled once ([`Caches::ready`]): an empty class or Machine
//! cache would otherwise look like "no class" or "no Machine". Each watch reports its first
//! complete list ([`Caches::filled`]); readiness is not taken from kube-runtime's
//! `Store::wait_until_ready`, which wakes only the last of several tasks waiting at once
//! (the reconciles would hang).
//!
//! What is never read is dropped before it is stored ([`trim_secret`], [`trim_node`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::crd::{LAST_APPLIED_ANNOTATION, Machine, MachineClass};

/// One of the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Machines of the namespace.
    Machines = 1,
    /// MachineClasses of the namespace.
    Classes = 2,
    /// Secrets of the namespace.
    Secrets = 4,
    /// Nodes of the target cluster.
    Nodes = 8,
}

/// The stores, shared by every reconcile (cheap to clone).
#[derive(Clone)]
pub struct Caches {
    /// Machines of the namespace, trimmed ([`super::crd::trim_for_cache`]).
    pub machines: Store<DeserializeGuard<Machine>>,
    /// MachineClasses of the namespace.
    pub classes: Store<MachineClass>,
    /// Secrets of the namespace, trimmed ([`trim_secret`]).
    pub secrets: Store<Secret>,
    /// Nodes of the target cluster, trimmed ([`trim_node`]); `None` without a target cluster.
    pub nodes: Option<Store<Node>>,
    /// `--namespace`.
    namespace: String,
    /// The kinds filled once so far (a bit per [`Kind`]); any number of tasks may wait.
    filled: Arc<watch::Sender<u8>>,
}

impl Caches {
    /// Caches over these stores for objects of `namespace`.
    pub fn new(
        namespace: &str,
        machines: Store<DeserializeGuard<Machine>>,
        classes: Store<MachineClass>,
        secrets: Store<Secret>,
        nodes: Option<Store<Node>>,
    ) -> Self {
        Self {
            machines,
            classes,
            secrets,
            nodes,
            namespace: namespace.to_owned(),
            filled: Arc::new(watch::channel(0).0),
        }
    }

    /// Records that the watch of `kind` delivered its first complete list (called on its
    /// `InitDone` event, after the store took it; again after a relist, harmlessly).
    pub fn filled(&self, kind: Kind) {
        self.filled.send_modify(|bits| *bits |= kind as u8);
    }

    /// Waits until every store was filled once (MCM's `WaitForCacheSync` before its workers
    /// start). `false` when `stop` fired first.
    pub async fn ready(&self, stop: &CancellationToken) -> bool {
        let all = Kind::Machines as u8
            | Kind::Classes as u8
            | Kind::Secrets as u8
            | if self.nodes.is_some() {
                Kind::Nodes as u8
            } else {
                0
            };
        let mut filled = self.filled.subscribe();
        tokio::select! {
            done = filled.wait_for(|bits| bits & all == all) => done.is_ok(),
            () = stop.cancelled() => false,
        }
    }

    /// `--namespace`: where the cached Machines, classes and Secrets live.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The MachineClass `name` of the namespace.
    pub fn class(&self, name: &str) -> Option<Arc<MachineClass>> {
        self.classes
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// The Secret `name` of the namespace.
    pub fn secret(&self, name: &str) -> Option<Arc<Secret>> {
        self.secrets
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// The target cluster's Node `name`; `None` when it is not cached or there is no target.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.as_ref()?.get(&ObjectRef::new(name))
    }

    /// Every cached Machine, readable or not.
    pub fn machines(&self) -> Vec<Arc<DeserializeGuard<Machine>>> {
        self.machines.state()
    }

    /// The readable cached Machines `keep` selects.
    pub fn machines_where(&self, keep: impl Fn(&Machine) -> bool) -> Vec<Machine> {
        self.machines
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .filter(|m| keep(m))
            .cloned()
            .collect()
    }
}

/// Drops from a Secret what the controller never reads before it is cached: `managedFields`
/// and kubectl's last-applied annotation (which repeats the Secret's data a second time).
pub fn trim_secret(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
    if let Some(annotations) = secret.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// Drops from a Node what the controller never reads before it is cached: `managedFields`,
/// kubectl's last-applied annotation and `status.images` (a real Node lists every image it
/// pulled, often the largest part of the object).
pub fn trim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(annotations) = node.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{caches, ready_store};
    use serde_json::json;

    #[test]
    fn trimming_keeps_what_the_controller_reads() {
        let mut node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": {"node": "n"},
                         "annotations": {LAST_APPLIED_ANNOTATION: "{}", "keep": "1"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "images": [{"names": ["registry/app:1"], "sizeBytes": 1}],
                       "capacity": {"cpu": "2"}}
        }))
        .unwrap();
        trim_node(&mut node);
        assert!(node.metadata.managed_fields.is_none());
        let annotations = node.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        let status = node.status.clone().unwrap();
        assert!(status.images.is_none());
        assert_eq!(status.conditions.unwrap().len(), 1);
        assert!(status.capacity.is_some());
        assert_eq!(node.spec.unwrap().taints.unwrap().len(), 1);

        let mut secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s", "annotations": {LAST_APPLIED_ANNOTATION: "{\"data\":{}}"},
                         "managedFields": [{"manager": "kubectl"}], "finalizers": ["f"]},
            "data": {"userData": "I2Nsb3VkLWNvbmZpZw=="}
        }))
        .unwrap();
        trim_secret(&mut secret);
        assert!(secret.metadata.managed_fields.is_none());
        assert!(secret.metadata.annotations.unwrap().is_empty());
        assert_eq!(secret.metadata.finalizers.unwrap(), ["f"]);
        assert_eq!(secret.data.unwrap()["userData"].0, b"#cloud-config");
    }

    #[tokio::test]
    async fn lookups_are_by_name_within_the_namespace() {
        let class = |ns: &str| {
            serde_json::from_value::<MachineClass>(json!({
                "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
                "metadata": {"name": "c", "namespace": ns}, "providerSpec": {}}))
            .unwrap()
        };
        let c = Caches::new(
            "ns",
            ready_store(vec![]),
            ready_store(vec![class("other"), class("ns")]),
            ready_store(vec![]),
            None,
        );
        for kind in [Kind::Machines, Kind::Classes, Kind::Secrets] {
            c.filled(kind);
        }
        assert!(
            c.ready(&CancellationToken::new()).await,
            "no Nodes to wait for"
        );
        assert_eq!(
            c.class("c").unwrap().metadata.namespace.as_deref(),
            Some("ns")
        );
        assert!(c.class("d").is_none());
        assert!(c.node("n").is_none(), "no target cluster, no Nodes");
        assert!(caches(vec![], vec![], vec![], vec![]).node("n").is_none());
    }

    /// Empty caches of which none reported its first list yet; with a Node cache or not.
    fn unfilled(with_nodes: bool) -> Caches {
        let c = caches(vec![], vec![], vec![], vec![]);
        let nodes = c.nodes.clone().filter(|_| with_nodes);
        Caches::new(
            "ns",
            c.machines.clone(),
            c.classes.clone(),
            c.secrets.clone(),
            nodes,
        )
    }

    /// Every one of many readers waiting at once is let go when the last cache is filled
    /// (kube-runtime's `wait_until_ready` would wake only one of them).
    #[tokio::test]
    async fn readiness_releases_every_waiting_reader() {
        let unfilled = unfilled(true);
        let stop = CancellationToken::new();
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (c, stop) = (unfilled.clone(), stop.clone());
                tokio::spawn(async move { c.ready(&stop).await })
            })
            .collect();
        for kind in [Kind::Machines, Kind::Classes, Kind::Secrets] {
            unfilled.filled(kind);
        }
        tokio::task::yield_now().await;
        assert!(
            readers.iter().all(|r| !r.is_finished()),
            "the Nodes are missing"
        );
        unfilled.filled(Kind::Nodes);
        for r in readers {
            assert!(r.await.unwrap());
        }
    }

    /// A cache that was never filled holds every reader back, until stop.
    #[tokio::test]
    async fn readiness_waits_for_every_cache_or_stop() {
        let unfilled = unfilled(false);
        unfilled.filled(Kind::Machines);
        let stop = CancellationToken::new();
        let waiting = tokio::spawn({
            let (c, stop) = (unfilled.clone(), stop.clone());
            async move { c.ready(&stop).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        stop.cancel();
        assert!(!waiting.await.unwrap());
    }
}
