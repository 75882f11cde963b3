//! The delete flow: MCM's `triggerDeletionFlow` step machine. Each step records the next one
//! in `status.lastOperation.description` with MCM's step words, and the flow resumes from
//! whatever step the description names, so a restart (ours, or a switch between MCM and us)
//! picks up where the last controller stopped:
//!
//! 1. phase ≠ Terminating → phase `Terminating`, "Set machine status to termination. Now,
//!    getting VM Status".
//! 2. getting VM status → find the Node name (label `node`, a Node labelled with the machine
//!    name, or GetMachineStatus) → "Initiate node drain" (without a target cluster straight
//!    to "Initiate VM deletion").
//! 3. drain ([`super::drain`]) → "Drain successful. Initiate VM deletion", or after a
//!    forced drain "… Delete Volume Attachments"; a failed normal drain writes
//!    `{Delete, Failed, "Drain failed due to - …. Will retry in next sync. Initiate node
//!    drain"}` and retries: the device is never deleted under pods that could not move.
//! 4. delete volume attachments → the Node's live VolumeAttachments deleted, then
//!    "Initiate VM deletion".
//! 5. VM deletion → DeleteMachine (its `lastKnownState` saved) → "Initiate node object
//!    deletion".
//! 6. node object deletion → the Node deleted → "Initiate machine object finalizer removal".
//! 7. finalizer removal → the Machine's finalizer removed; the Machine is gone.
//!
//! A Machine without a ProviderID that is marked as never having sent a create
//! ([`super::never_created`]) skips all of it: there is no device, so only the finalizer goes.
//!
//! Steps run back to back within one reconcile while they succeed; a step that must wait
//! returns with a requeue, a failing one records `state: Failed` and returns an error (MCM's
//! retry period). Every step is idempotent, so repeating one after a crash is harmless.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch},
    runtime::controller::Action,
};
use serde_json::json;
use tonic::Code;

use crate::cmi::{Rpc, calls::MachineRef};
use crate::secret_data::SecretData;

use super::{
    context::Context,
    crd::{Machine, MachineClass, NODE_LABEL},
    drain::{self, Drain, DrainError, mode},
    error::{Error, Result, is_not_found},
    field_manager,
    machine::{self, MACHINE_FINALIZER, class_of},
    machine_metrics, never_created, node_finalizer, secrets, similar,
    status::{self, StatusUpdate, last_op, op, phase, state},
};

/// MCM's step words (`machineutils`): the flow matches them inside descriptions.
pub mod step {
    /// Phase set to Terminating; next: look at the VM.
    pub const GET_VM_STATUS: &str = "Set machine status to termination. Now, getting VM Status";
    /// Next: drain the Node.
    pub const INITIATE_DRAIN: &str = "Initiate node drain";
    /// Next: delete the Node's VolumeAttachments (after a forced drain).
    pub const DELETE_VOLUME_ATTACHMENTS: &str = "Delete Volume Attachments";
    /// Next: DeleteMachine.
    pub const INITIATE_VM_DELETION: &str = "Initiate VM deletion";
    /// Next: delete the Node object.
    pub const INITIATE_NODE_DELETION: &str = "Initiate node object deletion";
    /// Next: remove the Machine's finalizer.
    pub const INITIATE_FINALIZER_REMOVAL: &str = "Initiate machine object finalizer removal";
}

/// The label MCM looks for on Nodes to find a machine's Node when the `node` label is gone.
pub const MACHINE_NAME_NODE_LABEL: &str = "node.gardener.cloud/machine-name";

/// A bound on steps per reconcile, so a bug in a step cannot spin.
const MAX_STEPS_PER_RECONCILE: usize = 12;

/// One step of the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Set phase Terminating.
    MarkTerminating,
    /// Find the Node's name.
    GetVmStatus,
    /// Drain the Node.
    Drain,
    /// Delete the Node's VolumeAttachments.
    DeleteVolumeAttachments,
    /// DeleteMachine.
    DeleteVm,
    /// Delete the Node object.
    DeleteNode,
    /// Remove the Machine's finalizer.
    RemoveFinalizer,
}

