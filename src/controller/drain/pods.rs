//! Which pods a drain moves, and in which order: pure decisions over `Pod` objects.
//!
//! MCM's drain (`pkg/util/provider/drain`) runs kubectl's old filters with
//! `--ignore-daemonsets --delete-local-data --force`: mirror pods (the kubelet's static pods)
//! and DaemonSet pods stay (their controller would only put them back), everything else
//! goes, including pods with `emptyDir` volumes and pods nobody owns. Pods with a
//! PersistentVolumeClaim are moved one at a time, highest priority first, so their volumes
//! can follow them; the rest all at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;

/// The annotation the kubelet puts on the API copy of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Extra time MCM gives an evicted pod to disappear, on top of its grace period.
pub const DELETE_WAIT_BUFFER: Duration = Duration::from_secs(30);

/// `namespace/name`, the key MCM tracks pods by.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The kubelet's copy of a static pod: deleting it through the API does nothing.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION))
}

/// Owned (as controller) by a DaemonSet, which would recreate it on the same Node.
pub fn is_daemon_set_pod(pod: &Pod) -> bool {
    pod.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.controller == Some(true) && r.kind == "DaemonSet")
    })
}

/// The pods of `node` a drain evicts: bound to it, not mirror pods, not DaemonSet pods.
pub fn to_evict(pods: Vec<Pod>, node: &str) -> Vec<Pod> {
    pods.into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| !is_mirror(p) && !is_daemon_set_pod(p))
        .collect()
}

/// The claim names of the pod's PersistentVolumeClaim volumes.
pub fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|vols| {
            vols.iter()
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Splits into (with a PVC, sorted highest priority first; without a PVC). The sort is
/// stable, so pods of equal priority keep the API's order. A pod without a priority (no
/// Priority admission) counts as 0.
pub fn split_by_claims(pods: Vec<Pod>) -> (Vec<Pod>, Vec<Pod>) {
    let (mut with, without): (Vec<Pod>, Vec<Pod>) =
        pods.into_iter().partition(|p| !claim_names(p).is_empty());
    with.sort_by_key(|p| std::cmp::Reverse(priority(p)));
    (with, without)
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The pod's termination grace period (0 when unset, as MCM reads it).
pub fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(0);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// How long to wait for an evicted pod to be gone: its grace period capped at the drain
/// timeout, plus [`DELETE_WAIT_BUFFER`].
pub fn delete_wait(pod: &Pod, drain_timeout: Duration) -> Duration {
    grace_period(pod).min(drain_timeout) + DELETE_WAIT_BUFFER
}

/// Drops every PersistentVolume that more than one pod uses: its attachment does not
/// follow any single pod, so waiting for it to detach would wait for all of them.
pub fn drop_shared_volumes(by_pod: &mut BTreeMap<String, Vec<String>>) {
    let mut seen = BTreeSet::new();
    let mut shared = BTreeSet::new();
    for volumes in by_pod.values() {
        for v in volumes {
            if !seen.insert(v.clone()) {
                shared.insert(v.clone());
            }
        }
    }
    for volumes in by_pod.values_mut() {
        volumes.retain(|v| !shared.contains(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn plain(name: &str, node: &str) -> Pod {
        pod(json!({"metadata": {"name": name, "namespace": "default"},
                   "spec": {"nodeName": node, "containers": []}}))
    }

    #[test]
    fn mirror_and_daemon_set_pods_stay_everything_else_on_the_node_goes() {
        let mirror = pod(
            json!({"metadata": {"name": "kube-proxy-n1", "namespace": "kube-system",
            "annotations": {MIRROR_POD_ANNOTATION: "abc"}}, "spec": {"nodeName": "n1", "containers": []}}),
        );
        let ds = pod(
            json!({"metadata": {"name": "calico", "namespace": "kube-system",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "calico", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": []}}),
        );
        // Owned by a DaemonSet but not as controller: an ordinary pod.
        let ds_not_controller = pod(json!({"metadata": {"name": "odd", "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "x", "uid": "u"}]},
            "spec": {"nodeName": "n1", "containers": []}}));
        let rs = pod(json!({"metadata": {"name": "web", "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [], "volumes": [{"name": "tmp", "emptyDir": {}}]}}));
        let unowned = plain("bare", "n1");
        let elsewhere = plain("other", "n2");
        let kept = to_evict(
            vec![mirror, ds, ds_not_controller, rs, unowned, elsewhere],
            "n1",
        );
        let names: Vec<_> = kept.iter().map(key).collect();
        assert_eq!(names, ["default/odd", "default/web", "default/bare"]);
    }

    #[test]
    fn claim_pods_are_split_off_and_sorted_by_priority_stably() {
        let with = |name: &str, prio: Option<i32>| {
            pod(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": "n1", "containers": [], "priority": prio,
                         "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": format!("{name}-data")}}]}}))
        };
        let pods = vec![
            with("low", Some(1)),
            plain("free", "n1"),
            with("high", Some(1000)),
            with("none", None),
            with("low2", Some(1)),
        ];
        let (claims, rest) = split_by_claims(pods);
        let names: Vec<_> = claims.iter().map(key).collect();
        assert_eq!(
            names,
            [
                "default/high",
                "default/low",
                "default/low2",
                "default/none"
            ]
        );
        assert_eq!(rest.iter().map(key).collect::<Vec<_>>(), ["default/free"]);
        assert_eq!(claim_names(&claims[0]), ["high-data"]);
    }

    #[test]
    fn delete_wait_is_grace_capped_by_the_drain_timeout_plus_buffer() {
        let mut p = plain("p", "n1");
        assert_eq!(
            delete_wait(&p, Duration::from_secs(7200)),
            DELETE_WAIT_BUFFER
        );
        p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(600);
        assert_eq!(
            delete_wait(&p, Duration::from_secs(7200)),
            Duration::from_secs(630)
        );
        assert_eq!(
            delete_wait(&p, Duration::from_secs(60)),
            Duration::from_secs(90)
        );
        p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(-5);
        assert_eq!(grace_period(&p), Duration::ZERO);
    }

    #[test]
    fn shared_volumes_are_not_waited_for() {
        let mut m = BTreeMap::from([
            ("a".to_owned(), vec!["pv1".to_owned(), "pv2".to_owned()]),
            ("b".to_owned(), vec!["pv2".to_owned(), "pv3".to_owned()]),
            ("c".to_owned(), vec![]),
        ]);
        drop_shared_volumes(&mut m);
        assert_eq!(m["a"], ["pv1"]);
        assert_eq!(m["b"], ["pv3"]);
        assert!(m["c"].is_empty());
    }
}
