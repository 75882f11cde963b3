//! The proof that a Machine never got a device, so that deleting it needs no API call at all.
//!
//! A Machine without `spec.providerID` may still have a device: a CreateMachine whose answer
//! was lost (a timeout, a driver or controller restart mid-call) can have made one that only a
//! lookup by name finds, so by default the delete flow asks the driver (one read-only lookup).
//! The annotation [`NO_CREATE_SENT`] makes the lookup unnecessary. It holds one fact: **no
//! CreateMachine that could reach the API has been sent for this Machine.** The controller
//! keeps it true by construction:
//! - it is written only together with the Machine finalizer, before which no create is ever
//!   sent, and only when a create would be refused before any API call (the class's Secrets
//!   lack `userData`, or the driver, being this build, would refuse the request:
//!   [`crate::cmi::preflight`]), so Machines of a sound class pay no extra write;
//! - while it is present, a create the driver would refuse is not sent at all (the refusal is
//!   recorded as the driver would answer it), and any other create is sent only after the
//!   annotation has been removed (one write, only when a broken class was mended).
//!
//! A Machine whose finalizer came from an earlier version, from MCM, or while its class was
//! sound has no annotation and keeps the lookup. The finalizer's removal carries the
//! resourceVersion read, so a stale copy that still shows the annotation after it was removed
//! cannot release the Machine.

use kube::{Api, ResourceExt, api::Patch};
use serde_json::json;

use crate::cmi::calls::CallError;

use super::{
    context::Context,
    crd::{Machine, MachineClass},
    error::{Error, Result},
    field_manager, secrets,
};

/// Present (value `"true"`) while no CreateMachine that could reach the API was sent.
pub const NO_CREATE_SENT: &str = "metal.driver.cmi/no-create-sent";

/// Whether the Machine carries the proof.
pub fn marked(m: &Machine) -> bool {
    m.annotations().contains_key(NO_CREATE_SENT)
}

/// Why a create for `m` with `class` as the caches show it now would be refused before any
/// API call, or `None` when it may reach the API.
pub fn refusal(m: &Machine, class: &MachineClass, ctx: &Context) -> Option<String> {
    let name = m.name_any();
    let merged = secrets::load(&ctx.caches, class);
    match merged.for_create(&name) {
        Err(e) => Some(e.to_string()),
        Ok(secrets) => {
            let provider_spec = serde_json::to_vec(&class.provider_spec).unwrap_or_default();
            ctx.preflight
                .create_refusal(&name, &provider_spec, &secrets)
                .map(|e: CallError| e.to_string())
        }
    }
}

/// The annotation's entry for a metadata patch.
pub fn set() -> serde_json::Value {
    json!({ NO_CREATE_SENT: "true" })
}

