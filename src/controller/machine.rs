//! The Machine reconciler, under the finalizer `machine.sapcloud.io/machine-controller-manager`
//! (added first, before anything else happens to the Machine): a live Machine gets the create
//! flow and the health check; a Machine being deleted goes to the delete flow
//! ([`super::delete_flow`]), which removes the finalizer itself as its last step.
//!
//! Reads come from the controller's caches ([`super::caches`]) where MCM reads its listers:
//! the Machine itself, its MachineClass, the class's Secrets and the Machine's Node.
//!
//! # Create flow (MCM's `triggerCreationFlow`)
//! Runs while `spec.providerID` is empty or the phase is `""`/`CrashLoopBackOff`:
//! 1. Merge the class's Secrets; `userData` is required, `<<MACHINE_NAME>>` substituted.
//!    With a target cluster, the machine's bootstrap token ([`super::bootstrap_token`]) is
//!    fetched or created on every pass, as MCM does, and replaces `<<BOOTSTRAP_TOKEN>>`
//!    (deleted again when the machine turns Running).
//! 2. GetMachineStatus. OK → adopt the device it names (this is what makes a restart after a
//!    lost CreateMachine answer safe). NotFound/Unimplemented (or the capability missing) →
//!    CreateMachine when there is no `spec.providerID`, else keep `spec.providerID`.
//! 3. Write `spec.providerID`, label `node=<NodeName>` (only with a target cluster) and
//!    annotation `machinepriority.machine.sapcloud.io: "3"` (when absent).
//! 4. Status: phase `Pending` (`Available` without a target cluster), lastOperation
//!    `Create/Processing "Creating machine on cloud provider"`.
//!
//! A Machine marked as never having sent a create ([`super::never_created`]) sends none the
//! driver would refuse, and loses the mark before any other.
//!
//! A driver error writes `lastOperation{description: "Cloud provider message - …",
//! errorCode, state: Failed, type: Create}`, phase CrashLoopBackOff (Failed after the
//! creation timeout), and requeues per [`super::status::RetryPeriods`]. Unlike MCM, a Failed
//! machine without a device is not created again: MCM's MachineSet controller replaces it.
//!
//! # Delete flow
//! MCM's step machine with a real drain: see [`super::delete_flow`].
//!
//! # Guarantees
//! - Reconciles of one Machine never overlap (kube-runtime), so create and delete cannot race.
//! - A Machine that cannot be decoded is logged and skipped; it does not stop the others.

use std::{sync::Arc, time::Instant};

use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{Api, ResourceExt, api::Patch, core::DeserializeGuard, runtime::controller::Action};
use serde_json::json;
use tonic::Code;

use crate::cmi::{
    Rpc,
    calls::{CallError, MachineRef},
};
use crate::secret_data;

use super::{
    bootstrap_token,
    context::Context,
    crd::{DEFAULT_PRIORITY, Machine, MachineClass, NODE_LABEL, PRIORITY_ANNOTATION},
    delete_flow,
    error::{Error, Result, is_not_found},
    field_manager, health, machine_metrics, never_created, node_sync, orphans, own_writes, permit,
    secrets, similar,
    status::{self, StatusUpdate, last_op, op, phase, state},
};

/// The finalizer on Machines (and MachineClasses), MCM's name so MCM tooling recognises it.
pub const MACHINE_FINALIZER: &str = "machine.sapcloud.io/machine-controller-manager";

/// Entry point for kube-runtime: decode guard, then the delete flow, the finalizer or
/// [`apply`].
pub async fn reconcile(guard: Arc<DeserializeGuard<Machine>>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let _running = ctx
        .metrics
        .workqueue
        .started("machine", machine_metrics::queue_key(guard.as_ref()));
    let machine = match &guard.0 {
        Ok(m) => m.clone(),
        Err(invalid) => {
            ctx.metrics
                .controller
                .failed("machine", "invalid_object".into());
            tracing::warn!(
                machine = invalid.metadata.name.as_deref().unwrap_or_default(),
                error = %invalid.error,
                "Machine cannot be decoded; skipped until it changes"
            );
            return Ok(Action::await_change());
        }
    };
    if !ctx.caches.ready(&ctx.stop).await {
        // Stopping before the caches were filled: nothing was read, nothing is lost.
        return Ok(Action::await_change());
    }
    if ctx.own_writes.is_behind(&machine.metadata) {
        // Queued again while the last reconcile wrote; acting on this older copy would redo
        // that reconcile's work. The write's watch event brings the current copy.
        tracing::debug!(machine = %machine.name_any(), "Machine cache behind our last write; waiting for it");
        return Ok(Action::requeue(own_writes::RECHECK));
    }
    if machine.metadata.deletion_timestamp.is_some() {
        let result = delete_flow::run(&machine, &ctx).await;
        ctx.metrics
            .controller
            .reconciled("machine", started.elapsed());
        return result;
    }
    let result = if machine.finalizers().iter().any(|f| f == MACHINE_FINALIZER) {
        apply(&machine, &ctx).await
    } else {
        add_finalizer(&machine, &ctx).await
    };
    ctx.metrics
        .controller
        .reconciled("machine", started.elapsed());
    result
}

