//! The one-container sidecar: kubernetes/deployment.yaml's provider container, as Gardener's
//! stock helper shapes it, run with its exact arguments against the harness.

use std::{path::Path, process::Stdio, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use metal_driver::{
    controller::crd::Machine,
    testkit::child::{Child, Terminated},
};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::{
    stack::{Opts, create_namespace, list_devices, log_dir, spawn_sim, wait_ok},
    support::{
        BIN, TOKEN, apply_class_and_secret, apply_sample, e2e_kubeconfig, eventually, free_port,
        machine_gone, phases_until_running, repo_root,
    },
};

/// The provider container's name in `kubernetes/deployment.yaml` (Gardener's
/// `machine-controller-manager-<provider name>`).
const SIDECAR_CONTAINER: &str = "machine-controller-manager-provider-equinix-metal";
/// Where a Pod finds its service account (what `inClusterConfig` reads).
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where Gardener mounts the shoot's generic kubeconfig.
const GENERIC_KUBECONFIG_DIR: &str = "/var/run/secrets/gardener.cloud/shoot/generic-kubeconfig";

/// The provider container of `kubernetes/deployment.yaml`: its arguments (it must have no
/// command: Gardener's helper sets none).
fn sidecar_container_args() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("kubernetes/deployment.yaml"))
        .expect("kubernetes/deployment.yaml");
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).expect("deployment.yaml is YAML");
    for doc in documents {
        if doc["kind"] != "Deployment" {
            continue;
        }
        let containers = doc["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        let c = containers
            .iter()
            .find(|c| c["name"] == SIDECAR_CONTAINER)
            .unwrap_or_else(|| panic!("no container {SIDECAR_CONTAINER} in deployment.yaml"));
        assert!(
            c.get("command").is_none(),
            "the helper sets no command: {c}"
        );
        return c["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string arg").to_owned())
            .collect();
    }
    panic!("no Deployment in kubernetes/deployment.yaml");
}

/// `kubernetes/rbac.yaml`'s objects moved into `ns` (namespaced ones, and the subjects of
/// every binding); cluster-wide and kube-system names get a `-<ns>` suffix so parallel runs
/// do not share them. Returns what was created outside `ns`, for clean-up.
async fn apply_rbac(client: &Client, ns: &str) -> Vec<(ApiResource, Option<String>, String)> {
    let text = std::fs::read_to_string(repo_root().join("kubernetes/rbac.yaml")).expect("rbac");
    let mut outside = Vec::new();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("rbac.yaml is YAML");
    for mut obj in documents {
        if obj.is_null() {
            continue;
        }
        let kind = obj["kind"].as_str().expect("kind").to_owned();
        let (group, plural, cluster) = match kind.as_str() {
            "ServiceAccount" => ("", "serviceaccounts", false),
            "Role" => ("rbac.authorization.k8s.io", "roles", false),
            "RoleBinding" => ("rbac.authorization.k8s.io", "rolebindings", false),
            "ClusterRole" => ("rbac.authorization.k8s.io", "clusterroles", true),
            "ClusterRoleBinding" => ("rbac.authorization.k8s.io", "clusterrolebindings", true),
            other => panic!("rbac.yaml: unexpected kind {other}"),
        };
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", &kind), plural);
        let own_ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
        let moved = own_ns.as_deref() == Some("default");
        if moved {
            obj["metadata"]["namespace"] = json!(ns);
        }
        if cluster || !moved {
            let name = format!("{}-{ns}", obj["metadata"]["name"].as_str().expect("name"));
            obj["metadata"]["name"] = json!(name);
        }
        if let Some(role_ref) = obj.get_mut("roleRef")
            && (role_ref["kind"] == "ClusterRole" || !moved)
        {
            let name = format!("{}-{ns}", role_ref["name"].as_str().expect("roleRef"));
            role_ref["name"] = json!(name);
        }
        if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
            for s in subjects {
                s["namespace"] = json!(ns);
            }
        }
        let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
        let target_ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
        let api: Api<DynamicObject> = match &target_ns {
            Some(n) => Api::namespaced_with(client.clone(), n, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply rbac.yaml {kind}/{name}: {e}"));
        if target_ns.as_deref() != Some(ns) {
            outside.push((ar, target_ns, name));
        }
    }
    outside
}

/// A token of ServiceAccount `machine-controller-manager` in `ns` (TokenRequest, as the
/// kubelet gets one for a Pod).
async fn service_account_token(client: &Client, ns: &str) -> String {
    use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))
    .expect("TokenRequest");
    let answer: TokenRequest = api
        .create_subresource(
            "token",
            "machine-controller-manager",
            &Default::default(),
            &request,
        )
        .await
        .expect("TokenRequest for machine-controller-manager");
    answer.status.expect("token status").token
}

