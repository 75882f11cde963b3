//! Orphan-device collection (MCM's `machine_safety.go`): every
//! `--machine-safety-orphan-vms-period`, for each MachineClass, ask the driver which devices
//! carry the class's tags (ListMachines: providerID → machine name) and delete every device
//! whose Machine is gone, or whose Machine points at a different device.
//!
//! Device identity is compared by UUID (`equinixmetal://<uuid>`, legacy
//! `equinixmetal://<metro>/<uuid>`, `packet://<uuid>` and a bare UUID are the same device).
//! Machines in phase `""` or `CrashLoopBackOff` are being created — their device may exist
//! before `spec.providerID` is written — so their devices are never touched. The driver is
//! asked first and the Machines listed second, so a device created after the Machines were
//! read cannot be mistaken for an orphan. Errors are logged and the next period retries.

use std::collections::{BTreeMap, HashMap};

use kube::{Api, ResourceExt, core::DeserializeGuard};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cmi::v1::{DeleteMachineRequest, ListMachinesRequest};

use super::{
    context::Context,
    crd::{Machine, MachineClass},
    error::{Error, Result},
    secrets,
    status::phase,
};

/// What the collector knows about a Machine of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// A readable Machine.
    Machine {
        /// `spec.providerID` (may be empty).
        provider_id: String,
        /// `status.currentStatus.phase`.
        phase: String,
    },
    /// A Machine that exists but could not be read; its devices are left alone.
    Unreadable,
}

/// A device to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The device's providerID as the driver listed it.
    pub provider_id: String,
    /// The machine name the driver associates with it.
    pub machine_name: String,
}

/// The device UUID inside any accepted providerID form, if there is one.
pub fn device_uuid(provider_id: &str) -> Option<Uuid> {
    let rest = provider_id
        .split_once("://")
        .map_or(provider_id, |(_, r)| r);
    let last = rest.rsplit('/').next().unwrap_or(rest);
    Uuid::parse_str(last).ok()
}

