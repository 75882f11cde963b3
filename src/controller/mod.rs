//! `metal-driver controller`: the machine controller, a kube-rs controller that turns MCM
//! `Machine` objects into devices by calling the CMI driver, and runs beside MCM's own
//! `machine-controller-manager` binary (MachineDeployment/MachineSet) the way Gardener runs a
//! provider's machine-controller sidecar.
//!
//! It is the driver's only client: MCM's stock binary no longer calls gRPC drivers. It talks
//! to the driver through [`crate::cmi::client::CmiClient`] only.
//!
//! Start-up order: side port (`/healthz`, `/readyz`, `/metrics`; prints `listening on
//! http://ADDR` as the first stdout line) → Kubernetes clients → connect to the driver
//! (retried until it answers) → Probe + GetPluginCapabilities → ready → leader election →
//! one watch per kind filling the caches ([`caches`]) → controllers, whose reconciles start
//! once every cache was filled. Shutdown (SIGTERM): controllers finish in-flight reconciles,
//! the lease is released, the side port closes.
//!
//! The flags are in [`flags`]; this module wires the parts together.

pub mod bootstrap_token;
pub mod caches;
pub mod context;
pub mod crd;
pub mod delete_flow;
pub mod drain;
pub mod duration;
pub mod error;
pub mod field_manager;
#[cfg(test)]
pub mod fixtures;
pub mod flags;
pub mod freeze;
pub mod health;
pub mod leader;
pub mod machine;
pub mod machine_class;
pub mod machine_metrics;
pub mod never_created;
pub mod node_events;
pub mod node_finalizer;
pub mod node_sync;
pub mod node_template;
pub mod orphans;
pub mod own_writes;
pub mod permit;
pub mod rate_limit;
pub mod secret_finalizer;
pub mod secrets;
pub mod similar;
pub mod status;
pub mod watch_backoff;

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{
    Api, Client, Config as KubeConfig, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt, controller::Config as ControllerConfig, reflector, watcher,
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    cmi::{Rpc, client::CmiClient, preflight::Preflight},
    telemetry::{Metrics, admin},
};

pub use self::flags::{ControllerArgs, GardenerCompatArgs};

use self::{
    caches::{Caches, Kind},
    context::{Capabilities, Context, Queues},
    crd::{Machine, MachineClass},
    error::{Error, Result},
    flags::{DriverSettings, Settings},
};

/// The `--control-kubeconfig`/`--target-kubeconfig` value meaning "the service account".
pub const IN_CLUSTER: &str = "inClusterConfig";
/// The `--target-kubeconfig` value meaning "no target cluster: no Node interaction".
pub const NO_TARGET: &str = "none";

/// The User-Agent of every request to an API server.
pub const USER_AGENT: &str = concat!("metal-driver/", env!("CARGO_PKG_VERSION"));

/// Builds a client from a kubeconfig flag value (path, `inClusterConfig`, or empty), with
/// its own token bucket of `rate` ([`rate_limit`]).
pub async fn kube_client(flag: &str, rate: rate_limit::Rate) -> Result<Client> {
    kube_client_with(flag, rate, true).await
}

/// The target cluster's client: like [`kube_client`], but without kube's built-in retry of
/// 429/503/504. An eviction refused by a PodDisruptionBudget answers 429, and the drain must
/// see that at once to retry on MCM's schedule (every 20 s, counted) instead of the client
/// retrying for minutes inside one call.
pub async fn target_client(flag: &str, rate: rate_limit::Rate) -> Result<Client> {
    kube_client_with(flag, rate, false).await
}

async fn kube_client_with(
    flag: &str,
    rate: rate_limit::Rate,
    default_retry: bool,
) -> Result<Client> {
    let fail = |reason: String| Error::Kubeconfig {
        path: flag.to_owned(),
        reason,
    };
    let config = match flag {
        "" => KubeConfig::infer().await.map_err(|e| fail(e.to_string()))?,
        IN_CLUSTER => KubeConfig::incluster().map_err(|e| fail(e.to_string()))?,
        path => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
            KubeConfig::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| fail(e.to_string()))?
        }
    };
    let mut config = config;
    config.default_retry = default_retry;
    // Names this controller in the API server's audit log and request metrics, as client-go's
    // user agent names MCM (kube-rs sends none).
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| fail(e.to_string()))?;
    Ok(builder
        .with_layer(&rate_limit::RateLimitLayer::new(rate))
        .build())
}

