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
//! controllers. Shutdown (SIGTERM): controllers finish in-flight reconciles, the lease is
//! released, the side port closes.

pub mod bootstrap_token;
pub mod context;
pub mod crd;
pub mod delete_flow;
pub mod drain;
pub mod duration;
pub mod error;
#[cfg(test)]
pub mod fixtures;
pub mod freeze;
pub mod health;
pub mod leader;
pub mod machine;
pub mod machine_class;
pub mod machine_metrics;
pub mod node_finalizer;
pub mod node_sync;
pub mod node_template;
pub mod orphans;
pub mod permit;
pub mod rate_limit;
pub mod secret_finalizer;
pub mod secrets;
pub mod similar;
pub mod status;

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{
    Api, Client, Config as KubeConfig, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        Controller, WatchStreamExt, controller::Config as ControllerConfig, reflector,
        reflector::ObjectRef, watcher,
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    cmi::{Rpc, client::CmiClient},
    telemetry::{Metrics, admin},
};

use self::{
    context::{Capabilities, Config, Context},
    crd::{Machine, MachineClass},
    error::{Error, Result},
    status::RetryPeriods,
};

/// The `--control-kubeconfig`/`--target-kubeconfig` value meaning "the service account".
pub const IN_CLUSTER: &str = "inClusterConfig";
/// The `--target-kubeconfig` value meaning "no target cluster: no Node interaction".
pub const NO_TARGET: &str = "none";

fn go_duration(s: &str) -> std::result::Result<Duration, String> {
    duration::parse(s)
}

