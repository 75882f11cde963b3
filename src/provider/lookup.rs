//! Finding a machine's device(s) and a class's devices (design §5).
//!
//! A machine's device carries the identity tag `machine.sapcloud.io/name:<machine>` (added
//! on create), hostname = machine name, and the class's cluster tag. A lookup is **one**
//! list call filtered server-side by hostname (the client follows every page), then checked
//! client-side, because a server-side filter is a hint (`hostname` is a partial match; a
//! simulator may ignore filters) and never proof.
//!
//! Devices created by the Go provider before the identity tag existed carry hostname and
//! cluster tag only; they are claimed too (design §5: "identity tag / hostname + cluster
//! tag"), so a migrated machine is adopted rather than duplicated. A device whose identity
//! tag names another machine is never claimed.

use uuid::Uuid;

use crate::metal::{Call, Device, DeviceApi, DeviceState, ListQuery};

use super::spec::IDENTITY_TAG_PREFIX;

/// The tag that ties a device to exactly one machine.
pub fn identity_tag(machine: &str) -> String {
    format!("{IDENTITY_TAG_PREFIX}{machine}")
}

/// Whether `device` stands for `machine` of the cluster that owns `cluster_tag`: hostname
/// and cluster tag match, and the identity tag names this machine or is absent (a device
/// from before identity tags). Going-away devices are included (the callers decide what
/// "already deleting" means for them).
pub fn claims_machine(device: &Device, machine: &str, cluster_tag: &str) -> bool {
    let identity_ok = device.has_tag(&identity_tag(machine))
        || !device
            .tags
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|t| t.starts_with(IDENTITY_TAG_PREFIX));
    device.id.is_some()
        && device.hostname.as_deref() == Some(machine)
        && identity_ok
        && device.has_tag(cluster_tag)
}

/// Whether the device belongs to `project`, judged by its `project_lite.href`
/// (`.../projects/<uuid>`). A device that does not say is given the benefit of the doubt:
/// a GET by id only returns devices the token may see anyway.
pub fn in_project(device: &Device, project: Uuid) -> bool {
    let Some(href) = device.project_lite.as_ref().map(|h| h.href.as_str()) else {
        return true;
    };
    match href
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .map(Uuid::try_parse)
    {
        Some(Ok(id)) => id == project,
        _ => true,
    }
}

/// True when the device is being torn down and no longer stands for a machine.
pub fn is_going_away(device: &Device) -> bool {
    device.state.is_some_and(DeviceState::is_going_away)
}

/// Every live (not deprovisioning/deleted) device claiming `machine` in `project`, in the
/// API's order. One list call (all pages inside the client).
pub async fn find_machine_devices<A: DeviceApi>(
    api: &A,
    call: &Call,
    project: Uuid,
    machine: &str,
    cluster_tag: &str,
) -> Result<Vec<Device>, crate::metal::Error> {
    let query = ListQuery {
        tag: Some(cluster_tag.to_owned()),
        hostname: Some(machine.to_owned()),
    };
    let devices = api.list_project_devices(call, project, &query).await?;
    Ok(devices
        .into_iter()
        .filter(|d| claims_machine(d, machine, cluster_tag) && !is_going_away(d))
        .collect())
}

/// `(id, hostname)` of every live device of a class that has a hostname: server-side
/// `tag = <cluster tag>`, then client-side every membership tag (cluster + roles) must be
/// present. One list call; each page is reduced to these pairs as it arrives, so a project
/// of 10,000 devices never sits in memory at once.
pub async fn find_class_devices<A: DeviceApi>(
    api: &A,
    call: &Call,
    project: Uuid,
    cluster_tag: &str,
    required_tags: &[&str],
) -> Result<Vec<(Uuid, String)>, crate::metal::Error> {
    let query = ListQuery {
        tag: Some(cluster_tag.to_string()),
        hostname: None,
    };
    api.list_project_devices_kept(call, project, &query, |d: Device| {
        if is_going_away(&d) || !required_tags.iter().all(|t| d.has_tag(t)) {
            return None;
        }
        Some((d.id?, d.hostname.filter(|h| !h.is_empty())?))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(host: &str, tags: &[&str], state: DeviceState) -> Device {
        Device {
            id: Some(Uuid::new_v4()),
            hostname: Some(host.into()),
            tags: Some(tags.iter().map(|t| t.to_string()).collect()),
            state: Some(state),
            ..Default::default()
        }
    }

    #[test]
    fn claims_needs_identity_hostname_and_cluster() {
        let c = "kubernetes.io/cluster/a";
        let id = identity_tag("m1");
        assert!(claims_machine(
            &device("m1", &[c, &id], DeviceState::Active),
            "m1",
            c
        ));
        assert!(!claims_machine(
            &device("m2", &[c, &id], DeviceState::Active),
            "m1",
            c
        ));
        assert!(!claims_machine(
            &device("m1", &[&id], DeviceState::Active),
            "m1",
            c
        ));
        assert!(
            claims_machine(&device("m1", &[c], DeviceState::Active), "m1", c),
            "a device from before identity tags (hostname + cluster tag) is adopted"
        );
        assert!(!claims_machine(
            &device("m1", &[c, &identity_tag("m10")], DeviceState::Active),
            "m1",
            c
        ));
        let mut no_id = device("m1", &[c, &id], DeviceState::Active);
        no_id.id = None;
        assert!(!claims_machine(&no_id, "m1", c));
        assert!(is_going_away(&device(
            "m1",
            &[],
            DeviceState::Deprovisioning
        )));
    }

    #[test]
    fn project_membership_from_href() {
        use crate::metal::Href;
        let p = Uuid::from_u128(7);
        let mut d = device("m1", &[], DeviceState::Active);
        assert!(in_project(&d, p), "no href: benefit of the doubt");
        d.project_lite = Some(Href {
            href: format!("/metal/v1/projects/{p}"),
        });
        assert!(in_project(&d, p));
        let other = Uuid::from_u128(8);
        d.project_lite = Some(Href {
            href: format!("/metal/v1/projects/{other}/"),
        });
        assert!(!in_project(&d, p));
        d.project_lite = Some(Href {
            href: "weird".into(),
        });
        assert!(in_project(&d, p));
    }
}
