//! The Node side of a Machine's life: nodeTemplate sync, and a deleted Node replacing its
//! Machine.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use metal_driver::controller::crd::Machine;
use serde_json::json;

use crate::{
    stack::{Opts, assert_bijection, with_temp_ns},
    support::{
        MACHINE_NAME_LABEL, NODE_FINALIZER, apply_class_and_secret, apply_sample, dyn_api,
        eventually, machine_gone, uuid_of,
    },
};

/// m) nodeTemplate sync: the Machine's labels, annotations and taints and the class's
/// virtual capacity appear on the Node; dropped from the template (or class) they are
/// removed again, while what others put on the Node stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn m_node_template_is_applied_and_removed() {
    let opts = Opts {
        provision_seconds: 1.0,
        ..Opts::default()
    };
    with_temp_ns("m", opts, |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_sample(&client, &ns, "secret.yaml", |_| {}).await;
        let class = apply_sample(&client, &ns, "machine-class.yaml", |c| {
            c["nodeTemplate"] = json!({
                "capacity": {"cpu": "8", "memory": "32Gi", "gpu": "0"},
                "instanceType": "c3.small.x86", "region": "sv", "zone": "sv15",
                "virtualCapacity": {"example.com/virtual": "1024Mi"}
            });
        })
        .await;
        let name = format!("{ns}-m1");
        apply_sample(&client, &ns, "machine.yaml", |m| {
            m["metadata"]["name"] = json!(name);
            m["spec"]["nodeTemplate"] = json!({
                "metadata": {
                    "labels": {"pool": "a", "gone": "soon"},
                    "annotations": {"note": "x"}
                },
                "spec": {"taints": [
                    {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                    {"key": "gone", "effect": "NoExecute"}
                ]}
            });
        })
        .await;
        let nodes: Api<Node> = Api::all(client.clone());
        // The API server's admission adds `node.kubernetes.io/not-ready` to a new Node (no
        // node-lifecycle controller runs here to take it off): not the template's business.
        let taint_set = |n: &Node| -> BTreeSet<String> {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .iter()
                .filter(|t| !t.key.starts_with("node.kubernetes.io/"))
                .map(|t| {
                    format!(
                        "{}={}:{}",
                        t.key,
                        t.value.clone().unwrap_or_default(),
                        t.effect
                    )
                })
                .collect()
        };
        let n = nodes.clone();
        let nm = name.clone();
        let node = eventually("template on the Node", Duration::from_secs(60), || {
            let (n, nm) = (n.clone(), nm.clone());
            async move {
                let node = n.get(&nm).await.ok()?;
                let cap = node
                    .status
                    .as_ref()?
                    .capacity
                    .as_ref()?
                    .get("example.com/virtual")?
                    .0
                    .clone();
                (node.labels().get("pool").map(String::as_str) == Some("a")
                    && node.labels().get(MACHINE_NAME_LABEL) == Some(&nm)
                    && !cap.is_empty())
                .then_some(node)
            }
        })
        .await;
        assert_eq!(node.labels().get("gone").map(String::as_str), Some("soon"));
        assert_eq!(
            node.annotations().get("note").map(String::as_str),
            Some("x")
        );
        assert!(
            node.annotations()
                .contains_key("node.machine.sapcloud.io/last-applied-anno-labels-taints")
        );
        assert_eq!(
            taint_set(&node),
            BTreeSet::from([
                "dedicated=db:NoSchedule".to_owned(),
                "gone=:NoExecute".to_owned()
            ])
        );
        let cap = node
            .status
            .as_ref()
            .and_then(|s| s.capacity.clone())
            .unwrap_or_default();
        assert_eq!(
            cap.get("example.com/virtual").map(|q| q.0.as_str()),
            Some("1Gi")
        );

        // Someone else's label and taint.
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"foreign": "f"}}})),
            )
            .await
            .expect("foreign label");
        let mut taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        taints.push(
            serde_json::from_value(json!({"key": "foreign", "effect": "NoSchedule"})).unwrap(),
        );
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": taints}})),
            )
            .await
            .expect("foreign taint");

        // Drop a label, the annotation and a taint; change the other taint.
        stack
            .machines()
            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodeTemplate": {
                "metadata": {"labels": {"pool": "b", "gone": null}, "annotations": null},
                "spec": {"taints": [{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]}
            }}})))
            .await
            .expect("edit nodeTemplate");
        let n = nodes.clone();
        let nm = name.clone();
        let node = eventually("dropped entries removed", Duration::from_secs(30), || {
            let (n, nm) = (n.clone(), nm.clone());
            async move {
                let node = n.get(&nm).await.ok()?;
                (node.labels().get("pool").map(String::as_str) == Some("b")
                    && !node.labels().contains_key("gone")
                    && !node.annotations().contains_key("note"))
                .then_some(node)
            }
        })
        .await;
        assert_eq!(node.labels().get("foreign").map(String::as_str), Some("f"));
        assert_eq!(
            taint_set(&node),
            BTreeSet::from([
                "foreign=:NoSchedule".to_owned(),
                "dedicated=web:NoSchedule".to_owned()
            ])
        );

        // The class drops its virtual capacity: removed from the Node.
        let classes = dyn_api(&client, &ns, "MachineClass");
        classes
            .patch(
                &class,
                &PatchParams::default(),
                &Patch::Merge(json!({"nodeTemplate": {"virtualCapacity": null}})),
            )
            .await
            .expect("drop virtualCapacity");
        let n = nodes.clone();
        let nm = name.clone();
        eventually("virtual capacity removed", Duration::from_secs(30), || {
            let (n, nm) = (n.clone(), nm.clone());
            async move {
                let node = n.get(&nm).await.ok()?;
                let cap = node.status.as_ref()?.capacity.clone().unwrap_or_default();
                (!cap.contains_key("example.com/virtual")).then_some(())
            }
        })
        .await;
        stack
    })
    .await;
}

