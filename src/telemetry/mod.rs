//! Logs, metrics and the HTTP side port (`/healthz`, `/readyz`, `/metrics`).

pub mod admin;
pub mod mcm;
pub mod metrics;

pub use metrics::Metrics;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Logging flags shared by every subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter in `RUST_LOG` syntax (e.g. `info`, `metal_driver=debug`). RUST_LOG wins
    /// when set.
    #[arg(
        long,
        global = true,
        env = "METAL_DRIVER_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Log format.
    #[arg(long, global = true, env = "METAL_DRIVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global tracing subscriber. Logs go to stderr, so stdout carries only the
/// machine-readable lines (`listening on ...`) and command output.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.log_format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_ok() {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            pid = std::process::id(),
            "metal-driver starting"
        );
    }
}
