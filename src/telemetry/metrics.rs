//! Prometheus metrics, one registry per process, served on the side port's `/metrics`.
//!
//! Two naming schemes live side by side: our own (`metal_driver_*`, `grpc_server_*`) and
//! MCM's (`mcm_cloud_api_*`), so the dashboards Gardener users already have keep working.
//!
//! The MCM families follow `gardener/machine-controller-manager`
//! `pkg/util/provider/metrics/metrics.go` and the recorders of the Gardener providers:
//!
//! | family | type | labels | recorded |
//! |---|---|---|---|
//! | `mcm_cloud_api_requests_total` | counter | `provider`, `service` | every Metal API exchange |
//! | `mcm_cloud_api_requests_failed_total` | counter | `provider`, `service` | exchanges that were not 2xx |
//! | `mcm_cloud_api_api_request_duration_seconds` | histogram | `provider`, `service` | successful exchanges only |
//! | `mcm_cloud_api_driver_request_duration_seconds` | histogram | `provider`, `operation` | successful driver operations only |
//! | `mcm_cloud_api_driver_requests_failed_total` | counter | `provider`, `operation`, `error_code` | failed driver operations |
//!
//! `operation` uses the providers' values (`create_machine`, `get_machine_status`,
//! `list_machine`, `delete_machine`, `get_volume_ids`, plus our `shutdown_machine`), and
//! `error_code` is the numeric machine code (`3` = InvalidArgument, `14` = Unavailable), as
//! MCM's `strconv.Itoa(int(code))` writes it.

use std::{sync::Arc, time::Duration};

