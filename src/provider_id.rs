//! The ProviderID that links a Machine (and its Node) to a device: one parser and one
//! formatter for the driver, which emits and decodes it, and the controller, which compares a
//! Machine's ProviderID with the ones the driver lists.
//!
//! Emitted as `equinixmetal://<device-uuid>`, the form the cloud controller and kubelet use.
//! Decoding also accepts what older providers wrote: `equinixmetal://<metro>/<uuid>` (the Go
//! provider), `packet://<uuid>` and a bare UUID. Equality is by device UUID, so all forms of
//! one device compare equal.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// The scheme we emit.
pub const SCHEME: &str = "equinixmetal://";
/// The scheme of the Packet era, still accepted.
pub const LEGACY_SCHEME: &str = "packet://";

/// A device UUID, parsed from any accepted ProviderID form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(pub Uuid);

/// Why a string is not a ProviderID. The text completes "providerID: ...", so the driver
/// can report it as an invalid field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProviderIdError {
    #[error("is empty")]
    Empty,
    #[error(
        "must be equinixmetal://<device-uuid> (also accepted: equinixmetal://<metro>/<uuid>, packet://<uuid>, <uuid>)"
    )]
    Form,
}

impl ProviderId {
    /// Parses any accepted form.
    pub fn parse(s: &str) -> Result<Self, ProviderIdError> {
        if s.is_empty() {
            return Err(ProviderIdError::Empty);
        }
        let uuid_part = if let Some(rest) = s.strip_prefix(SCHEME) {
            match rest.split_once('/') {
                None => rest,
                // Legacy `equinixmetal://<metro>/<uuid>`: the metro is informational only.
                Some((metro, id)) if is_metro(metro) => id,
                Some(_) => return Err(ProviderIdError::Form),
            }
        } else if let Some(rest) = s.strip_prefix(LEGACY_SCHEME) {
            rest
        } else {
            s
        };
        hyphenated_uuid(uuid_part)
            .map(Self)
            .ok_or(ProviderIdError::Form)
    }

    /// The device UUID.
    pub fn uuid(self) -> Uuid {
        self.0
    }

    /// Whether two ProviderIDs name the same device: by UUID when both parse; otherwise by
    /// their text, which is how MCM compares them.
    pub fn same_device(a: &str, b: &str) -> bool {
        match (Self::parse(a), Self::parse(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        }
    }
}

/// Only the hyphenated form (`Uuid::try_parse` also takes the simple, braced and URN forms,
/// which no provider ever wrote into a ProviderID).
fn hyphenated_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

fn is_metro(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.0.as_hyphenated())
    }
}

impl FromStr for ProviderId {
    type Err = ProviderIdError;

    fn from_str(s: &str) -> Result<Self, ProviderIdError> {
        Self::parse(s)
    }
}

impl From<Uuid> for ProviderId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5d1ef2a4-0000-4000-8000-000000000009";

    #[test]
    fn accepted_forms_compare_equal() {
        let want = ProviderId(ID.parse().unwrap());
        for s in [
            format!("equinixmetal://{ID}"),
            format!("equinixmetal://sv/{ID}"),
            format!("equinixmetal://{}", ID.to_uppercase()),
            format!("packet://{ID}"),
            ID.to_string(),
        ] {
            assert_eq!(ProviderId::parse(&s).unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), format!("equinixmetal://{ID}"));
        assert_eq!(ProviderId::parse(&want.to_string()).unwrap(), want);
    }

    #[test]
    fn rejects_everything_else() {
        for s in [
            "",
            "equinixmetal://",
            "equinixmetal:///",
            "equinixmetal://not-a-uuid",
            "equinixmetal://sv/not-a-uuid",
            "equinixmetal://sv/x/5d1ef2a4-0000-4000-8000-000000000009",
            "equinixmetal:///5d1ef2a4-0000-4000-8000-000000000009",
            "aws:///us-east-1a/i-123",
            "packet://sv/5d1ef2a4-0000-4000-8000-000000000009",
            "5d1ef2a400004000800000000000000a",
            "{5d1ef2a4-0000-4000-8000-000000000009}",
            " 5d1ef2a4-0000-4000-8000-000000000009",
            "gce://5d1ef2a4-0000-4000-8000-000000000009",
        ] {
            assert!(ProviderId::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn same_device_compares_by_uuid_then_by_text() {
        let other = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";
        let same = |a: &str, b: &str| ProviderId::same_device(a, b);
        assert!(same(
            &format!("equinixmetal://{ID}"),
            &format!("equinixmetal://da/{ID}")
        ));
        assert!(same(&format!("packet://{ID}"), ID));
        assert!(same(
            &format!("equinixmetal://{ID}"),
            &format!("equinixmetal://{}", ID.to_uppercase())
        ));
        assert!(!same(
            &format!("equinixmetal://{ID}"),
            &format!("equinixmetal://{other}")
        ));
        assert!(!same("", &format!("equinixmetal://{ID}")));
        assert!(same("aws:///zone/i-1", "aws:///zone/i-1"));
        assert!(!same("aws:///zone/i-1", "aws:///zone/i-2"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC*") {
            let _ = ProviderId::parse(&s);
        }

        #[test]
        fn arbitrary_suffixes_never_panic(s in "\\PC{0,60}") {
            let _ = ProviderId::parse(&format!("equinixmetal://{s}"));
            let _ = ProviderId::parse(&format!("equinixmetal://sv/{s}"));
        }

        #[test]
        fn display_roundtrips(bytes in proptest::prelude::any::<[u8; 16]>()) {
            let id = ProviderId(Uuid::from_bytes(bytes));
            proptest::prop_assert_eq!(ProviderId::parse(&id.to_string()).unwrap(), id);
        }
    }
}
