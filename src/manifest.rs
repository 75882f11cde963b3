//! Decodes kubectl-style YAML (a MachineClass and its Secrets) into what a CMI call carries:
//! the `providerSpec` as compact JSON bytes and the merged Secret data ([`SecretData`], merged
//! as the controller merges it).
//!
//! Why this exists: the `machine` CLI (and tests) must hand the driver exactly what MCM would,
//! without a cluster. MCM sends `MachineClass.providerSpec` (a top-level field — a
//! MachineClass has no `spec`) as JSON, and merges the data of `secretRef` then
//! `credentialsSecretRef`, later wins. We only check the shape MCM's CRDs enforce
//! (`providerSpec` is an object); what the providerSpec *means* is `provider::spec`'s job.
//!
//! Errors name the file and the field (`machine-class.yaml: providerSpec: missing`) and never
//! contain a Secret value.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use serde_json::Value;

use crate::secret_data::SecretData;

/// The `apiVersion` of MCM's MachineClass (the only served version).
pub const MACHINE_CLASS_API_VERSION: &str = "machine.sapcloud.io/v1alpha1";

/// The `apiVersion` of a core Secret.
pub const SECRET_API_VERSION: &str = "v1";

/// Why a manifest could not be decoded. `file` is the path as given (with `#N` appended when
/// the file holds several documents), so the user can find the document at fault; `field` is
/// the dotted path inside it. No variant carries a Secret value.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML (syntax, recursion or alias-expansion limits).
    #[error("{file}: invalid YAML: {message}")]
    Syntax { file: String, message: String },
    /// The file holds no document of the kind we were asked to read.
    #[error("{file}: kind: expected {expected}, found {found}")]
    WrongKind {
        file: String,
        expected: &'static str,
        found: String,
    },
    /// The file holds more than one MachineClass; a CMI call takes exactly one.
    #[error("{file}: holds {count} MachineClass documents; expected exactly one")]
    AmbiguousClass { file: String, count: usize },
    /// A required field is absent.
    #[error("{file}: {field}: missing{hint}")]
    Missing {
        file: String,
        field: String,
        hint: &'static str,
    },
    /// A field has the wrong type or an unacceptable value (never the value itself).
    #[error("{file}: {field}: {problem}")]
    Invalid {
        file: String,
        field: String,
        problem: String,
    },
    /// A `data` entry is not standard (padded) base64. The value is not shown.
    #[error("{file}: {field}: invalid base64")]
    InvalidBase64 { file: String, field: String },
}

/// `{name, namespace}` of a Secret a MachineClass points at (`secretRef`,
/// `credentialsSecretRef`). Kept so the CLI can tell the user which Secrets the class expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretReference {
    pub name: String,
    pub namespace: Option<String>,
}

impl fmt::Display for SecretReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The parts of a MachineClass manifest a CMI call needs (the controller's full object is
/// `controller::crd::MachineClass`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassManifest {
    /// `metadata.name`, if set (kubectl would require it; a CMI call does not).
    pub name: Option<String>,
    /// `metadata.namespace`, if set.
    pub namespace: Option<String>,
    /// `provider` (e.g. `EquinixMetal`), informational.
    pub provider: Option<String>,
    /// `providerSpec`, re-serialized as compact JSON: the `ProviderSpec` bytes of every call.
    pub provider_spec: Vec<u8>,
    /// `secretRef`: usually the userData Secret.
    pub secret_ref: Option<SecretReference>,
    /// `credentialsSecretRef`: usually the `apiToken`/`projectID` Secret.
    pub credentials_secret_ref: Option<SecretReference>,
}

impl ClassManifest {
    /// The providerSpec as a JSON object (it was checked to be one when decoded).
    pub fn provider_spec_json(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_slice(&self.provider_spec).unwrap_or_default()
    }
}

/// One decoded Secret manifest. `Debug` lists the keys only, so the data cannot reach a log
/// line.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretManifest {
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// `data` (base64-decoded) overlaid with `stringData`, as the API server does.
    pub data: HashMap<String, Vec<u8>>,
}

impl fmt::Debug for SecretManifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.data.keys().collect();
        keys.sort();
        f.debug_struct("SecretManifest")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("keys", &keys)
            .finish()
    }
}

/// Reads `path` and decodes its one MachineClass document. Other kinds in the same file (a
/// Gardener-style bundle also holds the userData Secret) are skipped.
pub fn load_machine_class(path: &Path) -> Result<ClassManifest, ManifestError> {
    let text = read(path)?;
    parse_machine_class(&path.display().to_string(), &text)
}

