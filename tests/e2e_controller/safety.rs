//! Safety in a live landscape: Gardener's deletion contract (Secret finalizer, Worker
//! deletion with force-deletion), meltdown permit, API-server freeze, orphan collection and
//! Nodes without a Machine.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

use crate::{
    stack::{Opts, first_machine, scrape, wait_frozen, with_temp_ns},
    support::{
        CLUSTER_TAG, ROLE_TAG, apply_class_and_secret, apply_sample, dyn_api, e2e_kubeconfig,
        eventually, machine_in_phase, repo_root, wait_phase,
    },
};

const SECRET_FINALIZER: &str = "machine.sapcloud.io/machine-controller";
const NOT_MANAGED: &str = "node.machine.sapcloud.io/not-managed-by-mcm";

fn has_finalizer(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    f: &str,
) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|l| l.iter().any(|x| x == f))
}

async fn secret_has_finalizer(client: &Client, ns: &str, name: &str) -> Option<bool> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get_opt(name).await.ok()??;
    Some(has_finalizer(&s.metadata, SECRET_FINALIZER))
}

/// A second throw-away API server (its own etcd and state dir, via hack/e2e-env.sh) to serve
/// as the target cluster, so it can be stopped without touching the control cluster.
struct TargetEnv {
    state: PathBuf,
    kubeconfig: String,
    client: Client,
}

/// Controller flags that check both API servers every second and freeze after 3 s.
const STATUSCHECK_EVERY_SECOND: [&str; 2] = [
    "--machine-safety-apiserver-statuscheck-period=1s",
    "--machine-safety-apiserver-statuscheck-timeout=3s",
];

