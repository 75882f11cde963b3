//! The Secret data (merged `secretRef` + `credentialsSecretRef`) turned into what the
//! driver needs: an API token, an optional project ID and, for create, the userData.
//!
//! Keys (design §4): `apiToken`, falling back to `alternateApiToken` (the Go provider
//! validated the fallback but never used it); `projectID`; `userData`. Error messages name
//! the key and never include a value; `Debug` prints `<redacted>` for the token and userData.

use std::collections::HashMap;

use uuid::Uuid;

use crate::metal::ApiToken;
use crate::secret::Secret;

use super::Error;
use super::spec::parse_uuid;

/// Secret key of the Metal API token.
pub const API_TOKEN_KEY: &str = "apiToken";
/// Secret key used when `apiToken` is absent or empty.
pub const ALTERNATE_API_TOKEN_KEY: &str = "alternateApiToken";
/// Secret key of the project UUID (used when the providerSpec has none).
pub const PROJECT_ID_KEY: &str = "projectID";
/// Secret key of the cloud-init / Ignition user data.
pub const USER_DATA_KEY: &str = "userData";

/// The caller's credentials. `Debug` is redacted (the fields are [`Secret`]s).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Sent as `X-Auth-Token`.
    pub api_token: ApiToken,
    /// `projectID` from the Secret, if any.
    pub project_id: Option<Uuid>,
    /// `userData`; always `Some` when decoded with `require_user_data`.
    pub user_data: Option<Secret<String>>,
}

impl Credentials {
    /// Reads the credentials from the CMI `Secrets` map. `require_user_data` is true for
    /// CreateMachine only: the other RPCs must keep working (delete above all) when the
    /// userData Secret is already gone.
    pub fn from_secrets(
        secrets: &HashMap<String, Vec<u8>>,
        require_user_data: bool,
    ) -> Result<Self, Error> {
        let api_token = match token(secrets, API_TOKEN_KEY)? {
            Some(t) => t,
            None => token(secrets, ALTERNATE_API_TOKEN_KEY)?.ok_or_else(|| {
                Error::invalid(
                    secret_field(API_TOKEN_KEY),
                    format!("required (or {ALTERNATE_API_TOKEN_KEY}); the Secret has neither or both are empty"),
                )
            })?,
        };

        let project_id = match secrets.get(PROJECT_ID_KEY) {
            None => None,
            Some(raw) => {
                let s = std::str::from_utf8(raw)
                    .map_err(|_| {
                        Error::invalid(secret_field(PROJECT_ID_KEY), "is not valid UTF-8")
                    })?
                    .trim();
                if s.is_empty() {
                    None
                } else {
                    Some(parse_uuid(s).ok_or_else(|| {
                        Error::invalid(secret_field(PROJECT_ID_KEY), "must be a UUID")
                    })?)
                }
            }
        };

        let user_data = match secrets.get(USER_DATA_KEY) {
            Some(raw) if !raw.is_empty() => {
                let s = String::from_utf8(raw.clone()).map_err(|_| {
                    Error::invalid(secret_field(USER_DATA_KEY), "is not valid UTF-8")
                })?;
                Some(Secret::new(s))
            }
            _ => None,
        };
        if require_user_data && user_data.is_none() {
            return Err(Error::invalid(
                secret_field(USER_DATA_KEY),
                "required for CreateMachine",
            ));
        }

        Ok(Self {
            api_token,
            project_id,
            user_data,
        })
    }

    /// The secret strings an API error message must never repeat (APIs sometimes echo
    /// input back in validation errors).
    pub fn secret_strings(&self) -> Vec<&str> {
        let mut out = vec![self.api_token.expose().as_str()];
        if let Some(u) = &self.user_data {
            out.push(u.expose().as_str());
        }
        out
    }
}

fn secret_field(key: &str) -> String {
    format!("secrets.{key}")
}

