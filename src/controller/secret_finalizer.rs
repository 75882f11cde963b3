//! The Secret finalizer `machine.sapcloud.io/machine-controller`, as MCM's machine controller
//! keeps it: every Secret of `--namespace` that a MachineClass refers to (`secretRef` or
//! `credentialsSecretRef`) carries it, and loses it once no class does.
//!
//! Why it matters: Gardener's Worker deletion waits for this finalizer on the class Secrets
//! before it labels the Machines `force-deletion` and deletes the MachineDeployments. The
//! finalizer also keeps the credentials a DeleteMachine needs until the last class using them
//! is gone, so a Secret deleted early cannot strand a device.
//!
//! Every Secret is re-checked every 10 minutes (MCM's resync), and at once when it changes or
//! a class changes. The classes are listed from the API server for each decision (a cache of
//! classes, updated by a watch of its own, can lag behind the class event that triggered the
//! check, and the decision would then wait for the next resync). Writes are merge patches
//! carrying the `resourceVersion` read, so a concurrent change of the Secret's finalizers
//! fails (409) and is retried instead of overwriting another controller's.
//!
//! Only metadata is watched: Secret data never reaches this controller.

use std::{sync::Arc, time::Duration, time::Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::Patch,
    core::PartialObjectMeta,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    context::Context,
    crd::MachineClass,
    error::{Error, Result},
    field_manager, secrets,
};

/// MCM's finalizer name on Secrets (not the `-manager` one Machines and classes carry).
pub const SECRET_FINALIZER: &str = "machine.sapcloud.io/machine-controller";

/// How often every Secret is looked at again without an event (MCM: 10 minutes).
pub const RESYNC: Duration = Duration::from_secs(600);

/// Whether any of `classes` refers to the Secret `name` in `namespace`.
pub fn is_referenced<'a>(
    classes: impl IntoIterator<Item = &'a MachineClass>,
    name: &str,
    namespace: &str,
) -> bool {
    classes
        .into_iter()
        .any(|c| secrets::referenced_names(c, namespace).any(|n| n == name))
}

