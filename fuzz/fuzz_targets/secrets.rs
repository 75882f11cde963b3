//! A Secret's data map: the input is split into `key=value` records on NUL bytes. Decoding
//! never panics, a rejection names `secrets.<key>`, and no secret value reaches the error or
//! Debug. (Echo check: each secret value gets a marker appended — same validity — and the
//! marker must not show up; comparing raw values would flag fuzzer tokens that happen to be
//! words of our own messages.)
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use metal_driver::provider::{Error, credentials::Credentials};

const MARKER: &str = "#LEAKCHECK";
const SECRET_KEYS: [&str; 3] = ["apiToken", "token", "userData"];

fuzz_target!(|data: &[u8]| {
    let mut map = HashMap::new();
    for record in data.split(|b| *b == 0) {
        let mut parts = record.splitn(2, |b| *b == b'=');
        let key = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let value = parts.next().unwrap_or_default().to_vec();
        map.insert(key, value);
    }
    let mut marked = map.clone();
    for key in SECRET_KEYS {
        if let Some(v) = marked.get_mut(key) {
            v.extend_from_slice(MARKER.as_bytes());
        }
    }
    for require_user_data in [true, false] {
        for (m, check) in [(&map, false), (&marked, true)] {
            match Credentials::from_secrets(m, require_user_data) {
                Ok(creds) => {
                    assert!(
                        !check || !format!("{creds:?}").contains(MARKER),
                        "Debug shows a secret value"
                    );
                }
                Err(Error::InvalidField { field, why: reason }) => {
                    assert!(field.starts_with("secrets."), "field {field:?}");
                    assert!(
                        !check || !reason.contains(MARKER),
                        "a rejection echoes a secret value"
                    );
                }
                Err(other) => panic!("unexpected error kind {other:?}"),
            }
        }
    }
});