/// The harness's API server (`host`, `port`) and CA (PEM) from its kubeconfig.
fn apiserver_of(kubeconfig: &str) -> (String, u16, Vec<u8>) {
    use base64::Engine;
    let config = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cluster = config.clusters[0].cluster.clone().expect("cluster");
    let server = cluster.server.expect("server");
    let (host, port) = server
        .strip_prefix("https://")
        .and_then(|rest| rest.trim_end_matches('/').rsplit_once(':'))
        .unwrap_or_else(|| panic!("expected https://HOST:PORT, got {server}"));
    let ca = match (
        cluster.certificate_authority_data,
        cluster.certificate_authority,
    ) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("CA data"),
        (None, Some(path)) => std::fs::read(path).expect("CA file"),
        (None, None) => panic!("the harness kubeconfig has no CA"),
    };
    (host.to_owned(), port.parse().expect("port"), ca)
}

/// Whether this process may make a private mount namespace (root with unshare(1)).
fn can_unshare_mounts() -> bool {
    std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The sidecar process: `metal-driver` with the container's arguments. With mount namespaces
/// it runs as in the Pod: `inClusterConfig` from a service-account token mounted at the
/// kubelet's path, the target kubeconfig at Gardener's path (both on a tmpfs private to the
/// process, so nothing on this machine changes). Returns the child, its side-port URL, and
/// whether it ran in-cluster style.
async fn spawn_sidecar(
    args: &[String],
    files: &Path,
    apiserver: (&str, u16),
    metal_api_url: &str,
    logs: &Path,
) -> (Child, String, bool) {
    let in_cluster = can_unshare_mounts();
    let mut command = if in_cluster {
        // /var/run is /run: a fresh tmpfs there, holding only what a Pod would see.
        let script = format!(
            "set -e; mount -t tmpfs -o size=1m,mode=0755 tmpfs /run; \
             mkdir -p {SERVICE_ACCOUNT_DIR} {GENERIC_KUBECONFIG_DIR}; \
             cp \"$1/token\" \"$1/ca.crt\" \"$1/namespace\" {SERVICE_ACCOUNT_DIR}/; \
             cp \"$1/kubeconfig\" {GENERIC_KUBECONFIG_DIR}/kubeconfig; \
             shift; exec \"$@\""
        );
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(files)
            .arg(BIN)
            .args(args);
        c
    } else {
        eprintln!(
            "sidecar: no mount namespaces here; the kubeconfig flags point at the harness's \
             kubeconfig instead of the in-cluster paths"
        );
        let kubeconfig = files.join("kubeconfig");
        let mut c = Command::new(BIN);
        c.args(args.iter().map(|a| {
            if a.starts_with("--control-kubeconfig=") {
                format!("--control-kubeconfig={}", kubeconfig.display())
            } else if a.starts_with("--target-kubeconfig=") {
                format!("--target-kubeconfig={}", kubeconfig.display())
            } else {
                a.clone()
            }
        }));
        c
    };
    // A Pod's environment: the API server's service address, and METAL_API_URL (the only
    // setting the driver reads from outside its arguments). No KUBECONFIG, no log settings:
    // the defaults are what Gardener gets.
    command
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .env_remove("METAL_DRIVER_LOG_LEVEL")
        .env_remove("METAL_DRIVER_LOG_FORMAT")
        .env("KUBERNETES_SERVICE_HOST", apiserver.0)
        .env("KUBERNETES_SERVICE_PORT", apiserver.1.to_string())
        .env("METAL_API_URL", metal_api_url);
    let log = logs.join("sidecar.log");
    let child = Child::spawn(command, "sidecar", &log, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e} (see {})", logs.display()));
    let addr = child
        .url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("unexpected first line: listening on {}", child.url));
    let port = addr.rsplit_once(':').expect("host:port").1;
    let url = format!("http://127.0.0.1:{port}");
    (child, url, in_cluster)
}