impl TargetEnv {
    /// A target cluster of its own for the test `test`, and `opts` pointed at it, with 1 s
    /// provisioning and `flags` for the controller.
    async fn for_test(test: &str, flags: Vec<&'static str>, opts: Opts) -> (TargetEnv, Opts) {
        let tag = format!("{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let target = TargetEnv::up(&tag).await;
        let opts = Opts {
            provision_seconds: 1.0,
            target_kubeconfig: Some(target.kubeconfig.clone()),
            controller_flags: flags,
            ..opts
        };
        (target, opts)
    }

    pub async fn up(ns: &str) -> TargetEnv {
        let base = std::env::var("METAL_DRIVER_E2E_STATE")
            .unwrap_or_else(|_| "/tmp/metal-driver-e2e".into());
        let state = PathBuf::from(format!("{base}-target-{ns}"));
        let out = tokio::process::Command::new(repo_root().join("hack/e2e-env.sh"))
            .arg("up")
            .env("METAL_DRIVER_STATE", &state)
            .env("E2E_NAMESPACE", "target")
            .env_remove("E2E_WITH_MCM")
            .env_remove("E2E_WITH_KCM")
            .output()
            .await
            .expect("run hack/e2e-env.sh up");
        assert!(
            out.status.success(),
            "target env: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kubeconfig = state.join("kubeconfig").display().to_string();
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).expect("target kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("target config");
        let client = Client::try_from(config).expect("target client");
        TargetEnv {
            state,
            kubeconfig,
            client,
        }
    }

    pub async fn apiserver(&self, cmd: &str) {
        let out = tokio::process::Command::new(repo_root().join("hack/e2e-env.sh"))
            .args(["apiserver", cmd])
            .env("METAL_DRIVER_STATE", &self.state)
            .output()
            .await
            .expect("run hack/e2e-env.sh apiserver");
        assert!(
            out.status.success(),
            "apiserver {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TargetEnv {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("hack/e2e-env.sh"))
            .arg("down")
            .env("METAL_DRIVER_STATE", &self.state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Patches every named Node NotReady every 500 ms (a kubelet reporting trouble; the sim's
/// registrar would report Ready again on its next heartbeat) until aborted.
fn keep_not_ready(nodes: Api<Node>, names: Vec<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for n in &names {
                let not_ready = json!({"status": {"conditions": [{
                    "type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "e2e",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"
                }]}});
                let _ = nodes
                    .patch_status(n, &PatchParams::default(), &Patch::Strategic(not_ready))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Secret finalizer: every Secret a MachineClass refers to carries
/// `machine.sapcloud.io/machine-controller`; it moves with the references and is released
/// when the class is gone, so the Secret can be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn s1_secret_finalizer_follows_class_references() {
    with_temp_ns("s1", Opts::default(), |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        let secret = apply_sample(&client, &ns, "secret.yaml", |_| {}).await;
        let other = apply_sample(&client, &ns, "secret.yaml", |s| {
            s["metadata"]["name"] = json!("other")
        })
        .await;
        let class = apply_sample(&client, &ns, "machine-class.yaml", |_| {}).await;
        let t = Instant::now();
        eventually(
            "finalizer on the referenced Secret",
            Duration::from_secs(30),
            || {
                let (client, ns, secret) = (client.clone(), ns.clone(), secret.clone());
                async move {
                    secret_has_finalizer(&client, &ns, &secret)
                        .await
                        .filter(|f| *f)
                }
            },
        )
        .await;
        eprintln!(
            "s1: Secret finalizer added {:.1}s after the class",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(
            secret_has_finalizer(&client, &ns, &other).await,
            Some(false),
            "an unreferenced Secret gets none"
        );

        // The class moves its credentials to the other Secret.
        let classes = dyn_api(&client, &ns, "MachineClass");
        classes
            .patch(
                &class,
                &PatchParams::default(),
                &Patch::Merge(json!({
                "credentialsSecretRef": {"name": other, "namespace": ns}})),
            )
            .await
            .expect("patch class");
        eventually(
            "finalizer on the newly referenced Secret",
            Duration::from_secs(30),
            || {
                let (client, ns, other) = (client.clone(), ns.clone(), other.clone());
                async move {
                    secret_has_finalizer(&client, &ns, &other)
                        .await
                        .filter(|f| *f)
                }
            },
        )
        .await;
        assert_eq!(
            secret_has_finalizer(&client, &ns, &secret).await,
            Some(true),
            "secretRef still refers to it"
        );
        classes
            .patch(
                &class,
                &PatchParams::default(),
                &Patch::Merge(json!({
                "secretRef": {"name": other, "namespace": ns}})),
            )
            .await
            .expect("patch class");
        eventually(
            "finalizer released by the no longer referenced Secret",
            Duration::from_secs(30),
            || {
                let (client, ns, secret) = (client.clone(), ns.clone(), secret.clone());
                async move {
                    secret_has_finalizer(&client, &ns, &secret)
                        .await
                        .filter(|f| !*f)
                }
            },
        )
        .await;

        // Deleting the Secret first waits for the class; deleting the class releases it.
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .delete(&other, &DeleteParams::default())
            .await
            .expect("delete Secret");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held = secrets
            .get(&other)
            .await
            .expect("still there while referenced");
        assert!(
            held.metadata.deletion_timestamp.is_some()
                && has_finalizer(&held.metadata, SECRET_FINALIZER)
        );
        classes
            .delete(&class, &DeleteParams::default())
            .await
            .expect("delete class");
        let t = Instant::now();
        eventually(
            "Secret gone once its class is",
            Duration::from_secs(30),
            || {
                let (secrets, other) = (secrets.clone(), other.clone());
                async move { secrets.get_opt(&other).await.ok()?.is_none().then_some(()) }
            },
        )
        .await;
        eprintln!(
            "s1: Secret released {:.1}s after its class was deleted",
            t.elapsed().as_secs_f64()
        );
        stack
    })
    .await;
}

/// Gardener's Worker deletion, replayed with MCM's binary: wait for the Secret finalizer,
/// label every Machine `force-deletion=True`, delete the MachineDeployment, the class and
/// the Secret at once → every Machine, Node and device gone, the class and Secret released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn s2_gardener_worker_deletion_with_mcm() {
    let opts = Opts {
        with_mcm: true,
        provision_seconds: 1.0,
        ..Opts::default()
    };
    with_temp_ns("s2", opts, |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        let class = apply_class_and_secret(&client, &ns).await;
        let secret = "shoot--dev--demo-worker".to_owned();
        let md_name = format!("{ns}-md");
        apply_sample(&client, &ns, "machine-deployment.yaml", |md| {
            md["metadata"]["name"] = json!(md_name);
            md["spec"]["replicas"] = json!(2);
            md["spec"]["selector"]["matchLabels"]["name"] = json!(md_name);
            md["spec"]["template"]["metadata"]["labels"]["name"] = json!(md_name);
        })
        .await;
        let s = &stack;
        eventually(
            "2 Running Machines with devices",
            Duration::from_secs(120),
            || async move {
                let machines = s.machines().list(&Default::default()).await.ok()?.items;
                (machines.len() == 2
                    && machines.iter().all(|m| m.phase() == "Running")
                    && s.devices().await.len() == 2)
                    .then_some(())
            },
        )
        .await;
        let node_names: Vec<String> = stack
            .machines()
            .list(&Default::default())
            .await
            .expect("machines")
            .items
            .iter()
            .filter_map(|m| m.node_name().map(str::to_owned))
            .collect();
        assert_eq!(node_names.len(), 2);

        // Gardener: wait for the finalizer on the class Secrets.
        eventually("Secret finalizer", Duration::from_secs(30), || {
            let (client, ns, secret) = (client.clone(), ns.clone(), secret.clone());
            async move {
                secret_has_finalizer(&client, &ns, &secret)
                    .await
                    .filter(|f| *f)
            }
        })
        .await;
        let t = Instant::now();
        let machines = stack.machines();
        for m in machines
            .list(&Default::default())
            .await
            .expect("machines")
            .items
        {
            machines
                .patch(
                    &m.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"force-deletion": "True"}}})),
                )
                .await
                .expect("label force-deletion");
        }
        let dp = DeleteParams::default();
        dyn_api(&client, &ns, "MachineDeployment")
            .delete(&md_name, &dp)
            .await
            .expect("delete MachineDeployment");
        dyn_api(&client, &ns, "MachineClass")
            .delete(&class, &dp)
            .await
            .expect("delete MachineClass");
        dyn_api(&client, &ns, "Secret")
            .delete(&secret, &dp)
            .await
            .expect("delete Secret");

        let nodes: Api<Node> = Api::all(client.clone());
        let s = &stack;
        let (c, n, nn) = (&client, &ns, &node_names);
        eventually(
            "every Machine, Node, device, class and Secret gone",
            Duration::from_secs(180),
            || {
                let nodes = nodes.clone();
                async move {
                    for kind in ["MachineDeployment", "MachineSet", "Machine", "MachineClass"] {
                        if !dyn_api(c, n, kind)
                            .list(&Default::default())
                            .await
                            .ok()?
                            .items
                            .is_empty()
                        {
                            return None;
                        }
                    }
                    if dyn_api(c, n, "Secret")
                        .get_opt("shoot--dev--demo-worker")
                        .await
                        .ok()?
                        .is_some()
                    {
                        return None;
                    }
                    for node in nn {
                        if nodes.get_opt(node).await.ok()?.is_some() {
                            return None;
                        }
                    }
                    s.devices().await.is_empty().then_some(())
                }
            },
        )
        .await;
        assert_eq!(stack.devices().await.len(), 0, "nothing left billing");
        eprintln!(
            "s2: Worker deletion completed in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        stack
    })
    .await;
}

/// Meltdown permit: three Running Machines of one MachineDeployment (label `name`) whose
/// Nodes all go NotReady past a short health timeout → exactly one becomes Failed; only when
/// it is gone may the next one fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn s3_meltdown_permit_fails_one_machine_per_deployment() {
    let opts = Opts {
        provision_seconds: 1.0,
        controller_flags: vec!["--machine-health-timeout=3s"],
        ..Opts::default()
    };
    with_temp_ns("s3", opts, |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_class_and_secret(&client, &ns).await;
        let names: Vec<String> = (1..=3).map(|i| format!("{ns}-m{i}")).collect();
        for n in &names {
            apply_sample(&client, &ns, "machine.yaml", |m| {
                m["metadata"]["name"] = json!(n);
                m["metadata"]["labels"] = json!({"name": "md1"});
            })
            .await;
        }
        let machines = stack.machines();
        let phases = || {
            let machines = machines.clone();
            async move {
                let mut out = BTreeMap::new();
                for m in machines.list(&Default::default()).await.ok()?.items {
                    out.insert(m.name_any(), m.phase().to_owned());
                }
                Some(out)
            }
        };
        let count =
            |p: &BTreeMap<String, String>, want: &str| p.values().filter(|v| *v == want).count();
        eventually("3 Running", Duration::from_secs(90), || async {
            phases().await.filter(|p| count(p, "Running") == 3)
        })
        .await;
        let nodes: Api<Node> = Api::all(client.clone());
        let kubelet = keep_not_ready(nodes, names.clone());
        let t = Instant::now();
        let p = eventually(
            "one Failed, two Unknown",
            Duration::from_secs(60),
            || async {
                phases()
                    .await
                    .filter(|p| count(p, "Failed") == 1 && count(p, "Unknown") == 2)
            },
        )
        .await;
        eprintln!(
            "s3: {p:?} {:.1}s after the Nodes went NotReady",
            t.elapsed().as_secs_f64()
        );
        // Many health timeouts (and permit retries) later, still only one.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let p = phases().await.expect("list");
            assert_eq!(count(&p, "Failed"), 1, "meltdown: {p:?}");
        }
        // The MachineSet controller would delete the Failed one; once it is gone, the next
        // may fail.
        let failed = p
            .iter()
            .find(|(_, v)| *v == "Failed")
            .map(|(k, _)| k.clone())
            .expect("failed");
        machines
            .delete(&failed, &DeleteParams::default())
            .await
            .expect("delete");
        let p = eventually(
            "the next one Failed after the first is gone",
            Duration::from_secs(60),
            || async {
                phases()
                    .await
                    .filter(|p| p.len() == 2 && count(p, "Failed") == 1 && count(p, "Unknown") == 1)
            },
        )
        .await;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = phases().await.expect("list");
            assert_eq!(count(&now, "Failed"), 1, "meltdown: {now:?}");
        }
        eprintln!("s3: after the replacement: {p:?}");
        kubelet.abort();
        stack
    })
    .await;
}

