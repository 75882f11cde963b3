//! The `metal-driver sim` flags, and the small value types they parse into.
//!
//! Every flag can also come from a `SIM_…` environment variable, so the simulator can be
//! configured in a container without a command line. Repeatable flags take a
//! space-separated list from the environment.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use uuid::Uuid;

use crate::secret::Secret;

/// The token accepted when no `--token` is given.
pub const DEFAULT_TOKEN: &str = "sim-token";
/// The project that exists when neither `--project` nor a project-scoped `--token` is given.
pub const DEFAULT_PROJECT: Uuid = Uuid::from_u128(0x5d1ef2a4_0000_4000_8000_000000000001);

/// Flags of the Metal API simulator.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free port; the real one is printed).
    #[arg(
        long,
        env = "SIM_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Accepted API token: `TOKEN` (all projects) or `TOKEN:UUID,UUID` (only those
    /// projects, which then exist). Repeatable. Default: `sim-token` for all projects.
    #[arg(long = "token", env = "SIM_TOKEN", value_name = "TOKEN[:UUID,...]", value_delimiter = ' ', value_parser = parse_token)]
    pub tokens: Vec<TokenSpec>,

    /// A project that exists (repeatable). Default: 5d1ef2a4-0000-4000-8000-000000000001
    /// when no project is named here or in a `--token`.
    #[arg(
        long = "project",
        env = "SIM_PROJECT",
        value_name = "UUID",
        value_delimiter = ' '
    )]
    pub projects: Vec<Uuid>,

    /// Seconds from create to `active` (20% `queued`, then `provisioning`); fractions ok.
    #[arg(long, env = "SIM_PROVISION_SECONDS", value_name = "SECONDS", default_value_t = 5.0, value_parser = parse_seconds)]
    pub provision_seconds: f64,

    /// Seconds a deleted device stays `deprovisioning` before it is gone (404).
    #[arg(long, env = "SIM_DEPROVISION_SECONDS", value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_seconds)]
    pub deprovision_seconds: f64,

    /// Seconds a power action spends in `powering_off` / `powering_on`.
    #[arg(long, env = "SIM_POWER_SECONDS", value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_seconds)]
    pub power_seconds: f64,

    /// Probability that a provisioning ends `failed` instead of `active`.
    #[arg(long, env = "SIM_FAIL_RATE", value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub fail_rate: f64,

    /// Probability that an API request is refused with 429 (with Retry-After and
    /// X-RateLimit-* headers) without being executed.
    #[arg(long = "fault-rate-429", env = "SIM_FAULT_RATE_429", value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_rate_429: f64,

    /// Probability that an API request fails with 500 or 503 without being executed.
    #[arg(long = "fault-rate-5xx", env = "SIM_FAULT_RATE_5XX", value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_rate_5xx: f64,

    /// Probability that an API request is executed (a create really creates) and then the
    /// connection is closed without any response: the lost-response case.
    #[arg(long = "fault-rate-drop", env = "SIM_FAULT_RATE_DROP", value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_rate_drop: f64,

    /// The Retry-After value (seconds) sent with injected 429 and 503 responses.
    #[arg(
        long,
        env = "SIM_RETRY_AFTER_SECONDS",
        value_name = "SECONDS",
        default_value_t = 1
    )]
    pub retry_after_seconds: u64,

    /// Milliseconds of latency added to every API request.
    #[arg(long, env = "SIM_LATENCY_MS", value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Requests per second allowed per token (token bucket, burst of the same size);
    /// beyond it, 429. Unlimited when unset.
    #[arg(long, env = "SIM_RATE_LIMIT", value_name = "PER_SECOND", value_parser = parse_positive)]
    pub rate_limit: Option<f64>,

    /// Largest page the server returns, whatever `per_page` asks for.
    #[arg(long, env = "SIM_PER_PAGE_MAX", value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub per_page_max: u32,

    /// On-demand capacity `METRO:PLAN=N` (repeatable); combinations not listed are
    /// unlimited. Devices on a hardware reservation do not count.
    #[arg(
        long = "capacity",
        env = "SIM_CAPACITY",
        value_name = "METRO:PLAN=N",
        value_delimiter = ' '
    )]
    pub capacity: Vec<CapacitySpec>,

    /// Hardware reservation `UUID=METRO:PLAN` (usable by every project) or
    /// `UUID=METRO:PLAN@PROJECT` (repeatable). Provisionable until a device uses it;
    /// free again once that device is gone.
    #[arg(
        long = "reservation",
        env = "SIM_RESERVATION",
        value_name = "UUID=METRO:PLAN[@PROJECT]",
        value_delimiter = ' '
    )]
    pub reservations: Vec<ReservationSpec>,

    /// Seed for the fault and failure random numbers, for reproducible runs.
    #[arg(long, env = "SIM_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// Node-join stand-in: with a kubeconfig path, a Ready `Node` named after the hostname
    /// (with `spec.providerID: equinixmetal://<uuid>`) is created in that cluster when a
    /// device becomes active, and deleted when the device goes (see `sim::nodes`).
    #[arg(long, env = "SIM_REGISTER_NODES_KUBECONFIG")]
    pub register_nodes_kubeconfig: Option<String>,
}

impl SimArgs {
    /// Defaults for tests: an ephemeral loopback port, instant provisioning, no faults.
    pub fn for_tests() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: Vec::new(),
            projects: Vec::new(),
            provision_seconds: 0.0,
            deprovision_seconds: 1.0,
            power_seconds: 1.0,
            fail_rate: 0.0,
            fault_rate_429: 0.0,
            fault_rate_5xx: 0.0,
            fault_rate_drop: 0.0,
            retry_after_seconds: 1,
            latency_ms: 0,
            rate_limit: None,
            per_page_max: 1000,
            capacity: Vec::new(),
            reservations: Vec::new(),
            seed: Some(0),
            register_nodes_kubeconfig: None,
        }
    }
}