/// Reads the Secret files in order and merges their data, later wins on a clash: the order
/// MCM uses for `secretRef` then `credentialsSecretRef`.
pub fn load_secrets<P: AsRef<Path>>(paths: &[P]) -> Result<SecretData, ManifestError> {
    let mut secrets = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let text = read(path)?;
        secrets.extend(parse_secrets(&path.display().to_string(), &text)?);
    }
    Ok(SecretData::merge(
        secrets.into_iter().map(|secret| secret.data),
    ))
}

/// Decodes the one MachineClass in `text`; `file` names it in errors.
pub fn parse_machine_class(file: &str, text: &str) -> Result<ClassManifest, ManifestError> {
    let documents = documents(file, text)?;
    let mut found = Vec::new();
    let mut other_kinds = Vec::new();
    for document in &documents {
        match kind_of(document) {
            Some("MachineClass") => found.push(document),
            Some(kind) => other_kinds.push(kind.to_owned()),
            None => other_kinds.push("no kind".to_owned()),
        }
    }
    match found.as_slice() {
        [document] => decode_machine_class(document),
        [] => Err(ManifestError::WrongKind {
            file: file.to_owned(),
            expected: "MachineClass",
            found: describe_kinds(&other_kinds),
        }),
        many => Err(ManifestError::AmbiguousClass {
            file: file.to_owned(),
            count: many.len(),
        }),
    }
}

/// Decodes every Secret in `text`, in document order; other kinds are skipped, but a file
/// with no Secret at all is an error (it was surely passed by mistake).
pub fn parse_secrets(file: &str, text: &str) -> Result<Vec<SecretManifest>, ManifestError> {
    let documents = documents(file, text)?;
    let mut secrets = Vec::new();
    let mut other_kinds = Vec::new();
    for document in &documents {
        match kind_of(document) {
            Some("Secret") => secrets.push(decode_secret(document)?),
            Some(kind) => other_kinds.push(kind.to_owned()),
            None => other_kinds.push("no kind".to_owned()),
        }
    }
    if secrets.is_empty() {
        return Err(ManifestError::WrongKind {
            file: file.to_owned(),
            expected: "Secret",
            found: describe_kinds(&other_kinds),
        });
    }
    Ok(secrets)
}

/// One non-empty YAML document and the label that names it in errors.
struct Document {
    label: String,
    value: Value,
}

fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// Splits a (possibly multi-document) YAML text; empty documents are dropped, as kubectl does.
fn documents(file: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    // No snippet in errors: a rendered snippet would quote the input, and a Secret's input
    // is secret.
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.crop_radius = 0;
    let values: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|error| ManifestError::Syntax {
            file: file.to_owned(),
            message: error.to_string(),
        })?
        .into_iter()
        .filter(|value: &Value| !value.is_null())
        .collect();
    let several = values.len() > 1;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(index, value)| Document {
            label: if several {
                format!("{file}#{}", index + 1)
            } else {
                file.to_owned()
            },
            value,
        })
        .collect())
}

fn kind_of(document: &Document) -> Option<&str> {
    document.value.get("kind").and_then(Value::as_str)
}