/// A token from `key`: `None` when absent or blank; an error (naming the key, never the
/// value) when present but unusable as an HTTP header value.
fn token(secrets: &HashMap<String, Vec<u8>>, key: &str) -> Result<Option<ApiToken>, Error> {
    let Some(raw) = secrets.get(key) else {
        return Ok(None);
    };
    let s = std::str::from_utf8(raw)
        .map_err(|_| Error::invalid(secret_field(key), "is not valid UTF-8"))?;
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    // Visible ASCII only: anything else cannot travel in `X-Auth-Token` unchanged.
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            secret_field(key),
            "contains characters not allowed in an HTTP header (only visible ASCII)",
        ));
    }
    Ok(Some(Secret::new(s.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, &[u8])]) -> HashMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    #[track_caller]
    fn assert_invalid(r: Result<Credentials, Error>, want_field: &str, secret_value: &str) {
        match r {
            Err(e @ Error::InvalidField { .. }) => {
                let Error::InvalidField { field, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(field, want_field);
                assert!(
                    secret_value.is_empty() || !e.to_string().contains(secret_value),
                    "{e} leaks the value"
                );
            }
            other => panic!("expected InvalidField on {want_field}, got {other:?}"),
        }
    }

    #[test]
    fn api_token_trimmed_and_alternate_really_used() {
        let c = Credentials::from_secrets(&secrets(&[("apiToken", b"  tok-1\n")]), false).unwrap();
        assert_eq!(c.api_token.expose(), "tok-1");
        let c =
            Credentials::from_secrets(&secrets(&[("alternateApiToken", b"alt-2")]), false).unwrap();
        assert_eq!(c.api_token.expose(), "alt-2");
        let c = Credentials::from_secrets(
            &secrets(&[("apiToken", b" "), ("alternateApiToken", b"alt-3")]),
            false,
        )
        .unwrap();
        assert_eq!(c.api_token.expose(), "alt-3");
        let c = Credentials::from_secrets(
            &secrets(&[("apiToken", b"main"), ("alternateApiToken", b"alt")]),
            false,
        )
        .unwrap();
        assert_eq!(c.api_token.expose(), "main");
    }

    #[test]
    fn bad_secrets_name_the_key_not_the_value() {
        assert_invalid(
            Credentials::from_secrets(&secrets(&[]), false),
            "secrets.apiToken",
            "",
        );
        assert_invalid(
            Credentials::from_secrets(&secrets(&[("apiToken", b"bad tok\x01en")]), false),
            "secrets.apiToken",
            "tok",
        );
        assert_invalid(
            Credentials::from_secrets(&secrets(&[("apiToken", b"\xff\xfe")]), false),
            "secrets.apiToken",
            "",
        );
        assert_invalid(
            Credentials::from_secrets(
                &secrets(&[("alternateApiToken", "tök-ü".as_bytes())]),
                false,
            ),
            "secrets.alternateApiToken",
            "tök",
        );
        assert_invalid(
            Credentials::from_secrets(
                &secrets(&[("apiToken", b"t"), ("projectID", b"proj-secret-x")]),
                false,
            ),
            "secrets.projectID",
            "proj-secret-x",
        );
        assert_invalid(
            Credentials::from_secrets(&secrets(&[("apiToken", b"t"), ("userData", b"\xff")]), true),
            "secrets.userData",
            "",
        );
    }

    #[test]
    fn user_data_required_for_create_only() {
        let s = secrets(&[("apiToken", b"t")]);
        assert!(
            Credentials::from_secrets(&s, false)
                .unwrap()
                .user_data
                .is_none()
        );
        assert_invalid(Credentials::from_secrets(&s, true), "secrets.userData", "");
        let s = secrets(&[("apiToken", b"t"), ("userData", b"")]);
        assert_invalid(Credentials::from_secrets(&s, true), "secrets.userData", "");
        let s = secrets(&[("apiToken", b"t"), ("userData", b"#cloud-config\n")]);
        assert_eq!(
            Credentials::from_secrets(&s, true)
                .unwrap()
                .user_data
                .unwrap()
                .expose(),
            "#cloud-config\n"
        );
    }

    #[test]
    fn project_id_from_secret() {
        let s = secrets(&[
            ("apiToken", b"t"),
            ("projectID", b" 5d1ef2a4-0000-4000-8000-000000000001\n"),
        ]);
        assert_eq!(
            Credentials::from_secrets(&s, false).unwrap().project_id,
            Some("5d1ef2a4-0000-4000-8000-000000000001".parse().unwrap())
        );
        let s = secrets(&[("apiToken", b"t"), ("projectID", b"")]);
        assert_eq!(
            Credentials::from_secrets(&s, false).unwrap().project_id,
            None
        );
    }

    #[test]
    fn debug_is_redacted() {
        let s = secrets(&[("apiToken", b"tok-SECRET-1"), ("userData", b"ud-SECRET-2")]);
        let c = Credentials::from_secrets(&s, true).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
    }
}
