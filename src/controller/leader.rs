//! Leader election on a `coordination.k8s.io/v1` Lease (`machine-controller` in
//! `--namespace`, MCM's name), so two replicas never reconcile at once.
//!
//! Behaviour, kept close to client-go's `leaderelection`:
//! - **Acquire**: every `retry_period`, take the Lease if it is free (no holder) or expired
//!   (`renewTime + leaseDurationSeconds` in the past), or renew it if we hold it. Every write
//!   is a `replace` carrying the `resourceVersion` read, so of two contenders exactly one wins.
//! - **Renew**: while leading, renew every `retry_period`. If no renewal succeeds for
//!   `renew_deadline`, leadership is **lost**: [`Leadership::lost`] fires and the process
//!   must stop reconciling (the controller exits with an error, as client-go does).
//! - **Release**: on graceful shutdown the Lease is given up (holder cleared), so a
//!   successor takes over at once instead of after the lease duration.
//!
//! Expiry is judged from the `renewTime` in the Lease, i.e. it assumes clocks agree to well
//! within the lease duration (client-go instead times from when it observed a change).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::{
    error::{Error, Result, is_conflict},
    field_manager,
};

/// Lease timing (client-go's defaults: 15 s / 10 s / 2 s).
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's name (`machine-controller`).
    pub name: String,
    /// Where the Lease lives (`--namespace`).
    pub namespace: String,
    /// Our identity in `holderIdentity` (host name + random suffix).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

/// Held leadership; renews in the background until released or lost.
pub struct Leadership {
    /// Cancelled when leadership is lost (renewal failed past the deadline).
    pub lost: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// How long giving the Lease up may take at shutdown. Releasing only spares the successor
/// the wait for the Lease to expire; an API server that does not answer must not hold the
/// process.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

impl Leadership {
    /// Stops renewing and gives the Lease up (for at most [`RELEASE_TIMEOUT`]; after that the
    /// Lease is left to expire).
    pub async fn release(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(RELEASE_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!(timeout = ?RELEASE_TIMEOUT, "the leader lease was not released in time; it expires instead");
        }
    }
}

/// What a Lease attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease now.
    Leader,
    /// Someone else holds a valid Lease.
    Follower,
}

/// Whether `lease` may be taken by `identity` at `now`.
pub fn may_take(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed
        .0
        .checked_add(duration)
        .map_or(true, |expiry| expiry < now)
}

async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<Attempt> {
    let now = Timestamp::now();
    let secs = i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api
        .get_opt(&cfg.name)
        .await
        .map_err(Error::kube("get Lease"))?
    else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&field_manager::post(), &lease).await {
            Ok(_) => Ok(Attempt::Leader),
            Err(e) if is_conflict(&e) => Ok(Attempt::Follower),
            Err(e) => Err(Error::Kube {
                action: "create Lease",
                source: e,
            }),
        };
    };
    let mut spec = lease.spec.take().unwrap_or_default();
    if !may_take(&spec, &cfg.identity, now) {
        return Ok(Attempt::Follower);
    }
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    match api.replace(&cfg.name, &field_manager::post(), &lease).await {
        Ok(_) => Ok(Attempt::Leader),
        Err(e) if is_conflict(&e) => Ok(Attempt::Follower),
        Err(e) => Err(Error::Kube {
            action: "update Lease",
            source: e,
        }),
    }
}

async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let result = async {
        let Some(mut lease) = api.get_opt(&cfg.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        api.replace(&cfg.name, &field_manager::post(), &lease)
            .await
            .map(|_| ())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(lease = %cfg.name, "leader lease released"),
        Err(error) => {
            tracing::warn!(lease = %cfg.name, %error, "could not release the leader lease")
        }
    }
}

/// Waits until this replica leads (or `shutdown` fires: `Ok(None)`), then renews in the
/// background.
pub async fn acquire(
    client: Client,
    cfg: LeaseConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Leadership>> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut announced = false;
    loop {
        match try_acquire_or_renew(&api, &cfg).await {
            Ok(Attempt::Leader) => break,
            Ok(Attempt::Follower) if !announced => {
                tracing::info!(lease = %cfg.name, "another replica leads; waiting for the lease");
                announced = true;
            }
            Ok(Attempt::Follower) => {}
            Err(error) => tracing::warn!(%error, "leader election attempt failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
    let lost = CancellationToken::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn(renew_loop(api, cfg, lost.clone(), stop.clone()));
    Ok(Some(Leadership { lost, stop, task }))
}

async fn renew_loop(
    api: Api<Lease>,
    cfg: LeaseConfig,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut last_renew = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                release(&api, &cfg).await;
                return;
            }
            () = tokio::time::sleep(cfg.retry_period) => {}
        }
        match try_acquire_or_renew(&api, &cfg).await {
            Ok(Attempt::Leader) => last_renew = tokio::time::Instant::now(),
            Ok(Attempt::Follower) => {
                tracing::error!(lease = %cfg.name, "another replica took the lease");
                lost.cancel();
                return;
            }
            Err(error) => tracing::warn!(%error, "renewing the leader lease failed"),
        }
        if last_renew.elapsed() > cfg.renew_deadline {
            tracing::error!(lease = %cfg.name, "could not renew the leader lease within the renew deadline");
            lost.cancel();
            return;
        }
    }
}

/// `<host name>_<random>`: unique per process, recognisable per host (client-go style).
pub fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "metal-driver".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn lease_is_taken_only_when_free_ours_or_expired() {
        let now: Timestamp = "2026-01-01T00:00:20Z".parse().unwrap();
        assert!(may_take(&spec(None, "2026-01-01T00:00:19Z", 15), "me", now));
        assert!(may_take(
            &spec(Some(""), "2026-01-01T00:00:19Z", 15),
            "me",
            now
        ));
        assert!(may_take(
            &spec(Some("me"), "2026-01-01T00:00:19Z", 15),
            "me",
            now
        ));
        assert!(!may_take(
            &spec(Some("other"), "2026-01-01T00:00:10Z", 15),
            "me",
            now
        ));
        assert!(may_take(
            &spec(Some("other"), "2026-01-01T00:00:04Z", 15),
            "me",
            now
        ));
    }
}