/// Flags of `metal-driver controller`. Names follow MCM's machine-controller where the
/// meaning is the same, so Gardener-style deployments carry over.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Flags Gardener's provider-sidecar helper always passes; accepted so that helper works
    /// unchanged.
    #[command(flatten)]
    pub gardener: GardenerCompatArgs,

    /// TLS towards a driver started with --tls-cert (and mutual TLS with --tls-client-ca).
    #[command(flatten)]
    pub tls: crate::cmi::client::ClientTlsArgs,

    /// Kubeconfig of the cluster holding Machines, MachineClasses and Secrets (Gardener's
    /// seed): a path, or `inClusterConfig` for the pod's service account. Empty: the usual
    /// kubeconfig discovery (KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "CONTROL_KUBECONFIG", default_value = "")]
    pub control_kubeconfig: String,

    /// Kubeconfig of the cluster the machines join as Nodes (Gardener's shoot): a path,
    /// `inClusterConfig`, or `none` for no Node interaction at all (machines then end in
    /// phase Available). Empty: the control cluster.
    #[arg(long, env = "TARGET_KUBECONFIG", default_value = "")]
    pub target_kubeconfig: String,

    /// The namespace whose Machines, MachineClasses and Secrets are managed; the leader
    /// Lease lives here too.
    #[arg(long, env = "CONTROL_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// The CMI driver: `tcp://HOST:PORT` or `unix:///PATH`. Required by `metal-driver
    /// controller`; without a subcommand it is left out and the driver runs in this process.
    #[arg(long, env = "CMI_ENDPOINT")]
    pub cmi_endpoint: Option<String>,

    /// Deadline of each CMI call; a hung driver costs one worker at most this long.
    #[arg(long, env = "CMI_TIMEOUT", default_value = "2m", value_parser = go_duration)]
    pub cmi_timeout: Duration,

    /// A machine still Pending this long after creation (or whose create keeps failing) is
    /// marked Failed, so MCM's MachineSet controller replaces it. `spec.creationTimeout`
    /// overrides it per machine.
    #[arg(long, env = "MACHINE_CREATION_TIMEOUT", default_value = "20m", value_parser = go_duration)]
    pub machine_creation_timeout: Duration,

    /// A machine Unknown (Node unhealthy or gone) this long is marked Failed.
    /// `spec.healthTimeout` overrides it per machine.
    #[arg(long, env = "MACHINE_HEALTH_TIMEOUT", default_value = "10m", value_parser = go_duration)]
    pub machine_health_timeout: Duration,

    /// A deleted machine's Node is drained (pods evicted, PodDisruptionBudgets respected)
    /// for at most this long, counted from the deletion; after it the drain is forceful.
    /// `spec.drainTimeout` overrides it per machine.
    #[arg(long, env = "MACHINE_DRAIN_TIMEOUT", default_value = "2h", value_parser = go_duration)]
    pub machine_drain_timeout: Duration,

    /// Evictions a PodDisruptionBudget refuses are retried every 20 s, at most this many
    /// times (and at most drain timeout / 20 s); then the pod is deleted. MCM's default.
    #[arg(long, env = "MACHINE_MAX_EVICT_RETRIES", default_value_t = 360, value_parser = clap::value_parser!(i32).range(0..))]
    pub machine_max_evict_retries: i32,

    /// How long a drain waits for an evicted pod's volumes to detach from the Node (on top
    /// of the pod's termination grace period).
    #[arg(long, env = "MACHINE_PV_DETACH_TIMEOUT", default_value = "2m", value_parser = go_duration)]
    pub machine_pv_detach_timeout: Duration,

    /// How long a drain waits for an evicted pod's volumes to attach to another Node
    /// before it moves on anyway.
    #[arg(long, env = "MACHINE_PV_REATTACH_TIMEOUT", default_value = "90s", value_parser = go_duration)]
    pub machine_pv_reattach_timeout: Duration,

    /// How often devices that no Machine accounts for are looked for and deleted.
    #[arg(long, env = "MACHINE_SAFETY_ORPHAN_VMS_PERIOD", default_value = "15m", value_parser = go_duration)]
    pub machine_safety_orphan_vms_period: Duration,

    /// Wait after a ResourceExhausted (no capacity) create failure.
    #[arg(long, env = "RESOURCE_EXHAUSTED_RETRY", default_value = "10m", value_parser = go_duration)]
    pub resource_exhausted_retry: Duration,

    /// How often Pending/Running/Unknown machines are re-checked against their Node without
    /// a Node event (timeouts are counted at this granularity).
    #[arg(long, env = "MACHINE_HEALTH_RECHECK_PERIOD", default_value = "1m", value_parser = go_duration)]
    pub machine_health_recheck_period: Duration,

    /// Comma-separated, case-sensitive Node condition types that make a Machine unhealthy
    /// unless `False` (`Unknown` counts as unhealthy); `spec.nodeConditions` overrides it
    /// per Machine. MCM's flag and default.
    #[arg(
        long,
        env = "NODE_CONDITIONS",
        default_value = context::DEFAULT_NODE_CONDITIONS
    )]
    pub node_conditions: String,

    /// Comma-separated groups written to the `auth-extra-groups` field of the bootstrap
    /// token Secret created for each new Machine whose userData asks for a token (MCM's flag;
    /// Gardener passes its node-bootstrapper group).
    #[arg(long, env = "BOOTSTRAP_TOKEN_AUTH_EXTRA_GROUPS", default_value = "")]
    pub bootstrap_token_auth_extra_groups: String,

    /// Side-port address for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "METAL_DRIVER_CONTROLLER_ADDRESS",
        default_value = "0.0.0.0"
    )]
    pub address: std::net::IpAddr,

    /// Side-port port (Gardener's `providermetrics` port). 0 picks a free port.
    #[arg(long, env = "METAL_DRIVER_CONTROLLER_PORT", default_value_t = 10259)]
    pub port: u16,

    /// Only one replica reconciles: the one holding the Lease `--leader-elect-resource-name`
    /// in `--namespace`.
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "LEADER_ELECT_RESOURCE_NAME",
        default_value = "machine-controller"
    )]
    pub leader_elect_resource_name: String,

    /// How long a Lease is valid without renewal; a successor of a crashed leader waits this.
    #[arg(long, env = "LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = go_duration)]
    pub leader_elect_lease_duration: Duration,

    /// How long the leader keeps trying to renew before it gives up and exits.
    #[arg(long, env = "LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = go_duration)]
    pub leader_elect_renew_deadline: Duration,

    /// Pause between Lease attempts.
    #[arg(long, env = "LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = go_duration)]
    pub leader_elect_retry_period: Duration,

    /// Machines reconciled in parallel (MCM's `--concurrent-syncs`).
    #[arg(long, env = "CONCURRENT_SYNCS", default_value_t = 10)]
    pub concurrent_syncs: u16,
}

/// MCM flags that Gardener's `ProviderSidecarContainer` passes to every provider sidecar,
/// so the extension's webhook can inject this controller with the stock helper. The
/// API-server status check drives the freeze (see [`freeze`]).
#[derive(clap::Args, Debug, Clone)]
pub struct GardenerCompatArgs {
    /// Requests per second each Kubernetes client may send (token-bucket refill rate, as
    /// client-go's). Default 20, MCM's.
    #[arg(long, env = "KUBE_API_QPS", value_parser = rate_limit::parse_qps)]
    pub kube_api_qps: Option<f32>,

