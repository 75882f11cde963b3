//! The MachineClass reconciler: the class carries the finalizer
//! `machine.sapcloud.io/machine-controller-manager` exactly while at least one Machine
//! (`spec.class.kind == MachineClass`) refers to it, so a class — and with it the credentials
//! a DeleteMachine needs — cannot disappear under its machines. The machine reconciler waits
//! for this finalizer before creating anything.
//!
//! Machines are listed from the API server, not from a cache, so the decision to drop the
//! finalizer never rests on a stale view. Finalizer writes are merge patches carrying the
//! `resourceVersion` read, so a concurrent change makes them fail (409) and retry rather than
//! overwrite another controller's finalizers.
//!
//! Also here: the mapping of MachineClass and Secret events to the Machines they affect.

use std::{sync::Arc, time::Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{controller::Action, reflector::ObjectRef, reflector::Store},
};
use serde_json::json;

use super::{
    context::Context,
    crd::{Machine, MachineClass},
    error::{Error, Result},
    machine::MACHINE_FINALIZER,
    secrets,
};

/// Whether `m` refers to the class `class_name`.
pub fn refers_to(m: &Machine, class_name: &str) -> bool {
    m.spec.class.kind == "MachineClass" && m.spec.class.name == class_name
}

/// The finalizer list a class should have, or `None` when it already has the right one.
/// A class being deleted never gains the finalizer.
pub fn wanted_finalizers(class: &MachineClass, referenced: bool) -> Option<Vec<String>> {
    let current = class.finalizers();
    let has = current.iter().any(|f| f == MACHINE_FINALIZER);
    let deleting = class.metadata.deletion_timestamp.is_some();
    match (referenced, has) {
        (true, false) if !deleting => {
            let mut next = current.to_vec();
            next.push(MACHINE_FINALIZER.to_owned());
            Some(next)
        }
        (false, true) => Some(
            current
                .iter()
                .filter(|f| *f != MACHINE_FINALIZER)
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

/// Entry point for kube-runtime.
pub async fn reconcile(class: Arc<MachineClass>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let _running = ctx.metrics.workqueue.started(
        "machineclass",
        super::machine_metrics::queue_key(class.as_ref()),
    );
    let result = reconcile_inner(&class, &ctx).await;
    ctx.metrics
        .controller
        .reconciled("machineclass", started.elapsed());
    result
}

async fn reconcile_inner(class: &MachineClass, ctx: &Context) -> Result<Action> {
    let name = class.name_any();
    let machines: Api<DeserializeGuard<Machine>> =
        Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let referenced = machines
        .list(&Default::default())
        .await
        .map_err(Error::kube("list Machines"))?
        .into_iter()
        .any(|g| g.0.as_ref().is_ok_and(|m| refers_to(m, &name)));
    if let Some(finalizers) = wanted_finalizers(class, referenced) {
        let api: Api<MachineClass> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": class.resource_version()}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube("patch MachineClass finalizers"))?;
        tracing::info!(class = %name, referenced, "MachineClass finalizer updated");
    }
    // MCM resyncs classes every 10 minutes.
    Ok(Action::requeue(ctx.config.retry.long))
}

/// kube-runtime's error policy for classes.
pub fn error_policy(class: Arc<MachineClass>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .controller
        .failed("machineclass", error.metric_label());
    ctx.metrics.workqueue.retried("machineclass");
    let after = error.retry_after(&ctx.config.retry);
    tracing::warn!(class = %class.name_any(), %error, retry_after = ?after, "class reconcile failed");
    Action::requeue(after)
}

/// Machine event → its class (for the class reconciler).
pub fn class_of_machine(guard: DeserializeGuard<Machine>) -> Option<ObjectRef<MachineClass>> {
    let m = guard.0.ok()?;
    let ns = m.namespace()?;
    (m.spec.class.kind == "MachineClass" && !m.spec.class.name.is_empty())
        .then(|| ObjectRef::new(&m.spec.class.name).within(&ns))
}

/// Class event → the Machines using it (for the machine reconciler).
pub fn machines_of_class(
    machines: &Store<DeserializeGuard<Machine>>,
    class_name: &str,
) -> Vec<ObjectRef<DeserializeGuard<Machine>>> {
    machines
        .state()
        .iter()
        .filter(|g| g.0.as_ref().is_ok_and(|m| refers_to(m, class_name)))
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// Secret event → the Machines of every class that refers to the Secret.
pub fn machines_of_secret(
    machines: &Store<DeserializeGuard<Machine>>,
    classes: &Store<MachineClass>,
    secret: &PartialObjectMeta<Secret>,
    namespace: &str,
) -> Vec<ObjectRef<DeserializeGuard<Machine>>> {
    let secret_name = secret.name_any();
    classes
        .state()
        .iter()
        .filter(|c| secrets::referenced_names(c, namespace).any(|n| n == secret_name))
        .flat_map(|c| machines_of_class(machines, &c.name_any()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::crd::{ClassSpec, MachineSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn class(finalizers: &[&str], deleting: bool) -> MachineClass {
        let mut c = MachineClass::default();
        c.metadata.name = Some("c".into());
        c.metadata.finalizers = Some(finalizers.iter().map(|s| (*s).to_owned()).collect());
        if deleting {
            c.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        }
        c
    }

    #[test]
    fn finalizer_follows_references() {
        let other = "example.com/other";
        assert_eq!(
            wanted_finalizers(&class(&[other], false), true),
            Some(vec![other.into(), MACHINE_FINALIZER.into()])
        );
        assert_eq!(
            wanted_finalizers(&class(&[other, MACHINE_FINALIZER], false), true),
            None
        );
        assert_eq!(
            wanted_finalizers(&class(&[other, MACHINE_FINALIZER], true), false),
            Some(vec![other.into()])
        );
        assert_eq!(
            wanted_finalizers(&class(&[], true), true),
            None,
            "a class being deleted gains nothing"
        );
        assert_eq!(
            wanted_finalizers(&class(&[MACHINE_FINALIZER], true), true),
            None,
            "kept while referenced"
        );
        assert_eq!(wanted_finalizers(&class(&[], false), false), None);
    }

    const MACHINES: &str = "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machines";
    const CLASSES: &str = "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machineclasses";

    fn machine_list(class: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineList", "metadata": {},
            "items": [
                {"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
                 "metadata": {"name": "m", "namespace": "ns"},
                 "spec": {"class": {"kind": "MachineClass", "name": class}}},
                {"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
                 "metadata": {"name": "broken", "namespace": "ns"}, "spec": {"class": 7}}
            ]
        })
    }

    fn class_json(finalizers: &[&str]) -> serde_json::Value {
        serde_json::json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
            "metadata": {"name": "c", "namespace": "ns", "resourceVersion": "7", "finalizers": finalizers}})
    }

    #[tokio::test]
    async fn referenced_class_gains_the_finalizer_guarded_by_resource_version() {
        use crate::controller::fixtures::{Call, context, mock_client};
        let (client, mock) = mock_client(vec![
            Call::new("GET", MACHINES, 200, machine_list("c")),
            Call::new(
                "PATCH",
                format!("{CLASSES}/c?"),
                200,
                class_json(&[MACHINE_FINALIZER]),
            )
            .body(|b| {
                assert_eq!(
                    b["metadata"]["finalizers"],
                    serde_json::json!([MACHINE_FINALIZER])
                );
                assert_eq!(b["metadata"]["resourceVersion"], "7");
            }),
        ]);
        let class: MachineClass = serde_json::from_value(class_json(&[])).unwrap();
        let action = reconcile(Arc::new(class), context(client)).await.unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(600)));
        mock.await.unwrap();
    }

    #[tokio::test]
    async fn unreferenced_class_loses_only_our_finalizer() {
        use crate::controller::fixtures::{Call, context, mock_client};
        let other = "example.com/keep";
        let (client, mock) = mock_client(vec![
            Call::new("GET", MACHINES, 200, machine_list("another-class")),
            Call::new("PATCH", format!("{CLASSES}/c?"), 200, class_json(&[other]))
                .body(move |b| assert_eq!(b["metadata"]["finalizers"], serde_json::json!([other]))),
        ]);
        let class: MachineClass =
            serde_json::from_value(class_json(&[other, MACHINE_FINALIZER])).unwrap();
        reconcile(Arc::new(class), context(client)).await.unwrap();
        mock.await.unwrap();
    }

    #[test]
    fn references_need_the_machineclass_kind() {
        let mut m = Machine::new("m", MachineSpec::default());
        m.spec.class = ClassSpec {
            kind: "MachineClass".into(),
            name: "c".into(),
            api_group: None,
        };
        assert!(refers_to(&m, "c"));
        assert!(!refers_to(&m, "d"));
        m.spec.class.kind = "AWSMachineClass".into();
        assert!(!refers_to(&m, "c"));
    }
}
