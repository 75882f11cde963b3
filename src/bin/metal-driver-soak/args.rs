//! The soak's flags (`hack/soak.sh` sets them from its environment).

use std::path::PathBuf;

use clap::Parser;

/// Flags of the soak.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "metal-driver-soak",
    about = "Fault-injection soak of metal-driver serve"
)]
pub struct Args {
    /// How long new machines keep starting (the run then drains, see --drain-seconds).
    #[arg(long, env = "SOAK_SECONDS", default_value_t = 600)]
    pub seconds: u64,
    /// Upper bound on the drain after --seconds: machines still running get this long.
    #[arg(long, env = "SOAK_DRAIN_SECONDS", default_value_t = 180)]
    pub drain_seconds: u64,
    /// Machines in flight at once.
    #[arg(long, env = "SOAK_CONCURRENCY", default_value_t = 24)]
    pub concurrency: usize,
    /// Stop starting machines after this many (0 = only the time bounds the run).
    #[arg(long, env = "SOAK_MAX_MACHINES", default_value_t = 0)]
    pub max_machines: u64,
    /// Probability of an injected 429 (with Retry-After) per API request.
    #[arg(long, default_value_t = 0.07)]
    pub fault_rate_429: f64,
    /// Probability of an injected 500/503 per API request.
    #[arg(long, default_value_t = 0.07)]
    pub fault_rate_5xx: f64,
    /// Probability that an API request is executed and its response dropped.
    #[arg(long, default_value_t = 0.06)]
    pub fault_rate_drop: f64,
    /// Latency added to every API request, in milliseconds.
    #[arg(long, default_value_t = 15)]
    pub latency_ms: u64,
    /// Seconds between driver restarts (alternately SIGKILL and SIGTERM); 0 = never.
    #[arg(long, env = "SOAK_RESTART_EVERY", default_value_t = 20)]
    pub restart_every: u64,
    /// The driver binary (default: `metal-driver` next to this binary).
    #[arg(long)]
    pub driver_bin: Option<PathBuf>,
    /// Where driver logs and report.json go (default: target/soak/<unix time>).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Seed of the simulator's fault draws (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Kubeconfig of a kube-apiserver with MCM's CRDs: adds the controller lane (Machines
    /// reconciled by a restarted `metal-driver controller`). Without it only the driver is
    /// soaked.
    #[arg(long, env = "SOAK_KUBECONFIG")]
    pub kubeconfig: Option<String>,
    /// Controller-lane Machines in flight at once.
    #[arg(long, env = "SOAK_CONTROLLER_CONCURRENCY", default_value_t = 6)]
    pub controller_concurrency: usize,
    /// Seconds between controller restarts (alternately SIGKILL and SIGTERM); 0 = never.
    /// Default: --restart-every.
    #[arg(long, env = "SOAK_CONTROLLER_RESTART_EVERY")]
    pub controller_restart_every: Option<u64>,
    /// Chaos in the controller lane (see `chaos`): a pool of Machines through a network
    /// incident with the target API server gone, a pool-wide NotReady past the health
    /// timeout, and the control API server gone. Needs --target-kubeconfig and both
    /// environments' state dirs (hack/e2e-env.sh, for `apiserver stop|start`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub chaos: bool,
    /// Kubeconfig of the target cluster (Nodes) for the controller lane; default: --kubeconfig.
    #[arg(long, env = "SOAK_TARGET_KUBECONFIG")]
    pub target_kubeconfig: Option<String>,
    /// hack/e2e-env.sh state dir of the control cluster (for the chaos).
    #[arg(long, env = "SOAK_CONTROL_STATE")]
    pub control_state: Option<String>,
    /// hack/e2e-env.sh state dir of the target cluster (for the chaos).
    #[arg(long, env = "SOAK_TARGET_STATE")]
    pub target_state: Option<String>,
}