fn describe_kinds(kinds: &[String]) -> String {
    if kinds.is_empty() {
        "no document".to_owned()
    } else {
        kinds.join(", ")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Document {
    fn missing(&self, field: &str, hint: &'static str) -> ManifestError {
        ManifestError::Missing {
            file: self.label.clone(),
            field: field.to_owned(),
            hint,
        }
    }

    fn invalid(&self, field: &str, problem: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            file: self.label.clone(),
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    /// The document must be a mapping with this `apiVersion`.
    fn check_api_version(&self, expected: &str) -> Result<(), ManifestError> {
        match self.value.get("apiVersion") {
            None | Some(Value::Null) => Err(self.missing("apiVersion", "")),
            Some(Value::String(found)) if found == expected => Ok(()),
            Some(Value::String(found)) => {
                Err(self.invalid("apiVersion", format!("expected {expected}, found {found}")))
            }
            Some(other) => Err(self.invalid(
                "apiVersion",
                format!("expected a string, found {}", type_name(other)),
            )),
        }
    }

    /// An optional string field at `parent.key` (the label is `field`).
    fn optional_string(
        &self,
        parent: &Value,
        key: &str,
        field: &str,
    ) -> Result<Option<String>, ManifestError> {
        match parent.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.clone())),
            Some(other) => Err(self.invalid(
                field,
                format!("expected a string, found {}", type_name(other)),
            )),
        }
    }

    fn metadata(&self) -> Result<(Option<String>, Option<String>), ManifestError> {
        match self.value.get("metadata") {
            None | Some(Value::Null) => Ok((None, None)),
            Some(metadata @ Value::Object(_)) => Ok((
                self.optional_string(metadata, "name", "metadata.name")?,
                self.optional_string(metadata, "namespace", "metadata.namespace")?,
            )),
            Some(other) => Err(self.invalid(
                "metadata",
                format!("expected an object, found {}", type_name(other)),
            )),
        }
    }

    fn secret_reference(&self, key: &str) -> Result<Option<SecretReference>, ManifestError> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(reference @ Value::Object(_)) => {
                let name = self
                    .optional_string(reference, "name", &format!("{key}.name"))?
                    .filter(|name| !name.is_empty())
                    .ok_or_else(|| self.missing(&format!("{key}.name"), ""))?;
                let namespace =
                    self.optional_string(reference, "namespace", &format!("{key}.namespace"))?;
                Ok(Some(SecretReference { name, namespace }))
            }
            Some(other) => Err(self.invalid(
                key,
                format!("expected an object, found {}", type_name(other)),
            )),
        }
    }
}

fn decode_machine_class(document: &Document) -> Result<ClassManifest, ManifestError> {
    document.check_api_version(MACHINE_CLASS_API_VERSION)?;
    let (name, namespace) = document.metadata()?;
    let provider_spec = match document.value.get("providerSpec") {
        None | Some(Value::Null) => {
            let hint = if document.value.get("spec").is_some() {
                " (MachineClass fields are top-level; there is no spec)"
            } else {
                ""
            };
            return Err(document.missing("providerSpec", hint));
        }
        Some(spec @ Value::Object(_)) => spec,
        Some(other) => {
            return Err(document.invalid(
                "providerSpec",
                format!("expected an object, found {}", type_name(other)),
            ));
        }
    };
    let json = serde_json::to_value(provider_spec).map_err(|error| {
        document.invalid(
            "providerSpec",
            format!("not representable as JSON: {error}"),
        )
    })?;
    if !json.is_object() {
        return Err(document.invalid("providerSpec", "expected an object"));
    }
    let provider_spec = serde_json::to_vec(&json).map_err(|error| {
        document.invalid(
            "providerSpec",
            format!("not representable as JSON: {error}"),
        )
    })?;
    Ok(ClassManifest {
        name,
        namespace,
        provider: document.optional_string(&document.value, "provider", "provider")?,
        provider_spec,
        secret_ref: document.secret_reference("secretRef")?,
        credentials_secret_ref: document.secret_reference("credentialsSecretRef")?,
    })
}

/// A Secret key as the API server accepts it: `[-._a-zA-Z0-9]+`.
fn valid_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Walks a `data`/`stringData` mapping, checking keys and that values are strings (a value's
/// content is never shown, only its type).
fn entries(document: &Document, field: &str) -> Result<Vec<(String, String)>, ManifestError> {
    let mapping = match document.value.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(mapping)) => mapping,
        Some(other) => {
            return Err(document.invalid(
                field,
                format!("expected an object, found {}", type_name(other)),
            ));
        }
    };
    let mut out = Vec::with_capacity(mapping.len());
    for (key, value) in mapping {
        let key = key.as_str();
        if !valid_secret_key(key) {
            return Err(document.invalid(
                &format!("{field}.{key}"),
                "not a valid Secret key (allowed: letters, digits, '-', '_', '.')",
            ));
        }
        let value = match value {
            Value::String(value) => value.clone(),
            // The API server stores a null `data` value as empty bytes.
            Value::Null => String::new(),
            other => {
                return Err(document.invalid(
                    &format!("{field}.{key}"),
                    format!("expected a string, found {}", type_name(other)),
                ));
            }
        };
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn decode_secret(document: &Document) -> Result<SecretManifest, ManifestError> {
    document.check_api_version(SECRET_API_VERSION)?;
    let (name, namespace) = document.metadata()?;
    let mut data = HashMap::new();
    for (key, encoded) in entries(document, "data")? {
        // Go's StdEncoding (what the API server uses) skips line breaks inside the text.
        let compact: String = encoded
            .chars()
            .filter(|c| !matches!(c, '\r' | '\n'))
            .collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| ManifestError::InvalidBase64 {
                file: document.label.clone(),
                field: format!("data.{key}"),
            })?;
        data.insert(key, decoded);
    }
    // stringData is write-only and merged over data by the API server: it wins on a clash.
    for (key, value) in entries(document, "stringData")? {
        data.insert(key, value.into_bytes());
    }
    Ok(SecretManifest {
        name,
        namespace,
        data,
    })
}

