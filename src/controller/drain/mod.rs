//! Draining a Node before its device is deleted, as MCM's machine controller drains
//! (`pkg/util/provider/drain`): cordon, then move every pod off through the Eviction API so
//! PodDisruptionBudgets are honoured.
//!
//! - Mirror and DaemonSet pods stay ([`pods::to_evict`]).
//! - Pods without a PersistentVolumeClaim are evicted all at once; each is then waited for
//!   (its grace period, capped by the drain timeout, plus 30 s).
//! - Pods with claims go one at a time, highest priority first: evict, wait for the volumes
//!   the driver knows (`GetVolumeIDs`) to leave `Node.status.volumesAttached`, then for them
//!   to attach on another Node (or the reattach timeout). The pod itself is not waited for.
//! - A 429 (a budget allows no disruption now) is retried every 20 s, up to
//!   [`mode::Mode::max_evict_retries`] times; after that the pod is deleted. A misconfigured
//!   budget ([`pdb::is_misconfigured`]) fails the pod at once.
//! - In force mode every pod is deleted with grace period 0 and nothing is waited for.
//!
//! The whole drain is bounded by [`mode::Mode::timeout`] and abandoned when the controller
//! stops. The caller records the outcome; a failed drain leaves the device alone.
//!
//! The decisions live in the submodules and are unit-tested; this module only makes the
//! Kubernetes and CMI calls.

pub mod mode;
pub mod pdb;
pub mod pods;
pub mod volumes;

use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use k8s_openapi::{
    api::{
        core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
        policy::v1::PodDisruptionBudget,
        storage::v1::VolumeAttachment,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch},
};
use serde_json::json;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::cmi::{Rpc, client::CmiClient};

use super::{context::Capabilities, field_manager};
use mode::{EVICTION_RETRY_INTERVAL, Mode};
use volumes::TrackedVolume;

/// How often an evicted pod is looked for, and the Node's attached volumes re-read.
const POLL: Duration = Duration::from_secs(5);
/// How often VolumeAttachments are re-read while waiting for a reattach.
const REATTACH_POLL: Duration = Duration::from_secs(2);

/// The Node condition MCM sets on a Node whose machine is being deleted.
pub const TERMINATING_CONDITION: &str = "Terminating";

/// Why a drain did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainError {
    /// Pods could not be moved; the message is MCM's wording (several joined as a list).
    Failed(String),
    /// The controller is stopping; the next leader drains again.
    Stopped,
}

/// Everything a drain needs.
pub struct Drain<'a> {
    /// The target cluster.
    pub target: Client,
    /// The driver (for `GetVolumeIDs`).
    pub cmi: &'a CmiClient,
    /// What the driver can do.
    pub capabilities: &'a Capabilities,
    /// The Node to drain.
    pub node: String,
    /// Normal or forced, and the limits.
    pub mode: Mode,
    /// `--machine-pv-detach-timeout`.
    pub pv_detach_timeout: Duration,
    /// `--machine-pv-reattach-timeout`.
    pub pv_reattach_timeout: Duration,
    /// The controller's stop signal.
    pub stop: CancellationToken,
}