use super::{mcm::McmMachineMetrics, workqueue::WorkQueueMetrics};
use crate::cmi::{
    codes::{code_name, code_number},
    rpc::Rpc,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tonic::Code;

/// MCM's `provider` label value.
pub const PROVIDER: &str = "equinixmetal";

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetalLabels {
    pub endpoint: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetalEndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct McmLabels {
    pub provider: &'static str,
    pub service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub endpoint: &'static str,
    pub reason: &'static str,
}

/// Metal API calls as seen by our client.
#[derive(Clone)]
pub struct MetalApiMetrics {
    requests: Family<MetalLabels, Counter>,
    duration: Family<MetalEndpointLabels, Histogram>,
    retries: Family<RetryLabels, Counter>,
    mcm_requests: Family<McmLabels, Counter>,
    mcm_failed: Family<McmLabels, Counter>,
    mcm_duration: Family<McmLabels, Histogram>,
}

impl Default for MetalApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MetalApiMetrics {
    pub fn new() -> Self {
        let hist = || Histogram::new(latency_buckets());
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(hist),
            retries: Family::default(),
            mcm_requests: Family::default(),
            mcm_failed: Family::default(),
            mcm_duration: Family::new_with_constructor(hist),
        }
    }

    /// One HTTP exchange finished. `status` is the HTTP status, or `transport`/`timeout`.
    pub fn observe(&self, endpoint: &'static str, status: &str, elapsed: Duration) {
        let ok = status.starts_with('2');
        self.requests
            .get_or_create(&MetalLabels {
                endpoint,
                status: status.to_owned(),
            })
            .inc();
        self.duration
            .get_or_create(&MetalEndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
        let mcm = McmLabels {
            provider: PROVIDER,
            service: endpoint,
        };
        self.mcm_requests.get_or_create(&mcm).inc();
        // MCM's latency histogram covers successful calls only.
        if ok {
            self.mcm_duration
                .get_or_create(&mcm)
                .observe(elapsed.as_secs_f64());
        } else {
            self.mcm_failed.get_or_create(&mcm).inc();
        }
    }

    /// A retry is about to happen. `reason`: `429`, `5xx`, `transport`.
    pub fn retry(&self, endpoint: &'static str, reason: &'static str) {
        self.retries
            .get_or_create(&RetryLabels { endpoint, reason })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCodeLabels {
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
    pub grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub provider: &'static str,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationErrorLabels {
    pub provider: &'static str,
    pub operation: &'static str,
    pub error_code: i32,
}

/// gRPC server metrics, recorded by one tower layer so no handler can forget them.
#[derive(Clone)]
pub struct GrpcMetrics {
    started: Family<GrpcLabels, Counter>,
    handled: Family<GrpcCodeLabels, Counter>,
    handling: Family<GrpcLabels, Histogram>,
    in_flight: Gauge,
    op_duration: Family<OperationLabels, Histogram>,
    op_failed: Family<OperationErrorLabels, Counter>,
}

impl GrpcMetrics {
    fn new() -> Self {
        let hist = || Histogram::new(latency_buckets());
        Self {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(hist),
            in_flight: Gauge::default(),
            op_duration: Family::new_with_constructor(hist),
            op_failed: Family::default(),
        }
    }

    pub fn start(&self, rpc: Rpc) {
        self.in_flight.inc();
        self.started.get_or_create(&grpc_labels(rpc)).inc();
    }

    /// `rpc` ended with `code` after `elapsed`.
    pub fn end(&self, rpc: Rpc, code: Code, elapsed: Duration) {
        self.in_flight.dec();
        self.handling
            .get_or_create(&grpc_labels(rpc))
            .observe(elapsed.as_secs_f64());
        self.handled
            .get_or_create(&GrpcCodeLabels {
                grpc_service: rpc.service(),
                grpc_method: rpc.name(),
                grpc_code: code_name(code),
            })
            .inc();
        let Some(operation) = rpc.mcm_operation() else {
            return;
        };
        // Like MCM's recorder: latency of successes, a failure count by code otherwise.
        if code == Code::Ok {
            self.op_duration
                .get_or_create(&OperationLabels {
                    provider: PROVIDER,
                    operation,
                })
                .observe(elapsed.as_secs_f64());
        } else {
            self.op_failed
                .get_or_create(&OperationErrorLabels {
                    provider: PROVIDER,
                    operation,
                    error_code: code_number(code),
                })
                .inc();
        }
    }
}

fn grpc_labels(rpc: Rpc) -> GrpcLabels {
    GrpcLabels {
        grpc_service: rpc.service(),
        grpc_method: rpc.name(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerFailureLabels {
    pub controller: &'static str,
    pub reason: String,
}

/// The machine controller's reconcile loop (`metal-driver controller`).
#[derive(Clone)]
pub struct ControllerMetrics {
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<ControllerFailureLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    orphans_deleted: Counter,
    leader: Gauge,
}

impl ControllerMetrics {
    fn new() -> Self {
        Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            orphans_deleted: Counter::default(),
            leader: Gauge::default(),
        }
    }

    /// One reconcile of `controller` (`machine`, `machineclass`, `orphans`) finished.
    pub fn reconciled(&self, controller: &'static str, elapsed: Duration) {
        let l = ControllerLabels { controller };
        self.reconciles.get_or_create(&l).inc();
        self.duration
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
    }

    /// A reconcile failed (or handled a driver error); `reason` is the error's metric label.
    pub fn failed(&self, controller: &'static str, reason: String) {
        self.failures
            .get_or_create(&ControllerFailureLabels { controller, reason })
            .inc();
    }

    /// The orphan collector deleted a device.
    pub fn orphan_deleted(&self) {
        self.orphans_deleted.inc();
    }

    /// Whether this replica holds the leader lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

/// Every metric family of the process.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub metal: MetalApiMetrics,
    pub grpc: GrpcMetrics,
    pub controller: ControllerMetrics,
    /// MCM's machine-controller series (see [`super::mcm`]).
    pub mcm: McmMachineMetrics,
    /// MCM's work-queue series (see [`super::workqueue`]).
    pub workqueue: WorkQueueMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let metal = MetalApiMetrics::new();
        let grpc = GrpcMetrics::new();
        let controller = ControllerMetrics::new();
        let mcm = McmMachineMetrics::new();
        let mut registry = Registry::default();
        mcm.register(&mut registry);
        registry.register_collector(Box::new(super::process::ProcessCollector));
        let workqueue = WorkQueueMetrics::default();
        registry.register_collector(Box::new(workqueue.clone()));
        {
            let r = registry.sub_registry_with_prefix("metal_driver");
            r.register(
                "metal_api_requests",
                "Metal API requests by endpoint and HTTP status",
                metal.requests.clone(),
            );
            r.register(
                "metal_api_request_duration_seconds",
                "Metal API request latency",
                metal.duration.clone(),
            );
            r.register(
                "metal_api_retries",
                "Metal API retries by endpoint and reason",
                metal.retries.clone(),
            );
        }
        {
            let r = registry.sub_registry_with_prefix("mcm_cloud_api");
            r.register(
                "requests",
                "Cloud API requests (MCM name)",
                metal.mcm_requests.clone(),
            );
            r.register(
                "requests_failed",
                "Failed cloud API requests (MCM name)",
                metal.mcm_failed.clone(),
            );
            r.register(
                "api_request_duration_seconds",
                "Latency of successful cloud API requests (MCM name)",
                metal.mcm_duration.clone(),
            );
            r.register(
                "driver_request_duration_seconds",
                "Latency of successful driver operations (MCM name)",
                grpc.op_duration.clone(),
            );
            r.register(
                "driver_requests_failed",
                "Failed driver operations by operation and numeric error code (MCM name)",
                grpc.op_failed.clone(),
            );
        }
        {
            let r = registry.sub_registry_with_prefix("grpc_server");
            r.register("started", "RPCs started", grpc.started.clone());
            r.register("handled", "RPCs completed, by code", grpc.handled.clone());
            r.register("handling_seconds", "RPC latency", grpc.handling.clone());
            r.register("in_flight", "RPCs in progress", grpc.in_flight.clone());
        }
        {
            let r = registry.sub_registry_with_prefix("metal_driver_controller");
            r.register(
                "reconciles",
                "Reconciles by controller",
                controller.reconciles.clone(),
            );
            r.register(
                "reconcile_failures",
                "Failed reconciles and handled driver errors, by controller and reason",
                controller.failures.clone(),
            );
            r.register(
                "reconcile_duration_seconds",
                "Reconcile latency",
                controller.duration.clone(),
            );
            r.register(
                "orphan_devices_deleted",
                "Devices deleted by orphan collection",
                controller.orphans_deleted.clone(),
            );
            r.register(
                "leader",
                "1 while this replica holds the leader lease",
                controller.leader.clone(),
            );
        }
        Self {
            registry: Arc::new(registry),
            metal,
            grpc,
            controller,
            mcm,
            workqueue,
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_our_and_mcm_names() {
        let m = Metrics::new();
        m.metal
            .observe("findDeviceById", "200", Duration::from_millis(3));
        m.metal
            .observe("findDeviceById", "503", Duration::from_millis(3));
        m.grpc.start(Rpc::GetMachineStatus);
        m.grpc.end(
            Rpc::GetMachineStatus,
            Code::NotFound,
            Duration::from_millis(1),
        );
        let text = m.render();
        for needle in [
            "metal_driver_metal_api_requests_total{endpoint=\"findDeviceById\",status=\"200\"} 1",
            "mcm_cloud_api_requests_total{provider=\"equinixmetal\",service=\"findDeviceById\"} 2",
            "mcm_cloud_api_requests_failed_total{provider=\"equinixmetal\",service=\"findDeviceById\"} 1",
            "mcm_cloud_api_api_request_duration_seconds_count",
            "grpc_server_handled_total{grpc_service=\"cmi.v1.Machine\",grpc_method=\"GetMachineStatus\",grpc_code=\"NotFound\"} 1",
            "mcm_cloud_api_driver_requests_failed_total{provider=\"equinixmetal\",operation=\"get_machine_status\",error_code=\"5\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // Only successful calls reach MCM's latency histograms.
        assert!(text.contains(
            "mcm_cloud_api_api_request_duration_seconds_count{provider=\"equinixmetal\",service=\"findDeviceById\"} 1"
        ));
        assert!(!text.contains("mcm_cloud_api_driver_request_duration_seconds_count{"));
    }
}
