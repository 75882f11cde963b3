//! The one wrapper every RPC handler runs in: a span with the method and machine name,
//! RPC metrics by code, and a log line for every failure (errors are otherwise only visible
//! to the caller, never in our own logs).

use std::{future::Future, time::Instant};

use tonic::Status;
use tracing::Instrument;

use super::{codes::code_name, rpc::Rpc};
use crate::telemetry::Metrics;

/// Runs `fut` as `rpc` for `machine` (empty for machine-less RPCs).
pub async fn observed<T, F>(metrics: &Metrics, rpc: Rpc, machine: &str, fut: F) -> Result<T, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    let span = tracing::info_span!("rpc", rpc.service = rpc.service(), rpc.method = rpc.name(), machine = %machine, code = tracing::field::Empty);
    let started = Instant::now();
    metrics.grpc.start(rpc);
    let result = fut.instrument(span.clone()).await;
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let code_name = code_name(code);
    span.record("code", code_name);
    let elapsed = started.elapsed();
    metrics.grpc.end(rpc, code, elapsed);
    span.in_scope(|| match &result {
        Ok(_) => tracing::debug!(elapsed_ms = elapsed.as_millis() as u64, "rpc ok"),
        // NotFound is how a client learns a machine needs creating: normal flow, not a warning.
        Err(status) if status.code() == tonic::Code::NotFound => tracing::info!(
            code = code_name,
            message = status.message(),
            elapsed_ms = elapsed.as_millis() as u64,
            "rpc answered not found"
        ),
        Err(status) => tracing::warn!(
            code = code_name,
            message = status.message(),
            elapsed_ms = elapsed.as_millis() as u64,
            "rpc failed"
        ),
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn observed_records_code_metrics() {
        let m = Metrics::new();
        let r: Result<(), Status> = observed(&m, Rpc::DeleteMachine, "m1", async {
            Err(Status::aborted("busy"))
        })
        .await;
        assert!(r.is_err());
        assert!(m.render().contains(
            "grpc_server_handled_total{grpc_service=\"cmi.v1.Machine\",grpc_method=\"DeleteMachine\",grpc_code=\"Aborted\"} 1"
        ));
    }
}
