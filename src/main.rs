//! `metal-driver`: one binary, one subcommand per role. Dispatch only; each role lives in
//! its own module with a `run(args, shutdown)`.

use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use metal_driver::{cmi, controller, demo, machine_cli, shutdown, sidecar, sim, telemetry};

/// Equinix Metal provider for Gardener's machine-controller-manager, speaking the Common
/// Machine Interface (cmi.v1).
///
/// Without a subcommand, `metal-driver` is Gardener's provider sidecar in one process: it
/// takes the flags Gardener's `ProviderSidecarContainer` helper gives a provider container
/// (`--control-kubeconfig`, `--target-kubeconfig`, `--namespace`, `--port`, `--machine-*`,
/// `--kube-api-*`, `--v`), runs the machine controller, and runs the CMI driver inside the
/// same process, calling the Metal API at METAL_API_URL (or `--metal-api-url`). `/healthz`,
/// `/readyz` and every metric (the controller's and the driver's `mcm_cloud_api_*`) are on
/// `--port` (default 10259). Logs are JSON in Gardener's shape unless `--log-format text`.
/// For example:
///
///   metal-driver --control-kubeconfig=inClusterConfig --namespace=shoot--dev--demo
///   --target-kubeconfig=/var/run/secrets/gardener.cloud/shoot/generic-kubeconfig/kubeconfig
///   --port=10259 --v=3
///
/// The subcommands are the same pieces one at a time: `serve` is the CMI driver alone (gRPC);
/// `controller` is the machine controller calling a driver at `--cmi-endpoint` (the
/// two-process form); `sim` is a Metal API simulator; `demo` walks a machine through create →
/// status → list → shutdown → delete on an embedded simulator; `machine` is a CLI client of a
/// running driver.
///
/// A flag whose help shows `[env: NAME=]` can also be set through that environment variable
/// (the long-running roles take their whole configuration that way); the command line wins.
#[derive(Parser, Debug)]
#[command(
    name = "metal-driver",
    version,
    about,
    long_about,
    arg_required_else_help = true,
    subcommand_value_name = "SUBCOMMAND",
    subcommand_help_heading = "Subcommands (none: the one-process sidecar, with the options below)"
)]
struct Cli {
    #[command(flatten)]
    log: telemetry::LogArgs,

    /// The one-process sidecar's flags (used when no subcommand is given).
    #[command(flatten)]
    sidecar: Box<sidecar::SidecarArgs>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the CMI driver: gRPC on CMI_ENDPOINT, calling the Metal API at METAL_API_URL.
    Serve(cmi::server::ServeArgs),
    /// Run the stateful Equinix Metal API simulator (spec-conformant, with fault injection).
    Sim(sim::SimArgs),
    /// Run the machine controller alone: reconcile MCM Machine/MachineClass objects into
    /// devices through the driver at --cmi-endpoint (the two-process form; without a
    /// subcommand the driver runs in the same process instead).
    #[command(mut_arg("cmi_endpoint", |a| a.required(true)))]
    Controller(Box<controller::ControllerArgs>),
    /// The whole flow on an embedded simulator, with no account: create → status → list →
    /// shutdown → delete over real gRPC.
    Demo(demo::DemoArgs),
    /// Call a running driver: create, status, list, shutdown or delete a machine described
    /// by kubectl-style MachineClass and Secret YAML files.
    Machine(machine_cli::MachineArgs),
}

/// Parses the command line. A sidecar flag given together with a subcommand is an error
/// (it would be ignored), while the global logging flags may stand on either side of it.
fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    if let Some((name, _)) = matches.subcommand() {
        let sidecar = sidecar::SidecarArgs::augment_args(clap::Command::new("sidecar"));
        let given = sidecar.get_arguments().find(|a| {
            matches.value_source(a.get_id().as_str())
                == Some(clap::parser::ValueSource::CommandLine)
        });
        if let Some(flag) = given {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--{} is a flag of the one-process sidecar (no subcommand); give `{name}`'s flags after `{name}`",
                    flag.get_long().unwrap_or(flag.get_id().as_str())
                ),
            ));
        }
    }
    Cli::from_arg_matches(&matches)
}

