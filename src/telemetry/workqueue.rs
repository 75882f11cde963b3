//! MCM's work-queue series (`mcm_workqueue_*`, client-go's workqueue metrics under MCM's
//! prefix, label `name` = the queue), mapped onto kube-runtime's controller queue. kube-runtime
//! has no metrics hooks, so the controller reports three events: a watch event asked for a
//! reconcile (`triggered`), a reconcile started (`started`, which returns a guard that
//! reports the end), and a reconcile failed (`retried`). What each series means here:
//!
//! | series | type | here |
//! |---|---|---|
//! | `mcm_workqueue_adds_total` | counter | reconcile requests: watch events on the queue's object not already waiting, plus runs whose trigger was not seen (requeues, events of related objects) — like client-go, a request for an object already waiting is not counted again |
//! | `mcm_workqueue_depth` | gauge | objects whose watch event is waiting for a worker |
//! | `mcm_workqueue_queue_duration_seconds` | histogram | from the watch event to the start of its reconcile (0 for runs whose trigger was not seen) |
//! | `mcm_workqueue_work_duration_seconds` | histogram | duration of each reconcile |
//! | `mcm_workqueue_unfinished_work_seconds` | gauge | summed age of the reconciles running now |
//! | `mcm_workqueue_longest_running_processor_seconds` | gauge | age of the oldest reconcile running now |
//! | `mcm_workqueue_retries_total` | counter | failed reconciles, each requeued with a back-off (client-go's `AddRateLimited`) |
//!
//! Buckets are client-go's: `ExponentialBuckets(10e-9, 10, 10)`, 10 ns to 10 s by powers of 10.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Instant,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    name: &'static str,
}

#[derive(Default)]
struct QueueState {
    /// Object key → when its watch event arrived, while waiting for a worker.
    waiting: HashMap<String, Instant>,
    /// Object key → when its reconcile started.
    running: HashMap<String, Instant>,
}

struct Inner {
    queues: Mutex<HashMap<&'static str, QueueState>>,
    adds: Family<QueueLabels, Counter>,
    retries: Family<QueueLabels, Counter>,
    latency: Family<QueueLabels, Histogram>,
    work: Family<QueueLabels, Histogram>,
}

/// The work-queue series of every controller queue in the process.
#[derive(Clone)]
pub struct WorkQueueMetrics(Arc<Inner>);

impl fmt::Debug for WorkQueueMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueueMetrics").finish_non_exhaustive()
    }
}

fn client_go_buckets() -> Histogram {
    Histogram::new(exponential_buckets(10e-9, 10.0, 10))
}

impl Default for WorkQueueMetrics {
    fn default() -> Self {
        Self(Arc::new(Inner {
            queues: Mutex::default(),
            adds: Family::default(),
            retries: Family::default(),
            latency: Family::new_with_constructor(client_go_buckets),
            work: Family::new_with_constructor(client_go_buckets),
        }))
    }
}

/// Reports the end of one reconcile when dropped.
pub struct Running {
    metrics: WorkQueueMetrics,
    queue: &'static str,
    key: String,
    started: Instant,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.metrics
            .0
            .work
            .get_or_create(&QueueLabels { name: self.queue })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.with(self.queue, |q| {
            q.running.remove(&self.key);
        });
    }
}

impl WorkQueueMetrics {
    fn with<T>(&self, queue: &'static str, f: impl FnOnce(&mut QueueState) -> T) -> T {
        let mut queues = self
            .0
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(queues.entry(queue).or_default())
    }

    /// A watch event asked `queue` to reconcile `key`.
    pub fn triggered(&self, queue: &'static str, key: String) {
        let new = self.with(queue, |q| {
            let new = !q.waiting.contains_key(&key);
            q.waiting.entry(key).or_insert_with(Instant::now);
            new
        });
        if new {
            self.0
                .adds
                .get_or_create(&QueueLabels { name: queue })
                .inc();
        }
    }

    /// A reconcile of `key` starts; the returned guard reports its end.
    pub fn started(&self, queue: &'static str, key: String) -> Running {
        let now = Instant::now();
        let waited = self.with(queue, |q| {
            q.running.insert(key.clone(), now);
            q.waiting.remove(&key)
        });
        let labels = QueueLabels { name: queue };
        if waited.is_none() {
            self.0.adds.get_or_create(&labels).inc();
        }
        let latency = waited.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.0.latency.get_or_create(&labels).observe(latency);
        Running {
            metrics: self.clone(),
            queue,
            key,
            started: now,
        }
    }