/// kube-runtime's error policy: log, count, and wait as MCM's table says.
pub fn error_policy(
    guard: Arc<DeserializeGuard<Machine>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let name = kube::Resource::meta(guard.as_ref())
        .name
        .clone()
        .unwrap_or_default();
    ctx.metrics
        .controller
        .failed("machine", error.metric_label());
    ctx.metrics.workqueue.retried("machine");
    let after = error.retry_after(&ctx.config.retry);
    tracing::warn!(machine = %name, %error, retry_after = ?after, "reconcile failed");
    Action::requeue(after)
}

/// Adds our finalizer (MCM's `addMachineFinalizers`) and waits for the change: the write's
/// own watch event brings the Machine back.
///
/// When a create of the Machine would be refused before any API call, the same write marks
/// it as one that never sent a create ([`never_created`]).
async fn add_finalizer(m: &Machine, ctx: &Context) -> Result<Action> {
    let mut finalizers = m.finalizers().to_vec();
    finalizers.push(MACHINE_FINALIZER.to_owned());
    let refusal = class_of(m, ctx)
        .ok()
        .filter(|_| m.provider_id().is_none())
        .and_then(|class| never_created::refusal(m, &class, ctx));
    let mut metadata = json!({ "finalizers": finalizers });
    if let Some(why) = &refusal {
        tracing::info!(machine = %m.name_any(), refusal = %why, "a create would be refused before any API call; marking the Machine as one that never sent a create");
        metadata["annotations"] = never_created::set();
    }
    // Deleted meanwhile or not, its next watch event ends it.
    write_metadata(m, ctx, metadata, "add Machine finalizer").await?;
    Ok(Action::await_change())
}

/// Writes the Machine's finalizer list. The patch carries the resourceVersion read, so a
/// concurrent change of the list fails (409, retried) instead of being overwritten — another
/// controller's finalizer is never dropped. `false` when the Machine is gone.
pub(super) async fn write_finalizers(
    m: &Machine,
    ctx: &Context,
    finalizers: Vec<String>,
    action: &'static str,
) -> Result<bool> {
    write_metadata(m, ctx, json!({ "finalizers": finalizers }), action).await
}

