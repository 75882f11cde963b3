//! Drain and the delete flow (MCM's step machine).
//!
//! No kubelet runs: Pods are bound with `spec.nodeName` and marked Running through the status
//! subresource; a PodDisruptionBudget's status is written by hand (no disruption controller);
//! an evicted pod stays Terminating until the test, standing in for the kubelet, deletes it
//! with grace period 0.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use metal_driver::controller::crd::Machine;
use serde_json::{Value, json};

use crate::{
    stack::{Opts, Stack, with_temp_ns},
    support::{
        apply_class_and_secret, apply_sample, eventually, machine_gone, uuid_of, wait_phase,
    },
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::Pod, policy::v1::PodDisruptionBudget, storage::v1::VolumeAttachment,
};
use kube::runtime::{WatchStreamExt, watcher};

/// Creates a Machine from the samples and waits until it is Running; returns its name
/// (= its Node's name).
pub async fn running_machine(stack: &Stack, label: &str, edit: impl FnOnce(&mut Value)) -> String {
    apply_class_and_secret(&stack.client, &stack.ns).await;
    let name = format!("{}-{label}", stack.ns);
    apply_sample(&stack.client, &stack.ns, "machine.yaml", |m| {
        m["metadata"]["name"] = json!(name);
        edit(m);
    })
    .await;
    wait_phase(stack, &name, "Running").await;
    name
}

/// A Pod bound to `node` and Running + Ready, as the kubelet would report it. `extra` is
/// merged into the manifest (labels, owner references, volumes, ...).
pub async fn running_pod(client: &Client, ns: &str, name: &str, node: &str, extra: Value) -> Pod {
    let mut manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}
    });
    merge(&mut manifest, extra);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(manifest).expect("pod manifest");
    pods.create(&Default::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let now = "2026-01-01T00:00:00Z";
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now}]}})),
    )
    .await
    .unwrap_or_else(|e| panic!("pod {name} Running: {e}"))
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// A PodDisruptionBudget selecting `app=<app>`, with its status written by hand.
pub async fn pdb(client: &Client, ns: &str, app: &str) {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": app, "namespace": ns},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}}
    }))
    .expect("pdb");
    api.create(&Default::default(), &pdb)
        .await
        .expect("create pdb");
}

/// Writes the budget's status as the disruption controller would: `allowed` disruptions,
/// `healthy` of `expected` pods healthy.
pub async fn pdb_status(
    client: &Client,
    ns: &str,
    app: &str,
    expected: i32,
    healthy: i32,
    allowed: i32,
) {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let generation = api
        .get(app)
        .await
        .expect("pdb")
        .metadata
        .generation
        .unwrap_or(1);
    api.patch_status(
        app,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": generation, "expectedPods": expected,
            "currentHealthy": healthy, "desiredHealthy": 1, "disruptionsAllowed": allowed,
            "disruptedPods": null}})),
    )
    .await
    .expect("pdb status");
}

/// A VolumeAttachment of `pv` on `node`.
async fn volume_attachment(client: &Client, name: &str, pv: &str, node: &str) {
    let api: Api<VolumeAttachment> = Api::all(client.clone());
    let va: VolumeAttachment = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": "csi.example.com", "nodeName": node,
                 "source": {"persistentVolumeName": pv}}
    }))
    .expect("va");
    api.create(&Default::default(), &va)
        .await
        .expect("create volume attachment");
}

async fn pod_exists(client: &Client, ns: &str, name: &str) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.get_opt(name).await.expect("get pod").is_some()
}

async fn pod_terminating(client: &Client, ns: &str, name: &str) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.get_opt(name)
        .await
        .expect("get pod")
        .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
}

/// Stands in for the kubelet: every pod of `ns` that starts terminating is deleted with
/// grace period 0 at once. Yields the pods in the order their eviction was committed.
pub fn kubelet(
    client: &Client,
    ns: &str,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut events =
            std::pin::pin!(watcher(pods.clone(), watcher::Config::default()).applied_objects());
        while let Some(ev) = events.next().await {
            let Ok(pod) = ev else { continue };
            if pod.metadata.deletion_timestamp.is_some() && seen.insert(pod.name_any()) {
                let _ = tx.send(pod.name_any());
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                let _ = pods.delete(&pod.name_any(), &dp).await;
            }
        }
    });
    (task, rx)
}