/// API-server freeze: the target cluster's API server stopped for longer than the status-check
/// timeout → frozen (gauge 1): no phase written, no machine created; restarted → unfrozen, the
/// Unknown Machine reset to Running with MCM's description instead of failing for a health
/// timeout that ran out while nobody could see its Node; the held-back Machine is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn s4_api_server_freeze_and_recovery() {
    let Some(_) = e2e_kubeconfig() else { return };
    let mut flags = vec!["--machine-health-timeout=15s"];
    flags.extend(STATUSCHECK_EVERY_SECOND);
    let (target, opts) = TargetEnv::for_test("s4", flags, Opts::default()).await;
    let target_client = target.client.clone();
    let target = &target;
    with_temp_ns("s4", opts, |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        let name = first_machine(&stack).await;
        let machines = stack.machines();
        machine_in_phase(&machines, &name, "Running", Duration::from_secs(60)).await;
        assert!(
            scrape(&stack)
                .await
                .contains("mcm_machine_controller_frozen 0")
        );
        let kubelet = keep_not_ready(Api::all(target_client.clone()), vec![name.clone()]);
        machine_in_phase(&machines, &name, "Unknown", Duration::from_secs(30)).await;
        kubelet.abort();

        // Every status the Machine goes through from here on.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let watch = {
            let seen = seen.clone();
            let cfg =
                kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
            let stream = kube::runtime::watcher(machines.clone(), cfg);
            tokio::spawn(async move {
                use futures::StreamExt;
                let mut stream =
                    std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(stream));
                while let Some(Ok(m)) = stream.next().await {
                    let d = m
                        .status
                        .as_ref()
                        .and_then(|s| s.last_operation.as_ref())
                        .map(|l| l.description.clone())
                        .unwrap_or_default();
                    seen.lock().unwrap().push((m.phase().to_owned(), d));
                }
            })
        };

        target.apiserver("stop").await;
        let down = Instant::now();
        wait_frozen(&stack, true).await;
        eprintln!(
            "s4: frozen {:.1}s after the target API server stopped (timeout 3s)",
            down.elapsed().as_secs_f64()
        );
        let frozen_status = machines.get(&name).await.expect("get").status;
        // A Machine created while frozen is not created at the provider.
        let held = format!("{ns}-held");
        apply_sample(&client, &ns, "machine.yaml", |m| {
            m["metadata"]["name"] = json!(held)
        })
        .await;
        // Stay down past the health timeout (15s) of the Unknown Machine.
        while down.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                scrape(&stack)
                    .await
                    .contains("mcm_machine_controller_frozen 1"),
                "thawed while down"
            );
        }
        assert_eq!(
            machines.get(&name).await.expect("get").status,
            frozen_status,
            "status written while frozen"
        );
        let h = machines.get(&held).await.expect("held");
        assert_eq!(h.phase(), "", "a Machine created while frozen got a phase");
        assert!(h.provider_id().is_none());
        assert_eq!(
            stack.devices().await.len(),
            1,
            "a device was created while frozen"
        );

        target.apiserver("start").await;
        let up = Instant::now();
        wait_frozen(&stack, false).await;
        eprintln!(
            "s4: unfrozen {:.1}s after the target API server started",
            up.elapsed().as_secs_f64()
        );
        let reset = "Machine Health Timeout was reset due to APIServer being unreachable";
        let seen2 = seen.clone();
        eventually(
            "reset to Running with MCM's description",
            Duration::from_secs(30),
            || {
                let seen = seen2.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .iter()
                        .any(|(p, d)| p == "Running" && d == reset)
                        .then_some(())
                }
            },
        )
        .await;
        {
            let seen = seen.lock().unwrap();
            let first_reset = seen
                .iter()
                .position(|(p, d)| p == "Running" && d == reset)
                .unwrap();
            assert!(
                !seen[..first_reset].iter().any(|(p, _)| p == "Failed"),
                "failed before the reset: {seen:?}"
            );
        }
        eventually(
            "the held-back Machine created",
            Duration::from_secs(60),
            || {
                let (machines, held) = (machines.clone(), held.clone());
                async move { machines.get(&held).await.ok()?.provider_id().map(|_| ()) }
            },
        )
        .await;
        watch.abort();
        stack
    })
    .await;
}