    /// A reconcile of `queue` failed and is requeued with a back-off.
    pub fn retried(&self, queue: &'static str) {
        self.0
            .retries
            .get_or_create(&QueueLabels { name: queue })
            .inc();
    }
}

fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: &M,
) -> fmt::Result {
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

impl Collector for WorkQueueMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let depth: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>> =
            Family::default();
        let unfinished: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>> =
            Family::default();
        let longest: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>> =
            Family::default();
        {
            let queues = self
                .0
                .queues
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            for (name, q) in queues.iter() {
                let l = QueueLabels { name };
                depth.get_or_create(&l).set(q.waiting.len() as f64);
                let ages = q
                    .running
                    .values()
                    .map(|t| now.saturating_duration_since(*t).as_secs_f64());
                unfinished
                    .get_or_create(&l)
                    .set(ages.clone().fold(0.0, |a, b| a + b));
                longest.get_or_create(&l).set(ages.fold(0.0, f64::max));
            }
        }
        family(
            &mut e,
            "mcm_workqueue_depth",
            "Current depth of workqueue",
            &depth,
        )?;
        family(
            &mut e,
            "mcm_workqueue_adds",
            "Total number of adds handled by workqueue",
            &self.0.adds,
        )?;
        family(
            &mut e,
            "mcm_workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested.",
            &self.0.latency,
        )?;
        family(
            &mut e,
            "mcm_workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            &self.0.work,
        )?;
        family(
            &mut e,
            "mcm_workqueue_unfinished_work_seconds",
            "How many seconds of work has done that is in progress and hasn't been observed by work_duration. Large values indicate stuck threads. One can deduce the number of stuck threads by observing the rate at which this increases.",
            &unfinished,
        )?;
        family(
            &mut e,
            "mcm_workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            &longest,
        )?;
        family(
            &mut e,
            "mcm_workqueue_retries",
            "Total number of retries handled by workqueue",
            &self.0.retries,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::{encoding::text::encode, registry::Registry};

    fn render(m: &WorkQueueMetrics) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(m.clone()));
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn events_map_onto_client_gos_series() {
        let m = WorkQueueMetrics::default();
        m.triggered("machine", "ns/a".into());
        // A second event while waiting is not another add.
        m.triggered("machine", "ns/a".into());
        m.triggered("machine", "ns/b".into());
        let text = render(&m);
        assert!(
            text.contains("mcm_workqueue_depth{name=\"machine\"} 2.0\n"),
            "{text}"
        );
        assert!(
            text.contains("mcm_workqueue_adds_total{name=\"machine\"} 2\n"),
            "{text}"
        );

        let running = m.started("machine", "ns/a".into());
        // A run without a seen trigger (a requeue) is an add of its own.
        let requeued = m.started("machine", "ns/c".into());
        let text = render(&m);
        assert!(
            text.contains("mcm_workqueue_depth{name=\"machine\"} 1.0\n"),
            "{text}"
        );
        assert!(
            text.contains("mcm_workqueue_adds_total{name=\"machine\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("mcm_workqueue_queue_duration_seconds_count{name=\"machine\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("mcm_workqueue_longest_running_processor_seconds{name=\"machine\"}"),
            "{text}"
        );
        assert!(
            text.contains("mcm_workqueue_work_duration_seconds_count{name=\"machine\"} 0\n")
                || !text.contains("mcm_workqueue_work_duration_seconds_count{name=\"machine\"}"),
            "{text}"
        );
        drop(running);
        drop(requeued);
        m.retried("machine");
        let text = render(&m);
        assert!(
            text.contains("mcm_workqueue_work_duration_seconds_count{name=\"machine\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("mcm_workqueue_unfinished_work_seconds{name=\"machine\"} 0.0\n"),
            "{text}"
        );
        assert!(
            text.contains("mcm_workqueue_retries_total{name=\"machine\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mcm_workqueue_work_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("le=\"1e-8\"")
                || text.contains("le=\"1e-08\"")
                || text.contains("le=\"0.00000001\""),
            "{text}"
        );
    }
}