/// Records every distinct `(state, description)` of the Machine's lastOperation until the
/// Machine is gone, from a watch (every write is an event; polling would miss steps that
/// follow each other within milliseconds). Returns once the watch's initial list is done,
/// so nothing the caller does afterwards can happen before the recorder is listening.
pub async fn record_operations(
    machines: Api<Machine>,
    name: String,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut seen: Vec<(String, String)> = Vec::new();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = std::pin::pin!(watcher(machines, cfg));
        while let Some(ev) = events.next().await {
            let m = match ev {
                Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => m,
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(watcher::Event::Delete(_)) => return seen,
                _ => continue,
            };
            if let Some(lo) = m.status.and_then(|s| s.last_operation) {
                let entry = (lo.state, lo.description);
                if seen.last() != Some(&entry) {
                    seen.push(entry);
                }
            }
        }
        seen
    });
    ready_rx
        .await
        .expect("operation recorder stopped before its watch was established");
    task
}

pub async fn last_operation(stack: &Stack, name: &str) -> (String, String) {
    let m = stack.machines().get(name).await.expect("machine");
    let lo = m
        .status
        .and_then(|s| s.last_operation)
        .expect("lastOperation");
    (lo.state, lo.description)
}

/// The position of the first recorded description containing `word`.
pub fn position(ops: &[(String, String)], word: &str) -> usize {
    ops.iter()
        .position(|(_, d)| d.contains(word))
        .unwrap_or_else(|| panic!("no lastOperation containing {word:?} in {ops:#?}"))
}

/// o) A PodDisruptionBudget holds the drain and the device: misconfigured (all pods healthy,
/// zero disruptions allowed) → the drain fails at once with `{Delete, Failed, "… Initiate node
/// drain"}`; then 0 allowed with a pod unhealthy → eviction retried, device kept; 1 allowed →
/// evicted, device deleted, Node deleted, Machine gone. DaemonSet and mirror pods are never
/// touched; every MCM step word appears in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn o_drain_waits_for_the_disruption_budget() {
    with_temp_ns("o", Opts::default(), |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        let name = running_machine(&stack, "m1", |_| {}).await;
        let node = name.clone();
        running_pod(&client, &ns, "web", &node, json!({"metadata": {"labels": {"app": "web"}}})).await;
        running_pod(&client, &ns, "agent", &node, json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "6c1b7b1e-0000-4000-8000-000000000001", "controller": true}]}})).await;
        running_pod(&client, &ns, "static", &node, json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}})).await;
        pdb(&client, &ns, "web").await;
        pdb_status(&client, &ns, "web", 1, 1, 0).await;
        let (kubelet, _evicted) = kubelet(&client, &ns);
        let device = uuid_of(stack.machines().get(&name).await.expect("m").provider_id().expect("pid"));
        let ops = record_operations(stack.machines(), name.clone()).await;

        stack.machines().delete(&name, &DeleteParams::default()).await.expect("delete");
        let s = &stack;
        let failed = eventually("drain failed on the misconfigured budget", Duration::from_secs(30), || {
            let name = name.clone();
            async move {
                let (state, d) = last_operation(s, &name).await;
                (state == "Failed" && d.contains("misconfigured")).then_some(d)
            }
        })
        .await;
        assert!(failed.starts_with("Drain failed due to - error while evicting pod \"web\": pod disruption budget"), "{failed}");
        assert!(failed.ends_with("Will retry in next sync. Initiate node drain"), "{failed}");
        assert!(stack.devices().await.contains_key(&device), "device deleted under a blocked drain");

        // Not misconfigured any more, but still no disruption allowed: evictions are refused
        // (429) and retried; nothing moves, the device stays.
        pdb_status(&client, &ns, "web", 2, 1, 0).await;
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(pod_exists(&client, &ns, "web").await && !pod_terminating(&client, &ns, "web").await);
        assert!(stack.devices().await.contains_key(&device), "device deleted under a blocked drain");
        let nodes: Api<Node> = Api::all(client.clone());
        let n = nodes.get(&node).await.expect("node still there");
        assert_eq!(n.spec.as_ref().and_then(|s| s.unschedulable), Some(true), "cordoned");
        let terminating = n.status.as_ref().and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Terminating").cloned())
            .expect("Terminating condition on the Node");
        assert_eq!((terminating.status.as_str(), terminating.reason.as_deref()), ("True", Some("ScaleDown")));

        // One disruption allowed: the next retry evicts.
        pdb_status(&client, &ns, "web", 2, 2, 1).await;
        machine_gone(&stack.machines(), &name, Duration::from_secs(90)).await;
        assert!(!stack.devices().await.contains_key(&device), "device still there");
        assert!(!pod_exists(&client, &ns, "web").await);
        assert!(pod_exists(&client, &ns, "agent").await, "DaemonSet pod was evicted");
        assert!(pod_exists(&client, &ns, "static").await, "mirror pod was evicted");
        assert!(!pod_terminating(&client, &ns, "agent").await && !pod_terminating(&client, &ns, "static").await);
        assert!(nodes.get_opt(&node).await.expect("get node").is_none(), "Node not deleted");
        let ops = ops.await.expect("recorder");
        let order = [
            "Set machine status to termination. Now, getting VM Status",
            "Drain failed due to - error while evicting pod",
            "Drain successful. Initiate VM deletion",
            "VM deletion was successful. Initiate node object deletion",
            // "Deletion of Node Object … is successful", or "No node object found" when the
            // simulator removed the Node of the deprovisioned device first.
            "Initiate machine object finalizer removal",
        ];
        let positions: Vec<usize> = order.iter().map(|w| position(&ops, w)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "steps out of order: {ops:#?}");
        kubelet.abort();
        stack
    })
    .await;
}

