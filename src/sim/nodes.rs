//! Node-join stand-in (`metal-driver sim --register-nodes-kubeconfig PATH`): there is no
//! kubelet on a simulated device, so the simulator plays its part for the machine
//! controller. When a device becomes `active`, a Ready `Node` named after its hostname with
//! `spec.providerID: equinixmetal://<uuid>` is created in the cluster of PATH; when the
//! device is deleted (or leaves `active` for deprovisioning/failure), that Node is deleted.
//!
//! The registrar observes the simulator only through a snapshot function (every device,
//! as `GET` would show it), polled every [`POLL`]; it never changes device state. Nodes it
//! creates carry the label [`SIMULATED_LABEL`], and only such Nodes are ever deleted, so a
//! real Node of the same name is never removed. Conditions are refreshed every
//! [`HEARTBEAT`] (their `lastHeartbeatTime`), so a kube-controller-manager in the cluster
//! does not mark the Nodes NotReady for a missing kubelet heartbeat within its grace period.
//!
//! Writes use server-side apply (field manager `metal-driver-sim`), so creating and
//! re-registering after a restart are the same call.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metal::types::{Device, DeviceState};

/// How often the simulator's devices are looked at.
pub const POLL: Duration = Duration::from_millis(250);
/// How often the conditions of registered Nodes are refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Label on every Node the simulator registers.
pub const SIMULATED_LABEL: &str = "sim.metal-driver.io/simulated";
/// The field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "metal-driver-sim";

/// Why the registrar could not start.
#[derive(Debug, thiserror::Error)]
#[error("--register-nodes-kubeconfig {path:?}: {reason}")]
pub struct NodesError {
    path: String,
    reason: String,
}

/// The Nodes that should exist: hostname → device UUID of every `active` device with a
/// hostname. When two active devices share a hostname, the one listed first wins (the
/// simulator lists in creation order).
pub fn desired(devices: &[Device]) -> BTreeMap<String, Uuid> {
    let mut out = BTreeMap::new();
    for d in devices {
        if let (Some(DeviceState::Active), Some(host), Some(id)) =
            (d.state, d.hostname.as_deref(), d.id)
            && !host.is_empty()
        {
            out.entry(host.to_owned()).or_insert(id);
        }
    }
    out
}

/// A client for the cluster named by a kubeconfig path.
pub async fn client_from(path: &str) -> Result<Client, NodesError> {
    let fail = |reason: String| NodesError {
        path: path.to_owned(),
        reason,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    Client::try_from(config).map_err(|e| fail(e.to_string()))
}

fn node_manifest(host: &str, id: Uuid) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": host,
            "labels": {
                SIMULATED_LABEL: "true",
                "kubernetes.io/hostname": host,
                "kubernetes.io/os": "linux",
            },
        },
        "spec": { "providerID": format!("equinixmetal://{id}") },
    })
}

fn node_status(host: &str, now: Timestamp) -> serde_json::Value {
    let t = serde_json::to_value(Time(now)).unwrap_or_default();
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": t, "lastTransitionTime": t,
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": host },
        "status": {
            "conditions": [
                cond("Ready", "True", "KubeletReady", "simulated by metal-driver sim"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
            ],
            "addresses": [{ "type": "Hostname", "address": host }],
        },
    })
}

async fn register(api: &Api<Node>, host: &str, id: Uuid) -> Result<(), kube::Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(host, &pp, &Patch::Apply(node_manifest(host, id)))
        .await?;
    heartbeat(api, host).await
}

async fn heartbeat(api: &Api<Node>, host: &str) -> Result<(), kube::Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(
        host,
        &pp,
        &Patch::Apply(node_status(host, Timestamp::now())),
    )
    .await?;
    Ok(())
}

async fn unregister(api: &Api<Node>, host: &str) -> Result<(), kube::Error> {
    match api.get_opt(host).await? {
        Some(node)
            if node
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(SIMULATED_LABEL)) =>
        {
            match api.delete(host, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        }
        _ => Ok(()),
    }
}

/// Keeps the cluster's Nodes in step with the simulator's active devices until `stop`.
/// `snapshot` returns every device (as the API would show it at that moment). API errors are
/// logged and retried on the next poll.
pub async fn run(
    client: Client,
    snapshot: impl Fn() -> Vec<Device> + Send + Sync,
    stop: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let mut registered: BTreeMap<String, Uuid> = BTreeMap::new();
    let mut last_heartbeat = tokio::time::Instant::now();
    tracing::info!("registering a Node for every active simulated device");
    loop {
        let want = desired(&snapshot());
        for (host, id) in &want {
            if registered.get(host) == Some(id) {
                continue;
            }
            match register(&api, host, *id).await {
                Ok(()) => {
                    tracing::info!(node = %host, device = %id, "Node registered for active device");
                    registered.insert(host.clone(), *id);
                }
                Err(error) => {
                    tracing::warn!(node = %host, %error, "registering Node failed; retrying")
                }
            }
        }
        let gone: BTreeSet<String> = registered
            .keys()
            .filter(|h| !want.contains_key(*h))
            .cloned()
            .collect();
        for host in gone {
            match unregister(&api, &host).await {
                Ok(()) => {
                    tracing::info!(node = %host, "Node removed: its device is gone");
                    registered.remove(&host);
                }
                Err(error) => {
                    tracing::warn!(node = %host, %error, "removing Node failed; retrying")
                }
            }
        }
        if last_heartbeat.elapsed() >= HEARTBEAT {
            last_heartbeat = tokio::time::Instant::now();
            for host in registered.keys() {
                if let Err(error) = heartbeat(&api, host).await {
                    tracing::debug!(node = %host, %error, "Node heartbeat failed");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(host: Option<&str>, state: DeviceState, n: u128) -> Device {
        Device {
            id: Some(Uuid::from_u128(n)),
            hostname: host.map(str::to_owned),
            state: Some(state),
            ..Default::default()
        }
    }

    #[test]
    fn only_active_devices_with_a_hostname_get_nodes() {
        let devices = vec![
            device(Some("a"), DeviceState::Active, 1),
            device(Some("b"), DeviceState::Provisioning, 2),
            device(Some("c"), DeviceState::Deprovisioning, 3),
            device(None, DeviceState::Active, 4),
            device(Some("a"), DeviceState::Active, 5),
            device(Some("f"), DeviceState::Failed, 6),
            device(Some("p"), DeviceState::PoweringOff, 7),
        ];
        let want = desired(&devices);
        assert_eq!(want.len(), 1);
        assert_eq!(want["a"], Uuid::from_u128(1));
    }

    #[test]
    fn manifests_carry_provider_id_label_and_ready() {
        let m = node_manifest("m1", Uuid::from_u128(1));
        assert_eq!(
            m["spec"]["providerID"],
            "equinixmetal://00000000-0000-0000-0000-000000000001"
        );
        assert_eq!(m["metadata"]["labels"][SIMULATED_LABEL], "true");
        let s = node_status("m1", "2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(s["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(s["status"]["conditions"][0]["status"], "True");
        assert_eq!(
            s["status"]["conditions"][0]["lastHeartbeatTime"],
            "2026-01-01T00:00:00Z"
        );
    }
}
