//! The series MCM's provider machine controller exports, with MCM's names, labels and values,
//! because Gardener's ServiceMonitor for the machine-controller-manager keeps only
//! `mcm_machine_*`, `mcm_cloud_api_*`, `mcm_machine_controller_frozen`,
//! `mcm_misc_scrape_failure_total`, `process_*` and `mcm_workqueue_*` on port 10259 and
//! drops everything else.
//!
//! Source of truth: `gardener/machine-controller-manager` v0.62.1
//! `pkg/util/provider/metrics/metrics.go` and `pkg/util/provider/machinecontroller/metrics.go`
//! (the collector), plus the duration gauges and failed-join counter MCM master added to the
//! same file.
//!
//! | series | type | labels | value |
//! |---|---|---|---|
//! | `mcm_machine_items_total` | gauge | — | Machines in the namespace |
//! | `mcm_machine_current_status_phase` | gauge | `name`, `namespace` | Terminating −4, Failed −3, CrashLoopBackOff −2, Unknown −1, Pending 0, Running 1, any other phase 0 |
//! | `mcm_machine_info` | gauge | `name`, `namespace`, `createdAt` (Unix seconds), `spec_provider_id`, `spec_class_api_group`, `spec_class_kind`, `spec_class_name`, `node_name` (label `node`) | 1 |
//! | `mcm_machine_status_condition` | gauge | `name`, `namespace`, `condition` | True 1, False 0, Unknown 2 |
//! | `mcm_machine_controller_frozen` | gauge | — | 1 while the API-server safety freeze is on |
//! | `mcm_misc_scrape_failure_total` | counter | `binary="machine-controller-manager-provider"`, `kind` | Machines the collector could not read |
//! | `mcm_machine_{create,initialize,join,delete}_duration_seconds` | gauge | `namespace`, `machine_deployment`, `instance_type`, `zone` | whole seconds of the last such event |
//! | `mcm_machine_drain_duration_seconds` | gauge | `namespace`, `machine_deployment` | whole seconds of the last drain |
//! | `mcm_machine_num_failed_join` | untyped (a count) | as the duration gauges | Machines that did not join within the creation timeout |
//!
//! The first five are computed at scrape time from the controller's Machine cache (MCM's
//! `Collect`), and only while a controller runs (MCM registers its collector once it leads):
//! a `serve`-only process has none of them. Unlike MCM, whose `info` and `status_condition`
//! vectors keep the series of deleted Machines until the process restarts, a deleted Machine
//! leaves every series at the next scrape.
//!
//! `machine_deployment` is the Machine's `name` label (MCM's MachineDeployment name); a Machine
//! without it is not recorded, as in MCM. `instance_type` is the class's
//! `nodeTemplate.instanceType` and `zone` the Machine's
//! `spec.nodeTemplate.metadata.labels["topology.kubernetes.io/zone"]` (empty when absent,
//! where MCM master would panic on the missing label).
//!
//! `mcm_machine_num_failed_join` has no `_total` suffix in MCM. Our exposition is OpenMetrics,
//! where a counter must end in `_total`, so the family is exposed untyped to keep MCM's exact
//! series name; it only ever increases.

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{
        MetricType, TypedMetric, counter::Counter, family::Family, gauge::ConstGauge, gauge::Gauge,
    },
    registry::Registry,
};

/// MCM's `binary` const label of `mcm_misc_scrape_failure_total` in a provider's machine
/// controller.
pub const SCRAPE_FAILURE_BINARY: &str = "machine-controller-manager-provider";

/// One Machine as the collector reports it: what MCM's collector reads off the object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineSample {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.creationTimestamp` in Unix seconds.
    pub created_at: i64,
    /// `spec.providerID` (empty before the device exists).
    pub provider_id: String,
    /// `spec.class.apiGroup`.
    pub class_api_group: String,
    /// `spec.class.kind`.
    pub class_kind: String,
    /// `spec.class.name`.
    pub class_name: String,
    /// The `node` label (empty before the Node name is known).
    pub node_name: String,
    /// `status.currentStatus.phase`.
    pub phase: String,
    /// `status.conditions` as (type, status).
    pub conditions: Vec<(String, String)>,
}