/// One `--token`: the secret and, when scoped, the projects it may use.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// The token value (redacted in `Debug`).
    pub token: Secret<String>,
    /// `None`: every project.
    pub projects: Option<Vec<Uuid>>,
}

impl fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSpec")
            .field("token", &self.token)
            .field("projects", &self.projects)
            .finish()
    }
}

impl TokenSpec {
    /// A token with access to every project.
    pub fn all(token: impl Into<String>) -> Self {
        Self {
            token: Secret::new(token.into()),
            projects: None,
        }
    }

    /// A token limited to `projects`.
    pub fn scoped(token: impl Into<String>, projects: impl IntoIterator<Item = Uuid>) -> Self {
        Self {
            token: Secret::new(token.into()),
            projects: Some(projects.into_iter().collect()),
        }
    }
}

impl FromStr for TokenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_token(s)
    }
}

fn parse_token(s: &str) -> Result<TokenSpec, String> {
    // Error messages never echo the token.
    match s.split_once(':') {
        None if s.is_empty() => Err("empty token".into()),
        None => Ok(TokenSpec::all(s)),
        Some(("", _)) => Err("empty token before ':'".into()),
        Some((tok, list)) => {
            let projects = list
                .split(',')
                .map(|p| Uuid::parse_str(p.trim()).map_err(|_| format!("bad project UUID {p:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TokenSpec::scoped(tok, projects))
        }
    }
}

/// One `--capacity METRO:PLAN=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacitySpec {
    pub metro: String,
    pub plan: String,
    pub count: u64,
}

impl FromStr for CapacitySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (loc, n) = s.split_once('=').ok_or("expected METRO:PLAN=N")?;
        let (metro, plan) = loc.split_once(':').ok_or("expected METRO:PLAN=N")?;
        let count = n.trim().parse().map_err(|_| format!("bad count {n:?}"))?;
        let metro = super::catalog::metro_by_code_or_id(metro)
            .ok_or_else(|| format!("unknown metro {metro:?}"))?;
        let plan =
            super::catalog::plan_by_slug(plan).ok_or_else(|| format!("unknown plan {plan:?}"))?;
        Ok(Self {
            metro: metro.code.into(),
            plan: plan.slug.into(),
            count,
        })
    }
}

/// One `--reservation UUID=METRO:PLAN[@PROJECT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationSpec {
    pub id: Uuid,
    pub metro: String,
    pub plan: String,
    /// `None`: any project may use it.
    pub project: Option<Uuid>,
}

impl FromStr for ReservationSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err = || "expected UUID=METRO:PLAN[@PROJECT]".to_string();
        let (id, rest) = s.split_once('=').ok_or_else(err)?;
        let id = Uuid::parse_str(id).map_err(|_| format!("bad reservation UUID {id:?}"))?;
        let (loc, project) = match rest.split_once('@') {
            Some((loc, p)) => (
                loc,
                Some(Uuid::parse_str(p).map_err(|_| format!("bad project UUID {p:?}"))?),
            ),
            None => (rest, None),
        };
        let (metro, plan) = loc.split_once(':').ok_or_else(err)?;
        let metro = super::catalog::metro_by_code_or_id(metro)
            .ok_or_else(|| format!("unknown metro {metro:?}"))?;
        let plan =
            super::catalog::plan_by_slug(plan).ok_or_else(|| format!("unknown plan {plan:?}"))?;
        Ok(Self {
            id,
            metro: metro.code.into(),
            plan: plan.slug.into(),
            project,
        })
    }
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in [0, 1]"))
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if (0.0..1e9).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a duration in seconds"))
    }
}

fn parse_positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be > 0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn parses_all_flag_forms() {
        let p = "5d1ef2a4-0000-4000-8000-000000000002";
        let r = "5d1ef2a4-0000-4000-8000-0000000000aa";
        let cli = Cli::try_parse_from([
            "x",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "all",
            "--token",
            &format!("s3cr3t:{p}"),
            "--provision-seconds",
            "0.5",
            "--fail-rate",
            "0.25",
            "--capacity",
            "sv:c3.small.x86=2",
            "--reservation",
            &format!("{r}=da:m3.large.x86@{p}"),
            "--rate-limit",
            "10",
            "--seed",
            "7",
        ])
        .unwrap();
        let s = cli.sim;
        assert_eq!(s.tokens.len(), 2);
        assert_eq!(s.tokens[0].projects, None);
        assert_eq!(
            s.tokens[1].projects,
            Some(vec![Uuid::parse_str(p).unwrap()])
        );
        assert_eq!(s.provision_seconds, 0.5);
        assert_eq!(s.capacity[0].count, 2);
        assert_eq!(s.reservations[0].project, Some(Uuid::parse_str(p).unwrap()));
        assert_eq!(s.rate_limit, Some(10.0));
        assert_eq!(s.deprovision_seconds, 1.0);
        assert_eq!(s.per_page_max, 1000);
        assert!(
            !format!("{s:?}").contains("s3cr3t"),
            "tokens must not reach Debug"
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            vec!["x", "--fail-rate", "1.5"],
            vec!["x", "--capacity", "mars:c3.small.x86=1"],
            vec!["x", "--token", "t:not-a-uuid"],
            vec!["x", "--reservation", "nope=sv:c3.small.x86"],
            vec!["x", "--provision-seconds", "-1"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}