/// Removes the annotation; must succeed before a create that may reach the API is sent.
pub async fn clear(m: &Machine, ctx: &Context) -> Result<()> {
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let patch = json!({"metadata": {"annotations": { NO_CREATE_SENT: null }}});
    let written = api
        .patch(&m.name_any(), &field_manager::patch(), &Patch::Merge(patch))
        .await
        .map_err(Error::kube("remove the no-create-sent annotation"))?;
    ctx.own_writes.wrote(&written.metadata);
    tracing::info!(machine = %m.name_any(), "create may reach the API now; no-create-sent annotation removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use kube::{core::DeserializeGuard, runtime::controller::Action};
    use serde_json::{Value, json};

    use super::*;
    use crate::controller::{
        fixtures::{Call, caches, context_with, mock_client},
        machine::{MACHINE_FINALIZER, reconcile},
    };

    const MACHINES: &str = "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machines";

    fn machine(extra_meta: Value) -> Value {
        let mut meta = json!({"name": "m", "namespace": "ns", "resourceVersion": "1",
                              "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string()});
        meta.as_object_mut()
            .unwrap()
            .extend(extra_meta.as_object().unwrap().clone());
        json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine", "metadata": meta,
               "spec": {"class": {"kind": "MachineClass", "name": "c"}}})
    }

    fn marked(extra_meta: Value) -> Value {
        let mut meta =
            json!({"finalizers": [MACHINE_FINALIZER], "annotations": {NO_CREATE_SENT: "true"}});
        meta.as_object_mut()
            .unwrap()
            .extend(extra_meta.as_object().unwrap().clone());
        machine(meta)
    }

    /// Class `c` (finalized) with a providerSpec the driver accepts, or with one field
    /// misspelt, and its Secret `s` (token and userData).
    fn class_and_secret(broken: bool) -> (Value, Value) {
        let machine_type = if broken { "machineTyp" } else { "machineType" };
        let class = json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
            "metadata": {"name": "c", "namespace": "ns", "finalizers": [MACHINE_FINALIZER]},
            "providerSpec": {"projectID": "5c4ae4ba-fbd6-4b5b-a8b4-2d9d3a05a1f5", "metro": "sv",
                             machine_type: "c3.small.x86", "OS": "ubuntu_22_04",
                             "tags": ["kubernetes.io/cluster/c1", "kubernetes.io/role/node"]},
            "secretRef": {"name": "s", "namespace": "ns"}});
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"},
                            "data": {"apiToken": "dDBrZW4=", "userData": "I2Nsb3VkLWNvbmZpZw=="}});
        (class, secret)
    }

    fn ctx(client: kube::Client, broken: bool) -> Arc<Context> {
        let (class, secret) = class_and_secret(broken);
        context_with(client, caches(vec![], vec![class], vec![secret], vec![]))
    }

    /// The write of Machine `m`'s metadata (`status: false`) or status, checked by `check`.
    fn write(status: bool, check: impl Fn(&Value) + Send + Sync + 'static) -> Call {
        let path = if status { "m/status" } else { "m" };
        Call::new(
            "PATCH",
            format!("{MACHINES}/{path}?"),
            200,
            machine(json!({})),
        )
        .body(check)
    }

    fn guard(v: Value) -> Arc<DeserializeGuard<Machine>> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    /// The finalizer write marks a Machine whose create would be refused, and only such a
    /// Machine: a sound class costs no annotation (and no extra write).
    #[tokio::test]
    async fn the_finalizer_write_marks_only_a_machine_whose_create_would_be_refused() {
        for broken in [true, false] {
            let (client, mock) = mock_client(vec![write(false, move |b| {
                assert_eq!(
                    b["metadata"]["finalizers"],
                    json!([MACHINE_FINALIZER]),
                    "{b}"
                );
                assert_eq!(b["metadata"]["resourceVersion"], "1", "{b}");
                let mark = &b["metadata"]["annotations"][NO_CREATE_SENT];
                assert_eq!(mark.as_str() == Some("true"), broken, "{b}");
            })]);
            let action = reconcile(guard(machine(json!({}))), ctx(client, broken))
                .await
                .unwrap();
            assert_eq!(action, Action::await_change());
            mock.await.unwrap();
        }
    }

    /// A marked Machine of a broken class records the driver's refusal without sending the
    /// create (a sent one would fail Unavailable: the fixture's driver is unreachable).
    #[tokio::test]
    async fn a_marked_machine_of_a_broken_class_sends_no_create() {
        let (client, mock) = mock_client(vec![write(true, |b| {
            let op = &b["status"]["lastOperation"];
            assert_eq!(op["errorCode"], "InvalidArgument", "{b}");
            assert!(
                op["description"].as_str().unwrap().contains("machineTyp"),
                "{b}"
            );
            assert_eq!(
                b["status"]["currentStatus"]["phase"], "CrashLoopBackOff",
                "{b}"
            );
        })]);
        let action = reconcile(guard(marked(json!({}))), ctx(client, true))
            .await
            .unwrap();
        // InvalidArgument: MCM's medium retry.
        assert_eq!(action, Action::requeue(Duration::from_secs(180)));
        mock.await.unwrap();
    }

    /// Once the class is mended, the mark is removed before the create is sent.
    #[tokio::test]
    async fn a_mended_class_removes_the_mark_before_the_create() {
        let (client, mock) = mock_client(vec![
            write(false, |b| {
                assert_eq!(
                    b["metadata"]["annotations"],
                    json!({NO_CREATE_SENT: null}),
                    "{b}"
                );
            }),
            // Sent: the unreachable driver answers Unavailable.
            write(true, |b| {
                assert_eq!(
                    b["status"]["lastOperation"]["errorCode"], "Unavailable",
                    "{b}"
                )
            }),
        ]);
        reconcile(guard(marked(json!({}))), ctx(client, false))
            .await
            .unwrap();
        mock.await.unwrap();
    }

    /// Deleting a marked Machine without a ProviderID removes the finalizer and nothing else:
    /// no status write, no driver call, whatever the class says.
    #[tokio::test]
    async fn a_marked_machine_is_released_without_any_call() {
        for broken in [true, false] {
            let (client, mock) = mock_client(vec![write(false, |b| {
                assert_eq!(b["metadata"]["finalizers"], json!([]), "{b}");
                assert_eq!(b["metadata"]["resourceVersion"], "1", "{b}");
            })]);
            let m = marked(json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}));
            let action = reconcile(guard(m), ctx(client, broken)).await.unwrap();
            assert_eq!(action, Action::await_change());
            mock.await.unwrap();
        }
    }

    /// A ProviderID outweighs the mark: the device it names is deleted through the driver
    /// (the flow starts with the Terminating status, as for any Machine).
    #[tokio::test]
    async fn a_machine_with_a_provider_id_is_deleted_through_the_flow() {
        let (client, mock) = mock_client(vec![write(true, |b| {
            assert_eq!(b["status"]["currentStatus"]["phase"], "Terminating", "{b}")
        })]);
        let mut m = marked(json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}));
        m["spec"]["providerID"] = json!("equinixmetal://sv/5c4ae4ba-fbd6-4b5b-a8b4-2d9d3a05a1f5");
        let _ = reconcile(guard(m), ctx(client, false)).await;
        mock.await.unwrap();
    }
}
