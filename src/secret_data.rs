//! The Secrets map every CMI request carries, built the way MCM builds it, for the controller
//! and for the `machine` CLI alike (so the CLI sends the driver exactly what the controller
//! would):
//!
//! - the data of the class's `secretRef`, then of its `credentialsSecretRef`, merged with the
//!   **later one winning** on a key clash (MCM's `getSecretData`/`mergeDataMaps`);
//! - for CreateMachine only, `userData` is mandatory and `<<MACHINE_NAME>>` in it (or its
//!   URL-query-escaped form, as ignition userData carries it) is replaced by the machine name
//!   (MCM's `userdata.go`).
//!
//! `<<BOOTSTRAP_TOKEN>>` is the controller's alone: it needs a target cluster to create the
//! token in, and without one MCM leaves the placeholder as it is, which is what CreateMachine
//! gets here.
//!
//! Values never reach a log line or an error message from here: errors name keys only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The key holding the bootstrap script.
pub const USER_DATA: &str = "userData";
/// Placeholder in `userData` for the machine name.
pub const MACHINE_NAME_PLACEHOLDER: &str = "<<MACHINE_NAME>>";

/// CreateMachine without a usable `userData`: the merged Secrets lack it or it is empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the MachineClass Secrets have no non-empty userData (keys present: [{keys}])")]
pub struct MissingUserData {
    /// The keys that are present (names only), comma-separated.
    pub keys: String,
}

/// Merged Secret data, keyed as in the Secrets. `Debug` lists the keys only.
#[derive(Clone, Default)]
pub struct SecretData(BTreeMap<String, Vec<u8>>);

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretData {
    /// Merges the Secrets' data in order; a later Secret's key overwrites an earlier one's.
    pub fn merge<M>(secrets: impl IntoIterator<Item = M>) -> Self
    where
        M: IntoIterator<Item = (String, Vec<u8>)>,
    {
        Self(secrets.into_iter().flatten().collect())
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
    pub fn for_create(
        &self,
        machine_name: &str,
    ) -> Result<HashMap<String, Vec<u8>>, MissingUserData> {
        let mut map = self.to_cmi();
        let user_data = map
            .get_mut(USER_DATA)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| MissingUserData {
                keys: self.keys().collect::<Vec<_>>().join(","),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn later_secret_wins_on_clash() {
        let first = data(&[("userData", "#!/bin/sh"), ("apiToken", "old"), ("a", "1")]);
        let second = data(&[("apiToken", "new"), ("projectID", "p")]);
        let merged = SecretData::merge([first, second]).to_cmi();
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
        let m = SecretData::merge([d]).for_create("m-1").unwrap();
        assert_eq!(m["userData"], b"hostname m-1; echo m-1");
        assert_eq!(m["apiToken"], b"t");

        for missing in [
            data(&[("apiToken", "secret-token")]),
            data(&[("userData", "")]),
        ] {
            let err = SecretData::merge([missing]).for_create("m").err().unwrap();
            let text = err.to_string();
            assert!(text.contains("userData"), "{text}");
            assert!(
                !text.contains("secret-token"),
                "secret value leaked: {text}"
            );
        }
    }

    /// Without a target cluster MCM leaves the bootstrap-token placeholder alone; so does
    /// the create map (the controller substitutes it afterwards when it has a target).
    #[test]
    fn create_leaves_the_bootstrap_token_placeholder() {
        let d = data(&[(
            "userData",
            "token=<<BOOTSTRAP_TOKEN>> host=<<MACHINE_NAME>>",
        )]);
        let m = SecretData::merge([d]).for_create("m-1").unwrap();
        assert_eq!(m["userData"], b"token=<<BOOTSTRAP_TOKEN>> host=m-1");
    }

    #[test]
    fn debug_names_keys_only() {
        let d = SecretData::merge([data(&[("apiToken", "TOPSECRET")])]);
        let debug = format!("{d:?}");
        assert!(
            debug.contains("apiToken") && !debug.contains("TOPSECRET"),
            "{debug}"
        );
    }

    #[test]
    fn other_calls_get_the_data_as_merged() {
        let d = data(&[("userData", "<<MACHINE_NAME>>")]);
        assert_eq!(
            SecretData::merge([d]).to_cmi()["userData"],
            b"<<MACHINE_NAME>>"
        );
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
        let m = SecretData::merge([d]).for_create("m-1").unwrap();
        assert_eq!(m["userData"], b"data:,host%3Dm-1");
        let both = data(&[("userData", "<<MACHINE_NAME>> %3C%3CMACHINE_NAME%3E%3E")]);
        let m = SecretData::merge([both]).for_create("m-1").unwrap();
        assert_eq!(m["userData"], b"m-1 %3C%3CMACHINE_NAME%3E%3E");
    }
}