/// Whether two providerIDs name the same device (by UUID; by exact text if either has none).
pub fn same_device(a: &str, b: &str) -> bool {
    match (device_uuid(a), device_uuid(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The devices in `listed` (providerID → machine name) that no Machine in `machines`
/// (name → what we know) accounts for.
pub fn find_orphans(
    listed: &HashMap<String, String>,
    machines: &BTreeMap<String, Known>,
) -> Vec<Orphan> {
    let mut out: Vec<Orphan> = listed
        .iter()
        .filter(
            |(provider_id, machine_name)| match machines.get(machine_name.as_str()) {
                None => true,
                Some(Known::Unreadable) => false,
                Some(Known::Machine { phase: p, .. })
                    if p.is_empty() || p == phase::CRASH_LOOP_BACK_OFF =>
                {
                    false
                }
                Some(Known::Machine {
                    provider_id: own, ..
                }) => !same_device(own, provider_id),
            },
        )
        .map(|(provider_id, machine_name)| Orphan {
            provider_id: provider_id.clone(),
            machine_name: machine_name.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.provider_id.cmp(&b.provider_id));
    out
}

/// Runs collection every `ctx.config.orphan_period` until `stop` is cancelled.
pub async fn run(ctx: std::sync::Arc<Context>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ctx.config.orphan_period) => {}
        }
        let started = std::time::Instant::now();
        match collect_once(&ctx).await {
            Ok(deleted) => tracing::info!(deleted, "orphan collection done"),
            Err(error) => {
                ctx.metrics
                    .controller
                    .failed("orphans", error.metric_label());
                tracing::warn!(%error, "orphan collection failed; retrying next period");
            }
        }
        ctx.metrics
            .controller
            .reconciled("orphans", started.elapsed());
    }
}

/// One pass over every MachineClass; returns how many devices were deleted.
pub async fn collect_once(ctx: &Context) -> Result<usize> {
    let ns = &ctx.config.namespace;
    let classes: Api<MachineClass> = Api::namespaced(ctx.client.clone(), ns);
    let machines: Api<DeserializeGuard<Machine>> = Api::namespaced(ctx.client.clone(), ns);
    let mut deleted = 0;
    for class in classes
        .list(&Default::default())
        .await
        .map_err(Error::kube("list MachineClasses"))?
    {
        let class_name = class.name_any();
        let secrets = secrets::load(&ctx.client, ns, &class).await?;
        let provider_spec = serde_json::to_vec(&class.provider_spec).unwrap_or_default();
        let request = ListMachinesRequest {
            provider_spec: provider_spec.clone(),
            secrets: secrets.to_cmi(),
        };
        let listed = match ctx
            .cmi
            .machine
            .clone()
            .list_machines(ctx.cmi.request(request))
            .await
        {
            Ok(resp) => resp.into_inner().machine_list,
            Err(status) => {
                let error = Error::cmi("ListMachines", &status);
                ctx.metrics
                    .controller
                    .failed("orphans", error.metric_label());
                tracing::warn!(class = %class_name, %error, "ListMachines failed; class skipped this period");
                continue;
            }
        };
        // Machines are read after the driver answered (see the module docs).
        let known: BTreeMap<String, Known> = machines
            .list(&Default::default())
            .await
            .map_err(Error::kube("list Machines"))?
            .into_iter()
            .map(|g| match g.0 {
                Ok(m) => (
                    m.name_any(),
                    Known::Machine {
                        provider_id: m.provider_id().unwrap_or_default().to_owned(),
                        phase: m.phase().to_owned(),
                    },
                ),
                Err(invalid) => (invalid.metadata.name.unwrap_or_default(), Known::Unreadable),
            })
            .collect();
        for orphan in find_orphans(&listed, &known) {
            let request = DeleteMachineRequest {
                machine_name: orphan.machine_name.clone(),
                provider_spec: provider_spec.clone(),
                secrets: secrets.to_cmi(),
                provider_id: orphan.provider_id.clone(),
                last_known_state: Vec::new(),
            };
            match ctx
                .cmi
                .machine
                .clone()
                .delete_machine(ctx.cmi.request(request))
                .await
            {
                Ok(_) => {
                    deleted += 1;
                    ctx.metrics.controller.orphan_deleted();
                    tracing::info!(class = %class_name, machine = %orphan.machine_name, provider_id = %orphan.provider_id, "deleted orphan device");
                }
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => {
                    let error = Error::cmi("DeleteMachine", &status);
                    ctx.metrics
                        .controller
                        .failed("orphans", error.metric_label());
                    tracing::warn!(machine = %orphan.machine_name, provider_id = %orphan.provider_id, %error, "deleting orphan device failed");
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    const B: &str = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";

    fn m(provider_id: &str, ph: &str) -> Known {
        Known::Machine {
            provider_id: provider_id.into(),
            phase: ph.into(),
        }
    }

    #[test]
    fn uuid_forms_compare_equal() {
        assert!(same_device(
            &format!("equinixmetal://{A}"),
            &format!("equinixmetal://da/{A}")
        ));
        assert!(same_device(&format!("packet://{A}"), A));
        assert!(same_device(
            &format!("equinixmetal://{A}"),
            &format!("equinixmetal://{}", A.to_uppercase())
        ));
        assert!(!same_device(
            &format!("equinixmetal://{A}"),
            &format!("equinixmetal://{B}")
        ));
        assert!(!same_device("", &format!("equinixmetal://{A}")));
    }

    #[test]
    fn decides_per_device() {
        let listed: HashMap<String, String> = [
            (format!("equinixmetal://{A}"), "kept".to_owned()),
            (format!("equinixmetal://{B}"), "gone".to_owned()),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000001".to_owned(),
                "replaced".to_owned(),
            ),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000002".to_owned(),
                "creating".to_owned(),
            ),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000003".to_owned(),
                "crashloop".to_owned(),
            ),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000004".to_owned(),
                "unreadable".to_owned(),
            ),
            (
                "equinixmetal://c0000000-0000-4000-8000-000000000005".to_owned(),
                "failed-no-id".to_owned(),
            ),
        ]
        .into_iter()
        .collect();
        let machines: BTreeMap<String, Known> = [
            (
                "kept".to_owned(),
                m(&format!("equinixmetal://da/{A}"), "Running"),
            ),
            (
                "replaced".to_owned(),
                m(&format!("equinixmetal://{B}"), "Pending"),
            ),
            ("creating".to_owned(), m("", "")),
            ("crashloop".to_owned(), m("", "CrashLoopBackOff")),
            ("unreadable".to_owned(), Known::Unreadable),
            ("failed-no-id".to_owned(), m("", "Failed")),
        ]
        .into_iter()
        .collect();
        let names: Vec<String> = find_orphans(&listed, &machines)
            .into_iter()
            .map(|o| o.machine_name)
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["failed-no-id", "gone", "replaced"]);
    }
}
