//! Compiles `proto/cmi/v1/cmi.proto` with protox (pure Rust: no system `protoc`).
//!
//! Every message that carries a `(cmi.v1.cmi_secret)` field gets prost's derived
//! `Debug` switched off; `src/cmi/redact.rs` supplies a redacting `Debug` instead, and a
//! unit test walks the descriptor set so a new secret-bearing message cannot slip through.

use std::{env, path::PathBuf};

use prost_reflect::Value;

const PROTO: &str = "proto/cmi/v1/cmi.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_file("cmi/v1/cmi.proto")?;
    let pool = compiler.descriptor_pool();
    let fds = compiler.file_descriptor_set();

    let secret = pool
        .get_extension_by_name("cmi.v1.cmi_secret")
        .ok_or("cmi.v1.cmi_secret extension missing from the proto")?;
    let mut secret_bearing = Vec::new();
    for message in pool.all_messages() {
        let has_secret = message.fields().any(|field| {
            let options = field.options();
            options.has_extension(&secret)
                && matches!(options.get_extension(&secret).as_ref(), Value::Bool(true))
        });
        if has_secret {
            secret_bearing.push(format!(".{}", message.full_name()));
        }
    }

    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by protox itself: prost_types' FieldOptions would drop the cmi_secret
    // extension, and reflection clients must see it.
    std::fs::write(
        out.join("cmi_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    std::fs::write(
        out.join("cmi_secret_messages.txt"),
        secret_bearing.join("\n"),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(secret_bearing)
        .compile_fds(fds)?;
    Ok(())
}