impl Step {
    /// The step to run for `m`, MCM's dispatch: by phase, then by the first step word found
    /// in the description, in MCM's order; an unrecognised description restarts the flow.
    pub fn of(m: &Machine) -> Step {
        if m.phase() != phase::TERMINATING {
            return Step::MarkTerminating;
        }
        let description = m
            .status
            .as_ref()
            .and_then(|s| s.last_operation.as_ref())
            .map_or("", |l| l.description.as_str());
        [
            (step::GET_VM_STATUS, Step::GetVmStatus),
            (step::INITIATE_DRAIN, Step::Drain),
            (
                step::DELETE_VOLUME_ATTACHMENTS,
                Step::DeleteVolumeAttachments,
            ),
            (step::INITIATE_VM_DELETION, Step::DeleteVm),
            (step::INITIATE_NODE_DELETION, Step::DeleteNode),
            (step::INITIATE_FINALIZER_REMOVAL, Step::RemoveFinalizer),
        ]
        .into_iter()
        .find(|(word, _)| description.contains(word))
        .map_or(Step::MarkTerminating, |(_, s)| s)
    }
}

/// What a step wants after its record is written.
#[derive(Debug, Clone, PartialEq)]
enum After {
    /// Run the next step now.
    Next,
    /// Come back after this long (nothing failed).
    Wait(Duration),
    /// The step failed: retried after this long.
    Fail(Duration),
}

/// A step's result: the `lastOperation` to record and what comes next.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    description: String,
    state: &'static str,
    last_known_state: Option<String>,
    after: After,
}

impl Outcome {
    fn next(description: impl Into<String>) -> Self {
        Self {
            description: description.into(),
            state: state::PROCESSING,
            last_known_state: None,
            after: After::Next,
        }
    }

    fn failed(description: impl Into<String>, retry: Duration) -> Self {
        Self {
            description: description.into(),
            state: state::FAILED,
            last_known_state: None,
            after: After::Fail(retry),
        }
    }
}

/// The inputs every driver call of the flow needs.
struct DriverInput {
    class: std::sync::Arc<MachineClass>,
    provider_spec: Vec<u8>,
    secrets: SecretData,
}

/// Runs the delete flow for a Machine with a deletion timestamp, as far as it can go now.
pub async fn run(m: &Machine, ctx: &Context) -> Result<Action> {
    let name = m.name_any();
    if !m.finalizers().iter().any(|f| f == MACHINE_FINALIZER) {
        return Ok(Action::await_change());
    }
    if m.provider_id().is_none() && never_created::marked(m) {
        // No create that could reach the API was ever sent: there is no device to look for.
        tracing::info!(machine = %name, "no create was ever sent for this Machine; releasing it without a driver call");
        return remove_finalizer(m, ctx).await;
    }
    let class = match class_of(m, ctx) {
        Ok(class) => class,
        // Without a class nothing can have been created: create waits for the class and its
        // finalizer, and the finalizer keeps the class while this Machine exists. With a
        // providerID, keep retrying: the device exists and only the class has its credentials.
        Err(e @ (Error::InvalidClassRef { .. } | Error::ClassNotFound { .. }))
            if m.provider_id().is_none() =>
        {
            tracing::warn!(machine = %name, error = %e, "no MachineClass and no device; releasing the Machine");
            return remove_finalizer(m, ctx).await;
        }
        Err(e) => return Err(e),
    };
    let input = DriverInput {
        provider_spec: serde_json::to_vec(&class.provider_spec).unwrap_or_default(),
        secrets: secrets::load(&ctx.caches, &class),
        class,
    };
    let mut m = m.clone();
    for _ in 0..MAX_STEPS_PER_RECONCILE {
        let current = Step::of(&m);
        tracing::debug!(machine = %name, step = ?current, "delete flow step");
        let outcome = match current {
            Step::MarkTerminating => {
                let now = Timestamp::now();
                let update = StatusUpdate {
                    current: Some(status::current(phase::TERMINATING, false, now)),
                    last_operation: Some(last_op(
                        op::DELETE,
                        state::PROCESSING,
                        step::GET_VM_STATUS,
                        None,
                        now,
                    )),
                    ..Default::default()
                };
                match write(&m, ctx, &update).await? {
                    Some(updated) => {
                        tracing::info!(machine = %name, "machine terminating");
                        m = updated;
                        continue;
                    }
                    None => return Ok(Action::await_change()),
                }
            }
            Step::GetVmStatus => get_vm_status(&m, ctx, &input).await?,
            Step::Drain => match drain_node(&m, ctx).await {
                Some(o) => o,
                None => return Ok(Action::await_change()),
            },
            Step::DeleteVolumeAttachments => delete_volume_attachments(&m, ctx).await?,
            Step::DeleteVm => delete_vm(&m, ctx, &input).await,
            Step::DeleteNode => delete_node(&m, ctx).await,
            Step::RemoveFinalizer => return remove_finalizer(&m, ctx).await,
        };
        let now = Timestamp::now();
        let update = StatusUpdate {
            last_operation: Some(last_op(
                op::DELETE,
                outcome.state,
                outcome.description.clone(),
                None,
                now,
            )),
            last_known_state: outcome.last_known_state.clone(),
            ..Default::default()
        };
        let Some(updated) = write(&m, ctx, &update).await? else {
            return Ok(Action::await_change());
        };
        m = updated;
        match outcome.after {
            After::Next => {}
            After::Wait(d) => return Ok(Action::requeue(d)),
            After::Fail(retry_after) => {
                tracing::warn!(machine = %name, step = ?current, description = %outcome.description, "delete flow step failed");
                return Err(Error::DeleteStep {
                    description: outcome.description,
                    retry_after,
                });
            }
        }
    }
    Ok(Action::requeue(ctx.config.retry.short))
}

