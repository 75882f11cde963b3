//! Following a moved pod's volumes: detached from the drained Node (its
//! `status.volumesAttached`), then attached elsewhere (a `VolumeAttachment` of the same
//! PersistentVolume, attached on another Node). Pure decisions; the drain polls and watches.

use k8s_openapi::api::{core::v1::Node, storage::v1::VolumeAttachment};

/// A PersistentVolume a drain follows: its name and the driver's volume ID for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedVolume {
    /// The PersistentVolume's name.
    pub pv: String,
    /// What `GetVolumeIDs` returned for its spec.
    pub volume_id: String,
}

/// Names in `node.status.volumesAttached` (e.g. `kubernetes.io/csi/<driver>^<handle>`).
pub fn attached_names(node: &Node) -> Vec<String> {
    node.status
        .as_ref()
        .and_then(|s| s.volumes_attached.as_ref())
        .map(|v| v.iter().map(|a| a.name.clone()).collect())
        .unwrap_or_default()
}

/// Whether any of `volumes` is still attached. The attached name embeds the volume ID, so
/// this matches by containment (MCM matches the ID as a pattern inside the name).
pub fn any_still_attached(attached: &[String], volumes: &[TrackedVolume]) -> bool {
    volumes
        .iter()
        .any(|v| !v.volume_id.is_empty() && attached.iter().any(|a| a.contains(&v.volume_id)))
}

/// Whether `va` shows `pv` attached on a Node other than `drained`.
pub fn reattached_elsewhere(va: &VolumeAttachment, pv: &str, drained: &str) -> bool {
    va.spec.source.persistent_volume_name.as_deref() == Some(pv)
        && va.spec.node_name != drained
        && va.status.as_ref().is_some_and(|s| s.attached)
}

/// The VolumeAttachments on `node` that are not already being deleted.
pub fn live_on_node<'a>(vas: &'a [VolumeAttachment], node: &str) -> Vec<&'a VolumeAttachment> {
    vas.iter()
        .filter(|va| va.spec.node_name == node && va.metadata.deletion_timestamp.is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn va(name: &str, pv: &str, node: &str, attached: bool, deleting: bool) -> VolumeAttachment {
        let mut v: VolumeAttachment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"attacher": "csi.example.com", "nodeName": node,
                     "source": {"persistentVolumeName": pv}},
            "status": {"attached": attached}
        }))
        .unwrap();
        if deleting {
            v.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-01-01T00:00:00Z".parse().unwrap(),
                ));
        }
        v
    }

    #[test]
    fn detach_is_seen_by_volume_id_inside_the_attached_name() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
            "status": {"volumesAttached": [{"name": "kubernetes.io/csi/csi.example.com^vol-123", "devicePath": ""}]}}))
        .unwrap();
        let attached = attached_names(&node);
        let tracked = |id: &str| {
            vec![TrackedVolume {
                pv: "pv".into(),
                volume_id: id.into(),
            }]
        };
        assert!(any_still_attached(&attached, &tracked("vol-123")));
        assert!(!any_still_attached(&attached, &tracked("vol-999")));
        assert!(!any_still_attached(&attached, &tracked("")));
        assert!(!any_still_attached(&[], &tracked("vol-123")));
    }

    #[test]
    fn reattach_needs_another_node_and_attached_true() {
        assert!(reattached_elsewhere(
            &va("a", "pv1", "n2", true, false),
            "pv1",
            "n1"
        ));
        assert!(!reattached_elsewhere(
            &va("a", "pv1", "n1", true, false),
            "pv1",
            "n1"
        ));
        assert!(!reattached_elsewhere(
            &va("a", "pv1", "n2", false, false),
            "pv1",
            "n1"
        ));
        assert!(!reattached_elsewhere(
            &va("a", "pv2", "n2", true, false),
            "pv1",
            "n1"
        ));
    }

    #[test]
    fn live_attachments_of_a_node_skip_deleting_ones_and_other_nodes() {
        let all = vec![
            va("a", "pv1", "n1", true, false),
            va("b", "pv2", "n1", true, true),
            va("c", "pv3", "n2", true, false),
        ];
        let live: Vec<_> = live_on_node(&all, "n1")
            .into_iter()
            .map(|v| v.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(live, ["a"]);
    }
}