/// Connects to the driver (`--cmi-endpoint`, or the one already connected in this process),
/// retrying until it answers Probe with ready (or shutdown).
async fn connect_driver(
    driver: &DriverSettings,
    in_process: Option<CmiClient>,
    shutdown: &CancellationToken,
) -> Result<Option<(CmiClient, Capabilities, Preflight)>> {
    let tls = driver.tls.load()?;
    let mut delay = Duration::from_millis(200);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let connected = match (&in_process, &driver.endpoint) {
            (Some(client), _) => Ok(client.clone()),
            (None, Some(endpoint)) => {
                CmiClient::connect_tls(endpoint, driver.timeout, tls.as_ref()).await
            }
            (None, None) => Err(crate::cmi::endpoint::EndpointError::Malformed(
                "(no --cmi-endpoint)".into(),
            )
            .into()),
        };
        match connected {
            Ok(client) => match client.probe().await {
                Ok(ready) if ready != Some(false) => {
                    let capabilities = capabilities(&client).await;
                    let preflight = preflight(&client).await;
                    return Ok(Some((client, capabilities, preflight)));
                }
                Ok(_) => tracing::info!("driver not ready yet"),
                Err(e) => {
                    tracing::warn!(code = ?e.code(), message = e.message(), "driver Probe failed")
                }
            },
            Err(e @ crate::cmi::client::ClientError::Endpoint(_)) => return Err(Error::Connect(e)),
            Err(error) if attempts % 10 == 1 => {
                tracing::warn!(%error, "driver not reachable yet; retrying")
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn capabilities(client: &CmiClient) -> Capabilities {
    match client.get_plugin_capabilities().await {
        Ok(advertised) => {
            let set: HashSet<Rpc> = advertised.into_iter().collect();
            if !set.contains(&Rpc::GetMachineStatus) {
                tracing::warn!(
                    "driver lacks GET_MACHINE_STATUS: create relies on spec.providerID alone"
                );
            }
            tracing::info!(capabilities = ?set, "driver capabilities");
            Capabilities(set)
        }
        Err(e) => {
            tracing::warn!(code = ?e.code(), "GetPluginCapabilities failed; assuming create/delete/list only");
            Capabilities(
                [Rpc::CreateMachine, Rpc::DeleteMachine, Rpc::ListMachines]
                    .into_iter()
                    .collect(),
            )
        }
    }
}

/// Whether the driver is this build, whose CreateMachine refusals the controller can then
/// tell before sending (see [`crate::cmi::preflight`]).
async fn preflight(client: &CmiClient) -> Preflight {
    let info = match client.get_plugin_info().await {
        Ok(info) => Some(info),
        Err(e) => {
            tracing::warn!(code = ?e.code(), "GetPluginInfo failed; every CreateMachine counts as one that may create");
            None
        }
    };
    let preflight = Preflight::for_driver(info.as_ref());
    tracing::info!(
        driver = info.as_ref().map(|i| i.name.as_str()).unwrap_or_default(),
        version = info
            .as_ref()
            .map(|i| i.version.as_str())
            .unwrap_or_default(),
        same_build = preflight != Preflight::default(),
        "driver identity"
    );
    preflight
}

/// Runs the controller until `shutdown` is cancelled (returns `Ok`) or leadership is lost
/// (returns [`Error::LeadershipLost`], so the process exits and restarts as a follower).
pub async fn run(args: ControllerArgs, shutdown: CancellationToken) -> Result<()> {
    run_with_driver(args, shutdown, Metrics::new(), None).await
}

/// [`run`], with the process's metrics registry (served on the side port) and, when the
/// driver runs in this process, a client already connected to it (`--cmi-endpoint` is then
/// not used).
pub async fn run_with_driver(
    args: ControllerArgs,
    shutdown: CancellationToken,
    metrics: Metrics,
    in_process: Option<CmiClient>,
) -> Result<()> {
    let settings = args.into_settings();
    let readiness = admin::Readiness::default();
    let addr = settings.side_port;
    let admin = admin::bind(addr, metrics.clone(), readiness.clone())
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    println!("listening on http://{}", admin.local_addr());
    let result = run_with(settings, shutdown, metrics, readiness, in_process).await;
    admin.stop().await;
    result
}

async fn run_with(
    settings: Settings,
    shutdown: CancellationToken,
    metrics: Metrics,
    readiness: admin::Readiness,
    in_process: Option<CmiClient>,
) -> Result<()> {
    let Settings {
        // Bound by the caller before the clients exist.
        side_port: _,
        control_kubeconfig,
        target_kubeconfig,
        rate,
        driver,
        leader,
        concurrent_syncs,
        statuscheck_period,
        statuscheck_timeout,
        config,
    } = settings;
    let client = kube_client(&control_kubeconfig, rate).await?;
    let target = match target_kubeconfig.as_str() {
        NO_TARGET => None,
        // Its own client even when it is the control cluster: see [`target_client`].
        "" => Some(target_client(&control_kubeconfig, rate).await?),
        flag => Some(target_client(flag, rate).await?),
    };
    let Some((cmi, capabilities, preflight)) =
        connect_driver(&driver, in_process, &shutdown).await?
    else {
        return Ok(());
    };
    readiness.set(true);

    let leadership = if leader.elect {
        let cfg = leader::LeaseConfig {
            name: leader.name,
            namespace: config.namespace.clone(),
            identity: leader::identity(),
            lease_duration: leader.lease_duration,
            renew_deadline: leader.renew_deadline,
            retry_period: leader.retry_period,
        };
        // Its own client and bucket (MCM's separate leader-election client), so lease
        // renewals never queue behind a busy controller's requests.
        let lease_client = kube_client(&control_kubeconfig, rate).await?;
        match leader::acquire(lease_client, cfg, &shutdown).await? {
            Some(l) => Some(l),
            None => return Ok(()),
        }
    } else {
        None
    };
    metrics.controller.set_leader(true);

    // Stops the controllers: shutdown, or leadership lost.
    let stop = CancellationToken::new();
    let lost = leadership
        .as_ref()
        .map(|l| l.lost.clone())
        .unwrap_or_default();
    {
        let (stop, shutdown, lost) = (stop.clone(), shutdown.clone(), lost.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = lost.cancelled() => {}
            }
            stop.cancel();
        });
    }

    let ns = config.namespace.clone();
    let (machine_store, machine_writer) = reflector::store::<DeserializeGuard<Machine>>();
    let (class_store, class_writer) = reflector::store::<MachineClass>();
    let (secret_store, secret_writer) = reflector::store::<Secret>();
    let (node_store, node_writer) = match &target {
        Some(_) => {
            let (store, writer) = reflector::store::<Node>();
            (Some(store), Some(writer))
        }
        None => (None, None),
    };
    let (machine_queue, machine_queue_rx) = tokio::sync::mpsc::unbounded_channel();
    let (class_queue, class_queue_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        client: client.clone(),
        target: target.clone(),
        cmi,
        capabilities,
        preflight,
        config,
        metrics: metrics.clone(),
        stop: stop.clone(),
        safety: Default::default(),
        caches: Caches::new(
            &ns,
            machine_store.clone(),
            class_store.clone(),
            secret_store,
            node_store,
        ),
        queues: Queues::new(machine_queue, class_queue),
        own_writes: Default::default(),
    });

    // One watch per kind, each filling its cache. Machines: the cache is the controller's
    // memory, one entry per Machine, trimmed of what is never read (managedFields grow with
    // every writer; see BENCHMARKS.md, item 6).
    let machines: Api<DeserializeGuard<Machine>> = Api::namespaced(client.clone(), &ns);
    // MCM's scrape-time Machine series, read from this cache while we lead.
    metrics.mcm.attach(Arc::new(machine_metrics::CacheSource(
        machine_store.clone(),
    )));
    let queue = metrics.workqueue.clone();
    let mut class_triggers = machine_class::ClassTriggers::default();
    let events = ctx.clone();
    let machine_events = reflector(
        machine_writer,
        watcher(machines, watcher::Config::default()).modify(crd::trim_for_cache),
    )
    .inspect(move |event| {
        let Ok(event) = event else { return };
        match event {
            watcher::Event::InitDone => events.caches.filled(Kind::Machines),
            watcher::Event::Apply(m) | watcher::Event::InitApply(m) => {
                events.own_writes.observed(kube::Resource::meta(m));
            }
            watcher::Event::Delete(m) => {
                events.own_writes.forget(kube::Resource::meta(m));
            }
            watcher::Event::Init => {}
        }
        let triggered = class_triggers.observe(event);
        // MCM's class queue hears of Machine adds and deletes.
        for class in triggered.classes {
            let class_ns = class
                .namespace
                .as_deref()
                .unwrap_or(&events.config.namespace);
            events.queues.class(&class.name, class_ns);
        }
        // MCM collects orphans after every Machine delete.
        if triggered.deleted > 0 {
            events.safety.collect_orphans.notify_one();
        }
    })
    .applied_objects()
    .inspect_ok(move |m| queue.triggered("machine", machine_metrics::queue_key(m)));
    let machine_controller = Controller::for_stream(machine_events, machine_store.clone())
        .with_config(ControllerConfig::default().concurrency(concurrent_syncs))
        .trigger_backoff(watch_backoff::WatchBackoff::default())
        // A class reconcile hands its Machines over, as MCM's does; so do Node events.
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            machine_queue_rx,
        ));
    // Nodes: any change (conditions, taints such as Gardener's critical-components one, a
    // deletion) reconciles the Machine whose `node` label names the Node; the reconcile then
    // reads the Node from this cache. The watch runs on its own, not as a trigger stream of
    // the Machine controller: kube-runtime pauses all trigger streams of a controller after
    // an error in any of them, so a target API server that is down would slow the Machine
    // watch down too.
    let node_task = match (&target, node_writer) {
        (Some(t), Some(writer)) => {
            let nodes: Api<Node> = Api::all(t.clone());
            let (store, events, filled) = (machine_store.clone(), ctx.clone(), ctx.clone());
            let mut node_changes = node_events::NodeEvents::default();
            reflector(
                writer,
                watcher(nodes, watcher::Config::default()).modify(caches::trim_node),
            )
            .backoff(watch_backoff::WatchBackoff::default())
            .inspect(move |e| filled_on_init(e, &filled.caches, Kind::Nodes))
            .take_until(stop.clone().cancelled_owned())
            .for_each(move |event| {
                let (node, deleted) = match &event {
                    Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => (n, false),
                    Ok(watcher::Event::Delete(n)) => (n, true),
                    _ => return future::ready(()),
                };
                let machines = machines_of_node(&store, &node.name_any());
                let mine: Vec<&Machine> =
                    machines.iter().filter_map(|g| g.0.as_ref().ok()).collect();
                let reconcile = if deleted {
                    node_changes.deleted(node);
                    true
                } else {
                    node_changes.changed(node, &mine)
                };
                if reconcile {
                    for m in &mine {
                        let ns = m
                            .namespace()
                            .unwrap_or_else(|| events.config.namespace.clone());
                        events.queues.machine(&m.name_any(), &ns);
                    }
                }
                future::ready(())
            })
            .left_future()
        }
        _ => future::ready(()).right_future(),
    };
    // The freeze check asks for every Machine to be looked at again after a thaw.
    let (reconcile_all, reconcile_all_rx) = tokio::sync::mpsc::unbounded_channel();
    let machine_task = machine_controller
        .reconcile_all_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            reconcile_all_rx,
        ))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(machine::reconcile, machine::error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    let classes: Api<MachineClass> = Api::namespaced(client.clone(), &ns);
    let filled = ctx.clone();
    let class_events = reflector(class_writer, watcher(classes, watcher::Config::default()))
        .inspect(move |e| filled_on_init(e, &filled.caches, Kind::Classes))
        .applied_objects();
    let class_task = Controller::for_stream(class_events, class_store.clone())
        .trigger_backoff(watch_backoff::WatchBackoff::default())
        // Machine adds and deletes, and Machines waiting for the class finalizer.
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            class_queue_rx,
        ))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(
            machine_class::reconcile,
            machine_class::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    // Secrets: only read (a Secret change reconciles nothing, as in MCM).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let filled = ctx.clone();
    let secret_cache = reflector(
        secret_writer,
        watcher(secrets, watcher::Config::default()).modify(caches::trim_secret),
    )
    .backoff(watch_backoff::WatchBackoff::default())
    .inspect(move |e| filled_on_init(e, &filled.caches, Kind::Secrets))
    .take_until(stop.clone().cancelled_owned())
    .for_each(|_| future::ready(()));

    let orphan_task = orphans::run(ctx.clone(), stop.clone());
    let secret_task = secret_finalizer::run(ctx.clone(), stop.clone());
    let freeze_task = freeze::run(
        ctx.clone(),
        statuscheck_period,
        statuscheck_timeout,
        reconcile_all,
        stop.clone(),
    );

    tracing::info!(namespace = %ns, target = ctx.has_target(), "machine controller running");
    tokio::join!(
        until_stopped(machine_task, &stop, machine_store.clone()),
        until_stopped(class_task, &stop, class_store),
        orphan_task,
        secret_cache,
        node_task,
        secret_task,
        freeze_task
    );
    metrics.mcm.set_controller_frozen(false);
    metrics.controller.set_leader(false);
    metrics.mcm.detach();
    readiness.set(false);
    if lost.is_cancelled() && !shutdown.is_cancelled() {
        return Err(Error::LeadershipLost(
            "the lease could not be renewed".into(),
        ));
    }
    if let Some(l) = leadership {
        l.release().await;
    }
    tracing::info!("machine controller stopped");
    Ok(())
}

