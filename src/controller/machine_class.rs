//! The MachineClass reconciler, as MCM's (`machineclass.go`): the class carries the finalizer
//! `machine.sapcloud.io/machine-controller-manager` exactly while at least one Machine
//! (`spec.class.kind == MachineClass`) refers to it, so a class — and with it the credentials
//! a DeleteMachine needs — cannot disappear under its machines. The machine reconciler waits
//! for this finalizer before creating anything.
//!
//! A class is reconciled when it changes, when a Machine is added or deleted (not on every
//! Machine update: MCM's Machine informer feeds its class queue on add and delete only), when
//! a Machine waits for the class's finalizer, and every 10 minutes. Each reconcile of a class
//! that is not being deleted enqueues the class's Machines that are not being deleted, as MCM
//! does, so a class change (and the finalizer that lets creation start) reaches them at once.
//!
//! The Machines are read from the Machine cache, as MCM reads its lister. A lagging cache can
//! only delay the decision: a Machine not yet cached brings its own add event (and so another
//! reconcile), and a deleted Machine still cached keeps the finalizer a little longer.
//! Finalizer writes are merge patches carrying the `resourceVersion` read, so a concurrent
//! change makes them fail (409) and retry rather than overwrite another controller's
//! finalizers.
//!
//! Also here: which classes a Machine watch event concerns ([`ClassTriggers`]).

use std::{collections::HashMap, sync::Arc, time::Instant};