/// What the collector reads at scrape time: the controller's Machine cache.
pub trait MachineSource: Send + Sync + 'static {
    /// Every cached Machine, and how many cached objects could not be read as a Machine.
    fn machines(&self) -> (Vec<MachineSample>, usize);
}

/// MCM's phase gauge value (`updateMachineCSPhaseMetric`).
pub fn phase_value(phase: &str) -> i64 {
    match phase {
        "Terminating" => -4,
        "Failed" => -3,
        "CrashLoopBackOff" => -2,
        "Unknown" => -1,
        "Running" => 1,
        // Pending, and every phase MCM's switch does not list (Available, "", …) keep Go's
        // zero value.
        _ => 0,
    }
}

/// MCM's condition gauge value (`updateMachineStatusConditionMetric`).
pub fn condition_value(status: &str) -> i64 {
    match status {
        "True" => 1,
        "Unknown" => 2,
        // False, and anything else (Go's zero value).
        _ => 0,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
    namespace: String,
}

/// Field names are the label names; MCM spells one of them `createdAt`.
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    name: String,
    namespace: String,
    createdAt: String,
    spec_provider_id: String,
    spec_class_api_group: String,
    spec_class_kind: String,
    spec_class_name: String,
    node_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    name: String,
    namespace: String,
    condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScrapeFailureLabels {
    binary: &'static str,
    kind: &'static str,
}

/// Labels of the create/initialize/join/delete gauges and the failed-join count.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    /// The Machine's namespace.
    pub namespace: String,
    /// The Machine's `name` label.
    pub machine_deployment: String,
    /// The class's `nodeTemplate.instanceType`.
    pub instance_type: String,
    /// The Machine's `spec.nodeTemplate` zone label.
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    namespace: String,
    machine_deployment: String,
}

/// A metric exposed with type `unknown`, so OpenMetrics adds no `_total` suffix.
#[derive(Debug)]
struct Untyped<M>(M);

impl<M: EncodeMetric> EncodeMetric for Untyped<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

impl<M> TypedMetric for Untyped<M> {
    const TYPE: MetricType = MetricType::Unknown;
}

#[derive(Default)]
struct Shared {
    frozen: AtomicBool,
    source: RwLock<Option<Arc<dyn MachineSource>>>,
}

/// The MCM machine-controller families and the scrape-time Machine collector.
#[derive(Clone)]
pub struct McmMachineMetrics {
    shared: Arc<Shared>,
    scrape_failures: Family<ScrapeFailureLabels, Counter>,
    create: Family<PlacementLabels, Gauge>,
    initialize: Family<PlacementLabels, Gauge>,
    join: Family<PlacementLabels, Gauge>,
    delete: Family<PlacementLabels, Gauge>,
    drain: Family<DeploymentLabels, Gauge>,
    failed_join: Family<PlacementLabels, Gauge>,
}

