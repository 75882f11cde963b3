//! Logs, metrics and the HTTP side port (`/healthz`, `/readyz`, `/metrics`).

pub mod admin;
pub mod gardener_json;
pub mod mcm;
pub mod metrics;
pub mod process;
pub mod workqueue;

pub use metrics::Metrics;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line in the shape Gardener's components write (`level`, `ts`,
    /// `logger`, `msg`, then the fields).
    Json,
}

/// Logging flags shared by every subcommand.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log filter in `RUST_LOG` syntax (e.g. `info`, `metal_driver=debug`). RUST_LOG wins
    /// when set; this wins over `--v`. Default: `info`.
    #[arg(long, global = true, env = "METAL_DRIVER_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Log format. Default: `json` for the one-process sidecar (as Gardener's components),
    /// `text` for the subcommands.
    #[arg(long, global = true, env = "METAL_DRIVER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// What [`init`] installs: a filter and a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `RUST_LOG` syntax.
    pub filter: String,
    pub format: LogFormat,
}

impl LogArgs {
    /// The configuration for a role whose format defaults to `default_format`, with klog's
    /// `--v` (when the role takes it) as the level unless `--log-level` is given.
    pub fn resolve(&self, default_format: LogFormat, verbosity: Option<u8>) -> LogConfig {
        LogConfig {
            filter: self
                .log_level
                .clone()
                .unwrap_or_else(|| verbosity.map_or("info", filter_for_verbosity).to_owned()),
            format: self.log_format.unwrap_or(default_format),
        }
    }

    /// For the roles that print for humans (`demo`, `machine`): warnings only unless asked.
    pub fn resolve_quiet(&self) -> LogConfig {
        LogConfig {
            filter: self.log_level.clone().unwrap_or_else(|| "warn".into()),
            format: self.log_format.unwrap_or_default(),
        }
    }
}

/// klog's `--v` as a log filter. Gardener's components have three levels (`error`, `info`,
/// `debug`; `gardener/gardener` `pkg/logger`) and run MCM and the provider sidecar with
/// `--v=3`, which in the Kubernetes logging conventions is still operator information
/// ("extended information about changes"), with `--v=4` the first debug level. So:
///
/// | `--v` | filter |
/// |---|---|
/// | 0–3 | `info` (Gardener's default, what its helper's `--v=3` asks for) |
/// | 4 | `info,metal_driver=debug` (Gardener's `debug`, for our code) |
/// | 5 | `info,metal_driver=trace` |
/// | 6 and more | `debug,metal_driver=trace` (klog's request-level detail, incl. the libraries) |
pub fn filter_for_verbosity(v: u8) -> &'static str {
    match v {
        0..=3 => "info",
        4 => "info,metal_driver=debug",
        5 => "info,metal_driver=trace",
        _ => "debug,metal_driver=trace",
    }
}

/// Installs the global tracing subscriber. Logs go to stderr, so stdout carries only the
/// machine-readable lines (`listening on ...`) and command output.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.format {
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
                    .fmt_fields(fmt::format::JsonFields::new())
                    .event_format(gardener_json::GardenerJson)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_gardeners_levels() {
        let args = LogArgs::default();
        let filter = |v| args.resolve(LogFormat::Json, v).filter;
        assert_eq!(filter(None), "info");
        assert_eq!(filter(Some(0)), "info");
        assert_eq!(filter(Some(3)), "info", "Gardener's helper passes --v=3");
        assert_eq!(filter(Some(4)), "info,metal_driver=debug");
        assert_eq!(filter(Some(5)), "info,metal_driver=trace");
        assert_eq!(filter(Some(9)), "debug,metal_driver=trace");
        for v in 0..=10 {
            EnvFilter::try_new(filter_for_verbosity(v)).expect("a valid filter");
        }
    }

    #[test]
    fn explicit_flags_win_over_defaults_and_verbosity() {
        let args = LogArgs {
            log_level: Some("warn".into()),
            log_format: Some(LogFormat::Text),
        };
        assert_eq!(
            args.resolve(LogFormat::Json, Some(5)),
            LogConfig {
                filter: "warn".into(),
                format: LogFormat::Text
            }
        );
        let defaults = LogArgs::default();
        assert_eq!(
            defaults.resolve(LogFormat::Json, None).format,
            LogFormat::Json
        );
        assert_eq!(defaults.resolve_quiet().filter, "warn");
    }
}
