//! The Common Machine Interface (`cmi.v1`) on the wire: generated types, the thin tonic
//! services, the RPC and code-name tables, the error-to-code table, the endpoint parser and
//! a typed client.

pub mod calls;
pub mod client;
pub mod codes;
pub mod decode;
pub mod endpoint;
pub mod identity;
pub mod in_process;
pub mod machine;
pub mod observe;
pub mod preflight;
pub mod redact;
pub mod rpc;
pub mod server;
pub mod shed;
pub mod status;

pub use rpc::{RetryClass, Rpc};

/// Generated from `proto/cmi/v1/cmi.proto` by `build.rs` (protox, no system protoc).
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("cmi.v1");
}

/// The encoded `FileDescriptorSet` of our proto, for server reflection and for tests
/// that walk the schema (redaction, wire compatibility).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cmi_descriptor.bin"));

/// The name we report in GetPluginInfo: DNS-style, at most 63 characters.
pub const PLUGIN_NAME: &str = "metal.driver.cmi";

/// The crate version, reported in GetPluginInfo.
pub const PLUGIN_VERSION: &str = env!("CARGO_PKG_VERSION");
