//! The flags of `metal-driver controller` (and of the one-process sidecar), and their split
//! into what each part of the controller uses ([`Settings`]). Names follow MCM's
//! machine-controller where the meaning is the same, so Gardener-style deployments carry over.
//!
//! [`ControllerArgs::into_settings`] destructures every flag without a catch-all, so a flag
//! added here does not compile until it is wired to something (or explicitly set aside with
//! the reason).

use std::{net::SocketAddr, time::Duration};

use super::{
    context::{Config, DEFAULT_NODE_CONDITIONS},
    duration, rate_limit,
    status::RetryPeriods,
};

fn go_duration(s: &str) -> std::result::Result<Duration, String> {
    duration::parse(s)
}

/// The arguments Gardener's `ProviderSidecarContainer` gives every provider sidecar, besides
/// `--target-kubeconfig` and `--v` (reference/notes/mcm.md §5): what the controller and the
/// one-process sidecar must accept unchanged (their tests parse exactly these).
pub const GARDENER_SIDECAR_ARGS: &[&str] = &[
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
];

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
        default_value = DEFAULT_NODE_CONDITIONS
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

/// `--leader-elect*`: whether and how this replica competes for the leader Lease.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// `--leader-elect`: only the holder of the Lease reconciles.
    pub elect: bool,
    /// `--leader-elect-resource-name`.
    pub name: String,
    /// `--leader-elect-lease-duration`.
    pub lease_duration: Duration,
    /// `--leader-elect-renew-deadline`.
    pub renew_deadline: Duration,
    /// `--leader-elect-retry-period`.
    pub retry_period: Duration,
}

/// How the controller reaches the driver.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// `--cmi-endpoint`; `None` when the driver runs in this process.
    pub endpoint: Option<String>,
    /// `--cmi-timeout`: deadline of each CMI call.
    pub timeout: Duration,
    /// TLS towards the driver.
    pub tls: crate::cmi::client::ClientTlsArgs,
}

/// The flags, split by the part of the controller that uses them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--address`/`--port`: the side port (health, metrics).
    pub side_port: SocketAddr,
    /// `--control-kubeconfig`.
    pub control_kubeconfig: String,
    /// `--target-kubeconfig` (`none`: no target cluster).
    pub target_kubeconfig: String,
    /// `--kube-api-qps`/`--kube-api-burst`: each Kubernetes client's token bucket.
    pub rate: rate_limit::Rate,
    /// The driver connection.
    pub driver: DriverSettings,
    /// Leader election.
    pub leader: LeaderSettings,
    /// `--concurrent-syncs`: Machines reconciled in parallel.
    pub concurrent_syncs: u16,
    /// `--machine-safety-apiserver-statuscheck-period`.
    pub statuscheck_period: Duration,
    /// `--machine-safety-apiserver-statuscheck-timeout`.
    pub statuscheck_timeout: Duration,
    /// What the reconcilers read.
    pub config: Config,
}