impl fmt::Debug for McmMachineMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McmMachineMetrics")
            .field("frozen", &self.shared.frozen.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// MCM rounds every duration to whole seconds (`Round(time.Second).Seconds()`).
fn whole_seconds(d: Duration) -> i64 {
    i64::try_from(d.as_millis().saturating_add(500) / 1000).unwrap_or(i64::MAX)
}

impl McmMachineMetrics {
    pub(super) fn new() -> Self {
        Self {
            shared: Arc::default(),
            scrape_failures: Family::default(),
            create: Family::default(),
            initialize: Family::default(),
            join: Family::default(),
            delete: Family::default(),
            drain: Family::default(),
            failed_join: Family::default(),
        }
    }

    /// Registers every family (and the collector) at the registry's root: MCM's names carry
    /// their own `mcm_` prefix.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "mcm_machine_create_duration_seconds",
            "Duration in seconds to create a Machine of a MachineDeployment.",
            self.create.clone(),
        );
        registry.register(
            "mcm_machine_initialize_duration_seconds",
            "Duration in seconds to initialize a Machine of a MachineDeployment.",
            self.initialize.clone(),
        );
        registry.register(
            "mcm_machine_join_duration_seconds",
            "Duration in seconds for a Machine of a MachineDeployment to join the cluster",
            self.join.clone(),
        );
        registry.register(
            "mcm_machine_drain_duration_seconds",
            "Duration in seconds to drain a Machine of a MachineDeployment.",
            self.drain.clone(),
        );
        registry.register(
            "mcm_machine_delete_duration_seconds",
            "Duration in seconds to delete a Machine of a MachineDeployment.",
            self.delete.clone(),
        );
        registry.register(
            "mcm_machine_num_failed_join",
            "Number of Machines of a MachineDeployment that failed to join the cluster.",
            Untyped(self.failed_join.clone()),
        );
        registry.register_collector(Box::new(MachineCollector {
            shared: self.shared.clone(),
            scrape_failures: self.scrape_failures.clone(),
        }));
    }

    /// Sets `mcm_machine_controller_frozen` (the API-server safety freeze).
    pub fn set_controller_frozen(&self, frozen: bool) {
        self.shared.frozen.store(frozen, Ordering::Relaxed);
    }

    /// Whether the freeze gauge is set.
    pub fn controller_frozen(&self) -> bool {
        self.shared.frozen.load(Ordering::Relaxed)
    }

    /// Starts the scrape-time Machine series, read from `source` (the controller calls this
    /// once it leads and its cache is filling). Replaces an earlier source.
    pub fn attach(&self, source: Arc<dyn MachineSource>) {
        *self
            .shared
            .source
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(source);
    }

    /// Stops the scrape-time Machine series (the controller stopped leading).
    pub fn detach(&self) {
        *self
            .shared
            .source
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// CreateMachine succeeded `since_created` after the Machine's creation.
    pub fn machine_created(&self, labels: &PlacementLabels, since_created: Duration) {
        self.set(&self.create, labels, since_created);
    }

    /// InitializeMachine succeeded after `took` (MCM master; our driver has no such RPC).
    pub fn machine_initialized(&self, labels: &PlacementLabels, took: Duration) {
        self.set(&self.initialize, labels, took);
    }

    /// The Machine's Node became healthy `since_created` after the Machine's creation.
    pub fn machine_joined(&self, labels: &PlacementLabels, since_created: Duration) {
        self.set(&self.join, labels, since_created);
    }

    /// The Machine did not join within its creation timeout.
    pub fn machine_failed_join(&self, labels: &PlacementLabels) {
        self.failed_join.get_or_create(labels).inc();
    }

    /// A drain of the Machine's Node finished after `took`.
    pub fn machine_drained(&self, labels: &PlacementLabels, took: Duration) {
        let l = DeploymentLabels {
            namespace: labels.namespace.clone(),
            machine_deployment: labels.machine_deployment.clone(),
        };
        self.drain.get_or_create(&l).set(whole_seconds(took));
    }

    /// DeleteMachine succeeded `since_deletion` after the Machine's deletionTimestamp.
    pub fn machine_deleted(&self, labels: &PlacementLabels, since_deletion: Duration) {
        self.set(&self.delete, labels, since_deletion);
    }

    fn set(&self, family: &Family<PlacementLabels, Gauge>, l: &PlacementLabels, d: Duration) {
        // MCM records only non-zero durations.
        if d.is_zero() {
            return;
        }
        family.get_or_create(l).set(whole_seconds(d));
    }
}

/// MCM's `Collect`: the Machine series and the frozen gauge, computed per scrape.
struct MachineCollector {
    shared: Arc<Shared>,
    scrape_failures: Family<ScrapeFailureLabels, Counter>,
}

impl fmt::Debug for MachineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineCollector").finish_non_exhaustive()
    }
}

fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn encode_family<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), fmt::Error> {
    let family: Family<L, Gauge> = Family::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).set(value);
    }
    family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)
}

