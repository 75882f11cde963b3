//! Where the controller's Secrets map comes from: the class's `secretRef` and
//! `credentialsSecretRef`, read from the Secret cache and merged as MCM does (see
//! [`crate::secret_data`], which the `machine` CLI shares).
//!
//! Secret values never reach a log line or an error message from here: errors name keys and
//! Secret names only.

use k8s_openapi::api::core::v1::SecretReference;

use crate::secret_data::SecretData;

use super::caches::Caches;
use super::crd::MachineClass;

/// Which namespace a reference points into: its own, or the class's when unset.
fn ref_namespace<'a>(r: &'a SecretReference, class_ns: &'a str) -> &'a str {
    r.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(class_ns)
}

/// Merges the class's Secrets, read from the Secret cache as MCM reads its Secret lister.
/// Like MCM (whose lister is limited to `--namespace`), a Secret that does not exist, or
/// lives in another namespace, is skipped with a warning rather than failing: the driver then
/// reports what is missing.
pub fn load(caches: &Caches, class: &MachineClass) -> SecretData {
    let namespace = caches.namespace();
    let mut found = Vec::new();
    for r in [&class.secret_ref, &class.credentials_secret_ref]
        .into_iter()
        .flatten()
    {
        let Some(name) = r.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        if ref_namespace(r, namespace) != namespace {
            tracing::warn!(
                secret = name,
                secret_namespace = ref_namespace(r, namespace),
                "MachineClass refers to a Secret outside --namespace; skipped as MCM does"
            );
            continue;
        }
        match caches.secret(name) {
            Some(secret) => found.push(secret),
            None => tracing::warn!(
                secret = name,
                "Secret referenced by the MachineClass not found"
            ),
        }
    }
    SecretData::merge(found.iter().map(|s| {
        s.data
            .iter()
            .flatten()
            .map(|(key, value)| (key.clone(), value.0.clone()))
    }))
}

/// Names of the Secrets a class refers to in `namespace` (for mapping Secret events).
pub fn referenced_names<'a>(
    class: &'a MachineClass,
    namespace: &'a str,
) -> impl Iterator<Item = &'a str> {
    [&class.secret_ref, &class.credentials_secret_ref]
        .into_iter()
        .flatten()
        .filter(move |r| ref_namespace(r, namespace) == namespace)
        .filter_map(|r| r.name.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_outside_the_namespace_are_ignored() {
        let class = MachineClass {
            secret_ref: Some(SecretReference {
                name: Some("a".into()),
                namespace: Some("ns".into()),
            }),
            credentials_secret_ref: Some(SecretReference {
                name: Some("b".into()),
                namespace: Some("other".into()),
            }),
            ..Default::default()
        };
        assert_eq!(referenced_names(&class, "ns").collect::<Vec<_>>(), ["a"]);
    }
}