/// p) Pods with PersistentVolumeClaims move one at a time, highest priority first; the others
/// all together. Evictions are observed in commit order through a watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn p_pods_with_claims_move_serially_by_priority() {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    with_temp_ns("p", Opts::default(), |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        let name = running_machine(&stack, "m1", |_| {}).await;
        let classes: Api<PriorityClass> = Api::all(client.clone());
        for (level, value) in [("high", 1000), ("mid", 500), ("low", 10)] {
            let pc: PriorityClass = serde_json::from_value(json!({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": format!("{ns}-{level}")}, "value": value})).expect("pc");
            classes.create(&Default::default(), &pc).await.expect("priority class");
        }
        // Names sort opposite to priority, so API order is not eviction order.
        for (pod, level) in [("a-low", "low"), ("b-mid", "mid"), ("c-high", "high")] {
            running_pod(&client, &ns, pod, &name, json!({"spec": {
                "priorityClassName": format!("{ns}-{level}"),
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": format!("{pod}-data")}}]}})).await;
        }
        running_pod(&client, &ns, "free", &name, json!({})).await;
        let (kubelet, mut evicted) = kubelet(&client, &ns);
        stack.machines().delete(&name, &DeleteParams::default()).await.expect("delete");
        machine_gone(&stack.machines(), &name, Duration::from_secs(90)).await;
        let mut order = Vec::new();
        while let Ok(p) = evicted.try_recv() {
            order.push(p);
        }
        let claims: Vec<&String> = order.iter().filter(|p| *p != "free").collect();
        assert_eq!(claims, ["c-high", "b-mid", "a-low"], "all evictions: {order:?}");
        assert!(order.iter().any(|p| p == "free"), "{order:?}");
        for level in ["high", "mid", "low"] {
            let _ = classes.delete(&format!("{ns}-{level}"), &DeleteParams::default()).await;
        }
        kubelet.abort();
        stack
    })
    .await;
}

/// q) The `force-deletion` label: pods are deleted (grace 0, the budget notwithstanding), the
/// Node's VolumeAttachments deleted (another Node's kept), then the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn q_force_deletion_label_deletes_pods_and_volume_attachments() {
    use k8s_openapi::api::storage::v1::VolumeAttachment;
    with_temp_ns("q", Opts::default(), |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        let name = running_machine(&stack, "m1", |_| {}).await;
        running_pod(
            &client,
            &ns,
            "web",
            &name,
            json!({"metadata": {"labels": {"app": "web"}}}),
        )
        .await;
        pdb(&client, &ns, "web").await;
        pdb_status(&client, &ns, "web", 2, 1, 0).await;
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"volumesAttached": [
            {"name": "kubernetes.io/csi/csi.example.com^vol-1", "devicePath": ""}]}})),
            )
            .await
            .expect("volumesAttached");
        let here = format!("{ns}-va-here");
        let there = format!("{ns}-va-there");
        volume_attachment(&client, &here, &format!("{ns}-pv1"), &name).await;
        volume_attachment(
            &client,
            &there,
            &format!("{ns}-pv2"),
            &format!("{ns}-other-node"),
        )
        .await;
        stack
            .machines()
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"force-deletion": "True"}}})),
            )
            .await
            .expect("label");
        let ops = record_operations(stack.machines(), name.clone()).await;
        stack
            .machines()
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete");
        machine_gone(&stack.machines(), &name, Duration::from_secs(60)).await;
        assert!(!pod_exists(&client, &ns, "web").await, "pod not deleted");
        let vas: Api<VolumeAttachment> = Api::all(client.clone());
        assert!(
            vas.get_opt(&here).await.expect("get va").is_none(),
            "the Node's VolumeAttachment survived"
        );
        assert!(
            vas.get_opt(&there).await.expect("get va").is_some(),
            "another Node's VolumeAttachment was deleted"
        );
        assert!(stack.devices().await.is_empty(), "device still there");
        let ops = ops.await.expect("recorder");
        let a = position(&ops, "Force Drain successful. Delete Volume Attachments");
        let b = position(&ops, "No Live VolumeAttachments for node");
        let c = position(&ops, "VM deletion was successful");
        assert!(a < b && b < c, "{ops:#?}");
        let _ = vas.delete(&there, &DeleteParams::default()).await;
        stack
    })
    .await;
}

