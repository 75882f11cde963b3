//! A Secret's data map: the input is split into `key=value` records on NUL bytes. Decoding
//! never panics, a rejection names `secrets.<key>`, and no value reaches the error or Debug.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use metal_driver::provider::{Error, credentials::Credentials};

fuzz_target!(|data: &[u8]| {
    let mut map = HashMap::new();
    for record in data.split(|b| *b == 0) {
        let mut parts = record.splitn(2, |b| *b == b'=');
        let key = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let value = parts.next().unwrap_or_default().to_vec();
        map.insert(key, value);
    }
    for require_user_data in [true, false] {
        match Credentials::from_secrets(&map, require_user_data) {
            Ok(creds) => {
                let shown = format!("{creds:?}");
                for v in map.values().filter(|v| v.len() >= 8) {
                    if let Ok(v) = std::str::from_utf8(v) {
                        assert!(!shown.contains(v), "Debug shows a Secret value");
                    }
                }
            }
            Err(Error::InvalidArgument { field, reason }) => {
                assert!(field.starts_with("secrets."), "field {field:?}");
                for v in map.values().filter(|v| v.len() >= 8) {
                    if let Ok(v) = std::str::from_utf8(v) {
                        assert!(!reason.contains(v), "a rejection echoes a Secret value");
                    }
                }
            }
            Err(other) => panic!("unexpected error kind {other:?}"),
        }
    }
});