/// Writes `update` to the status subresource and returns the Machine as stored; `None` when
/// the Machine is already gone. A record that stays in the same step and differs only in
/// timestamps (or in a near-identical description: a failure repeating) is not written, as
/// MCM's similar-status rule says; a step change is always written, since the step is read
/// back from the description.
async fn write(m: &Machine, ctx: &Context, update: &StatusUpdate) -> Result<Option<Machine>> {
    let same_step = update.last_operation.as_ref().is_some_and(|lo| {
        let mut after = m.clone();
        let status = after.status.get_or_insert_with(Default::default);
        status.last_operation = Some(lo.clone());
        if let Some(c) = &update.current {
            status.current_status = Some(c.clone());
        }
        Step::of(&after) == Step::of(m)
    });
    if same_step && similar::is_similar(update, m.status.as_ref(), Timestamp::now()) {
        tracing::debug!(machine = %m.name_any(), "status similar to the current one; not written");
        return Ok(Some(m.clone()));
    }
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    match api
        .patch_status(
            &m.name_any(),
            &field_manager::patch(),
            &Patch::Merge(update.to_patch()),
        )
        .await
    {
        Ok(updated) => {
            ctx.own_writes.wrote(&updated.metadata);
            Ok(Some(updated))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::kube("patch Machine status")(e)),
    }
}

/// Removes our finalizer (conditional on the resourceVersion read, see
/// [`machine::write_finalizers`]).
async fn remove_finalizer(m: &Machine, ctx: &Context) -> Result<Action> {
    if !m.finalizers().iter().any(|f| f == MACHINE_FINALIZER) {
        return Ok(Action::await_change());
    }
    let others: Vec<String> = m
        .finalizers()
        .iter()
        .filter(|f| *f != MACHINE_FINALIZER)
        .cloned()
        .collect();
    if machine::write_finalizers(m, ctx, others, "remove Machine finalizer").await? {
        tracing::info!(machine = %m.name_any(), provider_id = m.provider_id().unwrap_or_default(), node = m.node_name().unwrap_or_default(), "machine deleted");
    }
    Ok(Action::await_change())
}

