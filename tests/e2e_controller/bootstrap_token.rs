//! Bootstrap tokens and readiness for workloads: the token Secret MCM writes, the userData
//! placeholders, Gardener's critical-components taint holding a Machine Pending.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{
    stack::{Opts, with_temp_ns},
    support::{
        MACHINE_NAME_LABEL, NODE_FINALIZER, apply_sample, eventually, machine_gone,
        machine_in_phase,
    },
};

const CRITICAL_TAINT: &str = "node.gardener.cloud/critical-components-not-ready";

/// MCM's bootstrap token id: first 6 hex digits of the last 5 bytes of the machine name.
pub fn token_id(machine: &str) -> String {
    let b = machine.as_bytes();
    b[b.len() - 5..]
        .iter()
        .map(|c| format!("{c:02x}"))
        .collect::<String>()[..6]
        .to_owned()
}

/// A machine name whose token id differs between test namespaces (the id only sees the
/// last 5 bytes, so they come from the namespace's random suffix).
pub fn machine_name_for(ns: &str) -> String {
    format!("m-{ns}")
}

/// The sample Secret with `userData` asking for a bootstrap token (raw placeholder) and the
/// machine name in its URL-escaped form (as ignition carries it).
async fn apply_secret_with_token_placeholder(client: &Client, ns: &str) {
    apply_sample(client, ns, "secret.yaml", |s| {
        s["stringData"]["userData"] = json!(
            "#cloud-config\nwrite_files:\n- path: /var/lib/token\n  content: <<BOOTSTRAP_TOKEN>>\n\
             - path: /etc/host\n  content: data:,%3C%3CMACHINE_NAME%3E%3E\n"
        );
    })
    .await;
}

pub async fn bootstrap_secret(
    client: &Client,
    id: &str,
) -> Option<k8s_openapi::api::core::v1::Secret> {
    let api: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "kube-system");
    api.get_opt(&format!("bootstrap-token-{id}"))
        .await
        .expect("get token Secret")
}

pub fn secret_field(s: &k8s_openapi::api::core::v1::Secret, key: &str) -> String {
    let v = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("no {key}"));
    String::from_utf8(v.0.clone()).expect("utf-8")
}

/// Who the API server says the bearer of `token` is (a `SelfSubjectReview`).
pub async fn whoami(token: &str) -> Value {
    let mut config = kube::Config::infer().await.expect("kube config");
    config.auth_info = serde_json::from_value(json!({ "token": token })).expect("auth info");
    let client = Client::try_from(config).expect("token client");
    let api: Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> = Api::all(client);
    let review = api
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"
            }))
            .expect("review"),
        )
        .await
        .expect("SelfSubjectReview with the bootstrap token");
    serde_json::to_value(review.status).expect("status")
}

/// Creates the Node a machine will join as, before its server exists: what a node agent
/// registering with Gardener's taint looks like. `finalizers` stand for what an older
/// controller (or another one) left on it.
pub async fn pre_register_node(client: &Client, name: &str, finalizers: &[&str]) {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "finalizers": finalizers},
                "spec": {"taints": [{"key": CRITICAL_TAINT, "effect": "NoSchedule"}]}
            })),
        )
        .await
        .expect("pre-register Node");
}

pub fn user_data_of(device: &Value) -> String {
    device["userdata"].as_str().unwrap_or_default().to_owned()
}