impl Collector for MachineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let source = self
            .shared
            .source
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(source) = source {
            self.encode_machines(&mut encoder, source.as_ref())?;
        }
        // After the Machines, so a failure of this scrape is already counted in it.
        self.scrape_failures.encode(encoder.encode_descriptor(
            "mcm_misc_scrape_failure",
            "Total count of scrape failures.",
            None,
            self.scrape_failures.metric_type(),
        )?)
    }
}

impl MachineCollector {
    fn encode_machines(
        &self,
        encoder: &mut DescriptorEncoder,
        source: &dyn MachineSource,
    ) -> Result<(), fmt::Error> {
        let (machines, unreadable) = source.machines();
        if unreadable > 0 {
            self.scrape_failures
                .get_or_create(&ScrapeFailureLabels {
                    binary: SCRAPE_FAILURE_BINARY,
                    kind: "Machine-count",
                })
                .inc_by(unreadable as u64);
        }
        encode_gauge(
            encoder,
            "mcm_machine_items_total",
            "Count of machines currently managed by the mcm.",
            i64::try_from(machines.len()).unwrap_or(i64::MAX),
        )?;
        encode_family(
            encoder,
            "mcm_machine_current_status_phase",
            "Current status phase of the Machines currently managed by the mcm.",
            machines.iter().map(|m| {
                (
                    NameLabels {
                        name: m.name.clone(),
                        namespace: m.namespace.clone(),
                    },
                    phase_value(&m.phase),
                )
            }),
        )?;
        encode_family(
            encoder,
            "mcm_machine_info",
            "Information of the Machines currently managed by the mcm.",
            machines.iter().map(|m| {
                (
                    InfoLabels {
                        name: m.name.clone(),
                        namespace: m.namespace.clone(),
                        createdAt: m.created_at.to_string(),
                        spec_provider_id: m.provider_id.clone(),
                        spec_class_api_group: m.class_api_group.clone(),
                        spec_class_kind: m.class_kind.clone(),
                        spec_class_name: m.class_name.clone(),
                        node_name: m.node_name.clone(),
                    },
                    1,
                )
            }),
        )?;
        encode_family(
            encoder,
            "mcm_machine_status_condition",
            "Information of the mcm managed Machines' status conditions.",
            machines.iter().flat_map(|m| {
                m.conditions.iter().map(|(type_, status)| {
                    (
                        ConditionLabels {
                            name: m.name.clone(),
                            namespace: m.namespace.clone(),
                            condition: type_.clone(),
                        },
                        condition_value(status),
                    )
                })
            }),
        )?;
        encode_gauge(
            encoder,
            "mcm_machine_controller_frozen",
            "Frozen status of the machine controller manager.",
            i64::from(self.shared.frozen.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    struct Fixed(Vec<MachineSample>, usize);

    impl MachineSource for Fixed {
        fn machines(&self) -> (Vec<MachineSample>, usize) {
            (self.0.clone(), self.1)
        }
    }

    fn render(m: &McmMachineMetrics) -> String {
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        out
    }

    fn sample(name: &str, phase: &str) -> MachineSample {
        MachineSample {
            name: name.into(),
            namespace: "shoot--a".into(),
            created_at: 1_767_225_600,
            provider_id: format!("equinixmetal://{name}-uuid"),
            class_api_group: String::new(),
            class_kind: "MachineClass".into(),
            class_name: "small".into(),
            node_name: format!("{name}-node"),
            phase: phase.into(),
            conditions: vec![
                ("Ready".into(), "True".into()),
                ("DiskPressure".into(), "False".into()),
                ("KernelDeadlock".into(), "Unknown".into()),
            ],
        }
    }

    #[test]
    fn phase_and_condition_values_are_mcms() {
        for (phase, v) in [
            ("Terminating", -4),
            ("Failed", -3),
            ("CrashLoopBackOff", -2),
            ("Unknown", -1),
            ("Pending", 0),
            ("Running", 1),
            ("Available", 0),
            ("", 0),
        ] {
            assert_eq!(phase_value(phase), v, "{phase:?}");
        }
        assert_eq!(condition_value("True"), 1);
        assert_eq!(condition_value("False"), 0);
        assert_eq!(condition_value("Unknown"), 2);
    }

    #[test]
    fn without_a_controller_no_machine_series_are_exported() {
        let m = McmMachineMetrics::new();
        m.set_controller_frozen(true);
        let text = render(&m);
        assert!(!text.contains("mcm_machine_items_total"), "{text}");
        assert!(!text.contains("mcm_machine_controller_frozen"), "{text}");
    }

    #[test]
    fn the_collector_reports_each_cached_machine_with_mcms_labels() {
        let m = McmMachineMetrics::new();
        m.attach(Arc::new(Fixed(
            vec![sample("a", "Running"), sample("b", "CrashLoopBackOff")],
            0,
        )));
        let text = render(&m);
        for needle in [
            "# TYPE mcm_machine_items_total gauge\nmcm_machine_items_total 2\n",
            "mcm_machine_current_status_phase{name=\"a\",namespace=\"shoot--a\"} 1\n",
            "mcm_machine_current_status_phase{name=\"b\",namespace=\"shoot--a\"} -2\n",
            "mcm_machine_info{name=\"a\",namespace=\"shoot--a\",createdAt=\"1767225600\",spec_provider_id=\"equinixmetal://a-uuid\",spec_class_api_group=\"\",spec_class_kind=\"MachineClass\",spec_class_name=\"small\",node_name=\"a-node\"} 1\n",
            "mcm_machine_status_condition{name=\"b\",namespace=\"shoot--a\",condition=\"Ready\"} 1\n",
            "mcm_machine_status_condition{name=\"b\",namespace=\"shoot--a\",condition=\"DiskPressure\"} 0\n",
            "mcm_machine_status_condition{name=\"b\",namespace=\"shoot--a\",condition=\"KernelDeadlock\"} 2\n",
            "# TYPE mcm_machine_controller_frozen gauge\nmcm_machine_controller_frozen 0\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        m.set_controller_frozen(true);
        assert!(render(&m).contains("mcm_machine_controller_frozen 1\n"));
        m.detach();
        assert!(!render(&m).contains("mcm_machine_items_total"));
    }

    #[test]
    fn unreadable_machines_count_as_scrape_failures() {
        let m = McmMachineMetrics::new();
        m.attach(Arc::new(Fixed(vec![sample("a", "Pending")], 2)));
        let text = render(&m);
        assert!(text.contains("mcm_machine_items_total 1\n"), "{text}");
        assert!(
            text.contains("mcm_misc_scrape_failure_total{binary=\"machine-controller-manager-provider\",kind=\"Machine-count\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn durations_are_whole_seconds_and_failed_joins_keep_mcms_name() {
        let m = McmMachineMetrics::new();
        let l = PlacementLabels {
            namespace: "shoot--a".into(),
            machine_deployment: "pool-a".into(),
            instance_type: "c3.small.x86".into(),
            zone: "da".into(),
        };
        m.machine_created(&l, Duration::from_millis(61_600));
        m.machine_joined(&l, Duration::from_millis(299_400));
        m.machine_deleted(&l, Duration::ZERO);
        m.machine_drained(&l, Duration::from_secs(3));
        m.machine_failed_join(&l);
        m.machine_failed_join(&l);
        let text = render(&m);
        let labels = "{namespace=\"shoot--a\",machine_deployment=\"pool-a\",instance_type=\"c3.small.x86\",zone=\"da\"}";
        for needle in [
            format!("mcm_machine_create_duration_seconds{labels} 62\n"),
            format!("mcm_machine_join_duration_seconds{labels} 299\n"),
            "mcm_machine_drain_duration_seconds{namespace=\"shoot--a\",machine_deployment=\"pool-a\"} 3\n".into(),
            "# TYPE mcm_machine_num_failed_join unknown\n".into(),
            format!("mcm_machine_num_failed_join{labels} 2\n"),
        ] {
            assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
        }
        // A zero duration is not recorded (MCM skips it).
        assert!(
            !text.contains("mcm_machine_delete_duration_seconds{"),
            "{text}"
        );
    }
}