/// MCM's `updateMachineStatusAndNodeLabel`: the drain needs the Node's name.
async fn get_vm_status(m: &Machine, ctx: &Context, input: &DriverInput) -> Result<Outcome> {
    let Some(target) = &ctx.target else {
        return Ok(Outcome::next(format!(
            "Running without target cluster, skipping node drain and volume attachment deletion. {}",
            step::INITIATE_VM_DELETION
        )));
    };
    if m.node_name().is_some() {
        return Ok(Outcome::next(step::INITIATE_DRAIN));
    }
    // A Node labelled with the machine's name, else the driver's answer.
    let nodes: Api<Node> = Api::all(target.clone());
    let labelled = nodes
        .list(&ListParams::default().labels(&format!("{MACHINE_NAME_NODE_LABEL}={}", m.name_any())))
        .await
        .map_err(Error::kube("list Nodes"))?
        .items
        .into_iter()
        .next()
        .map(|n| n.name_any());
    let found = match labelled {
        Some(n) => Ok(n),
        None if !ctx.capabilities.has(Rpc::GetMachineStatus) => Err((
            Code::Unimplemented,
            "GetMachineStatus not offered".to_owned(),
        )),
        None => {
            let (name, secrets) = (m.name_any(), input.secrets.to_cmi());
            let machine = MachineRef::new(&name, &input.provider_spec, &secrets)
                .with_provider_id(m.provider_id().unwrap_or_default());
            ctx.cmi
                .get_machine_status(machine)
                .await
                .map(|r| r.node_name)
                .map_err(|e| (e.code(), e.message().to_owned()))
        }
    };
    match found {
        Ok(node) => {
            if !node.is_empty() {
                let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
                api.patch(
                    &m.name_any(),
                    &field_manager::patch(),
                    &Patch::Merge(json!({"metadata": {"labels": {NODE_LABEL: node}}})),
                )
                .await
                .map_err(Error::kube("patch Machine node label"))?;
            }
            Ok(Outcome::next(step::INITIATE_DRAIN))
        }
        Err((Code::Unimplemented, _)) => Ok(Outcome::next(step::INITIATE_DRAIN)),
        Err((Code::NotFound, _)) => Ok(Outcome::next(format!(
            "VM was not found at provider. Moving forward to node drain. {}",
            step::INITIATE_DRAIN
        ))),
        Err((code, _)) if status::is_transient(code) => Ok(Outcome::failed(
            format!(
                "Error occurred with decoding machine error status while getting VM status, aborting with retry. {}",
                step::GET_VM_STATUS
            ),
            ctx.config.retry.short,
        )),
        Err((code, message)) => Ok(Outcome::failed(
            format!(
                "Error occurred with decoding machine error status while getting VM status, aborting without retry. machine code: {} {}",
                status::machine_codes_error(code, &message),
                step::GET_VM_STATUS
            ),
            ctx.config.retry.medium,
        )),
    }
}

/// The re-read Machine's drain outcome; `None` when the controller is stopping.
async fn drain_node(m: &Machine, ctx: &Context) -> Option<Outcome> {
    let (Some(target), Some(node)) = (&ctx.target, m.node_name()) else {
        return Some(Outcome::next(format!(
            "Skipping drain as nodeName is not a valid one for machine. {}",
            step::INITIATE_VM_DELETION
        )));
    };
    let mode = mode::decide(m, &ctx.config, Timestamp::now());
    let forced = mode.force.is_some();
    tracing::info!(machine = %m.name_any(), %node, force = ?mode.force, "draining node");
    if let Err(e) = drain::mark_terminating(target, node, m.phase()).await {
        if forced {
            tracing::warn!(machine = %m.name_any(), %node, error = %e, "could not set the Terminating condition; forced deletion goes on");
        } else {
            return Some(Outcome::failed(
                format!(
                    "Drain failed due to failure in update of node conditions - {e}. Will retry in next sync. {}",
                    step::INITIATE_DRAIN
                ),
                ctx.config.retry.short,
            ));
        }
    }
    let drain = Drain {
        target: target.clone(),
        cmi: &ctx.cmi,
        capabilities: &ctx.capabilities,
        node: node.to_owned(),
        mode,
        pv_detach_timeout: ctx.config.pv_detach_timeout,
        pv_reattach_timeout: ctx.config.pv_reattach_timeout,
        stop: ctx.stop.clone(),
    };
    let started = std::time::Instant::now();
    let result = drain.run().await;
    if result.is_ok() {
        machine_metrics::record_drained(&ctx.metrics.mcm, m, started.elapsed());
    }
    Some(match result {
        Ok(()) if forced => Outcome::next(format!(
            "Force Drain successful. {}",
            step::DELETE_VOLUME_ATTACHMENTS
        )),
        Ok(()) => Outcome::next(format!("Drain successful. {}", step::INITIATE_VM_DELETION)),
        Err(DrainError::Stopped) => return None,
        Err(DrainError::Failed(e)) if forced => Outcome::next(format!(
            "Drain failed due to - {e}. However, since it's a force deletion shall continue deletion of VM. {}",
            step::DELETE_VOLUME_ATTACHMENTS
        )),
        Err(DrainError::Failed(e)) => Outcome::failed(
            format!(
                "Drain failed due to - {e}. Will retry in next sync. {}",
                step::INITIATE_DRAIN
            ),
            ctx.config.retry.short,
        ),
    })
}

