//! What every scenario uses: the environment check, polling, the samples applied into a
//! namespace, the Go peers' binaries, and the names MCM gives its finalizers and labels.

use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use metal_driver::{controller::crd::Machine, provider_id::ProviderId};
use serde_json::{Value, json};

use crate::stack::Stack;

pub const BIN: &str = env!("CARGO_BIN_EXE_metal-driver");
pub const PROJECT: &str = "5d1ef2a4-0000-4000-8000-000000000001";
pub const TOKEN: &str = "sim-token";
pub const CLUSTER_TAG: &str = "kubernetes.io/cluster/shoot--dev--demo";
pub const ROLE_TAG: &str = "kubernetes.io/role/node";
pub const MACHINE_FINALIZER: &str = "machine.sapcloud.io/machine-controller-manager";

/// `Some(kubeconfig)` when the e2e environment is configured.
pub fn e2e_kubeconfig() -> Option<String> {
    if std::env::var("METAL_DRIVER_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set METAL_DRIVER_E2E=1 and KUBECONFIG (hack/e2e.sh does)");
        return None;
    }
    match std::env::var("KUBECONFIG") {
        Ok(k) if !k.is_empty() => Some(k),
        _ => {
            eprintln!("skipped: KUBECONFIG is not set");
            None
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 200 ms until it yields `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn dyn_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version, plural) = match kind {
        "Secret" => ("", "v1", "secrets"),
        "MachineClass" => ("machine.sapcloud.io", "v1alpha1", "machineclasses"),
        "Machine" => ("machine.sapcloud.io", "v1alpha1", "machines"),
        "MachineSet" => ("machine.sapcloud.io", "v1alpha1", "machinesets"),
        "MachineDeployment" => ("machine.sapcloud.io", "v1alpha1", "machinedeployments"),
        other => panic!("no API for kind {other}"),
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Reads `kubernetes/<file>`, moves it (and its Secret references) into `ns`, lets `edit`
/// change it, and server-side applies it. Returns the object's name.
pub async fn apply_sample(
    client: &Client,
    ns: &str,
    file: &str,
    edit: impl FnOnce(&mut Value),
) -> String {
    let text = std::fs::read_to_string(repo_root().join("kubernetes").join(file)).expect("sample");
    let mut obj: Value = serde_saphyr::from_str(&text).expect("sample yaml");
    obj["metadata"]["namespace"] = json!(ns);
    for r in ["secretRef", "credentialsSecretRef"] {
        if obj.get(r).is_some() {
            obj[r]["namespace"] = json!(ns);
        }
    }
    edit(&mut obj);
    let kind = obj["kind"].as_str().expect("kind").to_owned();
    let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
    let api = dyn_api(client, ns, &kind);
    api.patch(
        &name,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {file} as {kind}/{name}: {e}"));
    name
}

/// `(manager, subresource)` of each managedFields entry.
pub fn managers(meta: &kube::api::ObjectMeta) -> Vec<(String, String)> {
    meta.managed_fields
        .iter()
        .flatten()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.subresource.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// The device id (as the simulator spells it) inside a ProviderID; empty when it is none.
pub fn uuid_of(provider_id: &str) -> String {
    ProviderId::parse(provider_id).map_or_else(|_| String::new(), |id| id.uuid().to_string())
}

pub async fn apply_class_and_secret(client: &Client, ns: &str) -> String {
    apply_sample(client, ns, "secret.yaml", |_| {}).await;
    apply_sample(client, ns, "machine-class.yaml", |_| {}).await
}

/// Waits (`timeout` at most) until Machine `name` is in `phase`; returns it.
pub async fn machine_in_phase(
    machines: &Api<Machine>,
    name: &str,
    phase: &str,
    timeout: Duration,
) -> Machine {
    eventually(&format!("{name} {phase}"), timeout, || async move {
        machines.get(name).await.ok().filter(|m| m.phase() == phase)
    })
    .await
}

/// Waits (90 s at most) until Machine `name` is in `phase`.
pub async fn wait_phase(stack: &Stack, name: &str, phase: &str) {
    machine_in_phase(&stack.machines(), name, phase, Duration::from_secs(90)).await;
}

/// Waits (`timeout` at most) until Machine `name` is gone.
pub async fn machine_gone(machines: &Api<Machine>, name: &str, timeout: Duration) {
    eventually(&format!("{name} gone"), timeout, || async move {
        machines.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Polls Machine `name` every 100 ms until it is Running (60 s at most), recording each phase
/// it shows on the way (to catch Pending before Running); `context` ends the failure message.
pub async fn phases_until_running(
    machines: &Api<Machine>,
    name: &str,
    context: &str,
) -> (Machine, Vec<String>) {
    let mut phases = Vec::<String>::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = machines.get(name).await {
            let p = m.phase().to_owned();
            if phases.last() != Some(&p) {
                phases.push(p.clone());
            }
            if p == "Running" {
                return (m, phases);
            }
        }
        assert!(
            Instant::now() < deadline,
            "Machine not Running within 60s; phases seen {phases:?}{context}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const NODE_FINALIZER: &str = "node.machine.sapcloud.io/machine-controller";
pub const MACHINE_NAME_LABEL: &str = "node.gardener.cloud/machine-name";

/// A Go binary of the environment: `$<env>`, else what `hack/kube-bins.sh` builds as `name`.
pub fn kube_bin(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env)
        && !p.is_empty()
    {
        return p.into();
    }
    let out = std::process::Command::new(repo_root().join("hack/kube-bins.sh"))
        .args(["--quiet", name])
        .output()
        .expect("run hack/kube-bins.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("hack/kube-bins.sh gave no {name}: {text}"))
}
