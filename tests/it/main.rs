//! Integration tests: real gRPC over loopback, the in-process simulator as the Metal API.
//! One test binary (one link step) with a module per concern.

mod support;

mod decoders;
mod errors;
mod idempotency;
mod leak_matrix;
mod limits;
mod pagination;
mod process;
mod redaction;
mod retries;
mod rpc;
mod shutdown;
mod sigterm;
mod tls;