/// r) The drain timeout, counted from the deletion: an evicted pod never terminates (no
/// kubelet), the normal drain fails and keeps the device; the controller is killed mid-drain
/// and its successor resumes at the drain step, now forced (the timeout has passed): the pod
/// is deleted with grace 0 and the Node's VolumeAttachment removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn r_drain_timeout_forces_and_a_restart_resumes_mid_drain() {
    use k8s_openapi::api::storage::v1::VolumeAttachment;
    with_temp_ns("r", Opts::default(), |mut stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        let name =
            running_machine(&stack, "m1", |m| m["spec"]["drainTimeout"] = json!("20s")).await;
        running_pod(&client, &ns, "stuck", &name, json!({})).await;
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"volumesAttached": [
            {"name": "kubernetes.io/csi/csi.example.com^vol-1", "devicePath": ""}]}})),
            )
            .await
            .expect("volumesAttached");
        let va = format!("{ns}-va");
        volume_attachment(&client, &va, &format!("{ns}-pv1"), &name).await;
        let device = uuid_of(
            stack
                .machines()
                .get(&name)
                .await
                .expect("m")
                .provider_id()
                .expect("pid"),
        );
        let ops = record_operations(stack.machines(), name.clone()).await;
        stack
            .machines()
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete");
        // Evicted, and stuck Terminating: the drain waits for it.
        let s = &stack;
        eventually("pod evicted", Duration::from_secs(30), || async {
            pod_terminating(&s.client, &s.ns, "stuck")
                .await
                .then_some(())
        })
        .await;
        let (state, d) = last_operation(&stack, &name).await;
        assert_eq!(
            (state.as_str(), d.as_str()),
            ("Processing", "Initiate node drain")
        );
        // Killed mid-drain; the successor resumes at the drain step.
        stack.kill_controller().await;
        assert!(stack.devices().await.contains_key(&device));
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert!(
            stack.devices().await.contains_key(&device),
            "device deleted while no controller ran"
        );
        stack.start_controller().await;
        machine_gone(&stack.machines(), &name, Duration::from_secs(90)).await;
        assert!(
            !pod_exists(&client, &ns, "stuck").await,
            "pod not force-deleted"
        );
        let vas: Api<VolumeAttachment> = Api::all(client.clone());
        assert!(
            vas.get_opt(&va).await.expect("get va").is_none(),
            "VolumeAttachment survived"
        );
        assert!(!stack.devices().await.contains_key(&device));
        let ops = ops.await.expect("recorder");
        let starts = ops
            .iter()
            .filter(|(_, d)| d.contains("Now, getting VM Status"))
            .count();
        assert_eq!(
            starts, 1,
            "the flow restarted instead of resuming: {ops:#?}"
        );
        let forced = position(&ops, "Force Drain successful. Delete Volume Attachments");
        assert!(
            forced < position(&ops, "VM deletion was successful"),
            "{ops:#?}"
        );
        stack
    })
    .await;
}
