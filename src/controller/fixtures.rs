//! Test fixtures: a mocked API server (tower-test, controller-rs style) that plays an
//! expected sequence of HTTP calls and fails the test on any other, filled caches, and a
//! [`Context`] whose CMI client points nowhere (lazily connected: a test that reaches the
//! driver fails).

use std::{hash::Hash, sync::Arc, time::Duration};

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{
    Client,
    client::Body,
    core::DeserializeGuard,
    runtime::{
        reflector::{self, Lookup, ObjectRef, Store},
        watcher,
    },
};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{
    caches::{Caches, Kind},
    context::{Capabilities, Config, Context, Queues},
    crd::{Machine, MachineClass},
    field_manager::FIELD_MANAGER,
    status::RetryPeriods,
};
use crate::{
    cmi::{client::CmiClient, preflight::Preflight},
    telemetry::Metrics,
};

/// Checks a request body.
pub type BodyCheck = Box<dyn Fn(&Value) + Send + Sync>;

/// One expected API call and the answer to give.
pub struct Call {
    /// HTTP method.
    pub method: &'static str,
    /// Path and query must start with this.
    pub path_prefix: String,
    /// Checks the request body (JSON), if any.
    pub check_body: Option<BodyCheck>,
    /// Status code of the answer.
    pub status: u16,
    /// JSON body of the answer.
    pub answer: Value,
}

impl Call {
    /// An expected call answered with `status` and `answer`.
    pub fn new(
        method: &'static str,
        path_prefix: impl Into<String>,
        status: u16,
        answer: Value,
    ) -> Self {
        Self {
            method,
            path_prefix: path_prefix.into(),
            check_body: None,
            status,
            answer,
        }
    }

    /// Also checks the request body.
    pub fn body(mut self, check: impl Fn(&Value) + Send + Sync + 'static) -> Self {
        self.check_body = Some(Box::new(check));
        self
    }
}

/// A 404 `Status` body as the API server sends it.
pub fn not_found() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// A client over a mock that expects exactly `calls` in order; the returned task panics on a
/// mismatch, or on a write without the controller's field manager, and must be awaited (it
/// checks that every call happened).
pub fn mock_client(calls: Vec<Call>) -> (Client, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        for call in calls {
            let next = tokio::time::timeout(Duration::from_secs(2), handle.next_request())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "expected {} {} but no request came",
                        call.method, call.path_prefix
                    )
                });
            let (request, send) = next.expect("mock service dropped");
            let uri = request.uri().to_string();
            assert_eq!(request.method().as_str(), call.method, "method of {uri}");
            assert!(
                uri.starts_with(&call.path_prefix),
                "expected {} {}, got {uri}",
                call.method,
                call.path_prefix
            );
            // Every write names the controller's field manager.
            if matches!(call.method, "PATCH" | "POST" | "PUT") {
                assert!(
                    uri.contains(&format!("fieldManager={FIELD_MANAGER}")),
                    "{} {uri} without the field manager",
                    call.method
                );
            }
            if let Some(check) = &call.check_body {
                let bytes = request.into_body().collect_bytes().await.expect("body");
                let body: Value = serde_json::from_slice(&bytes).expect("json body");
                check(&body);
            }
            let bytes = serde_json::to_vec(&call.answer).expect("answer");
            send.send_response(
                Response::builder()
                    .status(call.status)
                    .body(Body::from(bytes))
                    .expect("response"),
            );
        }
    });
    (Client::new(service, "ns"), task)
}

/// A context on `client` with default tunables, empty caches and a driver that is never
/// reachable.
pub fn context(client: Client) -> Arc<Context> {
    context_with(client, caches(vec![], vec![], vec![], vec![]))
}

/// [`context`] over these caches. What it enqueues goes nowhere.
pub fn context_with(client: Client, caches: Caches) -> Arc<Context> {
    context_queued(client, caches).0
}

/// What a context's reconciles enqueued.
pub struct Enqueued {
    machines: UnboundedReceiver<ObjectRef<DeserializeGuard<Machine>>>,
    classes: UnboundedReceiver<ObjectRef<MachineClass>>,
}

impl Enqueued {
    /// The Machines enqueued so far, by name, in order.
    pub fn machines(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.machines.try_recv().ok())
            .map(|r| r.name)
            .collect()
    }

    /// The classes enqueued so far, by name, in order.
    pub fn classes(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.classes.try_recv().ok())
            .map(|r| r.name)
            .collect()
    }
}

/// [`context_with`], and what its reconciles enqueue.
pub fn context_queued(client: Client, caches: Caches) -> (Arc<Context>, Enqueued) {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    let (machines, machines_rx) = tokio::sync::mpsc::unbounded_channel();
    let (classes, classes_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        client: client.clone(),
        target: Some(client),
        cmi: CmiClient::from_channel(channel, Duration::from_secs(1)),
        capabilities: Capabilities::default(),
        preflight: Preflight::this_build(),
        config: config(),
        metrics: Metrics::new(),
        stop: Default::default(),
        safety: Default::default(),
        caches,
        queues: Queues::new(machines, classes),
        own_writes: Default::default(),
    });
    let enqueued = Enqueued {
        machines: machines_rx,
        classes: classes_rx,
    };
    (ctx, enqueued)
}

/// A store filled once with `objects`, as a watch's first list fills it.
pub fn ready_store<K>(objects: Vec<K>) -> Store<K>
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

/// Filled caches for namespace `ns`, from JSON objects (Machines, MachineClasses, Secrets,
/// Nodes), with a target cluster.
pub fn caches(
    machines: Vec<Value>,
    classes: Vec<Value>,
    secrets: Vec<Value>,
    nodes: Vec<Value>,
) -> Caches {
    fn decode<K: serde::de::DeserializeOwned>(objects: Vec<Value>) -> Vec<K> {
        objects
            .into_iter()
            .map(|o| serde_json::from_value(o).expect("a valid object"))
            .collect()
    }
    let caches = Caches::new(
        "ns",
        ready_store(decode::<DeserializeGuard<Machine>>(machines)),
        ready_store(decode::<MachineClass>(classes)),
        ready_store(decode::<Secret>(secrets)),
        Some(ready_store(decode::<Node>(nodes))),
    );
    for kind in [Kind::Machines, Kind::Classes, Kind::Secrets, Kind::Nodes] {
        caches.filled(kind);
    }
    caches
}

/// Default tunables (MCM's defaults) in namespace `ns`.
pub fn config() -> Config {
    Config {
        namespace: "ns".into(),
        creation_timeout: Duration::from_secs(1200),
        health_timeout: Duration::from_secs(600),
        drain_timeout: Duration::from_secs(7200),
        max_evict_retries: 360,
        pv_detach_timeout: Duration::from_secs(120),
        pv_reattach_timeout: Duration::from_secs(90),
        orphan_period: Duration::from_secs(900),
        retry: RetryPeriods::default(),
        health_recheck: Duration::from_secs(60),
        node_conditions: super::context::DEFAULT_NODE_CONDITIONS.into(),
        bootstrap_token_auth_extra_groups: String::new(),
    }
}
