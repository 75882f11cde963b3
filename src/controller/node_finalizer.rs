//! The finalizer `node.machine.sapcloud.io/machine-controller` on the Nodes of live Machines
//! (MCM's `node.go`). It turns a user's `kubectl delete node` into something the controller
//! sees: the Node stays, marked for deletion, and the controller deletes its Machine (the
//! documented way to replace a machine); the delete flow then removes the finalizer and the
//! Node goes.
//!
//! The delete flow removes the finalizer right before it deletes the Node, whoever put it
//! there: a Node finalized by MCM's Go sidecar (same name) must not stay Terminating forever
//! after a migration to this controller. Other controllers' finalizers are left alone.

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, ResourceExt, api::Patch};
use serde_json::json;

use super::{
    error::{Error, Result, is_not_found},
    field_manager,
};

/// MCM's Node finalizer name.
pub const NODE_FINALIZER: &str = "node.machine.sapcloud.io/machine-controller";

/// The Node's finalizers with ours added, or `None` when it is there already or the Node is
/// being deleted (the API server refuses new finalizers then, and there is nothing to
/// guard any more).
pub fn with_ours(node: &Node) -> Option<Vec<String>> {
    if node.metadata.deletion_timestamp.is_some() || has_ours(node) {
        return None;
    }
    let mut list = node.finalizers().to_vec();
    list.push(NODE_FINALIZER.to_owned());
    Some(list)
}

/// Whether the Node carries our finalizer.
pub fn has_ours(node: &Node) -> bool {
    node.finalizers().iter().any(|f| f == NODE_FINALIZER)
}

/// The Node's finalizers without ours, or `None` when ours is not there.
pub fn without_ours(node: &Node) -> Option<Vec<String>> {
    has_ours(node).then(|| {
        node.finalizers()
            .iter()
            .filter(|f| *f != NODE_FINALIZER)
            .cloned()
            .collect()
    })
}

/// Attempts at removing our finalizer when the Node keeps changing under the write.
const ATTEMPTS: usize = 5;

/// Removes our finalizer from the Node `name` before the delete flow deletes it. A missing
/// Node is fine. The write is conditional on the Node's resourceVersion, so a finalizer
/// another controller adds meanwhile is never dropped; a conflict (most often a status
/// heartbeat, or the Node's own deletion, landing between read and write) is retried at
/// once on a fresh read, so like MCM's unconditional patch it does not fail the step.
pub async fn remove(target: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(target.clone());
    let mut attempt = 1;
    loop {
        let Some(node) = nodes.get_opt(name).await.map_err(Error::kube("get Node"))? else {
            return Ok(());
        };
        let Some(rest) = without_ours(&node) else {
            return Ok(());
        };
        let patch = json!({"metadata": {
            "resourceVersion": node.resource_version(),
            "finalizers": rest,
        }});
        match nodes
            .patch(name, &field_manager::patch(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    node = name,
                    finalizer = NODE_FINALIZER,
                    "Node finalizer removed"
                );
                return Ok(());
            }
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < ATTEMPTS => {
                tracing::debug!(
                    node = name,
                    attempt,
                    "Node changed under the finalizer removal; retrying"
                );
                attempt += 1;
            }
            Err(e) => {
                return Err(Error::Kube {
                    action: "remove Node finalizer",
                    source: e,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{Call, mock_client};

    fn node(finalizers: &[&str], deleting: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {
                "name": "n1", "resourceVersion": "7",
                "finalizers": finalizers,
                "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z"),
            }
        }))
        .unwrap()
    }

    #[test]
    fn ours_is_added_next_to_others_once_and_never_to_a_deleting_node() {
        assert_eq!(
            with_ours(&node(&["example.com/keep"], false)),
            Some(vec![
                "example.com/keep".to_owned(),
                NODE_FINALIZER.to_owned()
            ])
        );
        assert_eq!(with_ours(&node(&[NODE_FINALIZER], false)), None);
        assert_eq!(with_ours(&node(&[], true)), None);
    }

    #[test]
    fn only_ours_is_removed() {
        assert_eq!(
            without_ours(&node(&["a/x", NODE_FINALIZER, "b/y"], true)),
            Some(vec!["a/x".to_owned(), "b/y".to_owned()])
        );
        assert_eq!(without_ours(&node(&["a/x"], true)), None);
    }

    #[tokio::test]
    async fn removal_is_conditional_on_the_resource_version() {
        let n = serde_json::to_value(node(&["a/x", NODE_FINALIZER], true)).unwrap();
        let (client, mock) = mock_client(vec![
            Call::new("GET", "/api/v1/nodes/n1", 200, n.clone()),
            Call::new("PATCH", "/api/v1/nodes/n1?", 200, n).body(|b| {
                assert_eq!(b["metadata"]["resourceVersion"], "7");
                assert_eq!(b["metadata"]["finalizers"], json!(["a/x"]));
            }),
        ]);
        remove(&client, "n1").await.unwrap();
        mock.await.unwrap();
    }

    #[tokio::test]
    async fn a_conflict_is_retried_on_a_fresh_read() {
        let old = serde_json::to_value(node(&[NODE_FINALIZER], false)).unwrap();
        let mut fresh = serde_json::to_value(node(&[NODE_FINALIZER, "b/y"], true)).unwrap();
        fresh["metadata"]["resourceVersion"] = json!("8");
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Conflict", "code": 409, "message": "the object has been modified"});
        let (client, mock) = mock_client(vec![
            Call::new("GET", "/api/v1/nodes/n1", 200, old),
            Call::new("PATCH", "/api/v1/nodes/n1?", 409, conflict),
            Call::new("GET", "/api/v1/nodes/n1", 200, fresh.clone()),
            Call::new("PATCH", "/api/v1/nodes/n1?", 200, fresh).body(|b| {
                assert_eq!(b["metadata"]["resourceVersion"], "8");
                assert_eq!(b["metadata"]["finalizers"], json!(["b/y"]));
            }),
        ]);
        remove(&client, "n1").await.unwrap();
        mock.await.unwrap();
    }
}
