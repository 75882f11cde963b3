//! Logs, metrics and the HTTP side port (`/healthz`, `/readyz`, `/metrics`).

pub mod metrics;

pub use metrics::Metrics;
