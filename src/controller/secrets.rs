//! The Secrets map every CMI request carries: the data of the class's `secretRef`, then of
//! its `credentialsSecretRef` (MCM's `getSecretData`/`mergeDataMaps`: **later wins** on a key
//! clash). For CreateMachine, `userData` is mandatory and `<<MACHINE_NAME>>` in it (or its
//! URL-query-escaped form, as ignition userData carries it) is replaced by the machine name.
//!
//! Secret values never reach a log line or an error message from here: errors name keys and
//! Secret names only.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{
    ByteString,
    api::core::v1::{Secret, SecretReference},
};
use kube::{Api, Client};

use super::crd::MachineClass;
use super::error::{Error, Result};

/// The key holding the bootstrap script.
pub const USER_DATA: &str = "userData";
/// Placeholder in `userData` for the machine name.
pub const MACHINE_NAME_PLACEHOLDER: &str = "<<MACHINE_NAME>>";

/// Merged Secret data, keyed as in the Secrets. Deliberately not `Debug`.
#[derive(Clone, Default)]
pub struct SecretData(BTreeMap<String, Vec<u8>>);

impl SecretData {
    /// Merges the Secrets' data in order; a later Secret's key overwrites an earlier one's.
    pub fn merge<'a>(secrets: impl IntoIterator<Item = &'a BTreeMap<String, ByteString>>) -> Self {
        let mut out = BTreeMap::new();
        for data in secrets {
            for (k, v) in data {
                out.insert(k.clone(), v.0.clone());
            }
        }
        Self(out)
    }

    /// The keys present (for logs and errors).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The map for CMI requests other than CreateMachine (no `userData` requirement, no
    /// substitution: MCM does both only when creating).
    pub fn to_cmi(&self) -> HashMap<String, Vec<u8>> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The map for CreateMachine: `userData` must be present and non-empty, and
    /// `<<MACHINE_NAME>>` in it is replaced with `machine_name` (see [`substitute_placeholder`]).
    pub fn for_create(&self, machine_name: &str) -> Result<HashMap<String, Vec<u8>>> {
        let mut map = self.to_cmi();
        let user_data = map
            .get_mut(USER_DATA)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::MissingUserData {
                keys: self.keys().map(str::to_owned).collect::<Vec<_>>().join(","),
            })?;
        *user_data = substitute_placeholder(user_data, MACHINE_NAME_PLACEHOLDER, machine_name);
        Ok(map)
    }
}

/// Whether `user_data` holds `placeholder`, raw or URL-query-escaped.
pub fn has_placeholder(user_data: &[u8], placeholder: &str) -> bool {
    contains(user_data, placeholder.as_bytes())
        || contains(user_data, query_escape(placeholder).as_bytes())
}

/// MCM's placeholder rule (`userdata.go`): replace every raw `placeholder` when there is one,
/// otherwise every URL-query-escaped placeholder with the escaped `value`.
pub fn substitute_placeholder(user_data: &[u8], placeholder: &str, value: &str) -> Vec<u8> {
    if contains(user_data, placeholder.as_bytes()) {
        replace_all(user_data, placeholder.as_bytes(), value.as_bytes())
    } else {
        replace_all(
            user_data,
            query_escape(placeholder).as_bytes(),
            query_escape(value).as_bytes(),
        )
    }
}

/// Go's `url.QueryEscape`: unreserved bytes stay, space becomes `+`, the rest `%XX`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Byte-wise replace-all (userData need not be UTF-8, e.g. gzip).
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if !needle.is_empty() && haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// Which namespace a reference points into: its own, or the class's when unset.
fn ref_namespace<'a>(r: &'a SecretReference, class_ns: &'a str) -> &'a str {
    r.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(class_ns)
}

/// Reads and merges the class's Secrets. Like MCM (whose Secret lister is limited to
/// `--namespace`), a Secret that does not exist, or lives in another namespace, is skipped
/// with a warning rather than failing: the driver then reports what is missing.
pub async fn load(client: &Client, namespace: &str, class: &MachineClass) -> Result<SecretData> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut datas = Vec::new();
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
        match api.get_opt(name).await.map_err(|source| Error::Kube {
            action: "get Secret",
            source,
        })? {
            Some(secret) => datas.push(secret.data.unwrap_or_default()),
            None => tracing::warn!(
                secret = name,
                "Secret referenced by the MachineClass not found"
            ),
        }
    }
    Ok(SecretData::merge(datas.iter()))
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

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn later_secret_wins_on_clash() {
        let first = data(&[("userData", "#!/bin/sh"), ("apiToken", "old"), ("a", "1")]);
        let second = data(&[("apiToken", "new"), ("projectID", "p")]);
        let merged = SecretData::merge([&first, &second]).to_cmi();
        assert_eq!(merged["apiToken"], b"new");
        assert_eq!(merged["projectID"], b"p");
        assert_eq!(merged["a"], b"1");
        assert_eq!(merged.len(), 4);
    }

    #[test]
    fn create_requires_user_data_and_substitutes_the_machine_name() {
        let d = data(&[
            (
                "userData",
                "hostname <<MACHINE_NAME>>; echo <<MACHINE_NAME>>",
            ),
            ("apiToken", "t"),
        ]);
        let m = SecretData::merge([&d]).for_create("m-1").unwrap();
        assert_eq!(m["userData"], b"hostname m-1; echo m-1");
        assert_eq!(m["apiToken"], b"t");

        for missing in [
            data(&[("apiToken", "secret-token")]),
            data(&[("userData", "")]),
        ] {
            let err = SecretData::merge([&missing]).for_create("m").err().unwrap();
            let text = err.to_string();
            assert!(text.contains("userData"), "{text}");
            assert!(
                !text.contains("secret-token"),
                "secret value leaked: {text}"
            );
        }
    }

    #[test]
    fn substitution_is_byte_safe() {
        let bytes = [0xff, b'<', b'<', 0x00];
        assert_eq!(
            substitute_placeholder(&bytes, MACHINE_NAME_PLACEHOLDER, "x"),
            bytes.to_vec()
        );
        assert_eq!(
            substitute_placeholder(b"<<MACHINE_NAME>>", MACHINE_NAME_PLACEHOLDER, "x"),
            b"x".to_vec()
        );
    }

    #[test]
    fn query_escape_matches_go() {
        assert_eq!(query_escape("<<MACHINE_NAME>>"), "%3C%3CMACHINE_NAME%3E%3E");
        assert_eq!(query_escape("a b/c~d.e"), "a+b%2Fc~d.e");
    }

    /// Ignition userData carries the placeholder URL-escaped; MCM replaces that form only
    /// when the raw one is absent.
    #[test]
    fn the_escaped_machine_name_placeholder_is_replaced() {
        let d = data(&[("userData", "data:,host%3D%3C%3CMACHINE_NAME%3E%3E")]);
        let m = SecretData::merge([&d]).for_create("m-1").unwrap();
        assert_eq!(m["userData"], b"data:,host%3Dm-1");
        let both = data(&[("userData", "<<MACHINE_NAME>> %3C%3CMACHINE_NAME%3E%3E")]);
        let m = SecretData::merge([&both]).for_create("m-1").unwrap();
        assert_eq!(m["userData"], b"m-1 %3C%3CMACHINE_NAME%3E%3E");
    }

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