/// Orphan collection at start-up and after a Machine delete (the period is 15 minutes, so
/// neither can be the periodic pass), and Nodes without a Machine annotated
/// `not-managed-by-mcm` once older than the creation timeout, un-annotated when a Machine
/// claims them. The target is a cluster of its own, so no other test's Nodes are in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn s5_orphans_at_startup_and_on_delete_and_unmanaged_nodes() {
    let Some(_) = e2e_kubeconfig() else { return };
    let flags = vec!["--machine-creation-timeout=2s"];
    let (target, opts) = TargetEnv::for_test("s5", flags, Opts::default()).await;
    let target_nodes: Api<Node> = Api::all(target.client.clone());
    with_temp_ns("s5", opts, |mut stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_class_and_secret(&client, &ns).await;
        stack.stop_controller().await;
        let orphan = stack
            .create_device_directly(&format!("{ns}-orphan"), &[CLUSTER_TAG, ROLE_TAG])
            .await;
        let stray = format!("{ns}-stray");
        target_nodes
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": stray}}))
                .expect("node"),
            )
            .await
            .expect("create Node");
        tokio::time::sleep(Duration::from_secs(3)).await; // older than the creation timeout

        stack.start_controller().await;
        let t = Instant::now();
        let s = &stack;
        let o = &orphan;
        eventually(
            "orphan deleted at start-up",
            Duration::from_secs(30),
            || async move { (!s.devices().await.contains_key(o)).then_some(()) },
        )
        .await;
        eprintln!(
            "s5: start-up collection {:.1}s after the controller started (period 15m)",
            t.elapsed().as_secs_f64()
        );
        let annotation = |want: bool| {
            let (nodes, stray) = (target_nodes.clone(), stray.clone());
            move || {
                let (nodes, stray) = (nodes.clone(), stray.clone());
                async move {
                    let n = nodes.get(&stray).await.ok()?;
                    let v = n.annotations().get(NOT_MANAGED).cloned();
                    match (want, v.as_deref()) {
                        (true, Some("1")) | (false, None) => Some(()),
                        _ => None,
                    }
                }
            }
        };
        eventually(
            "stray Node annotated",
            Duration::from_secs(30),
            annotation(true),
        )
        .await;

        // A second orphan, then a Machine delete: its pass collects it.
        let orphan2 = stack
            .create_device_directly(&format!("{ns}-orphan2"), &[CLUSTER_TAG, ROLE_TAG])
            .await;
        // A Machine that claims the stray Node (it never gets a device: its class does not
        // exist).
        let claimer = format!("{ns}-claimer");
        apply_sample(&client, &ns, "machine.yaml", |m| {
            m["metadata"]["name"] = json!(claimer);
            m["metadata"]["labels"] = json!({"node": stray});
            m["spec"]["class"]["name"] = json!("no-such-class");
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            stack.devices().await.contains_key(&orphan2),
            "no pass ran without a trigger"
        );
        let short = format!("{ns}-short");
        apply_sample(&client, &ns, "machine.yaml", |m| {
            m["metadata"]["name"] = json!(short);
            m["spec"]["class"]["name"] = json!("no-such-class");
        })
        .await;
        stack
            .machines()
            .delete(&short, &DeleteParams::default())
            .await
            .expect("delete");
        let s = &stack;
        let o = &orphan2;
        eventually(
            "orphan deleted after a Machine delete",
            Duration::from_secs(30),
            || async move { (!s.devices().await.contains_key(o)).then_some(()) },
        )
        .await;
        eventually(
            "stray Node un-annotated once claimed",
            Duration::from_secs(30),
            annotation(false),
        )
        .await;
        stack
    })
    .await;
    drop(target);
}

