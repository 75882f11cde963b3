//! ProviderID strings (from Machine objects): parse never panics, a rejection names
//! `providerID`, and an accepted one round-trips through Display.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metal_driver::{provider::Error, provider_id::ProviderId};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match ProviderId::parse(s) {
        Ok(id) => assert_eq!(ProviderId::parse(&id.to_string()).ok(), Some(id)),
        Err(e) => {
            let e = Error::from(e);
            assert!(
                matches!(&e, Error::InvalidField { field, .. } if field == "providerID"),
                "{e:?}"
            )
        }
    }
});