use kube::{
    Api, ResourceExt,
    api::Patch,
    core::DeserializeGuard,
    runtime::{controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::json;

use super::{
    context::Context,
    crd::{Machine, MachineClass},
    error::{Error, Result},
    field_manager,
    machine::MACHINE_FINALIZER,
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
    if !ctx.caches.ready(&ctx.stop).await {
        return Ok(Action::await_change());
    }
    let name = class.name_any();
    let cached = ctx.caches.machines();
    let machines: Vec<&Machine> = cached
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|m| refers_to(m, &name))
        .collect();
    let referenced = !machines.is_empty();
    if let Some(finalizers) = wanted_finalizers(class, referenced) {
        let api: Api<MachineClass> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": class.resource_version()}});
        api.patch(&name, &field_manager::patch(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube("patch MachineClass finalizers"))?;
        tracing::info!(class = %name, referenced, "MachineClass finalizer updated");
    }
    if referenced && class.metadata.deletion_timestamp.is_some() {
        // MCM retries soon: the finalizer goes as soon as the last Machine has.
        tracing::debug!(class = %name, machines = machines.len(), "MachineClass being deleted is still used");
        return Ok(Action::requeue(ctx.config.retry.short));
    }
    for m in machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
    {
        ctx.queues.machine(&m.name_any(), &ctx.config.namespace);
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

/// The class a Machine refers to, if it names one.
pub fn class_ref(guard: &DeserializeGuard<Machine>) -> Option<ObjectRef<MachineClass>> {
    let m = guard.0.as_ref().ok()?;
    let ns = m.namespace()?;
    (m.spec.class.kind == "MachineClass" && !m.spec.class.name.is_empty())
        .then(|| ObjectRef::new(&m.spec.class.name).within(&ns))
}

/// What one Machine watch event asks for.
#[derive(Debug, Default, PartialEq)]
pub struct Triggered {
    /// Classes to reconcile (a Machine of theirs was added or deleted).
    pub classes: Vec<ObjectRef<MachineClass>>,
    /// Machines that were deleted (orphan collection runs after a delete).
    pub deleted: usize,
}

/// Tells Machine adds and deletes apart from updates in the Machine watch, for the class
/// queue: MCM's Machine informer feeds it on add and delete only, while kube's watcher
/// reports adds and updates alike. The Machines seen are remembered (name → class); a relist
/// after a watch restart reports the ones that vanished meanwhile as deleted, as an informer's
/// resync does.
#[derive(Debug, Default)]
pub struct ClassTriggers {
    known: HashMap<String, Option<ObjectRef<MachineClass>>>,
    relisted: Option<HashMap<String, Option<ObjectRef<MachineClass>>>>,
}

impl ClassTriggers {
    /// Takes one watch event.
    pub fn observe(&mut self, event: &watcher::Event<DeserializeGuard<Machine>>) -> Triggered {
        let mut out = Triggered::default();
        match event {
            watcher::Event::Apply(g) => {
                let class = class_ref(g);
                if self.known.insert(g.name_any(), class.clone()).is_none() {
                    out.classes.extend(class);
                }
            }
            watcher::Event::Delete(g) => {
                let class = self.known.remove(&g.name_any()).flatten();
                out.classes.extend(class_ref(g).or(class));
                out.deleted += 1;
            }
            watcher::Event::Init => self.relisted = Some(HashMap::new()),
            watcher::Event::InitApply(g) => {
                let class = class_ref(g);
                if !self.known.contains_key(&g.name_any()) {
                    out.classes.extend(class.clone());
                }
                self.relisted
                    .get_or_insert_with(HashMap::new)
                    .insert(g.name_any(), class);
            }
            watcher::Event::InitDone => {
                let relisted = self.relisted.take().unwrap_or_default();
                for (name, class) in self.known.drain() {
                    if !relisted.contains_key(&name) {
                        out.classes.extend(class);
                        out.deleted += 1;
                    }
                }
                self.known = relisted;
            }
        }
        out.classes.sort_by(|a, b| a.name.cmp(&b.name));
        out.classes.dedup();
        out
    }
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

    const CLASSES: &str = "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machineclasses";

    fn machine(name: &str, class: &str, deleting: bool) -> serde_json::Value {
        let mut m = serde_json::json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"class": {"kind": "MachineClass", "name": class}}});
        if deleting {
            m["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            m["metadata"]["finalizers"] = serde_json::json!([MACHINE_FINALIZER]);
        }
        m
    }

    /// The cached Machines: two of class `class` (one being deleted), one of another
    /// class, and one that does not decode.
    fn machines(class: &str) -> Vec<serde_json::Value> {
        vec![
            machine("m", class, false),
            machine("leaving", class, true),
            machine("elsewhere", "another-class", false),
            serde_json::json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
                 "metadata": {"name": "broken", "namespace": "ns"}, "spec": {"class": 7}}),
        ]
    }

    fn class_json(finalizers: &[&str]) -> serde_json::Value {
        serde_json::json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
            "metadata": {"name": "c", "namespace": "ns", "resourceVersion": "7", "finalizers": finalizers}})
    }

    /// The Machines are read from the cache (no LIST); the finalizer write is conditional;
    /// then the class's Machines that are not being deleted are enqueued, as MCM does.
    #[tokio::test]
    async fn referenced_class_gains_the_finalizer_and_enqueues_its_machines() {
        use crate::controller::fixtures::{Call, caches, context_queued, mock_client};
        let (client, mock) = mock_client(vec![
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
        let (ctx, mut enqueued) =
            context_queued(client, caches(machines("c"), vec![], vec![], vec![]));
        let class: MachineClass = serde_json::from_value(class_json(&[])).unwrap();
        let action = reconcile(Arc::new(class), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(600)));
        mock.await.unwrap();
        assert_eq!(enqueued.machines(), ["m"]);

        // A class that has its finalizer: no write, the Machines are enqueued again.
        let (client, mock) = mock_client(vec![]);
        let (ctx, mut enqueued) =
            context_queued(client, caches(machines("c"), vec![], vec![], vec![]));
        let class: MachineClass = serde_json::from_value(class_json(&[MACHINE_FINALIZER])).unwrap();
        reconcile(Arc::new(class), ctx).await.unwrap();
        mock.await.unwrap();
        assert_eq!(enqueued.machines(), ["m"]);
    }

    #[tokio::test]
    async fn unreferenced_class_loses_only_our_finalizer() {
        use crate::controller::fixtures::{Call, caches, context_queued, mock_client};
        let other = "example.com/keep";
        let (client, mock) = mock_client(vec![
            Call::new("PATCH", format!("{CLASSES}/c?"), 200, class_json(&[other]))
                .body(move |b| assert_eq!(b["metadata"]["finalizers"], serde_json::json!([other]))),
        ]);
        let (ctx, mut enqueued) = context_queued(
            client,
            caches(machines("another-class"), vec![], vec![], vec![]),
        );
        let class: MachineClass =
            serde_json::from_value(class_json(&[other, MACHINE_FINALIZER])).unwrap();
        reconcile(Arc::new(class), ctx).await.unwrap();
        mock.await.unwrap();
        assert!(enqueued.machines().is_empty());
    }

    /// A class being deleted keeps the finalizer while Machines use it, enqueues none of them
    /// and is looked at again soon.
    #[tokio::test]
    async fn a_class_being_deleted_waits_for_its_machines() {
        use crate::controller::fixtures::{caches, context_queued, mock_client};
        let (client, mock) = mock_client(vec![]);
        let (ctx, mut enqueued) =
            context_queued(client, caches(machines("c"), vec![], vec![], vec![]));
        let mut class: MachineClass =
            serde_json::from_value(class_json(&[MACHINE_FINALIZER])).unwrap();
        class.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        let action = reconcile(Arc::new(class), ctx).await.unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
        mock.await.unwrap();
        assert!(enqueued.machines().is_empty());
    }

    fn guard(name: &str, class: &str) -> DeserializeGuard<Machine> {
        serde_json::from_value(machine(name, class, false)).unwrap()
    }

    fn names(t: &Triggered) -> Vec<&str> {
        t.classes.iter().map(|r| r.name.as_str()).collect()
    }

    /// Adds and deletes reach the class queue, updates do not; a relist reports what
    /// vanished while the watch was down.
    #[test]
    fn class_triggers_follow_adds_and_deletes_only() {
        use watcher::Event;
        let mut t = ClassTriggers::default();
        // Start-up: the first list is one add per Machine.
        assert_eq!(names(&t.observe(&Event::Init)), Vec::<&str>::new());
        assert_eq!(
            names(&t.observe(&Event::InitApply(guard("a", "c1")))),
            ["c1"]
        );
        assert_eq!(
            names(&t.observe(&Event::InitApply(guard("b", "c2")))),
            ["c2"]
        );
        assert_eq!(t.observe(&Event::InitDone), Triggered::default());
        // Updates of known Machines: nothing.
        assert_eq!(
            t.observe(&Event::Apply(guard("a", "c1"))),
            Triggered::default()
        );
        // A new Machine: its class.
        assert_eq!(names(&t.observe(&Event::Apply(guard("c", "c1")))), ["c1"]);
        // A delete: its class, and one deletion.
        let d = t.observe(&Event::Delete(guard("c", "c1")));
        assert_eq!((names(&d), d.deleted), (vec!["c1"], 1));
        // A relist without `b` (deleted while the watch was down) and with a new `d`.
        t.observe(&Event::Init);
        assert_eq!(
            t.observe(&Event::InitApply(guard("a", "c1"))),
            Triggered::default()
        );
        assert_eq!(
            names(&t.observe(&Event::InitApply(guard("d", "c3")))),
            ["c3"]
        );
        let done = t.observe(&Event::InitDone);
        assert_eq!((names(&done), done.deleted), (vec!["c2"], 1));
        assert_eq!(
            t.observe(&Event::Apply(guard("d", "c3"))),
            Triggered::default()
        );
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