impl ControllerArgs {
    /// Splits the flags into [`Settings`]. Every field is named here: a new flag must be
    /// wired (or set aside with its reason) before this compiles.
    pub fn into_settings(self) -> Settings {
        let Self {
            gardener:
                GardenerCompatArgs {
                    kube_api_qps,
                    kube_api_burst,
                    machine_safety_apiserver_statuscheck_timeout,
                    machine_safety_apiserver_statuscheck_period,
                    // Read by `main` to set up logging before the runtime starts.
                    verbosity: _,
                },
            tls,
            control_kubeconfig,
            target_kubeconfig,
            namespace,
            cmi_endpoint,
            cmi_timeout,
            machine_creation_timeout,
            machine_health_timeout,
            machine_drain_timeout,
            machine_max_evict_retries,
            machine_pv_detach_timeout,
            machine_pv_reattach_timeout,
            machine_safety_orphan_vms_period,
            resource_exhausted_retry,
            machine_health_recheck_period,
            node_conditions,
            bootstrap_token_auth_extra_groups,
            address,
            port,
            leader_elect,
            leader_elect_resource_name,
            leader_elect_lease_duration,
            leader_elect_renew_deadline,
            leader_elect_retry_period,
            concurrent_syncs,
        } = self;
        Settings {
            side_port: SocketAddr::new(address, port),
            control_kubeconfig,
            target_kubeconfig,
            rate: rate_limit::Rate::new(kube_api_qps, kube_api_burst),
            driver: DriverSettings {
                endpoint: cmi_endpoint,
                timeout: cmi_timeout,
                tls,
            },
            leader: LeaderSettings {
                elect: leader_elect,
                name: leader_elect_resource_name,
                lease_duration: leader_elect_lease_duration,
                renew_deadline: leader_elect_renew_deadline,
                retry_period: leader_elect_retry_period,
            },
            concurrent_syncs,
            statuscheck_period: machine_safety_apiserver_statuscheck_period,
            statuscheck_timeout: machine_safety_apiserver_statuscheck_timeout,
            config: Config {
                namespace,
                creation_timeout: machine_creation_timeout,
                health_timeout: machine_health_timeout,
                drain_timeout: machine_drain_timeout,
                max_evict_retries: machine_max_evict_retries,
                pv_detach_timeout: machine_pv_detach_timeout,
                pv_reattach_timeout: machine_pv_reattach_timeout,
                orphan_period: machine_safety_orphan_vms_period,
                retry: RetryPeriods {
                    resource_exhausted: resource_exhausted_retry,
                    ..RetryPeriods::default()
                },
                health_recheck: machine_health_recheck_period,
                node_conditions,
                bootstrap_token_auth_extra_groups,
            },
        }
    }
}

#[cfg(test)]
mod tests {
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
        let args = ["controller"]
            .into_iter()
            .chain(super::GARDENER_SIDECAR_ARGS.iter().copied())
            .chain([
                "--target-kubeconfig=/var/run/secrets/gardener.cloud/shoot/generic-kubeconfig/kubeconfig",
                "--v=3",
                "--cmi-endpoint=unix:///var/run/cmi/cmi.sock",
            ]);
        let cli = Cli::try_parse_from(args).expect("Gardener's sidecar flags are accepted");
        assert_eq!(cli.args.namespace, "shoot--dev--demo");
        assert_eq!(cli.args.machine_safety_orphan_vms_period.as_secs(), 30 * 60);
        assert_eq!(cli.args.machine_drain_timeout.as_secs(), 2 * 3600);
        assert_eq!(cli.args.gardener.kube_api_qps, Some(100.0));
        assert_eq!(cli.args.gardener.kube_api_burst, Some(200));
        let g = &cli.args.gardener;
        assert_eq!(g.machine_safety_apiserver_statuscheck_timeout.as_secs(), 30);
        assert_eq!(g.machine_safety_apiserver_statuscheck_period.as_secs(), 60);
    }

    /// Every flag reaches the part that uses it.
    #[test]
    fn settings_carry_every_flag() {
        let cli = Cli::try_parse_from([
            "controller",
            "--cmi-endpoint=unix:///s",
            "--namespace=shoot--a--b",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
            "--machine-drain-timeout=3h",
            "--machine-max-evict-retries=7",
            "--resource-exhausted-retry=4m",
            "--leader-elect=false",
            "--leader-elect-resource-name=lease",
            "--concurrent-syncs=50",
            "--machine-safety-apiserver-statuscheck-period=2m",
            "--address=127.0.0.1",
            "--port=0",
        ])
        .unwrap();
        let s = cli.args.into_settings();
        assert_eq!(s.side_port.to_string(), "127.0.0.1:0");
        assert_eq!(s.driver.endpoint.as_deref(), Some("unix:///s"));
        assert_eq!((s.rate.qps, s.rate.burst), (100.0, 200));
        assert!(!s.leader.elect);
        assert_eq!(s.leader.name, "lease");
        assert_eq!(s.concurrent_syncs, 50);
        assert_eq!(s.statuscheck_period.as_secs(), 120);
        assert_eq!(s.config.namespace, "shoot--a--b");
        assert_eq!(s.config.drain_timeout.as_secs(), 3 * 3600);
        assert_eq!(s.config.max_evict_retries, 7);
        assert_eq!(s.config.retry.resource_exhausted.as_secs(), 240);
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
