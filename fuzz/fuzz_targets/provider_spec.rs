//! providerSpec bytes from a MachineClass: decode never panics; a rejection names a
//! `providerSpec…` field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metal_driver::provider::{Error, spec::ProviderSpec};

fuzz_target!(|data: &[u8]| {
    if let Err(e) = ProviderSpec::decode(data) {
        assert!(
            matches!(&e, Error::InvalidField { field, .. } if field.starts_with("providerSpec")),
            "rejection without a providerSpec field: {e:?}"
        );
    }
});
