//! YAML files given to the `machine` CLI (MachineClass, Secret): parsing never panics or
//! hangs (alias bombs included), and every error names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metal_driver::manifest::{parse_machine_class, parse_secrets};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse_machine_class("class.yaml", text) {
        assert!(e.to_string().starts_with("class.yaml"), "{e}");
    }
    if let Err(e) = parse_secrets("secret.yaml", text) {
        assert!(e.to_string().starts_with("secret.yaml"), "{e}");
    }
});
