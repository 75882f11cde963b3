//! The Node side of a live Machine, run on every reconcile of a Machine whose Node exists:
//!
//! 1. A Node being deleted (by a user, or anything else) deletes its Machine, as MCM does:
//!    deleting the Node is the documented way to replace a machine. The Node finalizer is
//!    what makes the deletion visible; the Machine's delete flow removes it.
//! 2. Otherwise the Node gets our finalizer ([`super::node_finalizer`]), the Machine's
//!    `spec.nodeTemplate`, the class's virtual capacity and the machine-name label
//!    ([`super::node_template`]) — in at most two writes (status, then object), and none when
//!    the Node is already as it should be.

use k8s_openapi::api::core::v1::Node;
use kube::{Api, ResourceExt, api::Patch};

use super::{
    context::Context,
    crd::{Machine, MachineClass},
    error::{Error, Result, is_not_found},
    field_manager, node_finalizer,
    node_template::{self, NodeTemplate, Plan},
};

/// What the reconcile does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Carry on (health check, create flow).
    Continue,
    /// The Node is going away and the Machine was deleted: its delete flow runs next.
    MachineDeleted,
}

/// Syncs `node` (the Machine's Node, as just read) with the Machine.
pub async fn sync(m: &Machine, class: &MachineClass, node: &Node, ctx: &Context) -> Result<Next> {
    let Some(target) = &ctx.target else {
        return Ok(Next::Continue);
    };
    if node.metadata.deletion_timestamp.is_some() {
        return delete_machine(m, node, ctx).await;
    }
    let plan = plan_for(m, class, node);
    let nodes: Api<Node> = Api::all(target.clone());
    let name = node.name_any();
    let mut resource_version = node.resource_version();
    if let Some(status) = plan.status_patch() {
        let updated = nodes
            .patch_status(&name, &field_manager::patch(), &Patch::Merge(status))
            .await
            .map_err(Error::kube("patch Node capacity"))?;
        resource_version = updated.resource_version();
    }
    let finalizers = node_finalizer::with_ours(node);
    if let Some(patch) = plan.object_patch(resource_version.as_deref(), finalizers.as_deref()) {
        nodes
            .patch(&name, &field_manager::patch(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube("patch Node"))?;
        tracing::info!(
            machine = %m.name_any(),
            node = %name,
            template = plan.changes_object(),
            finalizer = finalizers.is_some(),
            "Node synced with its Machine"
        );
    }
    Ok(Next::Continue)
}

/// The writes for this Node. A template or last-applied record that cannot be read is
/// logged and leaves the template part alone (the finalizer and the machine-name label still
/// go on): guessing could strip labels someone else owns.
fn plan_for(m: &Machine, class: &MachineClass, node: &Node) -> Plan {
    let name = m.name_any();
    let capacity = node_template::virtual_capacity(class.node_template.as_ref());
    let planned = NodeTemplate::from_machine(m.spec.node_template.as_ref())
        .and_then(|t| node_template::plan(&name, &t, &capacity, node));
    match planned {
        Ok(plan) => plan,
        Err(reason) => {
            tracing::warn!(machine = %name, node = %node.name_any(), %reason, "nodeTemplate not applied");
            let mut plan = Plan::default();
            if node.labels().get(node_template::MACHINE_NAME_LABEL) != Some(&name) {
                plan.labels
                    .insert(node_template::MACHINE_NAME_LABEL.to_owned(), Some(name));
            }
            plan
        }
    }
}

async fn delete_machine(m: &Machine, node: &Node, ctx: &Context) -> Result<Next> {
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    match api.delete(&m.name_any(), &Default::default()).await {
        Ok(_) => {
            tracing::info!(machine = %m.name_any(), node = %node.name_any(), "Node is being deleted; deleting its Machine");
            Ok(Next::MachineDeleted)
        }
        Err(e) if is_not_found(&e) => Ok(Next::MachineDeleted),
        Err(e) => Err(Error::Kube {
            action: "delete Machine of a deleted Node",
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{
        crd::MachineSpec,
        fixtures::{Call, context, mock_client},
        node_finalizer::NODE_FINALIZER,
        node_template::{LAST_APPLIED_ALT, MACHINE_NAME_LABEL},
    };
    use serde_json::json;

    fn machine(template: serde_json::Value) -> Machine {
        let mut m = Machine::new(
            "m1",
            MachineSpec {
                node_template: Some(template),
                ..Default::default()
            },
        );
        m.metadata.namespace = Some("ns".into());
        m
    }

    #[tokio::test]
    async fn one_conditional_write_brings_a_fresh_node_in_line() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "resourceVersion": "9", "finalizers": ["example.com/keep"]}
        }))
        .unwrap();
        let (client, mock) = mock_client(vec![
            Call::new(
                "PATCH",
                "/api/v1/nodes/n1?",
                200,
                json!({"metadata": {"name": "n1"}}),
            )
            .body(|b| {
                let meta = &b["metadata"];
                assert_eq!(meta["resourceVersion"], "9");
                assert_eq!(
                    meta["finalizers"],
                    json!(["example.com/keep", NODE_FINALIZER])
                );
                assert_eq!(meta["labels"]["pool"], "a");
                assert_eq!(meta["labels"][MACHINE_NAME_LABEL], "m1");
                assert!(meta["annotations"][LAST_APPLIED_ALT].is_string());
            }),
        ]);
        let m = machine(json!({"metadata": {"labels": {"pool": "a"}}}));
        let next = sync(&m, &MachineClass::default(), &node, &context(client))
            .await
            .unwrap();
        assert_eq!(next, Next::Continue);
        mock.await.unwrap();
    }

    #[tokio::test]
    async fn a_deleting_node_deletes_its_machine_and_gets_no_finalizer() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "resourceVersion": "9", "finalizers": [NODE_FINALIZER],
                         "deletionTimestamp": "2026-01-01T00:00:00Z"}
        }))
        .unwrap();
        let (client, mock) = mock_client(vec![Call::new(
            "DELETE",
            "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machines/m1",
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        )]);
        let next = sync(
            &machine(json!({})),
            &MachineClass::default(),
            &node,
            &context(client),
        )
        .await
        .unwrap();
        assert_eq!(next, Next::MachineDeleted);
        mock.await.unwrap();
    }
}