/// Merges `metadata` into the Machine's, under the resourceVersion read (see
/// [`write_finalizers`]). `false` when the Machine is gone.
async fn write_metadata(
    m: &Machine,
    ctx: &Context,
    mut metadata: serde_json::Value,
    action: &'static str,
) -> Result<bool> {
    metadata["resourceVersion"] = json!(m.resource_version());
    let patch = json!({ "metadata": metadata });
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    match api
        .patch(&m.name_any(), &field_manager::patch(), &Patch::Merge(patch))
        .await
    {
        Ok(written) => {
            ctx.own_writes.wrote(&written.metadata);
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(Error::kube(action)(e)),
    }
}

/// The class named by `spec.class` from the class cache, validated as MCM's
/// `ValidateMachineClass` does.
pub(super) fn class_of(m: &Machine, ctx: &Context) -> Result<Arc<MachineClass>> {
    let class = &m.spec.class;
    if class.kind != "MachineClass" || class.name.is_empty() {
        return Err(Error::InvalidClassRef {
            kind: class.kind.clone(),
            name: class.name.clone(),
        });
    }
    ctx.caches
        .class(&class.name)
        .ok_or_else(|| Error::ClassNotFound {
            name: class.name.clone(),
        })
}

/// Writes `update` to the status subresource, unless it would change nothing but timestamps
/// (MCM's similar-status rule, [`super::similar`]).
async fn patch_status(m: &Machine, ctx: &Context, update: &StatusUpdate) -> Result<()> {
    if update.is_empty() {
        return Ok(());
    }
    if similar::is_similar(update, m.status.as_ref(), Timestamp::now()) {
        tracing::debug!(machine = %m.name_any(), "status similar to the current one; not written");
        return Ok(());
    }
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let written = api
        .patch_status(
            &m.name_any(),
            &field_manager::patch(),
            &Patch::Merge(update.to_patch()),
        )
        .await
        .map_err(Error::kube("patch Machine status"))?;
    ctx.own_writes.wrote(&written.metadata);
    if newly_out_of_range(m, update) {
        tracing::warn!(machine = %m.name_any(), "several devices back this Machine; triggering orphan collection");
        ctx.safety.collect_orphans.notify_one();
    }
    Ok(())
}

/// Whether `update` writes a lastOperation reporting `OutOfRange` (several devices for one
/// Machine) that the Machine did not report yet: MCM runs orphan collection then.
fn newly_out_of_range(m: &Machine, update: &StatusUpdate) -> bool {
    let had = m
        .status
        .as_ref()
        .and_then(|s| s.last_operation.as_ref())
        .is_some_and(|l| l.description.contains(orphans::OUT_OF_RANGE));
    let has = update
        .last_operation
        .as_ref()
        .is_some_and(|l| l.description.contains(orphans::OUT_OF_RANGE));
    has && !had
}

/// The machine's Node from the Node cache, `None` when it does not exist (or there is no
/// target cluster).
fn node_of(ctx: &Context, m: &Machine) -> Option<Arc<Node>> {
    ctx.caches.node(m.node_name()?)
}

/// `Apply`: health for machines with a Node, then the create flow where needed.
async fn apply(m: &Machine, ctx: &Context) -> Result<Action> {
    if ctx.safety.freeze.is_frozen() {
        // Stale Nodes must not decide health, and nothing is created while frozen; the thaw
        // reconciles every Machine again.
        tracing::debug!(machine = %m.name_any(), "machine controller frozen; skipped");
        return Ok(Action::requeue(ctx.config.retry.long));
    }
    let class = class_of(m, ctx)?;
    if !class.finalizers().iter().any(|f| f == MACHINE_FINALIZER) {
        // MCM waits for the class finalizer so a class cannot vanish under a new device, and
        // hands the class to the class controller, which adds it and then enqueues the
        // class's Machines again.
        tracing::debug!(machine = %m.name_any(), class = %class.name_any(), "waiting for the MachineClass finalizer");
        ctx.queues.class(&class.name_any(), &ctx.config.namespace);
        return Ok(Action::requeue(ctx.config.retry.short));
    }
    let ph = m.phase();
    let mut recheck = None;
    if ctx.has_target() && m.node_name().is_some() && !ph.is_empty() {
        let node = node_of(ctx, m);
        if let Some(n) = &node
            && node_sync::sync(m, &class, n, ctx).await? == node_sync::Next::MachineDeleted
        {
            return Ok(Action::await_change());
        }
        let now = Timestamp::now();
        let outcome = health::evaluate(m, node.as_deref(), &ctx.config, now);
        let to_failed = outcome
            .update
            .current
            .as_ref()
            .is_some_and(|c| c.phase == phase::FAILED);
        if ph == phase::UNKNOWN && to_failed {
            // Meltdown protection: one replacement per MachineDeployment at a time.
            let marked =
                permit::with_permit(ctx, m, || patch_status(m, ctx, &outcome.update)).await?;
            if !marked {
                return Ok(Action::requeue(ctx.config.retry.short));
            }
            tracing::info!(machine = %m.name_any(), from = ph, to = phase::FAILED, "machine phase changed");
            machine_metrics::record_phase_change(&ctx.metrics.mcm, m, &class, phase::FAILED, now);
            return Ok(Action::requeue(ctx.config.health_recheck));
        }
        if let Some(cur) = &outcome.update.current {
            tracing::info!(machine = %m.name_any(), from = ph, to = %cur.phase, "machine phase changed");
            machine_metrics::record_phase_change(&ctx.metrics.mcm, m, &class, &cur.phase, now);
        }
        patch_status(m, ctx, &outcome.update).await?;
        if let (true, Some(target)) = (outcome.joined_after_create, &ctx.target) {
            // The token has served its purpose; like MCM, a failed delete is only logged
            // (the token expires with the creation timeout anyway).
            if let Err(error) = bootstrap_token::delete(target, &m.name_any()).await {
                tracing::warn!(machine = %m.name_any(), %error, "could not delete the bootstrap token");
            }
        }
        recheck = outcome.recheck;
        if outcome.update.current.is_some() {
            return Ok(Action::requeue(
                recheck
                    .unwrap_or(ctx.config.health_recheck)
                    .min(ctx.config.health_recheck),
            ));
        }
    }
    let needs_create =
        m.provider_id().is_none() || ph.is_empty() || ph == phase::CRASH_LOOP_BACK_OFF;
    if needs_create && ph != phase::FAILED && ph != phase::TERMINATING {
        return create_flow(m, &class, ctx).await;
    }
    let after = match ph {
        phase::PENDING | phase::RUNNING | phase::UNKNOWN if ctx.has_target() => recheck
            .unwrap_or(ctx.config.health_recheck)
            .min(ctx.config.health_recheck),
        _ => ctx.config.retry.long,
    };
    Ok(Action::requeue(after))
}

/// Records a failed create-flow call and picks the retry period.
async fn create_failed(m: &Machine, ctx: &Context, failure: CallError) -> Result<Action> {
    let (creation_timeout, _) = health::timeouts(m, &ctx.config);
    let created = m.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let code = failure.code();
    let update = status::create_failed(
        code,
        failure.message(),
        Timestamp::now(),
        created,
        creation_timeout,
    );
    let error = Error::Cmi(failure);
    ctx.metrics
        .controller
        .failed("machine", error.metric_label());
    tracing::warn!(machine = %m.name_any(), %error, "create flow failed");
    patch_status(m, ctx, &update).await?;
    Ok(Action::requeue(ctx.config.retry.after_create_error(code)))
}

async fn create_flow(m: &Machine, class: &MachineClass, ctx: &Context) -> Result<Action> {
    let name = m.name_any();
    let merged = secrets::load(&ctx.caches, class);
    let mut secrets = match merged.for_create(&name) {
        Ok(s) => s,
        Err(error) => {
            let now = Timestamp::now();
            let (creation_timeout, _) = health::timeouts(m, &ctx.config);
            let created = m.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let ph = status::phase_after_create_error(now, created, creation_timeout);
            let update = StatusUpdate {
                current: Some(status::current(ph, ph != phase::FAILED, now)),
                last_operation: Some(last_op(
                    op::CREATE,
                    state::FAILED,
                    error.to_string(),
                    None,
                    now,
                )),
                ..Default::default()
            };
            patch_status(m, ctx, &update).await?;
            return Err(error.into());
        }
    };
    if let Some(target) = &ctx.target {
        add_bootstrap_token(m, ctx, target, &mut secrets).await?;
    }
    let provider_spec = serde_json::to_vec(&class.provider_spec).unwrap_or_default();
    let spec_provider_id = m.provider_id().unwrap_or_default().to_owned();
    if spec_provider_id.is_empty() && never_created::marked(m) {
        // Keep the proof that no create was sent: a create the driver refuses on its own is
        // not sent at all; any other is sent only once the proof is gone.
        if let Some(refusal) = ctx
            .preflight
            .create_refusal(&name, &provider_spec, &secrets)
        {
            tracing::debug!(machine = %name, "CreateMachine would be refused before any API call; not sent");
            return create_failed(m, ctx, refusal).await;
        }
        never_created::clear(m, ctx).await?;
    }

    // 1. Is there a device already? Only asked when the Machine names one: without a
    //    ProviderID, MCM's flow would look it up by name first, but our CreateMachine is
    //    that lookup (it adopts the machine's device when one exists and never creates a
    //    second), so asking first would cost every new machine a second list call.
    let mut found = None;
    if !spec_provider_id.is_empty() && ctx.capabilities.has(Rpc::GetMachineStatus) {
        let machine =
            MachineRef::new(&name, &provider_spec, &secrets).with_provider_id(&spec_provider_id);
        match ctx.cmi.get_machine_status(machine).await {
            Ok(resp) => {
                tracing::info!(machine = %name, provider_id = %resp.provider_id, "found existing device; adopting it");
                found = Some((resp.provider_id, resp.node_name, None));
            }
            Err(e) if matches!(e.code(), Code::NotFound | Code::Unimplemented) => {}
            Err(e) => return create_failed(m, ctx, e).await,
        }
    }
    let (provider_id, node_name, last_known_state) = match found {
        Some(f) => f,
        None if !spec_provider_id.is_empty() => (
            spec_provider_id.clone(),
            m.node_name().unwrap_or_default().to_owned(),
            None,
        ),
        None => {
            let machine = MachineRef::new(&name, &provider_spec, &secrets)
                .with_last_known_state(m.last_known_state().as_bytes());
            tracing::info!(machine = %name, class = %class.name_any(), "creating machine on cloud provider");
            match ctx.cmi.create_machine(machine).await {
                Ok(resp) => {
                    tracing::info!(machine = %name, provider_id = %resp.provider_id, node = %resp.node_name, "machine created");
                    machine_metrics::record_created(&ctx.metrics.mcm, m, class, Timestamp::now());
                    let lks = String::from_utf8_lossy(&resp.last_known_state).into_owned();
                    (resp.provider_id, resp.node_name, Some(lks))
                }
                Err(e) => return create_failed(m, ctx, e).await,
            }
        }
    };
    if provider_id.is_empty() || (ctx.has_target() && node_name.is_empty()) {
        let field = if provider_id.is_empty() {
            "ProviderID"
        } else {
            "NodeName"
        };
        let message = format!("driver returned an empty {field}");
        let failure = CallError::new(Rpc::CreateMachine, Code::Internal, message);
        create_failed(m, ctx, failure).await?;
        return Err(Error::IncompleteResponse {
            rpc: Rpc::CreateMachine,
            field,
        });
    }

    // 2. Persist the link to the device before anything else.
    persist_identity(m, ctx, &provider_id, &node_name).await?;

    // 3. Status.
    let ph = m.phase();
    let now = Timestamp::now();
    let mut update = StatusUpdate {
        last_known_state: last_known_state.filter(|s| !s.is_empty()),
        ..Default::default()
    };
    if ph.is_empty() || ph == phase::CRASH_LOOP_BACK_OFF {
        if ctx.has_target() {
            update.current = Some(status::current(phase::PENDING, true, now));
            update.last_operation = Some(last_op(
                op::CREATE,
                state::PROCESSING,
                "Creating machine on cloud provider",
                None,
                now,
            ));
        } else {
            update.current = Some(status::current(phase::AVAILABLE, false, now));
            update.last_operation = Some(last_op(
                op::CREATE,
                state::SUCCESSFUL,
                "Created machine on cloud provider",
                None,
                now,
            ));
        }
    }
    patch_status(m, ctx, &update).await?;
    Ok(Action::requeue(if ctx.has_target() {
        ctx.config.health_recheck
    } else {
        ctx.config.retry.long
    }))
}

/// Gets or creates the machine's bootstrap token in the target cluster (valid for the
/// machine's creation timeout) and puts it into the userData where the userData asks for one
/// (`<<BOOTSTRAP_TOKEN>>`, raw or URL-escaped). Like MCM's `addBootstrapTokenToUserData`,
/// the Secret is made whether or not the placeholder is there (MCM only warns that such a
/// Node will not join), so both controllers leave the same Secrets in the target cluster.
async fn add_bootstrap_token(
    m: &Machine,
    ctx: &Context,
    target: &kube::Client,
    secrets: &mut std::collections::HashMap<String, Vec<u8>>,
) -> Result<()> {
    let Some(user_data) = secrets.get_mut(secret_data::USER_DATA) else {
        return Ok(());
    };
    let wanted = bootstrap_token::wanted(user_data);
    // No token id derives from a name under 5 bytes (MCM panics on one). Without the
    // placeholder nothing needs the token, so such a machine is still created.
    if !wanted && bootstrap_token::token_id(&m.name_any()).is_err() {
        return Ok(());
    }
    let (creation_timeout, _) = health::timeouts(m, &ctx.config);
    let token = bootstrap_token::get_or_create(
        target,
        &m.name_any(),
        creation_timeout,
        &ctx.config.bootstrap_token_auth_extra_groups,
    )
    .await?;
    if wanted {
        *user_data = bootstrap_token::substitute(user_data, &token);
    }
    Ok(())
}

/// Writes `spec.providerID`, the `node` label and the priority annotation, skipping the
/// write when all three are already as wanted.
async fn persist_identity(
    m: &Machine,
    ctx: &Context,
    provider_id: &str,
    node_name: &str,
) -> Result<()> {
    let mut metadata = serde_json::Map::new();
    if ctx.has_target() && m.node_name() != Some(node_name) {
        metadata.insert("labels".into(), json!({ NODE_LABEL: node_name }));
    }
    if !m.annotations().contains_key(PRIORITY_ANNOTATION) {
        metadata.insert(
            "annotations".into(),
            json!({ PRIORITY_ANNOTATION: DEFAULT_PRIORITY }),
        );
    }
    if never_created::marked(m) {
        // A device is the Machine's now: the proof no longer holds.
        let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
        annotations[never_created::NO_CREATE_SENT] = serde_json::Value::Null;
    }
    let mut patch = serde_json::Map::new();
    if m.provider_id() != Some(provider_id) {
        patch.insert("spec".into(), json!({ "providerID": provider_id }));
    }
    if !metadata.is_empty() {
        patch.insert("metadata".into(), metadata.into());
    }
    if patch.is_empty() {
        return Ok(());
    }
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let written = api
        .patch(
            &m.name_any(),
            &field_manager::patch(),
            &Patch::Merge(serde_json::Value::Object(patch)),
        )
        .await
        .map_err(Error::kube("patch Machine"))?;
    ctx.own_writes.wrote(&written.metadata);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{
        Call, caches, context, context_queued, context_with, mock_client, not_found,
    };
    use serde_json::json;

    const MACHINES: &str = "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machines";

    fn guard(v: serde_json::Value) -> Arc<DeserializeGuard<Machine>> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn machine(extra_meta: serde_json::Value) -> serde_json::Value {
        let mut meta = json!({"name": "m", "namespace": "ns", "resourceVersion": "1"});
        meta.as_object_mut()
            .unwrap()
            .extend(extra_meta.as_object().unwrap().clone());
        json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine", "metadata": meta,
               "spec": {"class": {"kind": "MachineClass", "name": "c"}}})
    }

    #[tokio::test]
    async fn a_new_machine_first_gets_the_finalizer() {
        let (client, mock) = mock_client(vec![
            Call::new(
                "PATCH",
                format!("{MACHINES}/m?"),
                200,
                machine(json!({"finalizers": [MACHINE_FINALIZER]})),
            )
            .body(|b| {
                // Another controller's finalizer stays; the write is conditional on what
                // was read.
                assert_eq!(
                    b["metadata"]["finalizers"],
                    json!(["example.com/other", MACHINE_FINALIZER]),
                    "{b}"
                );
                assert_eq!(b["metadata"]["resourceVersion"], "1", "{b}");
            }),
        ]);
        let m = machine(json!({"finalizers": ["example.com/other"]}));
        let action = reconcile(guard(m), context(client)).await.unwrap();
        assert_eq!(action, Action::await_change());
        mock.await.unwrap();
    }

    #[tokio::test]
    async fn create_waits_for_the_class_finalizer_without_calling_the_driver() {
        let class = json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
                           "metadata": {"name": "c", "namespace": "ns"}, "providerSpec": {}});
        let (client, mock) = mock_client(vec![]);
        let (ctx, mut enqueued) =
            context_queued(client, caches(vec![], vec![class], vec![], vec![]));
        let m = machine(json!({"finalizers": [MACHINE_FINALIZER]}));
        let action = reconcile(guard(m), ctx).await.unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
        mock.await.unwrap();
        // The class is handed to the class controller, as MCM's ValidateMachineClass does.
        assert_eq!(enqueued.classes(), ["c"]);
    }

    #[tokio::test]
    async fn deleting_a_machine_without_class_or_device_releases_it() {
        let (client, mock) = mock_client(vec![
            Call::new("PATCH", format!("{MACHINES}/m?"), 200, machine(json!({}))).body(|b| {
                assert_eq!(b["metadata"]["finalizers"], json!([]), "{b}");
                assert_eq!(b["metadata"]["resourceVersion"], "1", "{b}");
            }),
        ]);
        let m = machine(
            json!({"finalizers": [MACHINE_FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"}),
        );
        reconcile(guard(m), context(client)).await.unwrap();
        mock.await.unwrap();
    }

    /// Class `c` (with our finalizer) and its Secret `s` (with userData).
    fn class_and_secret() -> (serde_json::Value, serde_json::Value) {
        let class = json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
                           "metadata": {"name": "c", "namespace": "ns", "finalizers": [MACHINE_FINALIZER]},
                           "providerSpec": {}, "secretRef": {"name": "s", "namespace": "ns"}});
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"},
                            "data": {"userData": "I2Nsb3VkLWNvbmZpZw=="}});
        (class, secret)
    }

    /// A create retried after a transient driver error writes its status once: the second
    /// attempt's status differs only in timestamps (MCM's similar-status rule).
    #[tokio::test]
    async fn a_repeated_create_failure_writes_the_status_once() {
        let (class, secret) = class_and_secret();
        let written = Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
        let keep = written.clone();
        let cached = || caches(vec![], vec![class.clone()], vec![secret.clone()], vec![]);
        let (client, mock) = mock_client(vec![
            Call::new(
                "PATCH",
                format!("{MACHINES}/m/status?"),
                200,
                machine(json!({})),
            )
            .body(move |b| {
                *keep.lock().unwrap() = b["status"].clone();
            }),
        ]);
        let m = machine(json!({"finalizers": [MACHINE_FINALIZER],
                               "creationTimestamp": Timestamp::now().to_string()}));
        let action = reconcile(guard(m.clone()), context_with(client, cached()))
            .await
            .unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
        mock.await.unwrap();
        let status = written.lock().unwrap().clone();
        assert_eq!(
            status["currentStatus"]["phase"], "CrashLoopBackOff",
            "{status}"
        );
        assert_eq!(
            status["lastOperation"]["errorCode"], "Unavailable",
            "{status}"
        );

        // The retry sees the written status; it fails the same way and writes nothing.
        let mut again = m;
        again["status"] = status;
        let (client, mock) = mock_client(vec![]);
        let action = reconcile(guard(again), context_with(client, cached()))
            .await
            .unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
        mock.await.unwrap();
    }

    /// As in MCM, every pass of the create flow gets or creates the machine's bootstrap token
    /// when there is a target cluster, placeholder or not; a short name without the
    /// placeholder (no id derives from it) is created without one (the test above, `m`).
    #[tokio::test]
    async fn the_create_flow_makes_the_token_secret_without_a_placeholder() {
        let class = json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
                           "metadata": {"name": "c", "namespace": "ns", "finalizers": [MACHINE_FINALIZER]},
                           "providerSpec": {}, "secretRef": {"name": "s", "namespace": "ns"}});
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"},
                            "data": {"userData": "I2Nsb3VkLWNvbmZpZw=="}});
        let token = "/api/v1/namespaces/kube-system/secrets";
        let (client, mock) = mock_client(vec![
            Call::new(
                "GET",
                format!("{token}/bootstrap-token-616263"),
                404,
                not_found(),
            ),
            Call::new("POST", format!("{token}?"), 201, json!({})).body(|b| {
                assert_eq!(b["type"], "bootstrap.kubernetes.io/token", "{b}");
                assert_eq!(b["metadata"]["name"], "bootstrap-token-616263", "{b}");
            }),
            Call::new(
                "PATCH",
                format!("{MACHINES}/m-abc12/status?"),
                200,
                machine(json!({"name": "m-abc12"})),
            ),
        ]);
        let m = machine(json!({"name": "m-abc12", "finalizers": [MACHINE_FINALIZER],
                               "creationTimestamp": Timestamp::now().to_string()}));
        let ctx = context_with(client, caches(vec![], vec![class], vec![secret], vec![]));
        reconcile(guard(m), ctx).await.unwrap();
        mock.await.unwrap();
    }

    /// A Machine queued again while its create pass wrote is not acted on from the copy that
    /// predates the write (no second create, no second status write, no call at all) until
    /// the watch has brought the write back.
    #[tokio::test]
    async fn a_copy_older_than_our_last_write_waits_for_the_cache() {
        let (class, secret) = class_and_secret();
        let mut answer = machine(json!({"uid": "u1", "finalizers": [MACHINE_FINALIZER]}));
        answer["metadata"]["resourceVersion"] = json!("2");
        let (client, mock) = mock_client(vec![Call::new(
            "PATCH",
            format!("{MACHINES}/m/status?"),
            200,
            answer.clone(),
        )]);
        let ctx = context_with(client, caches(vec![], vec![class], vec![secret], vec![]));
        let m = machine(json!({"uid": "u1", "finalizers": [MACHINE_FINALIZER],
                               "creationTimestamp": Timestamp::now().to_string()}));
        // The create fails (no driver) and its status is written: resourceVersion 1 → 2.
        let action = reconcile(guard(m.clone()), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
        // Run again from the cached copy at version 1: nothing is called (the mock takes no
        // more requests, so a call would fail the reconcile).
        let action = reconcile(guard(m.clone()), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(own_writes::RECHECK));
        // Once the watch delivered version 2, an older copy no longer waits.
        let meta = |v: serde_json::Value| {
            serde_json::from_value::<Machine>(v)
                .expect("Machine")
                .metadata
        };
        ctx.own_writes.observed(&meta(answer));
        assert!(!ctx.own_writes.is_behind(&meta(m)));
        mock.await.unwrap();
    }

    /// A Running Machine whose Node is healthy and in sync is checked from the caches alone:
    /// the class, its Secrets and the Node are cached, so the reconcile makes no API call.
    #[tokio::test]
    async fn a_healthy_running_machine_costs_no_api_call() {
        let (class, secret) = class_and_secret();
        let conditions = json!([{"type": "Ready", "status": "True"}]);
        use crate::controller::{node_finalizer::NODE_FINALIZER, node_template};
        let applied = node_template::NodeTemplate::default().record();
        let node = json!({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": "n1", "finalizers": [NODE_FINALIZER],
                                       "labels": {node_template::MACHINE_NAME_LABEL: "m"},
                                       "annotations": {node_template::LAST_APPLIED_ALT: applied}},
                          "status": {"conditions": conditions}});
        let mut m = machine(
            json!({"finalizers": [MACHINE_FINALIZER], "labels": {"node": "n1"},
                                   "annotations": {PRIORITY_ANNOTATION: "3"}}),
        );
        m["spec"]["providerID"] = json!("equinixmetal://x");
        m["status"] = json!({"currentStatus": {"phase": "Running", "timeoutActive": false},
                             "conditions": conditions});
        let (client, mock) = mock_client(vec![]);
        let ctx = context_with(
            client,
            caches(vec![], vec![class], vec![secret], vec![node]),
        );
        let action = reconcile(guard(m), ctx).await.unwrap();
        // Looked at again after --machine-health-recheck-period.
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(60)));
        mock.await.unwrap();
    }

    /// Frozen: a live Machine gets neither a create nor a health decision — not even a read.
    #[tokio::test]
    async fn a_frozen_controller_leaves_live_machines_alone() {
        let (client, mock) = mock_client(vec![]);
        let ctx = context(client);
        ctx.safety.freeze.set_for_test(true);
        let m = machine(json!({"finalizers": [MACHINE_FINALIZER]}));
        let action = reconcile(guard(m), ctx).await.unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(600)));
        mock.await.unwrap();
    }

    /// Frozen, a Machine being deleted still goes through the delete flow (here: no class,
    /// no device, so it is released).
    #[tokio::test]
    async fn a_frozen_controller_still_deletes() {
        let (client, mock) = mock_client(vec![Call::new(
            "PATCH",
            format!("{MACHINES}/m?"),
            200,
            machine(json!({})),
        )]);
        let ctx = context(client);
        ctx.safety.freeze.set_for_test(true);
        let m = machine(
            json!({"finalizers": [MACHINE_FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"}),
        );
        reconcile(guard(m), ctx).await.unwrap();
        mock.await.unwrap();
    }

    #[test]
    fn out_of_range_triggers_only_when_it_first_appears() {
        let lo = |d: &str| last_op(op::CREATE, state::FAILED, d, None, Timestamp::now());
        let update = StatusUpdate {
            last_operation: Some(lo(
                "Cloud provider message - machine codes error: code = [OutOfRange] message = [2 devices]",
            )),
            ..Default::default()
        };
        let mut m: Machine = serde_json::from_value(machine(json!({}))).unwrap();
        assert!(newly_out_of_range(&m, &update));
        m.status = Some(crate::controller::crd::MachineStatus {
            last_operation: update.last_operation.clone(),
            ..Default::default()
        });
        assert!(!newly_out_of_range(&m, &update));
        let other = StatusUpdate {
            last_operation: Some(lo("Cloud provider message - Unavailable")),
            ..Default::default()
        };
        assert!(!newly_out_of_range(
            &Machine::new("x", Default::default()),
            &other
        ));
    }

    #[tokio::test]
    async fn an_undecodable_machine_is_skipped_without_api_calls() {
        let (client, mock) = mock_client(vec![]);
        let bad = json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
                         "metadata": {"name": "m", "namespace": "ns"}, "spec": {"class": "oops"}});
        let ctx = context(client);
        let action = reconcile(guard(bad), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::await_change());
        assert!(ctx.metrics.render().contains("reason=\"invalid_object\""));
        mock.await.unwrap();
    }
}
