//! Property tests of every decoder that sees outside input, filling the gaps next to the
//! module-level ones (providerSpec bytes/JSON, ProviderID strings, manifest text already
//! have never-panic properties in their modules). Here: Secret maps, ProviderID and
//! providerSpec rejections naming their field, Metal API bodies (devices, pages, errors)
//! with missing or odd fields, and YAML errors naming the file. No input may panic, and no
//! rejection may echo a secret value.

use std::collections::HashMap;

use metal_driver::{
    manifest::{parse_machine_class, parse_secrets},
    metal::{Device, DeviceList, ErrorBody, client::error_message},
    provider::{Error, credentials::Credentials, spec::ProviderSpec},
    provider_id::ProviderId,
};
use proptest::{collection, option, prelude::*};
use serde_json::{Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        Just(json!("5d1ef2a4-0000-4000-8000-000000000001")),
        Just(json!("active")),
        Just(json!("2026-01-01T00:00:00Z")),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const DEVICE_FIELDS: &[&str] = &[
    "id",
    "short_id",
    "href",
    "hostname",
    "description",
    "tags",
    "state",
    "created_at",
    "locked",
    "billing_cycle",
    "root_password",
    "metro",
    "facility",
    "plan",
    "operating_system",
    "ip_addresses",
    "hardware_reservation",
    "project",
    "userdata",
    "customdata",
    "provisioning_percentage",
    "termination_time",
];

/// A device-shaped object: known fields with arbitrary (often wrong) values, some missing.
fn arb_device() -> impl Strategy<Value = Value> {
    collection::vec((proptest::sample::select(DEVICE_FIELDS), arb_json()), 0..10).prop_map(
        |fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
    )
}

const SECRET_KEYS: &[&str] = &["apiToken", "token", "userData", "projectID", "other"];
const SECRET_VALUE: &str = "S3CRET-VALUE-never-echoed";

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Secret maps: any keys, any bytes. Never a panic; every rejection is InvalidArgument
    /// naming `secrets.<key>`, and never shows a value.
    #[test]
    fn secret_maps_never_panic_and_name_the_key(
        entries in collection::vec(
            (proptest::sample::select(SECRET_KEYS), prop_oneof![
                collection::vec(any::<u8>(), 0..40),
                Just(SECRET_VALUE.as_bytes().to_vec()),
                Just(Vec::new()),
                Just(b"5d1ef2a4-0000-4000-8000-000000000001".to_vec()),
                Just(vec![0xff, 0xfe]),
            ]),
            0..6,
        ),
        require_user_data in any::<bool>(),
    ) {
        let map: HashMap<String, Vec<u8>> = entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        match Credentials::from_secrets(&map, require_user_data) {
            Ok(creds) => {
                let shown = format!("{creds:?}");
                prop_assert!(!shown.contains(SECRET_VALUE), "Debug shows a secret");
            }
            Err(Error::InvalidField { field, why: reason }) => {
                prop_assert!(field.starts_with("secrets."), "field {field:?}");
                prop_assert!(!reason.contains(SECRET_VALUE) && !field.contains(SECRET_VALUE));
            }
            Err(other) => prop_assert!(false, "unexpected error kind {other:?}"),
        }
    }

    /// ProviderID strings: any text; a rejection names `providerID`.
    #[test]
    fn provider_id_rejections_name_the_field(s in prop_oneof![
        "\\PC{0,60}",
        "equinixmetal://\\PC{0,40}",
        "equinixmetal://[0-9a-f-]{30,40}",
        "[a-z]{0,12}://[0-9a-f-]{36}",
    ]) {
        if let Err(e) = ProviderId::parse(&s).map_err(Error::from) {
            prop_assert!(matches!(&e, Error::InvalidField { field, .. } if field == "providerID"), "{e:?}");
        }
    }

    /// providerSpec objects built from the real field names with arbitrary values: never a
    /// panic, and a rejection names a `providerSpec...` field.
    #[test]
    fn provider_spec_rejections_name_the_field(
        fields in collection::vec((proptest::sample::select(&[
            "projectID", "metro", "facilities", "machineType", "OS", "billingCycle", "tags",
            "customData", "reservationIDs", "reservedDevicesOnly", "ipxeScriptURL", "alwaysPXE",
            "userSSHKeys", "unlockOnDelete", "unknownField",
        ][..]), arb_json()), 0..8),
    ) {
        let mut spec = json!({
            "projectID": "5d1ef2a4-0000-4000-8000-000000000001",
            "metro": "sv",
            "machineType": "c3.small.x86",
            "OS": "ubuntu_22_04",
            "tags": ["kubernetes.io/cluster/x", "kubernetes.io/role/node"],
        });
        for (k, v) in fields {
            spec[k] = v;
        }
        if let Err(e) = ProviderSpec::decode(spec.to_string().as_bytes()) {
            prop_assert!(matches!(&e, Error::InvalidField { field, .. } if field.starts_with("providerSpec")), "{e:?}");
        }
    }

    /// Metal API bodies: devices and pages with missing or odd fields, error bodies of any
    /// shape, and raw bytes. serde may refuse them; nothing may panic, and an error message
    /// is always one bounded line.
    #[test]
    fn metal_api_bodies_never_panic(device in arb_device(), extra in arb_json(), raw in collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_value::<Device>(device.clone());
        let page = json!({ "devices": [device.clone(), extra.clone()], "meta": extra.clone() });
        let _ = serde_json::from_value::<DeviceList>(page);
        let _ = serde_json::from_value::<DeviceList>(extra.clone());
        let _ = serde_json::from_slice::<Device>(&raw);
        let _ = serde_json::from_slice::<DeviceList>(&raw);
        for body in [serde_json::to_vec(&extra).unwrap(), raw.clone(), serde_json::to_vec(&json!({"errors": [extra, device]})).unwrap()] {
            let _ = serde_json::from_slice::<ErrorBody>(&body);
            for status in [http::StatusCode::BAD_REQUEST, http::StatusCode::UNPROCESSABLE_ENTITY, http::StatusCode::SERVICE_UNAVAILABLE] {
                let message = error_message(status, &body);
                prop_assert!(!message.is_empty());
                prop_assert!(!message.contains('\n'), "one line: {message:?}");
                prop_assert!(message.chars().count() <= 4096, "bounded");
            }
        }
    }

    /// A device's root password never shows in its Debug output, whatever else it holds.
    #[test]
    fn device_debug_hides_the_root_password(device in arb_device(), pw in "[A-Za-z0-9]{12,20}") {
        let mut v = device;
        if let Value::Object(m) = &mut v {
            m.insert("root_password".into(), Value::from(format!("PW-{pw}")));
        }
        if let Ok(d) = serde_json::from_value::<Device>(v) {
            let shown = format!("{d:?}");
            let secret = format!("PW-{pw}");
            prop_assert!(!shown.contains(&secret));
        }
    }

    /// YAML given to the CLI: whatever the structure, an error names the file, and a Secret's
    /// value never appears in it.
    #[test]
    fn manifest_errors_name_the_file(
        kind in option::of(proptest::sample::select(&["Secret", "MachineClass", "Pod", "1", "[]"][..])),
        body in arb_json(),
        data in arb_json(),
    ) {
        let mut doc = serde_json::Map::new();
        if let Some(kind) = kind {
            doc.insert("kind".into(), Value::from(kind));
            doc.insert("apiVersion".into(), Value::from(if kind == "Secret" { "v1" } else { "machine.sapcloud.io/v1alpha1" }));
        }
        doc.insert("metadata".into(), json!({ "name": "m", "namespace": "ns" }));
        doc.insert("providerSpec".into(), body);
        doc.insert("data".into(), json!({ "apiToken": data, "userData": SECRET_VALUE }));
        doc.insert("stringData".into(), json!({ "apiToken": SECRET_VALUE }));
        let text = serde_saphyr::to_string(&Value::Object(doc)).unwrap();
        if let Err(e) = parse_machine_class("class.yaml", &text) {
            let m = e.to_string();
            prop_assert!(m.starts_with("class.yaml"), "{m}");
        }
        if let Err(e) = parse_secrets("secret.yaml", &text) {
            let m = e.to_string();
            prop_assert!(m.starts_with("secret.yaml"), "{m}");
            prop_assert!(!m.contains(SECRET_VALUE), "a Secret value in an error: {m}");
        }
    }
}