/// n) A user deletes a Node (`kubectl delete node`): the finalizer holds it, the controller
/// deletes its Machine, the delete flow removes device, finalizer and Node, and MCM's
/// MachineSet replaces the Machine with a new one on a new device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn n_a_deleted_node_replaces_its_machine() {
    let opts = Opts {
        with_mcm: true,
        provision_seconds: 1.0,
        ..Opts::default()
    };
    with_temp_ns("n", opts, |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_class_and_secret(&client, &ns).await;
        let md_name = format!("{ns}-md");
        apply_sample(&client, &ns, "machine-deployment.yaml", |md| {
            md["metadata"]["name"] = json!(md_name);
            md["spec"]["replicas"] = json!(1);
            md["spec"]["selector"]["matchLabels"]["name"] = json!(md_name);
            md["spec"]["template"]["metadata"]["labels"]["name"] = json!(md_name);
        })
        .await;
        let s = &stack;
        let running = || async move {
            let ms = s.machines().list(&Default::default()).await.ok()?.items;
            let live: Vec<Machine> = ms
                .into_iter()
                .filter(|m| m.metadata.deletion_timestamp.is_none())
                .collect();
            (live.len() == 1 && live[0].phase() == "Running").then(|| live[0].clone())
        };
        let first = eventually("one Running Machine", Duration::from_secs(90), running).await;
        let node_name = first.node_name().expect("node label").to_owned();
        let nodes: Api<Node> = Api::all(client.clone());
        let n = nodes.clone();
        let nn = node_name.clone();
        eventually("Node finalizer", Duration::from_secs(30), || {
            let (n, nn) = (n.clone(), nn.clone());
            async move {
                n.get(&nn)
                    .await
                    .ok()?
                    .finalizers()
                    .iter()
                    .any(|f| f == NODE_FINALIZER)
                    .then_some(())
            }
        })
        .await;
        let old_device = uuid_of(first.provider_id().expect("providerID"));

        let t = Instant::now();
        nodes
            .delete(&node_name, &DeleteParams::default())
            .await
            .expect("user deletes the Node");
        let machines = stack.machines();
        let old = first.name_any();
        machine_gone(&machines, &old, Duration::from_secs(60)).await;
        let n = nodes.clone();
        let nn = node_name.clone();
        eventually("old Node gone", Duration::from_secs(30), || {
            let (n, nn) = (n.clone(), nn.clone());
            async move { n.get_opt(&nn).await.ok()?.is_none().then_some(()) }
        })
        .await;
        let replacement = eventually(
            "a replacement Machine Running",
            Duration::from_secs(90),
            running,
        )
        .await;
        assert_ne!(replacement.name_any(), old);
        let devices = stack.devices().await;
        assert!(
            !devices.contains_key(&old_device),
            "the old device is deleted"
        );
        assert_bijection(&stack, 1).await;
        eprintln!(
            "n: Machine replaced {:.1}s after its Node was deleted",
            t.elapsed().as_secs_f64()
        );
        stack
    })
    .await;
}
