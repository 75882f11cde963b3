//! Metal API response bodies: a device, a page of devices, an error body. Decoding never
//! panics, and the error text we build from any body is one bounded line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metal_driver::metal::{Device, DeviceList, ErrorBody, client::error_message};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Device>(data);
    let _ = serde_json::from_slice::<DeviceList>(data);
    let _ = serde_json::from_slice::<ErrorBody>(data);
    for status in [
        http::StatusCode::UNPROCESSABLE_ENTITY,
        http::StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let message = error_message(status, data);
        assert!(!message.is_empty());
        assert!(!message.contains('\n'));
        assert!(message.chars().count() <= 1024);
    }
});