fn main() -> ExitCode {
    let cli = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    // No subcommand: the one-process sidecar.
    if matches!(cli.command, None | Some(Command::Controller(_))) {
        // The controller's memory is its caches; one arena keeps their burst from being held
        // per thread (see `heap`).
        metal_driver::heap::limit_malloc_arenas(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("metal-driver: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // The demo and the CLI print for humans; keep their logs to warnings unless asked.
        let quiet = matches!(cli.command, Some(Command::Demo(_) | Command::Machine(_)));
        let log = match &cli.command {
            // Gardener's components log JSON unless told otherwise; klog's --v sets the level.
            None => cli.log.resolve(
                telemetry::LogFormat::Json,
                cli.sidecar.controller.gardener.verbosity,
            ),
            Some(Command::Controller(args)) => cli
                .log
                .resolve(telemetry::LogFormat::Text, args.gardener.verbosity),
            Some(_) if quiet => cli.log.resolve_quiet(),
            Some(_) => cli.log.resolve(telemetry::LogFormat::Text, None),
        };
        telemetry::init(&log);
        let shutdown = shutdown::on_signal();
        let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
            None => sidecar::run(*cli.sidecar, shutdown)
                .await
                .map_err(Into::into),
            Some(Command::Serve(args)) => {
                cmi::server::run(args, shutdown).await.map_err(Into::into)
            }
            Some(Command::Sim(args)) => sim::run(args, shutdown).await.map_err(Into::into),
            Some(Command::Controller(args)) => {
                controller::run(*args, shutdown).await.map_err(Into::into)
            }
            Some(Command::Demo(args)) => demo::run(args).await.map_err(Into::into),
            Some(Command::Machine(args)) => machine_cli::run(args).await.map_err(Into::into),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // Long-running roles log it (structured); every role tells the terminal once.
                if !quiet {
                    tracing::error!(%error, "metal-driver failed");
                }
                eprintln!("metal-driver: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{Cli, Command, parse};

    /// Gardener's `ProviderSidecarContainer` arguments, exactly, with each form of
    /// `--target-kubeconfig` it writes.
    fn gardener_args(target: &str) -> Vec<String> {
        ["metal-driver"]
            .into_iter()
            .chain(
                metal_driver::controller::flags::GARDENER_SIDECAR_ARGS
                    .iter()
                    .copied(),
            )
            .map(str::to_owned)
            .chain([format!("--target-kubeconfig={target}"), "--v=3".to_owned()])
            .collect()
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn gardeners_helper_arguments_run_the_one_process_sidecar() {
        let shoot = "/var/run/secrets/gardener.cloud/shoot/generic-kubeconfig/kubeconfig";
        for target in [shoot, "", "none"] {
            let cli = parse(gardener_args(target)).expect("Gardener's arguments are accepted");
            assert!(cli.command.is_none(), "no subcommand: the sidecar");
            let c = &cli.sidecar.controller;
            assert_eq!(c.target_kubeconfig, target);
            assert_eq!(c.control_kubeconfig, "inClusterConfig");
            assert_eq!(c.namespace, "shoot--dev--demo");
            assert_eq!(c.port, 10259);
            assert_eq!(c.cmi_endpoint, None, "the driver runs in the process");
            assert_eq!(c.gardener.verbosity, Some(3));
            assert_eq!(c.machine_safety_orphan_vms_period.as_secs(), 30 * 60);
        }
    }

    #[test]
    fn subcommands_keep_their_flags() {
        let cli = parse(["metal-driver", "serve", "--endpoint=tcp://127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Serve(_))));
        let cli = parse([
            "metal-driver",
            "--log-format=json",
            "controller",
            "--cmi-endpoint=unix:///run/cmi.sock",
        ])
        .expect("global flags may come before the subcommand");
        let Some(Command::Controller(args)) = cli.command else {
            panic!("controller expected");
        };
        assert_eq!(args.cmi_endpoint.as_deref(), Some("unix:///run/cmi.sock"));
        let missing = parse(["metal-driver", "controller"]).expect_err("needs a driver");
        assert!(missing.to_string().contains("--cmi-endpoint"), "{missing}");
    }

    #[test]
    fn a_sidecar_flag_with_a_subcommand_is_refused() {
        let err = parse(["metal-driver", "--namespace=x", "sim"]).expect_err("refused");
        assert!(err.to_string().contains("--namespace"), "{err}");
    }
}
