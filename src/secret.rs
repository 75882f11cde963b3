//! A wrapper for values that must never reach a log line, an error message or `Debug`
//! output: API tokens, userdata, customdata and a device's `root_password`.
//!
//! Serialization is transparent (the Metal API needs the real value on the wire); every
//! human-facing rendering prints `<redacted>`. Reading the value takes an explicit
//! [`Secret::expose`], so each place that handles the plaintext is easy to audit.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value whose `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The plaintext. Call sites are the audit list for secret handling.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_nested_debug_are_redacted() {
        let s = Secret::new("tok-123".to_string());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert!(!format!("{:?}", Some(vec![s.clone()])).contains("tok-123"));
        assert_eq!(s.expose(), "tok-123");
    }

    #[test]
    fn serde_is_transparent() {
        let s = Secret::new("u".to_string());
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"u\"");
        let back: Secret<String> = serde_json::from_str("\"u\"").unwrap();
        assert_eq!(back, s);
    }
}
