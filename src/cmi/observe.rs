//! The one wrapper every RPC handler runs in: a span with the method and machine name,
//! RPC metrics by code, and a log line for every failure (errors are otherwise only visible
//! to the caller, never in our own logs).

use std::{future::Future, time::Instant};

use tonic::Status;
use tracing::Instrument;

use crate::telemetry::Metrics;

/// Runs `fut` as RPC `service/method` for `machine` (empty for machine-less RPCs).
pub async fn observed<T, F>(
    metrics: &Metrics,
    service: &'static str,
    method: &'static str,
    machine: &str,
    fut: F,
) -> Result<T, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    let span = tracing::info_span!("rpc", rpc.service = service, rpc.method = method, machine = %machine, code = tracing::field::Empty);
    let started = Instant::now();
    metrics.grpc.start(service, method);
    let result = fut.instrument(span.clone()).await;
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let code_name = code_name(code);
    span.record("code", code_name);
    let elapsed = started.elapsed();
    metrics.grpc.end(service, method, code_name, elapsed);
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

/// The canonical code names MCM writes into `lastOperation.errorCode`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

/// The caller's deadline from the `grpc-timeout` header, as an instant.
pub fn deadline<T>(request: &tonic::Request<T>) -> Option<tokio::time::Instant> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(raw).map(|d| tokio::time::Instant::now() + d)
}

/// Parses the gRPC wire format `<1-8 digits><unit>` (H, M, S, m, u, n).
pub fn parse_grpc_timeout(raw: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[tokio::test]
    async fn observed_records_code_metrics() {
        let m = Metrics::new();
        let r: Result<(), Status> = observed(&m, "cmi.v1.Machine", "DeleteMachine", "m1", async {
            Err(Status::aborted("busy"))
        })
        .await;
        assert!(r.is_err());
        assert!(m.render().contains(
            "grpc_server_handled_total{grpc_service=\"cmi.v1.Machine\",grpc_method=\"DeleteMachine\",grpc_code=\"Aborted\"} 1"
        ));
    }
}