/// The finalizer list the Secret should have, or `None` when it already has the right one.
/// A Secret being deleted never gains the finalizer (the API server forbids new finalizers
/// then), but keeps it while referenced.
pub fn wanted_finalizers(
    finalizers: &[String],
    deleting: bool,
    referenced: bool,
) -> Option<Vec<String>> {
    let has = finalizers.iter().any(|f| f == SECRET_FINALIZER);
    match (referenced, has) {
        (true, false) if !deleting => {
            let mut next = finalizers.to_vec();
            next.push(SECRET_FINALIZER.to_owned());
            Some(next)
        }
        (false, true) => Some(
            finalizers
                .iter()
                .filter(|f| *f != SECRET_FINALIZER)
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

/// Entry point for kube-runtime.
pub async fn reconcile(
    secret: Arc<PartialObjectMeta<Secret>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&secret, &ctx).await;
    ctx.metrics
        .controller
        .reconciled("secret", started.elapsed());
    result
}

async fn reconcile_inner(secret: &PartialObjectMeta<Secret>, ctx: &Context) -> Result<Action> {
    let ns = &ctx.config.namespace;
    let name = secret.name_any();
    let deleting = secret.metadata.deletion_timestamp.is_some();
    let api: Api<MachineClass> = Api::namespaced(ctx.client.clone(), ns);
    let live = api
        .list(&Default::default())
        .await
        .map_err(Error::kube("list MachineClasses"))?;
    let referenced = is_referenced(live.items.iter(), &name, ns);
    if let Some(finalizers) = wanted_finalizers(secret.finalizers(), deleting, referenced) {
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": secret.resource_version(),
        }});
        let result = Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .patch_metadata(&name, &field_manager::patch(), &Patch::Merge(patch))
            .await;
        match result {
            Ok(_) => tracing::info!(secret = %name, referenced, "Secret finalizer updated"),
            // Deleted meanwhile: nothing left to hold.
            Err(e) if super::error::is_not_found(&e) => {}
            Err(e) => {
                return Err(Error::Kube {
                    action: "patch Secret finalizers",
                    source: e,
                });
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// kube-runtime's error policy for Secrets.
pub fn error_policy(
    secret: Arc<PartialObjectMeta<Secret>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .controller
        .failed("secret", error.metric_label());
    let after = error.retry_after(&ctx.config.retry);
    tracing::warn!(secret = %secret.name_any(), %error, retry_after = ?after, "Secret reconcile failed");
    Action::requeue(after)
}

/// Runs the Secret controller until `stop`.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let ns = ctx.config.namespace.clone();
    let secrets: Api<PartialObjectMeta<Secret>> = Api::namespaced(ctx.client.clone(), &ns);
    let class_api: Api<MachineClass> = Api::namespaced(ctx.client.clone(), &ns);
    let controller = Controller::new(secrets, watcher::Config::default());
    let secret_store = controller.store();
    let cache = secret_store.clone();
    let task = controller
        .watches(class_api, watcher::Config::default(), move |class| {
            secrets_of_class(&class, &secret_store, &ns)
        })
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    super::until_stopped(task, &stop, cache).await;
}

/// Class event → the Secrets it refers to, and every Secret holding our finalizer (a class
/// that stopped referring to a Secret must release it without waiting for the resync; the
/// event carries only the new references).
fn secrets_of_class(
    class: &MachineClass,
    secrets: &Store<PartialObjectMeta<Secret>>,
    namespace: &str,
) -> Vec<ObjectRef<PartialObjectMeta<Secret>>> {
    let mut names: Vec<String> = secrets::referenced_names(class, namespace)
        .map(str::to_owned)
        .collect();
    names.extend(
        secrets
            .state()
            .iter()
            .filter(|s| s.finalizers().iter().any(|f| f == SECRET_FINALIZER))
            .map(|s| s.name_any()),
    );
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(namespace))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::SecretReference;

    fn class(secret: Option<&str>, credentials: Option<&str>) -> MachineClass {
        let r = |n: Option<&str>| {
            n.map(|n| SecretReference {
                name: Some(n.into()),
                namespace: Some("ns".into()),
            })
        };
        MachineClass {
            secret_ref: r(secret),
            credentials_secret_ref: r(credentials),
            ..Default::default()
        }
    }

    #[test]
    fn both_references_count() {
        let classes = [class(Some("user-data"), None), class(None, Some("creds"))];
        assert!(is_referenced(classes.iter(), "user-data", "ns"));
        assert!(is_referenced(classes.iter(), "creds", "ns"));
        assert!(!is_referenced(classes.iter(), "other", "ns"));
        assert!(!is_referenced(classes.iter(), "creds", "another-namespace"));
    }

    #[test]
    fn finalizer_follows_references() {
        let other = "example.com/keep".to_owned();
        let ours = SECRET_FINALIZER.to_owned();
        assert_eq!(
            wanted_finalizers(std::slice::from_ref(&other), false, true),
            Some(vec![other.clone(), ours.clone()])
        );
        assert_eq!(
            wanted_finalizers(&[other.clone(), ours.clone()], false, true),
            None
        );
        assert_eq!(
            wanted_finalizers(&[other.clone(), ours.clone()], false, false),
            Some(vec![other.clone()])
        );
        assert_eq!(
            wanted_finalizers(std::slice::from_ref(&ours), true, false),
            Some(vec![]),
            "released while being deleted"
        );
        assert_eq!(
            wanted_finalizers(std::slice::from_ref(&ours), true, true),
            None,
            "kept while referenced, even when being deleted"
        );
        assert_eq!(
            wanted_finalizers(&[], true, true),
            None,
            "a Secret being deleted gains nothing"
        );
        assert_eq!(wanted_finalizers(&[other], false, false), None);
        // Not MCM's Machine finalizer: the Secret one has no `-manager` suffix.
        assert_ne!(SECRET_FINALIZER, super::super::machine::MACHINE_FINALIZER);
    }

    const CLASSES: &str = "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machineclasses";
    const SECRETS: &str = "/api/v1/namespaces/ns/secrets";

    fn secret_meta(finalizers: &[&str]) -> PartialObjectMeta<Secret> {
        serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "9",
                         "finalizers": finalizers}
        }))
        .unwrap()
    }

    fn class_list(secret: &str) -> serde_json::Value {
        json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClassList",
               "metadata": {}, "items": [
                 {"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
                  "metadata": {"name": "c", "namespace": "ns"},
                  "secretRef": {"name": secret, "namespace": "ns"}}]})
    }

    /// The class list says "referenced": nothing is removed.
    #[tokio::test]
    async fn a_referenced_secret_keeps_its_finalizer() {
        use crate::controller::fixtures::{Call, context, mock_client};
        let (client, mock) = mock_client(vec![Call::new("GET", CLASSES, 200, class_list("s"))]);
        let action = reconcile(Arc::new(secret_meta(&[SECRET_FINALIZER])), context(client))
            .await
            .unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
        mock.await.unwrap();
    }

    #[tokio::test]
    async fn unreferenced_secret_loses_only_our_finalizer() {
        use crate::controller::fixtures::{Call, context, mock_client};
        let other = "example.com/keep";
        let (client, mock) = mock_client(vec![
            Call::new("GET", CLASSES, 200, class_list("another")),
            Call::new(
                "PATCH",
                format!("{SECRETS}/s?"),
                200,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": {"name": "s", "namespace": "ns"}}),
            )
            .body(move |b| {
                assert_eq!(b["metadata"]["finalizers"], json!([other]));
                assert_eq!(b["metadata"]["resourceVersion"], "9");
            }),
        ]);
        reconcile(
            Arc::new(secret_meta(&[other, SECRET_FINALIZER])),
            context(client),
        )
        .await
        .unwrap();
        mock.await.unwrap();
    }

    #[tokio::test]
    async fn an_unreferenced_secret_without_finalizer_is_not_written() {
        use crate::controller::fixtures::{Call, context, mock_client};
        let (client, mock) =
            mock_client(vec![Call::new("GET", CLASSES, 200, class_list("another"))]);
        reconcile(Arc::new(secret_meta(&[])), context(client))
            .await
            .unwrap();
        mock.await.unwrap();
    }
}
