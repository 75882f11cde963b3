//! `metal-driver`: one binary, one subcommand per role. Dispatch only; each role lives in
//! its own module with a `run(args, shutdown)`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metal_driver::{cmi, controller, demo, machine_cli, shutdown, sim, telemetry};

/// Equinix Metal provider for Gardener's machine-controller-manager, speaking the Common
/// Machine Interface (cmi.v1).
///
/// Roles: `serve` is the CMI driver (gRPC); `controller` is the machine controller that runs
/// beside MCM and calls the driver; `sim` is a Metal API simulator; `demo` walks a machine
/// through create → status → list → shutdown → delete on an embedded simulator; `machine` is
/// a CLI client of a running driver.
///
/// A flag whose help shows `[env: NAME=]` can also be set through that environment variable
/// (the long-running roles take their whole configuration that way); the command line wins.
#[derive(Parser, Debug)]
#[command(name = "metal-driver", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    log: telemetry::LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the CMI driver: gRPC on CMI_ENDPOINT, calling the Metal API at METAL_API_URL.
    Serve(cmi::server::ServeArgs),
    /// Run the stateful Equinix Metal API simulator (spec-conformant, with fault injection).
    Sim(sim::SimArgs),
    /// Run the machine controller: reconcile MCM Machine/MachineClass objects into devices
    /// through the driver at CMI_ENDPOINT (the CMI client beside MCM).
    Controller(Box<controller::ControllerArgs>),
    /// The whole flow on an embedded simulator, with no account: create → status → list →
    /// shutdown → delete over real gRPC.
    Demo(demo::DemoArgs),
    /// Call a running driver: create, status, list, shutdown or delete a machine described
    /// by kubectl-style MachineClass and Secret YAML files.
    Machine(machine_cli::MachineArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Controller(_)) {
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
        let quiet = matches!(cli.command, Command::Demo(_) | Command::Machine(_));
        let mut log = cli.log.clone();
        if quiet && log.log_level == "info" && std::env::var_os("RUST_LOG").is_none() {
            log.log_level = "warn".into();
        }
        telemetry::init(&log);
        let shutdown = shutdown::on_signal();
        let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
            Command::Serve(args) => cmi::server::run(args, shutdown).await.map_err(Into::into),
            Command::Sim(args) => sim::run(args, shutdown).await.map_err(Into::into),
            Command::Controller(args) => controller::run(*args, shutdown).await.map_err(Into::into),
            Command::Demo(args) => demo::run(args).await.map_err(Into::into),
            Command::Machine(args) => machine_cli::run(args).await.map_err(Into::into),
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