/// MCM's `deleteNodeVolAttachments`: after a forced drain the Node's volumes are released
/// by deleting its VolumeAttachments; the step repeats until none is live.
async fn delete_volume_attachments(m: &Machine, ctx: &Context) -> Result<Outcome> {
    let (Some(target), Some(node)) = (&ctx.target, m.node_name()) else {
        return Ok(Outcome::next(format!(
            "Skipping deleteNodeVolAttachments due to - no node name. Moving to VM Deletion. {}",
            step::INITIATE_VM_DELETION
        )));
    };
    let nodes: Api<Node> = Api::all(target.clone());
    let Some(n) = nodes.get_opt(node).await.map_err(Error::kube("get Node"))? else {
        return Ok(Outcome::next(format!(
            "Skipping deleteNodeVolAttachments due to - node {node:?} not found. Moving to VM Deletion. {}",
            step::INITIATE_VM_DELETION
        )));
    };
    if drain::volumes::attached_names(&n).is_empty() {
        return Ok(Outcome::next(format!(
            "Node Volumes for node: {node} are already detached. Moving to VM Deletion. {}",
            step::INITIATE_VM_DELETION
        )));
    }
    match drain::delete_volume_attachments(target, node).await {
        Ok(0) => Ok(Outcome::next(format!(
            "No Live VolumeAttachments for node: {node}. Moving to VM Deletion. {}",
            step::INITIATE_VM_DELETION
        ))),
        Ok(n) => {
            tracing::info!(machine = %m.name_any(), %node, deleted = n, "volume attachments deleted; checking again");
            Ok(wait_in_step(m, ctx.config.retry.short))
        }
        Err(e) => {
            tracing::warn!(machine = %m.name_any(), %node, error = %e, "deleting volume attachments failed; retrying");
            Ok(wait_in_step(m, ctx.config.retry.short))
        }
    }
}

/// Stay in the current step (the description is kept) and come back later.
fn wait_in_step(m: &Machine, after: Duration) -> Outcome {
    let lo = m.status.as_ref().and_then(|s| s.last_operation.as_ref());
    Outcome {
        description: lo.map(|l| l.description.clone()).unwrap_or_default(),
        state: state::PROCESSING,
        last_known_state: None,
        after: After::Wait(after),
    }
}

/// MCM's `deleteVM`.
async fn delete_vm(m: &Machine, ctx: &Context, input: &DriverInput) -> Outcome {
    let (name, secrets) = (m.name_any(), input.secrets.to_cmi());
    let machine = MachineRef::new(&name, &input.provider_spec, &secrets)
        .with_provider_id(m.provider_id().unwrap_or_default())
        .with_last_known_state(m.last_known_state().as_bytes());
    match ctx.cmi.delete_machine(machine).await {
        Ok(last_known_state) => {
            tracing::info!(machine = %m.name_any(), "machine deleted on cloud provider");
            machine_metrics::record_deleted(&ctx.metrics.mcm, m, &input.class, Timestamp::now());
            let lks = String::from_utf8_lossy(&last_known_state).into_owned();
            Outcome {
                last_known_state: Some(lks).filter(|s| !s.is_empty()),
                ..Outcome::next(format!(
                    "VM deletion was successful. {}",
                    step::INITIATE_NODE_DELETION
                ))
            }
        }
        Err(e) if e.code() == Code::NotFound => Outcome::next(format!(
            "VM not found. Continuing deletion flow. {}",
            step::INITIATE_NODE_DELETION
        )),
        Err(e) => {
            let error = status::machine_codes_error(e.code(), e.message());
            let retry = ctx.config.retry.after_delete_error(e.code());
            let how = if status::is_transient(e.code()) {
                "However, will re-try in the next resync."
            } else {
                "Aborting operation."
            };
            Outcome::failed(
                format!(
                    "VM deletion failed due to - {error}. {how} {}",
                    step::INITIATE_VM_DELETION
                ),
                retry,
            )
        }
    }
}

