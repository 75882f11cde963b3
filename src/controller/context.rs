//! What every reconcile sees: the clients (control cluster, optional target cluster, the CMI
//! driver), the timeouts and retry periods, what the driver can do, and the metrics. Shared as
//! `Arc<Context>`; the controller holds no globals.

use std::{collections::HashSet, time::Duration};

use kube::{Client, core::DeserializeGuard, runtime::reflector::ObjectRef};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::{
    cmi::{Rpc, client::CmiClient, preflight::Preflight},
    telemetry::Metrics,
};

use super::{
    caches::Caches,
    crd::{Machine, MachineClass},
    freeze::Freeze,
    own_writes::OwnWrites,
    permit::Permits,
    status::RetryPeriods,
};

/// Node condition types that make a Node unhealthy unless `False`: MCM's `--node-conditions`
/// default, comma-separated and case-sensitive as MCM reads it.
pub const DEFAULT_NODE_CONDITIONS: &str =
    "KernelDeadlock,ReadonlyFilesystem,DiskPressure,NetworkUnavailable";

/// Tunables, from the flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// The namespace holding Machines, MachineClasses and Secrets (`--namespace`).
    pub namespace: String,
    /// Pending longer than this (from creation) → Failed; create errors → Failed after it.
    pub creation_timeout: Duration,
    /// Unknown longer than this → Failed.
    pub health_timeout: Duration,
    /// How long a drain may take before it turns forceful, counted from the Machine's
    /// deletion timestamp (`--machine-drain-timeout`, `spec.drainTimeout`).
    pub drain_timeout: Duration,
    /// Evictions refused by a PodDisruptionBudget are retried this often at most
    /// (`--machine-max-evict-retries`, `spec.maxEvictRetries`).
    pub max_evict_retries: i32,
    /// How long a drain waits for a pod's volumes to detach (plus the pod's grace period).
    pub pv_detach_timeout: Duration,
    /// How long a drain waits for a pod's volumes to attach to another Node.
    pub pv_reattach_timeout: Duration,
    /// How often orphan collection runs.
    pub orphan_period: Duration,
    /// MCM's retry periods.
    pub retry: RetryPeriods,
    /// How often Pending/Running/Unknown machines are re-checked against their Node even
    /// without a Node event (MCM re-checks timeouts every minute).
    pub health_recheck: Duration,
    /// `--node-conditions`: comma-separated Node condition types that must be `False` for a
    /// healthy Node (`spec.nodeConditions` overrides it per Machine).
    pub node_conditions: String,
    /// `--bootstrap-token-auth-extra-groups`: the `auth-extra-groups` of every bootstrap
    /// token Secret created for a new Machine.
    pub bootstrap_token_auth_extra_groups: String,
}

/// The driver's advertised RPCs (GetPluginCapabilities at start-up).
#[derive(Debug, Clone, Default)]
pub struct Capabilities(pub HashSet<Rpc>);

impl Capabilities {
    /// Whether the driver advertised `rpc`.
    pub fn has(&self, rpc: Rpc) -> bool {
        self.0.contains(&rpc)
    }
}

/// Shared by all reconciles.
pub struct Context {
    /// Control cluster: Machines, MachineClasses, Secrets, the Lease.
    pub client: Client,
    /// Target cluster (the shoot): Nodes. `None` with `--target-kubeconfig=none`.
    pub target: Option<Client>,
    /// The driver.
    pub cmi: CmiClient,
    /// What the driver can do. Without GET_MACHINE_STATUS the create flow treats the call
    /// as Unimplemented and relies on `spec.providerID` alone.
    pub capabilities: Capabilities,
    /// Whether CreateMachine refusals can be told before sending (the driver is this
    /// build): what lets a Machine that never sent a create be released without a call.
    pub preflight: Preflight,
    /// Tunables.
    pub config: Config,
    /// Metric families.
    pub metrics: Metrics,
    /// Cancelled when the controller stops: long waits inside a reconcile (a drain) give
    /// up on it, so shutdown never waits for a PodDisruptionBudget.
    pub stop: CancellationToken,
    /// Run-time state of the safety mechanisms (freeze, meltdown permits, orphan trigger).
    pub safety: Safety,
    /// What reconciles read instead of the API server, where MCM reads its listers.
    pub caches: Caches,
    /// Work for the Machine and MachineClass controllers.
    pub queues: Queues,
    /// Our Machine writes the Machine cache has not shown yet.
    pub own_writes: OwnWrites,
}

/// The Machine and MachineClass controllers' queues, for work one hands the other, as MCM's
/// controllers add keys to each other's work queues: a class reconcile enqueues the class's
/// Machines, a Machine waiting for its class's finalizer enqueues the class.
#[derive(Clone)]
pub struct Queues {
    machines: UnboundedSender<ObjectRef<DeserializeGuard<Machine>>>,
    classes: UnboundedSender<ObjectRef<MachineClass>>,
}

impl Queues {
    /// Queues feeding these channels (their receivers go to the controllers'
    /// `reconcile_on`).
    pub fn new(
        machines: UnboundedSender<ObjectRef<DeserializeGuard<Machine>>>,
        classes: UnboundedSender<ObjectRef<MachineClass>>,
    ) -> Self {
        Self { machines, classes }
    }

    /// Asks for a reconcile of the Machine `name` in `namespace`. Dropped once the Machine
    /// controller has stopped.
    pub fn machine(&self, name: &str, namespace: &str) {
        let _ = self.machines.send(ObjectRef::new(name).within(namespace));
    }

    /// Asks for a reconcile of the MachineClass `name` in `namespace`. Dropped once the
    /// class controller has stopped.
    pub fn class(&self, name: &str, namespace: &str) {
        let _ = self.classes.send(ObjectRef::new(name).within(namespace));
    }
}

/// What the safety mechanisms share with the reconcilers.
#[derive(Default)]
pub struct Safety {
    /// Set while the API servers are unreachable past the status-check timeout.
    pub freeze: Freeze,
    /// One lock per MachineDeployment for Unknown → Failed decisions.
    pub permits: Permits,
    /// Asks the orphan collector for a pass now (a Machine was deleted, or a lastOperation
    /// reported more than one device for a Machine).
    pub collect_orphans: tokio::sync::Notify,
}

impl Context {
    /// Whether Nodes are managed (a target cluster is configured).
    pub fn has_target(&self) -> bool {
        self.target.is_some()
    }
}