/// Sets the Node condition `Terminating=True` (reason `ScaleDown`, or `Unhealthy` for a
/// Failed machine; an existing condition's reason is kept while the machine is
/// Terminating), so tools on the Node's side can tell a planned removal from a failure. A
/// missing Node is fine.
pub async fn mark_terminating(target: &Client, node: &str, phase: &str) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(target.clone());
    let Some(current) = nodes.get_opt(node).await? else {
        return Ok(());
    };
    let existing = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == TERMINATING_CONDITION));
    let (reason, message) = match existing {
        Some(c) if phase == super::status::phase::TERMINATING => (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        ),
        _ if phase == super::status::phase::FAILED => (
            "Unhealthy".to_owned(),
            "Machine Controller is terminating failed machine".to_owned(),
        ),
        _ => (
            "ScaleDown".to_owned(),
            "Machine Controller is scaling down machine".to_owned(),
        ),
    };
    let now = Timestamp::now().to_string();
    let patch = json!({"status": {"conditions": [{
        "type": TERMINATING_CONDITION, "status": "True", "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }]}});
    match nodes
        .patch_status(node, &field_manager::patch(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The API server's message for an API error, the error itself otherwise.
fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// MCM's aggregate: one error as is, several as `[a, b]`.
fn aggregate(errors: Vec<String>) -> Result<(), DrainError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(DrainError::Failed(
            errors.into_iter().next().unwrap_or_default(),
        )),
        _ => Err(DrainError::Failed(format!("[{}]", errors.join(", ")))),
    }
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

fn pod_ns(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or_default()
}

/// What became of one pass over the pods with claims.
struct Pass {
    /// Pods to try again (refused by a budget, or a transient error).
    remaining: Vec<Pod>,
    /// The Node is gone: nothing left to wait for.
    node_gone: bool,
}

impl Drain<'_> {
    /// Cordons the Node and moves its pods. `Ok` when every pod is gone (or, in force mode,
    /// deleted).
    pub async fn run(&self) -> Result<(), DrainError> {
        let started = Instant::now();
        tracing::info!(node = %self.node, force = ?self.mode.force, timeout = ?self.mode.timeout,
            max_evict_retries = self.mode.max_evict_retries, "drain started");
        let result = tokio::select! {
            () = self.stop.cancelled() => Err(DrainError::Stopped),
            r = tokio::time::timeout(self.mode.timeout, self.drain()) => r.unwrap_or_else(|_| {
                Err(DrainError::Failed(format!(
                    "drain of node {:?} did not finish within {:?}",
                    self.node, self.mode.timeout
                )))
            }),
        };
        tracing::info!(node = %self.node, took = ?started.elapsed(), ok = result.is_ok(), "drain ended");
        result
    }

    async fn drain(&self) -> Result<(), DrainError> {
        self.cordon()
            .await
            .map_err(|e| DrainError::Failed(message(&e)))?;
        let pods: Api<Pod> = Api::all(self.target.clone());
        let listed = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", self.node)))
            .await
            .map_err(|e| DrainError::Failed(message(&e)))?;
        let to_move = pods::to_evict(listed.items, &self.node);
        if to_move.is_empty() {
            return Ok(());
        }
        let errors = if self.mode.force.is_some() {
            // Deleted, never evicted, and not waited for: the Node is going regardless.
            join_all(to_move.iter().map(|p| self.move_pod(p, false)))
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect()
        } else {
            let (with_claims, without) = pods::split_by_claims(to_move);
            let (serial, parallel) = tokio::join!(
                self.move_claim_pods(with_claims),
                join_all(without.iter().map(|p| self.move_pod(p, true)))
            );
            serial
                .into_iter()
                .chain(parallel.into_iter().filter_map(Result::err))
                .collect()
        };
        aggregate(errors)
    }

    /// Marks the Node unschedulable. A missing Node is no error: the pods bound to it are
    /// still moved.
    async fn cordon(&self) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.target.clone());
        let Some(node) = nodes.get_opt(&self.node).await? else {
            return Ok(());
        };
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            return Ok(());
        }
        match nodes
            .patch(
                &self.node,
                &field_manager::patch(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn evict(&self, pod: &Pod) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.target.clone(), pod_ns(pod));
        api.evict(pod_name(pod), &field_manager::evict())
            .await
            .map(|_| ())
    }

    async fn delete_now(&self, pod: &Pod) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.target.clone(), pod_ns(pod));
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        api.delete(pod_name(pod), &dp).await.map(|_| ())
    }

    /// The misconfiguration error, if the budget covering `pod` can never allow it.
    async fn misconfigured_budget(&self, pod: &Pod) -> Option<String> {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.target.clone(), pod_ns(pod));
        let budgets = api.list(&ListParams::default()).await.ok()?.items;
        let pdb = pdb::covering(&budgets, pod)?;
        pdb::is_misconfigured(pdb).then(|| {
            format!(
                "error while evicting pod {:?}: pod disruption budget {}/{} is misconfigured and requires zero voluntary evictions",
                pod_name(pod),
                pdb.metadata.namespace.as_deref().unwrap_or_default(),
                pdb.metadata.name.as_deref().unwrap_or_default()
            )
        })
    }

    /// One pod without claims: evict (retrying 429s), or delete once retries are used up or
    /// when `evict` is false; then wait for it to be gone unless forced.
    async fn move_pod(&self, pod: &Pod, evict: bool) -> Result<(), String> {
        let name = pod_name(pod);
        let mut attempt_evict = evict;
        let mut attempt = 0u32;
        loop {
            if attempt >= self.mode.max_evict_retries {
                attempt_evict = false;
            }
            attempt += 1;
            let result = if attempt_evict {
                self.evict(pod).await
            } else {
                self.delete_now(pod).await
            };
            match result {
                Ok(()) => break,
                Err(e) if code(&e) == Some(404) => return Ok(()),
                Err(e) if !attempt_evict || code(&e) != Some(429) => {
                    return Err(format!(
                        "error when evicting pod {name:?}: {} scheduled on node {}",
                        message(&e),
                        self.node
                    ));
                }
                Err(e) => {
                    tracing::info!(pod = %pods::key(pod), node = %self.node, error = %message(&e),
                        "eviction refused (disruption budget); will retry");
                    if let Some(err) = self.misconfigured_budget(pod).await {
                        return Err(err);
                    }
                    sleep(EVICTION_RETRY_INTERVAL).await;
                }
            }
        }
        if self.mode.force.is_some() {
            return Ok(());
        }
        self.wait_for_delete(pod, pods::delete_wait(pod, self.mode.timeout))
            .await
    }

    /// Waits until `pod` is gone (or replaced by a pod of the same name).
    async fn wait_for_delete(&self, pod: &Pod, timeout: Duration) -> Result<(), String> {
        let api: Api<Pod> = Api::namespaced(self.target.clone(), pod_ns(pod));
        let name = pod_name(pod);
        let deadline = Instant::now() + timeout;
        loop {
            match api.get_opt(name).await {
                Ok(None) => return Ok(()),
                Ok(Some(p)) if p.metadata.uid != pod.metadata.uid => return Ok(()),
                Ok(Some(_)) => {}
                Err(e) => {
                    return Err(format!(
                        "error when waiting for pod {name:?}/{} terminating: {}",
                        self.node,
                        message(&e)
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timeout expired while waiting for pod {name:?} terminating scheduled on node {}",
                    self.node
                ));
            }
            sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Pods with claims, one at a time, highest priority first. Returns the errors.
    async fn move_claim_pods(&self, pods: Vec<Pod>) -> Vec<String> {
        if pods.is_empty() {
            return Vec::new();
        }
        let volumes = self.tracked_volumes(&pods).await;
        let mut errors = Vec::new();
        let mut remaining = pods;
        let mut node_gone = false;
        let retries = self.mode.max_evict_retries;
        if retries > 0 {
            for round in 0..retries {
                let pass = self
                    .claim_pass(remaining, &volumes, true, &mut errors)
                    .await;
                remaining = pass.remaining;
                node_gone = pass.node_gone;
                if node_gone || remaining.is_empty() {
                    break;
                }
                if round + 1 < retries {
                    sleep(EVICTION_RETRY_INTERVAL).await;
                }
            }
        }
        if !node_gone && !remaining.is_empty() {
            // Retries used up (or none allowed): delete what is left.
            let pass = self
                .claim_pass(remaining, &volumes, false, &mut errors)
                .await;
            remaining = pass.remaining;
            node_gone = pass.node_gone;
        }
        if !node_gone {
            errors.extend(remaining.iter().map(|p| {
                format!(
                    "error deleting pod {} from node {:?}",
                    pods::key(p),
                    self.node
                )
            }));
        }
        errors
    }

    async fn claim_pass(
        &self,
        pods: Vec<Pod>,
        volumes: &BTreeMap<String, Vec<TrackedVolume>>,
        evict: bool,
        errors: &mut Vec<String>,
    ) -> Pass {
        let mut retry = Vec::new();
        let mut iter = pods.into_iter();
        while let Some(pod) = iter.next() {
            let result = if evict {
                self.evict(&pod).await
            } else {
                self.delete_now(&pod).await
            };
            match result {
                Err(e) if evict && code(&e) == Some(429) => {
                    match self.misconfigured_budget(&pod).await {
                        Some(err) => errors.push(err),
                        None => retry.push(pod),
                    }
                    continue;
                }
                Err(e) if code(&e) == Some(404) => continue,
                Err(e) => {
                    tracing::warn!(pod = %pods::key(&pod), node = %self.node, error = %message(&e),
                        "evicting a pod with volumes failed; will retry");
                    retry.push(pod);
                    continue;
                }
                Ok(()) => {}
            }
            let tracked = volumes
                .get(&pods::key(&pod))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let detach_timeout = pods::grace_period(&pod) + self.pv_detach_timeout;
            match self.wait_for_detach(tracked, detach_timeout).await {
                Ok(true) => {}
                Ok(false) => {
                    // The Node is gone, and with it every attachment.
                    retry.extend(iter);
                    return Pass {
                        remaining: retry,
                        node_gone: true,
                    };
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
            self.wait_for_reattach(tracked).await;
        }
        let mut pending = Vec::new();
        for pod in retry {
            let api: Api<Pod> = Api::namespaced(self.target.clone(), pod_ns(&pod));
            match api.get_opt(pod_name(&pod)).await {
                Ok(None) => {}
                Ok(Some(p)) if p.metadata.uid != pod.metadata.uid => {}
                _ => pending.push(pod),
            }
        }
        Pass {
            remaining: pending,
            node_gone: false,
        }
    }

    /// The volumes to follow per pod: the claims' PersistentVolumes not shared with another
    /// pod, for which the driver knows a volume ID. Lookup failures skip the volume (the
    /// pod still moves, just without waiting for it), as MCM does.
    async fn tracked_volumes(&self, pods: &[Pod]) -> BTreeMap<String, Vec<TrackedVolume>> {
        let mut by_pod: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pod in pods {
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(self.target.clone(), pod_ns(pod));
            let mut pvs = Vec::new();
            for claim in pods::claim_names(pod) {
                match claims.get_opt(&claim).await {
                    Ok(Some(c)) => {
                        if let Some(pv) =
                            c.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty())
                        {
                            pvs.push(pv);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(pod = %pods::key(pod), claim, error = %message(&e), "cannot read claim; not following its volume")
                    }
                }
            }
            by_pod.insert(pods::key(pod), pvs);
        }
        pods::drop_shared_volumes(&mut by_pod);
        let mut out = BTreeMap::new();
        for (pod, pvs) in by_pod {
            let mut tracked = Vec::new();
            for pv in pvs {
                match self.volume_id(&pv).await {
                    Ok(Some(volume_id)) => tracked.push(TrackedVolume { pv, volume_id }),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%pod, %pv, %error, "no volume ID from the driver; not following this volume")
                    }
                }
            }
            out.insert(pod, tracked);
        }
        out
    }

    /// The driver's ID for a PersistentVolume, `None` when the driver does not manage it.
    async fn volume_id(&self, pv: &str) -> Result<Option<String>, String> {
        if !self.capabilities.has(Rpc::GetVolumeIds) {
            return Ok(None);
        }
        let api: Api<PersistentVolume> = Api::all(self.target.clone());
        let Some(spec) = api
            .get_opt(pv)
            .await
            .map_err(|e| message(&e))?
            .and_then(|p| p.spec)
        else {
            return Ok(None);
        };
        let list = serde_json::to_vec(&[spec]).map_err(|e| e.to_string())?;
        let ids = self
            .cmi
            .get_volume_ids(&list)
            .await
            .map_err(|e| super::status::machine_codes_error(e.code(), e.message()))?;
        Ok(ids.into_iter().find(|v| !v.is_empty()))
    }

    /// Waits until none of `volumes` is in the Node's `volumesAttached`. `Ok(false)` when the
    /// Node is gone.
    async fn wait_for_detach(
        &self,
        volumes: &[TrackedVolume],
        timeout: Duration,
    ) -> Result<bool, String> {
        if volumes.is_empty() {
            return Ok(true);
        }
        let nodes: Api<Node> = Api::all(self.target.clone());
        let deadline = Instant::now() + timeout;
        loop {
            let node = match nodes.get_opt(&self.node).await {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(false),
                Err(e) => return Err(message(&e)),
            };
            if !volumes::any_still_attached(&volumes::attached_names(&node), volumes) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Err("timeout while waiting for PVs to detach from node".to_owned());
            }
            sleep(POLL).await;
        }
    }

    /// Waits until each of `volumes` is attached on another Node, at most the reattach
    /// timeout; running out only logs (MCM moves on).
    async fn wait_for_reattach(&self, volumes: &[TrackedVolume]) {
        if volumes.is_empty() {
            return;
        }
        let api: Api<VolumeAttachment> = Api::all(self.target.clone());
        let deadline = Instant::now() + self.pv_reattach_timeout;
        let mut waiting: Vec<&TrackedVolume> = volumes.iter().collect();
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                waiting.retain(|v| {
                    !list
                        .items
                        .iter()
                        .any(|va| volumes::reattached_elsewhere(va, &v.pv, &self.node))
                });
            }
            if waiting.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(node = %self.node, volumes = ?waiting, "volumes did not reattach elsewhere in time; moving on");
                return;
            }
            sleep(REATTACH_POLL).await;
        }
    }
}

/// Deletes the VolumeAttachments of `node` that are not already being deleted; returns how
/// many deletions were asked for. Used after a forced drain, so volumes can attach
/// elsewhere without waiting for the dead Node.
pub async fn delete_volume_attachments(target: &Client, node: &str) -> Result<usize, String> {
    let api: Api<VolumeAttachment> = Api::all(target.clone());
    let all = api.list(&ListParams::default()).await.map_err(|e| {
        format!(
            "cant list volume attachments for node {node:?}: {}",
            message(&e)
        )
    })?;
    let live = volumes::live_on_node(&all.items, node);
    let mut errors = Vec::new();
    for va in &live {
        let name = va.metadata.name.as_deref().unwrap_or_default();
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(%node, volume_attachment = name, "deleted"),
            Err(e) if code(&e) == Some(404) => {}
            Err(e) => errors.push(message(&e)),
        }
    }
    if errors.is_empty() {
        Ok(live.len())
    } else {
        Err(errors.join("\n"))
    }
}