/// The sample manifests shipped in `kubernetes/`, for tests here and elsewhere.
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kubernetes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASS: &str = r#"
apiVersion: machine.sapcloud.io/v1alpha1
kind: MachineClass
metadata:
  name: demo
  namespace: default
provider: EquinixMetal
providerSpec:
  metro: sv
  machineType: c3.small.x86
  OS: ubuntu_22_04
  billingCycle: hourly
  tags: ["kubernetes.io/cluster/shoot--dev--demo", "kubernetes.io/role/node"]
  reservedDevicesOnly: false
secretRef: {name: demo, namespace: default}
credentialsSecretRef: {name: creds, namespace: default}
"#;

    fn class_err(text: &str) -> String {
        parse_machine_class("machine-class.yaml", text)
            .unwrap_err()
            .to_string()
    }

    fn secret_err(text: &str) -> String {
        parse_secrets("secret.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn decodes_a_machine_class_to_compact_json() {
        let class = parse_machine_class("machine-class.yaml", CLASS).unwrap();
        assert_eq!(class.name.as_deref(), Some("demo"));
        assert_eq!(class.provider.as_deref(), Some("EquinixMetal"));
        assert_eq!(
            class.secret_ref,
            Some(SecretReference {
                name: "demo".into(),
                namespace: Some("default".into())
            })
        );
        assert_eq!(
            class.credentials_secret_ref.as_ref().unwrap().to_string(),
            "default/creds"
        );
        let text = String::from_utf8(class.provider_spec.clone()).unwrap();
        assert!(
            !text.contains(' ') && !text.contains('\n'),
            "not compact: {text}"
        );
        let spec = class.provider_spec_json();
        assert_eq!(spec["metro"], "sv");
        assert_eq!(spec["reservedDevicesOnly"], false);
        assert_eq!(spec["tags"][1], "kubernetes.io/role/node");
    }

    #[test]
    fn picks_the_class_out_of_a_bundle() {
        let text = format!(
            "---\napiVersion: v1\nkind: Secret\nstringData: {{userData: x}}\n---\n{CLASS}\n---\n"
        );
        let class = parse_machine_class("bundle.yaml", &text).unwrap();
        assert_eq!(class.name.as_deref(), Some("demo"));
        let secrets = parse_secrets("bundle.yaml", &text).unwrap();
        assert_eq!(secrets.len(), 1);
    }

    #[test]
    fn missing_provider_spec_is_named() {
        let text = "apiVersion: machine.sapcloud.io/v1alpha1\nkind: MachineClass\nprovider: EquinixMetal\n";
        assert_eq!(class_err(text), "machine-class.yaml: providerSpec: missing");
        let nested = "apiVersion: machine.sapcloud.io/v1alpha1\nkind: MachineClass\nspec:\n  providerSpec: {}\n";
        assert!(
            class_err(nested).contains("top-level"),
            "{}",
            class_err(nested)
        );
    }

    #[test]
    fn non_object_provider_spec_is_rejected() {
        for (spec, found) in [
            ("[1, 2]", "a list"),
            ("\"x\"", "a string"),
            ("3", "a number"),
            ("true", "a boolean"),
        ] {
            let text = format!(
                "apiVersion: machine.sapcloud.io/v1alpha1\nkind: MachineClass\nproviderSpec: {spec}\n"
            );
            assert_eq!(
                class_err(&text),
                format!("machine-class.yaml: providerSpec: expected an object, found {found}")
            );
        }
        // An empty object is an object: content checks belong to provider::spec.
        let empty =
            "apiVersion: machine.sapcloud.io/v1alpha1\nkind: MachineClass\nproviderSpec: {}\n";
        assert_eq!(
            parse_machine_class("c.yaml", empty).unwrap().provider_spec,
            b"{}"
        );
    }

    #[test]
    fn wrong_kind_and_api_version_are_rejected() {
        assert_eq!(
            class_err("apiVersion: v1\nkind: Secret\n"),
            "machine-class.yaml: kind: expected MachineClass, found Secret"
        );
        assert_eq!(
            class_err(""),
            "machine-class.yaml: kind: expected MachineClass, found no document"
        );
        assert_eq!(
            secret_err(CLASS),
            "secret.yaml: kind: expected Secret, found MachineClass"
        );
        let old = CLASS.replace(
            "machine.sapcloud.io/v1alpha1",
            "machine.sapcloud.io/v1beta1",
        );
        assert_eq!(
            class_err(&old),
            "machine-class.yaml: apiVersion: expected machine.sapcloud.io/v1alpha1, found machine.sapcloud.io/v1beta1"
        );
        let two = format!("{CLASS}\n---\n{CLASS}");
        assert!(class_err(&two).contains("holds 2 MachineClass documents"));
    }

    #[test]
    fn bad_refs_are_named() {
        let text = CLASS.replace(
            "secretRef: {name: demo, namespace: default}",
            "secretRef: {namespace: default}",
        );
        assert_eq!(
            class_err(&text),
            "machine-class.yaml: secretRef.name: missing"
        );
        let text = CLASS.replace(
            "secretRef: {name: demo, namespace: default}",
            "secretRef: demo",
        );
        assert_eq!(
            class_err(&text),
            "machine-class.yaml: secretRef: expected an object, found a string"
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let error = class_err("kind: [unclosed\n");
        assert!(
            error.starts_with("machine-class.yaml: invalid YAML: "),
            "{error}"
        );
    }

    /// A YAML error in a Secret file must not quote the line it is on: that line may hold
    /// the token.
    #[test]
    fn syntax_errors_never_quote_the_secret() {
        for text in [
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  apiToken: TOPSECRET-1 : [\n",
            "apiVersion: v1\nkind: Secret\nstringData:\n  apiToken: \"TOPSECRET-1\n",
            "apiVersion: v1\nkind: Secret\nstringData: {apiToken: TOPSECRET-1\n",
        ] {
            let error = parse_secrets("secret.yaml", text).unwrap_err().to_string();
            assert!(error.starts_with("secret.yaml: invalid YAML: "), "{error}");
            assert!(!error.contains("TOPSECRET"), "{error}");
        }
    }

    #[test]
    fn decodes_both_encodings_string_data_wins() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  apiToken: c2VjcmV0\n  userData: ZnJvbS1kYXRh\n  empty:\nstringData:\n  userData: from-stringData\n  projectID: p1\n";
        let secrets = parse_secrets("secret.yaml", text).unwrap();
        let data = &secrets[0].data;
        assert_eq!(data["apiToken"], b"secret");
        assert_eq!(data["userData"], b"from-stringData");
        assert_eq!(data["projectID"], b"p1");
        assert_eq!(data["empty"], b"");
        // Line-wrapped base64 (as `base64` emits it) decodes like the API server does.
        let wrapped = "apiVersion: v1\nkind: Secret\ndata:\n  userData: |\n    c2Vj\n    cmV0\n";
        assert_eq!(
            parse_secrets("s.yaml", wrapped).unwrap()[0].data["userData"],
            b"secret"
        );
    }

    #[test]
    fn bad_secrets_are_named_without_values() {
        let text = "apiVersion: v1\nkind: Secret\ndata:\n  userData: not*base64-TOPSECRET\n";
        let error = secret_err(text);
        assert_eq!(error, "secret.yaml: data.userData: invalid base64");
        let text = "apiVersion: v1\nkind: Secret\nstringData:\n  apiToken: [TOPSECRET]\n";
        let error = secret_err(text);
        assert_eq!(
            error,
            "secret.yaml: stringData.apiToken: expected a string, found a list"
        );
        let text = "apiVersion: v1\nkind: Secret\nstringData:\n  api token: TOPSECRET\n";
        let error = secret_err(text);
        assert!(
            error.starts_with("secret.yaml: stringData.api token: not a valid Secret key"),
            "{error}"
        );
        assert!(!error.contains("TOPSECRET"));
        let text = "apiVersion: v1\nkind: Secret\ndata: TOPSECRET\n";
        assert_eq!(
            secret_err(text),
            "secret.yaml: data: expected an object, found a string"
        );
    }

    #[test]
    fn secret_debug_shows_keys_only() {
        let text = "apiVersion: v1\nkind: Secret\nstringData: {apiToken: TOPSECRET}\n";
        let secrets = parse_secrets("s.yaml", text).unwrap();
        let debug = format!("{secrets:?}");
        assert!(
            debug.contains("apiToken") && !debug.contains("TOPSECRET"),
            "{debug}"
        );
    }

    #[test]
    fn later_secret_files_win() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("user-data.yaml");
        let second = dir.path().join("credentials.yaml");
        std::fs::write(
            &first,
            "apiVersion: v1\nkind: Secret\nstringData: {userData: u, projectID: old}\n",
        )
        .unwrap();
        std::fs::write(
            &second,
            "apiVersion: v1\nkind: Secret\nstringData: {apiToken: t, projectID: new}\n---\napiVersion: v1\nkind: Secret\nstringData: {apiToken: t2}\n",
        )
        .unwrap();
        let merged = load_secrets(&[&first, &second]).unwrap().to_cmi();
        assert_eq!(merged["userData"], b"u");
        assert_eq!(merged["projectID"], b"new");
        assert_eq!(merged["apiToken"], b"t2");
        let merged = load_secrets(&[&second, &first]).unwrap().to_cmi();
        assert_eq!(merged["projectID"], b"old");
        let error = load_secrets(&[dir.path().join("absent.yaml")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("absent.yaml: cannot read"), "{error}");
    }

    #[test]
    fn multi_document_errors_say_which_document() {
        let text =
            "apiVersion: v1\nkind: Secret\n---\napiVersion: v1\nkind: Secret\ndata: {k: '!!'}\n";
        assert_eq!(secret_err(text), "secret.yaml#2: data.k: invalid base64");
    }

    /// The shipped samples decode and carry what the driver requires (§4 of the design); the
    /// content check itself is `provider::spec`'s, this only guards the samples.
    #[test]
    fn samples_decode_and_have_required_keys() {
        let dir = sample_dir();
        let secrets = load_secrets(&[dir.join("secret.yaml")]).unwrap().to_cmi();
        for key in ["apiToken", "projectID", "userData"] {
            assert!(secrets.contains_key(key), "secret.yaml lacks {key}");
        }
        assert!(secrets["userData"].starts_with(b"#cloud-config"));
        let mut classes: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                let name = path.file_name().unwrap().to_string_lossy();
                name.starts_with("machine-class") && name.ends_with(".yaml")
            })
            .collect();
        classes.sort();
        assert!(classes.len() >= 4, "{classes:?}");
        for path in classes {
            let file = path.display();
            let class = load_machine_class(&path).unwrap();
            assert_eq!(class.provider.as_deref(), Some("EquinixMetal"), "{file}");
            assert!(
                class.secret_ref.is_some() && class.credentials_secret_ref.is_some(),
                "{file}"
            );
            let spec = class.provider_spec_json();
            assert!(
                spec.contains_key("projectID") || secrets.contains_key("projectID"),
                "{file}"
            );
            assert!(
                spec.contains_key("metro") || spec.contains_key("facilities"),
                "{file}"
            );
            assert!(spec.contains_key("machineType"), "{file}");
            assert!(
                spec.contains_key("OS") || spec.contains_key("ipxeScriptUrl"),
                "{file}"
            );
            let tags: Vec<&str> = spec["tags"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t.as_str())
                .collect();
            assert!(
                tags.iter().any(|t| t.starts_with("kubernetes.io/cluster/")),
                "{file}"
            );
            assert!(
                tags.iter().any(|t| t.starts_with("kubernetes.io/role/")),
                "{file}"
            );
        }
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Whatever the text, the decoders return (Ok or Err) rather than panic.
            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
                let _ = parse_machine_class("f.yaml", &text);
                let _ = parse_secrets("f.yaml", &text);
            }

            /// YAML-ish text (structure characters, keys we look at) reaches deeper paths.
            #[test]
            fn yamlish_text_never_panics(
                parts in proptest::collection::vec(
                    prop_oneof![
                        Just("apiVersion: v1\n".to_owned()),
                        Just("apiVersion: machine.sapcloud.io/v1alpha1\n".to_owned()),
                        Just("kind: Secret\n".to_owned()),
                        Just("kind: MachineClass\n".to_owned()),
                        Just("providerSpec:".to_owned()),
                        Just("data:".to_owned()),
                        Just("stringData:".to_owned()),
                        Just("secretRef:".to_owned()),
                        Just("metadata:".to_owned()),
                        Just("---\n".to_owned()),
                        Just("&a [*a]".to_owned()),
                        "[ \\-:{}\\[\\],\n'\"&*!|>#a-z0-9=]{0,12}",
                    ],
                    0..24,
                )
            ) {
                let text = parts.concat();
                let _ = parse_machine_class("f.yaml", &text);
                let _ = parse_secrets("f.yaml", &text);
            }
        }
    }
}