    /// Requests each Kubernetes client may send at once after a quiet period (token-bucket
    /// capacity). Default 30, MCM's.
    #[arg(long, env = "KUBE_API_BURST", value_parser = rate_limit::parse_burst)]
    pub kube_api_burst: Option<u32>,

    /// The control and target API servers unreachable this long → the controller freezes:
    /// no creates and no health decisions until they answer again; deletions go on.
    #[arg(long, env = "MACHINE_SAFETY_APISERVER_STATUSCHECK_TIMEOUT", default_value = "30s", value_parser = go_duration)]
    pub machine_safety_apiserver_statuscheck_timeout: Duration,

    /// How often both API servers are checked (every fifth of the timeout while failing).
    #[arg(long, env = "MACHINE_SAFETY_APISERVER_STATUSCHECK_PERIOD", default_value = "1m", value_parser = go_duration)]
    pub machine_safety_apiserver_statuscheck_period: Duration,

    /// klog verbosity: 0-3 info, 4 debug, 5 and more trace (see `telemetry`);
    /// `--log-level` wins.
    #[arg(long = "v", hide_short_help = true)]
    pub verbosity: Option<u8>,
}

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
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| fail(e.to_string()))?;
    Ok(builder
        .with_layer(&rate_limit::RateLimitLayer::new(rate))
        .build())
}

