//! The field manager every write of the controller names, so `managedFields` on Machines,
//! MachineClasses, Secrets, Nodes, Leases and evictions say which fields this controller owns
//! (without one the API server files them under the client's user agent, which kube-rs
//! leaves empty). No write depends on MCM's own manager name: every write here is a merge or
//! JSON patch, a create or a replace, none a server-side apply that could conflict with MCM.

use kube::api::{EvictParams, PatchParams, PostParams};

/// The manager name on every write.
pub const FIELD_MANAGER: &str = "metal-driver";

/// Parameters of a patch (merge, JSON or strategic) under [`FIELD_MANAGER`].
pub fn patch() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Parameters of a create or replace under [`FIELD_MANAGER`].
pub fn post() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// Parameters of an eviction (a create of the `eviction` subresource) under
/// [`FIELD_MANAGER`].
pub fn evict() -> EvictParams {
    EvictParams {
        post_options: post(),
        ..EvictParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of write carries the manager as the API server reads it: the
    /// `fieldManager` query parameter.
    #[test]
    fn every_parameter_set_names_the_manager() {
        let query = |url: String| {
            assert!(
                url.contains(&format!("fieldManager={FIELD_MANAGER}")),
                "{url}"
            );
        };
        let req = kube::core::Request::new("/api/v1/namespaces/ns/pods");
        query(
            req.patch(
                "p",
                &patch(),
                &kube::api::Patch::Merge(serde_json::json!({})),
            )
            .unwrap()
            .uri()
            .to_string(),
        );
        query(req.create(&post(), vec![]).unwrap().uri().to_string());
        query(req.replace("p", &post(), vec![]).unwrap().uri().to_string());
        let evict = evict();
        assert_eq!(
            evict.post_options.field_manager.as_deref(),
            Some(FIELD_MANAGER)
        );
    }
}