/// The Deployment's provider container, with its exact arguments (only `--namespace` moved to
/// the test's namespace and `--port` to a free port), started the way a Pod starts it: a
/// Machine from the samples goes Pending → Running and, deleted, goes away with its device;
/// health, readiness and every metric (the controller's and the driver's) are on that one
/// port; the logs are Gardener-shaped JSON without secrets; SIGTERM ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn g_one_container_sidecar_from_the_deployment() {
    let Some(kubeconfig) = e2e_kubeconfig() else {
        return;
    };
    let client = Client::try_default().await.expect("kube client");
    let ns = create_namespace(&client, "g").await;
    let logs = log_dir(&ns);
    let outside = apply_rbac(&client, &ns).await;

    // The Pod's files: service-account token, CA and namespace; the target kubeconfig.
    let files = tempfile::tempdir().expect("tempdir");
    let (host, port, ca) = apiserver_of(&kubeconfig);
    std::fs::write(
        files.path().join("token"),
        service_account_token(&client, &ns).await,
    )
    .expect("token");
    std::fs::write(files.path().join("ca.crt"), &ca).expect("ca");
    std::fs::write(files.path().join("namespace"), &ns).expect("namespace");
    std::fs::copy(&kubeconfig, files.path().join("kubeconfig")).expect("kubeconfig");

    let container_args = sidecar_container_args();
    let side_port = free_port();
    let args: Vec<String> = container_args
        .iter()
        .map(|a| {
            if a.starts_with("--namespace=") {
                format!("--namespace={ns}")
            } else if a.starts_with("--port=") {
                format!("--port={side_port}")
            } else {
                a.clone()
            }
        })
        .collect();
    assert!(
        args.iter()
            .any(|a| a == "--control-kubeconfig=inClusterConfig")
            && args.iter().any(|a| a == "--v=3")
            && !args.iter().any(|a| a.starts_with("--cmi-endpoint")),
        "the container runs the one-process form: {args:?}"
    );

    let sim = spawn_sim(&logs, &Opts::default(), &kubeconfig).await;
    let (sidecar, url, in_cluster) =
        spawn_sidecar(&args, files.path(), (&host, port), &sim.url, &logs).await;
    eprintln!(
        "g: sidecar on {url} (in-cluster config: {in_cluster}); logs in {}",
        logs.display()
    );
    let http = metal_driver::metal::tls::http_client_builder()
        .build()
        .unwrap();
    wait_ok(
        &http,
        "sidecar /healthz",
        &format!("{url}/healthz"),
        Duration::from_secs(30),
    )
    .await;
    wait_ok(
        &http,
        "sidecar /readyz",
        &format!("{url}/readyz"),
        Duration::from_secs(30),
    )
    .await;

    apply_class_and_secret(&client, &ns).await;
    let name = format!("{ns}-m1");
    apply_sample(&client, &ns, "machine.yaml", |m| {
        m["metadata"]["name"] = json!(name)
    })
    .await;
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let logs_at = format!(" (logs in {})", logs.display());
    let (running, phases) = phases_until_running(&machines, &name, &logs_at).await;
    let pid = running.provider_id().expect("providerID").to_owned();
    assert!(pid.starts_with("equinixmetal://"), "{pid}");

    // One port, one registry: the controller's series and the driver's (MCM's cloud API
    // families and the gRPC server's) together.
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for want in [
        "metal_driver_controller_reconciles_total{controller=\"machine\"}",
        "mcm_cloud_api_requests_total{provider=\"equinixmetal\"",
        "mcm_cloud_api_driver_request_duration_seconds_count{provider=\"equinixmetal\",operation=\"create_machine\"}",
        "grpc_server_handled_total{grpc_service=\"cmi.v1.Machine\",grpc_method=\"CreateMachine\",grpc_code=\"OK\"} 1",
    ] {
        assert!(
            metrics.contains(want),
            "/metrics on {url} lacks {want}:\n{metrics}"
        );
    }

    machines
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete machine");
    machine_gone(&machines, &name, Duration::from_secs(60)).await;
    eventually("device gone", Duration::from_secs(30), || async {
        list_devices(&http, &sim.url)
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;

    // SIGTERM: the controller releases its Lease, the in-process driver stops, exit 0.
    let exit = match sidecar.terminate(Duration::from_secs(30)).await {
        Terminated::Exited(exit, _) => exit,
        other => panic!("the sidecar exits within 30s of SIGTERM: {other:?}"),
    };
    assert!(exit.success(), "exit status after SIGTERM: {exit}");

    // Gardener's log shape by default, and no secret in it.
    let text = std::fs::read_to_string(logs.join("sidecar.log")).expect("sidecar log");
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        for key in ["level", "ts", "logger", "msg"] {
            assert!(v.get(key).is_some_and(Value::is_string), "no {key}: {line}");
        }
        lines += 1;
    }
    assert!(lines > 3, "the sidecar logged its work:\n{text}");
    assert!(text.contains(&name), "the logs name the Machine:\n{text}");
    for secret in [TOKEN, "hello from metal-driver"] {
        assert!(!text.contains(secret), "a secret in the logs: {secret}");
    }

    drop(sim);
    let dp = DeleteParams::default();
    for (ar, target_ns, obj) in outside {
        let api: Api<DynamicObject> = match &target_ns {
            Some(n) => Api::namespaced_with(client.clone(), n, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let _ = api.delete(&obj, &dp).await;
    }
    let _ = Api::<Namespace>::all(client.clone()).delete(&ns, &dp).await;
    eprintln!("g: phases {phases:?}; {lines} JSON log lines");
}