/// Connects to the driver (`--cmi-endpoint`, or the one already connected in this process),
/// retrying until it answers Probe with ready (or shutdown).
async fn connect_driver(
    args: &ControllerArgs,
    in_process: Option<CmiClient>,
    shutdown: &CancellationToken,
) -> Result<Option<(CmiClient, Capabilities)>> {
    let tls = args.tls.load()?;
    let mut delay = Duration::from_millis(200);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let connected = match (&in_process, &args.cmi_endpoint) {
            (Some(client), _) => Ok(client.clone()),
            (None, Some(endpoint)) => {
                CmiClient::connect_tls(endpoint, args.cmi_timeout, tls.as_ref()).await
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
                    return Ok(Some((client, capabilities)));
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
    let readiness = admin::Readiness::default();
    let addr = SocketAddr::new(args.address, args.port);
    let admin = admin::bind(addr, metrics.clone(), readiness.clone())
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    println!("listening on http://{}", admin.local_addr());
    let result = run_with(args, shutdown, metrics, readiness, in_process).await;
    admin.stop().await;
    result
}

async fn run_with(
    args: ControllerArgs,
    shutdown: CancellationToken,
    metrics: Metrics,
    readiness: admin::Readiness,
    in_process: Option<CmiClient>,
) -> Result<()> {
    let rate = rate_limit::Rate::new(args.gardener.kube_api_qps, args.gardener.kube_api_burst);
    let client = kube_client(&args.control_kubeconfig, rate).await?;
    let target = match args.target_kubeconfig.as_str() {
        NO_TARGET => None,
        // Its own client even when it is the control cluster: see [`target_client`].
        "" => Some(target_client(&args.control_kubeconfig, rate).await?),
        flag => Some(target_client(flag, rate).await?),
    };
    let Some((cmi, capabilities)) = connect_driver(&args, in_process, &shutdown).await? else {
        return Ok(());
    };
    readiness.set(true);

    let leadership = if args.leader_elect {
        let cfg = leader::LeaseConfig {
            name: args.leader_elect_resource_name.clone(),
            namespace: args.namespace.clone(),
            identity: leader::identity(),
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        };
        // Its own client and bucket (MCM's separate leader-election client), so lease
        // renewals never queue behind a busy controller's requests.
        let lease_client = kube_client(&args.control_kubeconfig, rate).await?;
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

    let ns = args.namespace.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        target: target.clone(),
        cmi,
        capabilities,
        config: Config {
            namespace: ns.clone(),
            creation_timeout: args.machine_creation_timeout,
            health_timeout: args.machine_health_timeout,
            drain_timeout: args.machine_drain_timeout,
            max_evict_retries: args.machine_max_evict_retries,
            pv_detach_timeout: args.machine_pv_detach_timeout,
            pv_reattach_timeout: args.machine_pv_reattach_timeout,
            orphan_period: args.machine_safety_orphan_vms_period,
            retry: RetryPeriods {
                resource_exhausted: args.resource_exhausted_retry,
                ..RetryPeriods::default()
            },
            health_recheck: args.machine_health_recheck_period,
            node_conditions: args.node_conditions.clone(),
            bootstrap_token_auth_extra_groups: args.bootstrap_token_auth_extra_groups.clone(),
        },
        metrics: metrics.clone(),
        stop: stop.clone(),
        safety: Default::default(),
    });

    let machines: Api<DeserializeGuard<Machine>> = Api::namespaced(client.clone(), &ns);
    let classes: Api<MachineClass> = Api::namespaced(client.clone(), &ns);
    // Metadata only (kube sends metadata-only requests for `PartialObjectMeta`): Secret
    // data is never even sent to us, let alone cached.
    let secrets: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), &ns);

    // A cache of classes, to map a Secret event to the classes (and so Machines) using it.
    let (class_store, class_writer) = reflector::store::<MachineClass>();
    let class_cache = reflector(
        class_writer,
        watcher(classes.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .take_until(stop.clone().cancelled_owned())
    .for_each(|_| future::ready(()));

    // The Machine cache is the controller's memory: one entry per Machine, trimmed of what
    // is never read (managedFields grow with every writer; see BENCHMARKS.md, item 6).
    let (machine_store, machine_writer) = reflector::store::<DeserializeGuard<Machine>>();
    // MCM's scrape-time Machine series, read from this cache while we lead.
    metrics.mcm.attach(Arc::new(machine_metrics::CacheSource(
        machine_store.clone(),
    )));
    let queue = metrics.workqueue.clone();
    let deleted = ctx.clone();
    let machine_events = reflector(
        machine_writer,
        watcher(machines.clone(), watcher::Config::default()).modify(crd::trim_for_cache),
    )
    // MCM collects orphans after every Machine delete.
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(_)) = event {
            deleted.safety.collect_orphans.notify_one();
        }
    })
    .applied_objects()
    .inspect_ok(move |m| queue.triggered("machine", machine_metrics::queue_key(m)));
    let machine_controller = Controller::for_stream(machine_events, machine_store.clone())
        .with_config(ControllerConfig::default().concurrency(args.concurrent_syncs));
    let mut machine_controller = {
        let store = machine_store.clone();
        machine_controller.watches(
            classes.clone(),
            watcher::Config::default(),
            move |class: MachineClass| machine_class::machines_of_class(&store, &class.name_any()),
        )
    };
    {
        let (store, classes, ns) = (machine_store.clone(), class_store.clone(), ns.clone());
        machine_controller =
            machine_controller.watches(secrets, watcher::Config::default(), move |secret| {
                machine_class::machines_of_secret(&store, &classes, &secret, &ns)
            });
    }
    if let Some(t) = &target {
        let store = machine_store.clone();
        // Only a Node's name maps it to its Machine; its status is read when reconciling.
        // Metadata-only is enough to see every change: any write to a Node (conditions,
        // taints such as Gardener's critical-components one, a deletion) bumps its
        // resourceVersion, and the API server reports it as a MODIFIED event here too, while
        // the Node's spec and status never enter this process's memory through the watch.
        let nodes: Api<PartialObjectMeta<Node>> = Api::all(t.clone());
        machine_controller = machine_controller.watches(
            nodes,
            watcher::Config::default(),
            move |node: PartialObjectMeta<Node>| {
                let name = node.name_any();
                store
                    .state()
                    .iter()
                    .filter(|g| {
                        g.0.as_ref()
                            .is_ok_and(|m| m.node_name() == Some(name.as_str()))
                    })
                    .map(|g| ObjectRef::from_obj(g.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    }
    // The freeze check asks for every Machine to be looked at again after a thaw.
    let (reconcile_all, reconcile_all_rx) = tokio::sync::mpsc::unbounded_channel();
    let machine_task = machine_controller
        .reconcile_all_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            reconcile_all_rx,
        ))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(machine::reconcile, machine::error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    let class_controller = Controller::new(classes, watcher::Config::default());
    let class_controller_store = class_controller.store();
    let class_task = class_controller
        .watches(
            machines,
            watcher::Config::default(),
            machine_class::class_of_machine,
        )
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(
            machine_class::reconcile,
            machine_class::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    let orphan_task = orphans::run(ctx.clone(), stop.clone());
    let secret_task = secret_finalizer::run(ctx.clone(), stop.clone());
    let freeze_task = freeze::run(
        ctx.clone(),
        args.gardener.machine_safety_apiserver_statuscheck_period,
        args.gardener.machine_safety_apiserver_statuscheck_timeout,
        reconcile_all,
        stop.clone(),
    );

    tracing::info!(namespace = %ns, target = ctx.has_target(), "machine controller running");
    tokio::join!(
        unless_stopped_before_ready(machine_task, &stop, machine_store.clone()),
        unless_stopped_before_ready(class_task, &stop, class_controller_store),
        orphan_task,
        class_cache,
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

/// Runs a kube-runtime controller until it ends, or until `stop` fires while its cache is
/// still empty. kube-runtime holds a controller's reconciles until its cache has been filled
/// once; a stop that ends the watch before the first list completes leaves that hold waiting
/// for ever, and the process would ignore SIGTERM until it is killed. No reconcile can be in
/// flight before the cache is filled, so nothing is cut short by not waiting then.
pub(crate) async fn unless_stopped_before_ready<K>(
    controller: impl std::future::Future<Output = ()>,
    stop: &CancellationToken,
    cache: reflector::Store<K>,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let stopped_unready = async {
        stop.cancelled().await;
        if matches!(cache.wait_until_ready().now_or_never(), Some(Ok(()))) {
            // Filled: the controller finishes its in-flight reconciles and ends by itself.
            future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = controller => {}
        () = stopped_unready => tracing::debug!("stopped before the first list; no reconcile ran"),
    }
}

#[cfg(test)]
mod args_tests {
    use clap::Parser;

    use super::ControllerArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    /// The exact arguments Gardener's `ProviderSidecarContainer` gives a provider sidecar
    /// (reference/notes/mcm.md §5) must parse, with MCM's duration syntax.
    #[test]
    fn gardener_sidecar_arguments_parse() {
        let cli = Cli::try_parse_from([
            "controller",
            "--control-kubeconfig=inClusterConfig",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
            "--machine-creation-timeout=20m",
            "--machine-drain-timeout=2h",
            "--machine-health-timeout=10m",
            "--machine-safety-apiserver-statuscheck-timeout=30s",
            "--machine-safety-apiserver-statuscheck-period=1m",
            "--machine-safety-orphan-vms-period=30m",
            "--namespace=shoot--dev--demo",
            "--port=10259",
            "--target-kubeconfig=/var/run/secrets/gardener.cloud/shoot/generic-kubeconfig/kubeconfig",
            "--v=3",
            "--cmi-endpoint=unix:///var/run/cmi/cmi.sock",
        ])
        .expect("Gardener's sidecar flags are accepted");
        assert_eq!(cli.args.namespace, "shoot--dev--demo");
        assert_eq!(cli.args.machine_safety_orphan_vms_period.as_secs(), 30 * 60);
        assert_eq!(cli.args.machine_drain_timeout.as_secs(), 2 * 3600);
        assert_eq!(cli.args.gardener.kube_api_qps, Some(100.0));
        assert_eq!(cli.args.gardener.kube_api_burst, Some(200));
        let g = &cli.args.gardener;
        assert_eq!(g.machine_safety_apiserver_statuscheck_timeout.as_secs(), 30);
        assert_eq!(g.machine_safety_apiserver_statuscheck_period.as_secs(), 60);
    }

    /// A rate that cannot work is refused at start-up, naming the flag.
    #[test]
    fn an_unusable_client_rate_is_refused() {
        for bad in [
            "--kube-api-qps=0",
            "--kube-api-qps=-5",
            "--kube-api-burst=0",
        ] {
            let err = Cli::try_parse_from(["controller", "--cmi-endpoint=tcp://127.0.0.1:1", bad])
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"))
                .to_string();
            let flag = bad.split('=').next().unwrap();
            assert!(err.contains(flag), "{bad}: {err}");
        }
    }

    /// Without the flags, MCM's defaults apply (30 s timeout, 1 min period); a bad duration
    /// is refused naming the flag.
    #[test]
    fn statuscheck_defaults_are_mcms() {
        let cli = Cli::try_parse_from(["controller", "--cmi-endpoint=unix:///s"]).unwrap();
        let g = &cli.args.gardener;
        assert_eq!(g.machine_safety_apiserver_statuscheck_timeout.as_secs(), 30);
        assert_eq!(g.machine_safety_apiserver_statuscheck_period.as_secs(), 60);
        let err = Cli::try_parse_from([
            "controller",
            "--cmi-endpoint=unix:///s",
            "--machine-safety-apiserver-statuscheck-period=soon",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("--machine-safety-apiserver-statuscheck-period"),
            "{err}"
        );
    }
}