/// Marks `kind` filled when its watch has delivered a complete list (the reflector applied
/// it to the store before this sees it).
fn filled_on_init<K>(event: &watcher::Result<watcher::Event<K>>, caches: &Caches, kind: Kind) {
    if matches!(event, Ok(watcher::Event::InitDone)) {
        caches.filled(kind);
    }
}

/// Node event → the Machines whose `node` label names the Node (MCM's `getMachineFromNode`).
fn machines_of_node(
    machines: &reflector::Store<DeserializeGuard<Machine>>,
    node: &str,
) -> Vec<Arc<DeserializeGuard<Machine>>> {
    machines
        .state()
        .into_iter()
        .filter(|g| g.0.as_ref().is_ok_and(|m| m.node_name() == Some(node)))
        .collect()
}

/// How long in-flight reconciles may go on after the stop (SIGTERM, or the lease lost)
/// before they are abandoned. A reconcile can wait on a driver call (up to `--cmi-timeout`,
/// 2 minutes, while the driver retries a struggling Metal API) or on an API server that
/// does not answer; the process must still exit well within a Pod's termination grace
/// period. Abandoning one is safe: every step is idempotent (a create cut short is adopted
/// by the next CreateMachine, a delete step repeats) and the next leader resumes it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs a kube-runtime controller until it ends by itself after `stop` — in-flight
/// reconciles finished — or until [`SHUTDOWN_GRACE`] after `stop`, when the reconciles still
/// running are abandoned (dropping the controller aborts their tasks). A stop while its
/// cache is still empty ends it at once: kube-runtime holds the reconciles until the cache
/// was filled, and a stop that ends the watch before the first list leaves that hold waiting
/// for ever; no reconcile can be in flight then.
pub(crate) async fn until_stopped<K>(
    controller: impl std::future::Future<Output = ()>,
    stop: &CancellationToken,
    cache: reflector::Store<K>,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let abandon = async {
        stop.cancelled().await;
        if matches!(cache.wait_until_ready().now_or_never(), Some(Ok(()))) {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "reconciles still running after the stop; abandoned (the next leader repeats them)"
            );
        } else {
            tracing::debug!(
                cache = std::any::type_name::<K>(),
                "stopped before the first list; no reconcile ran"
            );
        }
    };
    tokio::select! {
        () = controller => {}
        () = abandon => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After the stop, a controller whose reconciles do not finish is abandoned after the
    /// grace; one whose cache was never filled ends at once.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_controller_is_abandoned_after_the_grace() {
        let stop = CancellationToken::new();
        let filled = fixtures::ready_store::<Secret>(vec![]);
        let stuck = future::pending::<()>();
        let waiting = tokio::spawn({
            let stop = stop.clone();
            async move { until_stopped(stuck, &stop, filled).await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiting.is_finished(), "ended without a stop");
        let stopped = tokio::time::Instant::now();
        stop.cancel();
        waiting.await.unwrap();
        assert!(stopped.elapsed() >= SHUTDOWN_GRACE);

        let (unfilled, _writer) = reflector::store::<Secret>();
        let stopped = tokio::time::Instant::now();
        until_stopped(future::pending::<()>(), &stop, unfilled).await;
        assert_eq!(stopped.elapsed(), Duration::ZERO);
    }
}