/// k) Bootstrap token and readiness for workloads: the token Secret exists with MCM's
/// fields, the device's userData carries `<id>.<secret>` (and the URL-escaped machine name),
/// the API server authenticates the token as `system:bootstrap:<id>`; the Machine stays
/// Pending while Gardener's critical-components taint is on its Ready Node and turns Running
/// when it goes, which deletes the token. The Node carries our finalizer and the
/// machine-name label; on Machine delete the finalizer (here: left by an older controller)
/// is removed before the Node is deleted, and another controller's finalizer is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn k_bootstrap_token_and_the_taint_hold_pending() {
    let opts = Opts {
        provision_seconds: 1.0,
        controller_flags: vec!["--bootstrap-token-auth-extra-groups=system:bootstrappers:e2e"],
        ..Opts::default()
    };
    with_temp_ns("k", opts, |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_secret_with_token_placeholder(&client, &ns).await;
        apply_sample(&client, &ns, "machine-class.yaml", |_| {}).await;
        let name = machine_name_for(&ns);
        let id = token_id(&name);
        pre_register_node(&client, &name, &[NODE_FINALIZER, "example.com/e2e-keep"]).await;
        let before = k8s_openapi::jiff::Timestamp::now();
        apply_sample(&client, &ns, "machine.yaml", |m| {
            m["metadata"]["name"] = json!(name)
        })
        .await;

        // The token Secret, as MCM writes it.
        let c = client.clone();
        let secret = eventually("bootstrap token Secret", Duration::from_secs(60), || {
            let (c, id) = (c.clone(), id.clone());
            async move { bootstrap_secret(&c, &id).await }
        })
        .await;
        assert_eq!(
            secret.type_.as_deref(),
            Some("bootstrap.kubernetes.io/token")
        );
        assert_eq!(secret_field(&secret, "token-id"), id);
        let token_secret = secret_field(&secret, "token-secret");
        assert_eq!(token_secret.len(), 16);
        assert!(
            token_secret
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_eq!(
            secret_field(&secret, "usage-bootstrap-authentication"),
            "true"
        );
        assert_eq!(secret_field(&secret, "usage-bootstrap-signing"), "true");
        assert_eq!(
            secret_field(&secret, "auth-extra-groups"),
            "system:bootstrappers:e2e"
        );
        let expiration: k8s_openapi::jiff::Timestamp = secret_field(&secret, "expiration")
            .parse()
            .expect("RFC 3339 expiration");
        let valid = expiration.duration_since(before);
        assert!(
            valid >= k8s_openapi::jiff::SignedDuration::from_mins(19)
                && valid <= k8s_openapi::jiff::SignedDuration::from_mins(21),
            "expiration = creation + the 20m creation timeout, got {valid}"
        );
        let bearer = format!("{id}.{token_secret}");

        // The device got the token and the machine name in its userData.
        let s = &stack;
        let device = eventually(
            "the Machine's device",
            Duration::from_secs(60),
            || async move { s.devices().await.into_values().next() },
        )
        .await;
        let user_data = user_data_of(&device);
        assert!(
            user_data.contains(&format!("content: {bearer}\n")),
            "token not substituted"
        );
        assert!(!user_data.contains("BOOTSTRAP_TOKEN"));
        assert!(
            user_data.contains(&format!("content: data:,{name}\n")),
            "escaped machine name not substituted"
        );

        // The API server knows the token.
        let review = whoami(&bearer).await;
        assert_eq!(
            review["userInfo"]["username"],
            format!("system:bootstrap:{id}"),
            "{review}"
        );
        let groups = review["userInfo"]["groups"].to_string();
        assert!(groups.contains("system:bootstrappers:e2e"), "{groups}");

        // Ready (the sim's kubelet stand-in) but tainted: stays Pending.
        let nodes: Api<Node> = Api::all(client.clone());
        let n = nodes.clone();
        let nm = name.clone();
        eventually(
            "Node Ready with the finalizer and machine-name label",
            Duration::from_secs(60),
            || {
                let (n, nm) = (n.clone(), nm.clone());
                async move {
                    let node = n.get(&nm).await.ok()?;
                    let ready = node
                        .status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    let labelled = node.labels().get(MACHINE_NAME_LABEL) == Some(&nm);
                    let finalized = node.finalizers().iter().any(|f| f == NODE_FINALIZER);
                    (ready && labelled && finalized).then_some(())
                }
            },
        )
        .await;
        let machines = stack.machines();
        // Several health rechecks (5 s) and Node events later, still Pending.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let m = machines.get(&name).await.expect("machine");
        assert_eq!(
            m.phase(),
            "Pending",
            "the taint must hold the Machine Pending"
        );
        assert!(
            bootstrap_secret(&client, &id).await.is_some(),
            "token kept while Pending"
        );

        // Gardener removes its taint: Running, and the token is deleted.
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": null}})),
            )
            .await
            .expect("remove taint");
        let t = Instant::now();
        let running = machine_in_phase(&machines, &name, "Running", Duration::from_secs(30)).await;
        let lo = running
            .status
            .as_ref()
            .and_then(|s| s.last_operation.clone())
            .expect("lastOperation");
        assert_eq!(
            (lo.type_.as_str(), lo.state.as_str()),
            ("Create", "Successful")
        );
        let c = client.clone();
        eventually(
            "token Secret deleted on Running",
            Duration::from_secs(30),
            || {
                let (c, id) = (c.clone(), id.clone());
                async move { bootstrap_secret(&c, &id).await.is_none().then_some(()) }
            },
        )
        .await;
        eprintln!(
            "k: Running {:.1}s after the taint was removed",
            t.elapsed().as_secs_f64()
        );

        // Delete: our (the older controller's) finalizer goes, the foreign one stays.
        machines
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete machine");
        machine_gone(&machines, &name, Duration::from_secs(60)).await;
        let node = nodes
            .get(&name)
            .await
            .expect("Node kept by the foreign finalizer");
        assert!(
            node.metadata.deletion_timestamp.is_some(),
            "Node deleted by the delete flow"
        );
        assert_eq!(node.finalizers(), ["example.com/e2e-keep"]);
        assert!(stack.devices().await.is_empty());
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .expect("release foreign finalizer");
        eventually("Node gone", Duration::from_secs(30), || {
            let (nodes, name) = (nodes.clone(), name.clone());
            async move { nodes.get_opt(&name).await.ok()?.is_none().then_some(()) }
        })
        .await;
        stack
    })
    .await;
}

/// l) Without a target cluster no token Secret is made and the placeholder stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn l_no_bootstrap_token_without_a_target_cluster() {
    let opts = Opts {
        provision_seconds: 1.0,
        controller_flags: vec!["--target-kubeconfig=none"],
        ..Opts::default()
    };
    with_temp_ns("l", opts, |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_secret_with_token_placeholder(&client, &ns).await;
        apply_sample(&client, &ns, "machine-class.yaml", |_| {}).await;
        let name = machine_name_for(&ns);
        apply_sample(&client, &ns, "machine.yaml", |m| {
            m["metadata"]["name"] = json!(name)
        })
        .await;
        let machines = stack.machines();
        machine_in_phase(&machines, &name, "Available", Duration::from_secs(60)).await;
        let devices = stack.devices().await;
        let device = devices.values().next().expect("device");
        let user_data = user_data_of(device);
        assert!(
            user_data.contains("content: <<BOOTSTRAP_TOKEN>>\n"),
            "placeholder must stay"
        );
        assert!(user_data.contains(&format!("content: data:,{name}\n")));
        assert!(bootstrap_secret(&client, &token_id(&name)).await.is_none());
        stack
    })
    .await;
}