/// MCM's `deleteNodeObject`.
async fn delete_node(m: &Machine, ctx: &Context) -> Outcome {
    let retry = ctx.config.retry.short;
    let (Some(target), Some(node)) = (&ctx.target, m.node_name()) else {
        return Outcome::next(format!(
            "Label {NODE_LABEL:?} not present on machine {:?}, continuing deletion flow. {}",
            m.name_any(),
            step::INITIATE_FINALIZER_REMOVAL
        ));
    };
    // The Node's finalizer is removed before the delete, so a Node can never stay
    // Terminating after its machine is gone.
    if let Err(e) = node_finalizer::remove(target, node).await {
        return Outcome::failed(
            format!(
                "Removal of finalizers from Node Object {node:?} failed due to error: {e}, Retrying. {}",
                step::INITIATE_NODE_DELETION
            ),
            retry,
        );
    }
    let nodes: Api<Node> = Api::all(target.clone());
    match nodes.delete(node, &Default::default()).await {
        Ok(_) => {
            tracing::info!(machine = %m.name_any(), %node, "node object deleted");
            Outcome::next(format!(
                "Deletion of Node Object {node:?} is successful. {}",
                step::INITIATE_FINALIZER_REMOVAL
            ))
        }
        Err(e) if is_not_found(&e) => Outcome::next(format!(
            "No node object found for {node:?}, continuing deletion flow. {}",
            step::INITIATE_FINALIZER_REMOVAL
        )),
        Err(e) => Outcome::failed(
            format!(
                "Deletion of Node Object {node:?} failed due to error: {e}. {}",
                step::INITIATE_NODE_DELETION
            ),
            retry,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn machine(phase: &str, description: &str) -> Machine {
        serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {"class": {"kind": "MachineClass", "name": "c"}},
            "status": {"currentStatus": {"phase": phase},
                       "lastOperation": {"description": description, "state": "Processing", "type": "Delete"}}
        }))
        .unwrap()
    }

    #[test]
    fn the_step_comes_from_the_phase_then_the_description() {
        let cases = [
            ("Running", step::INITIATE_DRAIN, Step::MarkTerminating),
            ("Terminating", step::GET_VM_STATUS, Step::GetVmStatus),
            (
                "Terminating",
                "VM was not found at provider. Moving forward to node drain. Initiate node drain",
                Step::Drain,
            ),
            (
                "Terminating",
                "Drain failed due to - x. Will retry in next sync. Initiate node drain",
                Step::Drain,
            ),
            (
                "Terminating",
                "Force Drain successful. Delete Volume Attachments",
                Step::DeleteVolumeAttachments,
            ),
            (
                "Terminating",
                "Drain successful. Initiate VM deletion",
                Step::DeleteVm,
            ),
            (
                "Terminating",
                "Skipping drain as nodeName is not a valid one for machine. Initiate VM deletion",
                Step::DeleteVm,
            ),
            (
                "Terminating",
                "VM deletion was successful. Initiate node object deletion",
                Step::DeleteNode,
            ),
            (
                "Terminating",
                "No node object found for \"n\", continuing deletion flow. Initiate machine object finalizer removal",
                Step::RemoveFinalizer,
            ),
            (
                "Terminating",
                "Creating machine on cloud provider",
                Step::MarkTerminating,
            ),
            ("Terminating", "", Step::MarkTerminating),
        ];
        for (phase, description, want) in cases {
            assert_eq!(
                Step::of(&machine(phase, description)),
                want,
                "{phase} / {description}"
            );
        }
    }

    /// Every description the flow writes leads to the step it announces (the words are what
    /// a restarted controller, ours or MCM's, resumes from).
    #[test]
    fn written_descriptions_resume_where_they_say() {
        let next = |d: &str| Step::of(&machine("Terminating", d));
        assert_eq!(
            next(
                &Outcome::next(format!("Drain successful. {}", step::INITIATE_VM_DELETION))
                    .description
            ),
            Step::DeleteVm
        );
        assert_eq!(
            next(&format!(
                "Deletion of Node Object \"n\" is successful. {}",
                step::INITIATE_FINALIZER_REMOVAL
            )),
            Step::RemoveFinalizer
        );
        assert_eq!(
            next(&format!(
                "VM deletion failed due to - e. Aborting operation. {}",
                step::INITIATE_VM_DELETION
            )),
            Step::DeleteVm
        );
        assert_eq!(
            next(&format!(
                "Running without target cluster, skipping node drain and volume attachment deletion. {}",
                step::INITIATE_VM_DELETION
            )),
            Step::DeleteVm
        );
    }

    /// A drain that cannot move a pod (a budget that never allows an eviction) records
    /// `{Delete, Failed, "… Initiate node drain"}` and stops there: the mock fails the test
    /// on any further call, and DeleteMachine is never reached.
    #[tokio::test]
    async fn a_failed_drain_records_the_failure_and_keeps_the_device() {
        use crate::controller::fixtures::{Call, caches, context_with, mock_client};
        const MACHINES: &str = "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machines";
        let now = Timestamp::now().to_string();
        let m: Machine = serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m", "namespace": "ns", "resourceVersion": "7",
                         "labels": {"node": "n1"}, "deletionTimestamp": now,
                         "finalizers": [MACHINE_FINALIZER]},
            "spec": {"class": {"kind": "MachineClass", "name": "c"}, "providerID": "equinixmetal://x"},
            "status": {"currentStatus": {"phase": "Terminating"},
                       "lastOperation": {"description": step::INITIATE_DRAIN, "state": "Processing", "type": "Delete"}}
        }))
        .unwrap();
        let class = json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
            "metadata": {"name": "c", "namespace": "ns", "finalizers": [MACHINE_FINALIZER]}, "providerSpec": {}});
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}, "uid": "u1"},
                         "spec": {"nodeName": "n1", "containers": []}, "status": {"phase": "Running"}});
        let too_many = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "TooManyRequests",
            "code": 429, "message": "Cannot evict pod as it would violate the pod's disruption budget."});
        let budget = json!({"metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
            "status": {"observedGeneration": 1, "expectedPods": 1, "currentHealthy": 1, "desiredHealthy": 1, "disruptionsAllowed": 0}});
        let stored = serde_json::to_value(&m).unwrap();
        let (client, mock) = mock_client(vec![
            Call::new("GET", "/api/v1/nodes/n1", 200, node.clone()),
            Call::new("PATCH", "/api/v1/nodes/n1/status", 200, node.clone()).body(|b| {
                let c = &b["status"]["conditions"][0];
                assert_eq!((c["type"].as_str(), c["status"].as_str(), c["reason"].as_str()),
                           (Some("Terminating"), Some("True"), Some("ScaleDown")), "{b}");
            }),
            Call::new("GET", "/api/v1/nodes/n1", 200, node.clone()),
            Call::new("PATCH", "/api/v1/nodes/n1?", 200, node)
                .body(|b| assert_eq!(b["spec"]["unschedulable"], true, "{b}")),
            Call::new("GET", "/api/v1/pods?", 200, json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod]})),
            Call::new("POST", "/api/v1/namespaces/default/pods/web/eviction", 429, too_many),
            Call::new("GET", "/apis/policy/v1/namespaces/default/poddisruptionbudgets", 200,
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudgetList", "metadata": {}, "items": [budget]})),
            Call::new("PATCH", format!("{MACHINES}/m/status"), 200, stored).body(|b| {
                let lo = &b["status"]["lastOperation"];
                assert_eq!(lo["state"], "Failed", "{b}");
                assert_eq!(lo["type"], "Delete", "{b}");
                assert_eq!(
                    lo["description"],
                    "Drain failed due to - error while evicting pod \"web\": pod disruption budget default/web \
                     is misconfigured and requires zero voluntary evictions. Will retry in next sync. Initiate node drain",
                    "{b}"
                );
            }),
        ]);
        let ctx = context_with(client, caches(vec![], vec![class], vec![], vec![]));
        let err = run(&m, &ctx).await.unwrap_err();
        match err {
            Error::DeleteStep { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(5))
            }
            other => panic!("unexpected {other}"),
        }
        mock.await.unwrap();
    }
}