/// SIGTERM while the target cluster's API server is down and a CreateMachine is still in
/// flight (a slow Metal API: every request takes 15 s, so the create takes 30 s): the
/// controller exits within the 15 s `stack::stop` allows — in-flight reconciles get a bounded grace,
/// then are abandoned — and the next controller finishes the create with exactly one device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn s6_sigterm_during_a_target_outage_with_a_create_in_flight() {
    let Some(_) = e2e_kubeconfig() else { return };
    let slow = Opts {
        latency_ms: 15_000,
        ..Opts::default()
    };
    let (target, opts) = TargetEnv::for_test("s6", STATUSCHECK_EVERY_SECOND.to_vec(), slow).await;
    let target = &target;
    with_temp_ns("s6", opts, |mut stack| async move {
        let name = first_machine(&stack).await;
        let log = stack.logs.join("controller-1.log");
        eventually("CreateMachine in flight", Duration::from_secs(60), || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .ok()?
                    .contains("creating machine on cloud provider")
                    .then_some(())
            }
        })
        .await;
        // The API server's own shutdown may take a while: SIGTERM as soon as the controller
        // sees the outage (frozen), while the stop is still under way.
        let stopping = target.apiserver("stop");
        let sigterm = async {
            wait_frozen(&stack, true).await;
            stack.stop_controller().await
        };
        let ((), took) = tokio::join!(stopping, sigterm);
        eprintln!(
            "s6: controller exited {:.1}s after SIGTERM",
            took.as_secs_f64()
        );
        target.apiserver("start").await;
        stack.start_controller().await;
        wait_phase(&stack, &name, "Running").await;
        assert_eq!(stack.devices().await.len(), 1, "one device for one Machine");
        stack
    })
    .await;
}
