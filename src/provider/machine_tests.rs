//! Provider behaviour against the in-memory fake API (design §6).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;
use crate::metal::{Facility, Metro, OperatingSystem, Plan};
use crate::provider::fake::{FakeApi, Fault};

const PROJECT: &str = "5d1ef2a4-0000-4000-8000-000000000001";
const OTHER_PROJECT: &str = "5d1ef2a4-0000-4000-8000-000000000002";
const TOKEN: &str = "tok-SECRET-0123456789abcdef";
const USER_DATA: &str = "#cloud-config\nbootstrap: sekrit.0123456789abcdef-USERDATA\n";
const CLUSTER: &str = "kubernetes.io/cluster/shoot--dev--a";
const ROLE: &str = "kubernetes.io/role/node";
const MACHINE: &str = "shoot--dev--a-pool-z1-abc12";

fn project() -> Uuid {
    PROJECT.parse().unwrap()
}

fn spec() -> Value {
    json!({
        "projectID": PROJECT,
        "metro": "sv",
        "machineType": "c3.small.x86",
        "billingCycle": "hourly",
        "OS": "flatcar_stable",
        "tags": [CLUSTER, ROLE],
        "sshKeys": ["5d1ef2a4-0000-4000-8000-0000000000aa"],
    })
}

fn spec_with(key: &str, value: Value) -> Value {
    let mut s = spec();
    s[key] = value;
    s
}

fn secrets() -> HashMap<String, Vec<u8>> {
    [("apiToken", TOKEN), ("userData", USER_DATA)]
        .into_iter()
        .map(|(k, v)| (k.into(), v.as_bytes().to_vec()))
        .collect()
}

fn req_with(machine: &str, spec: &Value) -> MachineRequest {
    MachineRequest {
        machine_name: machine.into(),
        provider_spec: serde_json::to_vec(spec).unwrap(),
        secrets: secrets(),
        provider_id: String::new(),
        deadline: None,
    }
}

fn req() -> MachineRequest {
    req_with(MACHINE, &spec())
}

fn req_id(provider_id: impl Into<String>) -> MachineRequest {
    MachineRequest {
        provider_id: provider_id.into(),
        ..req()
    }
}

fn provider() -> Provider<FakeApi> {
    Provider::new(FakeApi::default(), ProviderConfig::default())
}

/// A device as our create would have made it.
fn our_device(machine: &str, state: DeviceState) -> Device {
    Device {
        hostname: Some(machine.into()),
        tags: Some(vec![CLUSTER.into(), ROLE.into(), identity_tag(machine)]),
        state: Some(state),
        plan: Some(Plan {
            slug: Some("c3.small.x86".into()),
            ..Default::default()
        }),
        metro: Some(Metro {
            code: Some("sv".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pid(id: Uuid) -> String {
    format!("equinixmetal://{id}")
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: Result<T, Error>, want_field: &str) {
    match r {
        Err(Error::InvalidField { field, .. }) => assert_eq!(field, want_field),
        other => panic!("expected InvalidField on {want_field}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- CreateMachine

#[tokio::test]
async fn create_sends_the_expected_body() {
    let p = provider();
    let info = p.create_machine(req()).await.unwrap();
    let s = p.api().state();
    assert_eq!(s.creates.len(), 1);
    let input = &s.creates[0];
    let (id, _) = s.devices.iter().next().unwrap();
    assert_eq!(
        info,
        MachineInfo {
            provider_id: pid(*id),
            node_name: MACHINE.into()
        }
    );
    assert_eq!(input.hostname.as_deref(), Some(MACHINE));
    assert_eq!(
        input.tags,
        vec![CLUSTER.to_string(), ROLE.into(), identity_tag(MACHINE)]
    );
    assert_eq!(input.userdata.as_ref().unwrap().expose(), USER_DATA);
    assert_eq!(
        input.project_ssh_keys,
        vec![
            "5d1ef2a4-0000-4000-8000-0000000000aa"
                .parse::<Uuid>()
                .unwrap()
        ]
    );
    let body = serde_json::to_value(input).unwrap();
    assert_eq!(body["metro"], "sv");
    assert_eq!(body["billing_cycle"], "hourly");
    for absent in [
        "facility",
        "hardware_reservation_id",
        "always_pxe",
        "locked",
        "no_ssh_keys",
        "customdata",
    ] {
        assert!(
            body.get(absent).is_none(),
            "{absent} must not be sent: {body}"
        );
    }
    assert_eq!(
        s.tokens.iter().filter(|t| *t == TOKEN).count(),
        s.tokens.len()
    );
}

#[tokio::test]
async fn create_with_facilities_and_ipxe() {
    let p = provider();
    let mut s = spec();
    s.as_object_mut().unwrap().remove("metro");
    s.as_object_mut().unwrap().remove("OS");
    s["facilities"] = json!(["sv15", "sv16"]);
    s["ipxeScriptUrl"] = json!("https://boot.example.com/x.ipxe");
    s["alwaysPXE"] = json!(true);
    s["locked"] = json!(true);
    s["customData"] = json!({"k": "v"});
    s["ipAddresses"] = json!([{"addressFamily": 4, "public": false}]);
    p.create_machine(req_with(MACHINE, &s)).await.unwrap();
    let body = serde_json::to_value(&p.api().state().creates[0]).unwrap();
    assert!(body.get("metro").is_none());
    assert_eq!(body["facility"], json!(["sv15", "sv16"]));
    assert_eq!(body["operating_system"], "custom_ipxe");
    assert_eq!(body["ipxe_script_url"], "https://boot.example.com/x.ipxe");
    assert_eq!(body["always_pxe"], true);
    assert_eq!(body["locked"], true);
    assert_eq!(body["customdata"], json!({"k": "v"}));
    assert_eq!(
        body["ip_addresses"],
        json!([{"address_family": 4, "public": false}])
    );
}

#[tokio::test]
async fn create_is_idempotent() {
    let p = provider();
    let first = p.create_machine(req()).await.unwrap();
    let second = p.create_machine(req()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(p.api().calls(Operation::CreateDevice), 1);
    assert_eq!(p.api().device_count(), 1);
}

#[tokio::test]
async fn create_validates_before_any_api_call() {
    let p = provider();
    for bad in ["", "Upper", "a_b", "-a", "a-", &"a".repeat(64), "a.b"] {
        assert_invalid(
            p.create_machine(req_with(bad, &spec())).await,
            "machineName",
        );
    }
    let mut r = req();
    r.secrets.remove("userData");
    assert_invalid(p.create_machine(r).await, "secrets.userData");
    let mut r = req();
    r.secrets.remove("apiToken");
    assert_invalid(p.create_machine(r).await, "secrets.apiToken");
    let mut s = spec();
    s.as_object_mut().unwrap().remove("projectID");
    assert_invalid(
        p.create_machine(req_with(MACHINE, &s)).await,
        "providerSpec.projectID",
    );
    assert_invalid(
        p.create_machine(req_with(
            MACHINE,
            &spec_with("billingCycle", json!("weekly")),
        ))
        .await,
        "providerSpec.billingCycle",
    );
    let mut r = req();
    r.provider_spec = b"[]".to_vec();
    assert_invalid(p.create_machine(r).await, "providerSpec");
    assert_eq!(p.api().total_calls(), 0);
}

#[tokio::test]
async fn project_id_may_come_from_the_secret() {
    let p = provider();
    let mut s = spec();
    s.as_object_mut().unwrap().remove("projectID");
    let mut r = req_with(MACHINE, &s);
    r.secrets
        .insert("projectID".into(), OTHER_PROJECT.as_bytes().to_vec());
    p.create_machine(r).await.unwrap();
    let st = p.api().state();
    assert_eq!(
        st.devices.values().next().unwrap().0,
        OTHER_PROJECT.parse::<Uuid>().unwrap()
    );
}

#[tokio::test]
async fn alternate_api_token_is_really_used() {
    let p = provider();
    p.api().state().valid_token = Some("alt-token-xyz".into());
    let mut r = req();
    r.secrets.remove("apiToken");
    r.secrets
        .insert("alternateApiToken".into(), b"alt-token-xyz\n".to_vec());
    p.create_machine(r).await.unwrap();
    assert!(p.api().state().tokens.iter().all(|t| t == "alt-token-xyz"));
}

#[tokio::test]
async fn lost_response_after_commit_gives_exactly_one_device() {
    let p = provider();
    p.api()
        .fail_next(Operation::CreateDevice, Fault::LostAfterCommit);
    let info = p.create_machine(req()).await.unwrap();
    assert_eq!(p.api().device_count(), 1);
    assert_eq!(p.api().calls(Operation::CreateDevice), 1);
    assert_eq!(
        p.api().calls(Operation::FindProjectDevices),
        2,
        "lookup first, then again after the lost response"
    );
    let id = *p.api().state().devices.keys().next().unwrap();
    assert_eq!(info.provider_id, pid(id));
}

#[tokio::test]
async fn ambiguous_failure_without_commit_is_retried_after_a_lookup() {
    let p = provider();
    p.api().fail_next(
        Operation::CreateDevice,
        Fault::Status(502, "bad gateway".into()),
    );
    p.create_machine(req()).await.unwrap();
    assert_eq!(p.api().calls(Operation::CreateDevice), 2);
    assert_eq!(p.api().calls(Operation::FindProjectDevices), 2);
    assert_eq!(p.api().device_count(), 1);
}

#[tokio::test]
async fn ambiguous_failures_are_bounded() {
    let p = provider();
    for _ in 0..5 {
        p.api().fail_next(
            Operation::CreateDevice,
            Fault::Transport("connection refused".into()),
        );
    }
    let err = p.create_machine(req()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::UpstreamUnavailable(metal::Error::Transport { .. })
        ),
        "{err:?}"
    );
    assert_eq!(p.api().calls(Operation::CreateDevice), 3);
    assert_eq!(p.api().device_count(), 0);
}

#[tokio::test]
async fn failed_lookup_after_ambiguous_create_never_creates_again() {
    let p = provider();
    p.api()
        .fail_next(Operation::FindProjectDevices, Fault::Pass);
    p.api().fail_next(
        Operation::FindProjectDevices,
        Fault::Status(503, "down".into()),
    );
    p.api()
        .fail_next(Operation::CreateDevice, Fault::LostAfterCommit);
    let err = p.create_machine(req()).await.unwrap_err();
    assert_eq!(err_status(&err), Some(503), "{err:?}");
    assert_eq!(p.api().calls(Operation::CreateDevice), 1);
    // The retry by the client finds the committed device.
    p.create_machine(req()).await.unwrap();
    assert_eq!(p.api().calls(Operation::CreateDevice), 1);
    assert_eq!(p.api().device_count(), 1);
}

#[tokio::test]
async fn reservations_in_order_then_on_demand_without_reservation_id() {
    let p = provider();
    let r1 = "5d1ef2a4-0000-4000-8000-0000000000b1".to_string();
    let r2 = "next-available";
    p.api().no_capacity_for(Some(&r1));
    p.api().no_capacity_for(Some(r2));
    p.create_machine(req_with(
        MACHINE,
        &spec_with("reservationIDs", json!([r1, r2])),
    ))
    .await
    .unwrap();
    let s = p.api().state();
    let sent: Vec<Option<String>> = s
        .creates
        .iter()
        .map(|c| c.hardware_reservation_id.clone())
        .collect();
    assert_eq!(sent, vec![Some(r1.clone()), Some(r2.to_string()), None]);
    let last = serde_json::to_value(s.creates.last().unwrap()).unwrap();
    assert!(last.get("hardware_reservation_id").is_none(), "{last}");
    assert_eq!(s.devices.len(), 1);
}

#[tokio::test]
async fn first_available_reservation_wins() {
    let p = provider();
    let r1 = "5d1ef2a4-0000-4000-8000-0000000000b1";
    let r2 = "5d1ef2a4-0000-4000-8000-0000000000b2";
    p.api().no_capacity_for(Some(r1));
    p.create_machine(req_with(
        MACHINE,
        &spec_with("reservationIDs", json!([r1, r2])),
    ))
    .await
    .unwrap();
    let sent: Vec<_> = p
        .api()
        .state()
        .creates
        .iter()
        .map(|c| c.hardware_reservation_id.clone())
        .collect();
    assert_eq!(sent, vec![Some(r1.to_string()), Some(r2.to_string())]);
}

#[tokio::test]
async fn reserved_devices_only_is_resource_exhausted() {
    let p = provider();
    let r1 = "5d1ef2a4-0000-4000-8000-0000000000b1";
    p.api().no_capacity_for(Some(r1));
    let mut s = spec_with("reservationIDs", json!([r1, "next-available"]));
    s["reservedDevicesOnly"] = json!(true);
    p.api().no_capacity_for(Some("next-available"));
    let err = p.create_machine(req_with(MACHINE, &s)).await.unwrap_err();
    match &err {
        Error::NoCapacity {
            refusals,
            reserved_only: true,
            ..
        } => {
            assert_eq!(refusals.len(), 2, "{refusals:?}");
            assert!(refusals[0].contains(r1), "{refusals:?}");
            assert!(err.to_string().contains("reservedDevicesOnly"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    let st = p.api().state();
    assert_eq!(st.creates.len(), 2);
    assert!(
        st.creates
            .iter()
            .all(|c| c.hardware_reservation_id.is_some())
    );
}

#[tokio::test]
async fn on_demand_without_capacity_is_resource_exhausted() {
    let p = provider();
    p.api().no_capacity_for(None);
    assert!(matches!(
        p.create_machine(req()).await,
        Err(Error::NoCapacity {
            reserved_only: false,
            ..
        })
    ));
}

#[tokio::test]
async fn other_422_passes_through_without_fallback() {
    let p = provider();
    let r1 = "5d1ef2a4-0000-4000-8000-0000000000b1";
    p.api().fail_next(
        Operation::CreateDevice,
        Fault::Status(422, "Plan c3.small.x86 is not valid".into()),
    );
    let err = p
        .create_machine(req_with(MACHINE, &spec_with("reservationIDs", json!([r1]))))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RequestRejected(ref e) if e.status() == Some(422)),
        "{err:?}"
    );
    assert_eq!(p.api().calls(Operation::CreateDevice), 1);
}

#[test]
fn capacity_classification() {
    let e = |status, msg: &str| metal::Error::Status {
        endpoint: Operation::CreateDevice,
        status,
        message: msg.into(),
        retry_after: None,
    };
    for msg in [
        "No provisionable reservation",
        "reservation is not provisionable",
        "No available hardware reservations found",
        "not enough Capacity in sv",
    ] {
        assert!(is_out_of_capacity(&e(422, msg)), "{msg}");
    }
    assert!(!is_out_of_capacity(&e(422, "plan not found")));
    assert!(!is_out_of_capacity(&e(503, "capacity")));
    assert!(!is_out_of_capacity(&metal::Error::Transport {
        endpoint: Operation::CreateDevice,
        reason: "capacity".into()
    }));
}

#[tokio::test]
async fn failed_device_is_replaced() {
    let p = provider();
    let failed = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Failed));
    let info = p.create_machine(req()).await.unwrap();
    assert_ne!(info.provider_id, pid(failed));
    assert!(p.api().device(failed).is_none());
    assert_eq!(p.api().state().deletes, vec![failed]);
    assert_eq!(p.api().device_count(), 1);
}

#[tokio::test]
async fn existing_device_states_are_adopted() {
    for state in [
        DeviceState::Queued,
        DeviceState::Provisioning,
        DeviceState::Active,
        DeviceState::Inactive,
    ] {
        let p = provider();
        let id = p.api().insert(project(), our_device(MACHINE, state));
        assert_eq!(p.create_machine(req()).await.unwrap().provider_id, pid(id));
        assert_eq!(p.api().calls(Operation::CreateDevice), 0);
    }
}

#[tokio::test]
async fn deprovisioning_device_is_ignored_by_create() {
    let p = provider();
    p.api()
        .insert(project(), our_device(MACHINE, DeviceState::Deprovisioning));
    p.create_machine(req()).await.unwrap();
    assert_eq!(p.api().calls(Operation::CreateDevice), 1);
}

#[tokio::test]
async fn incompatible_device_is_already_exists() {
    let p = provider();
    let mut d = our_device(MACHINE, DeviceState::Active);
    d.plan = Some(Plan {
        slug: Some("m3.large.x86".into()),
        ..Default::default()
    });
    d.metro = Some(Metro {
        code: Some("da".into()),
        ..Default::default()
    });
    p.api().insert(project(), d);
    match p.create_machine(req()).await {
        Err(Error::DeviceMismatch { differences, .. }) => {
            assert_eq!(differences.len(), 2, "{differences:?}");
            assert!(
                differences[0].starts_with("plan m3.large.x86"),
                "{differences:?}"
            );
            assert!(differences[1].starts_with("metro da"), "{differences:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.api().calls(Operation::CreateDevice), 0);
}

#[test]
fn compatibility_rules() {
    let decode = |v: Value| ProviderSpec::decode(&serde_json::to_vec(&v).unwrap()).unwrap();
    let mut d = our_device(MACHINE, DeviceState::Active);
    assert!(incompatibilities(&d, &decode(spec_with("metro", json!("SV")))).is_empty());
    assert!(incompatibilities(&d, &decode(spec_with("metro", json!("any")))).is_empty());
    let mut fac = spec();
    fac.as_object_mut().unwrap().remove("metro");
    fac["facilities"] = json!(["sv15", "sv16"]);
    d.facility = Some(Facility {
        code: Some("sv16".into()),
        ..Default::default()
    });
    assert!(incompatibilities(&d, &decode(fac.clone())).is_empty());
    d.facility = Some(Facility {
        code: Some("da11".into()),
        ..Default::default()
    });
    assert_eq!(incompatibilities(&d, &decode(fac)).len(), 1);
    // OS is not compared: an in-place reinstall must not strand the machine.
    d.operating_system = Some(OperatingSystem {
        slug: Some("ubuntu_22_04".into()),
        ..Default::default()
    });
    assert!(incompatibilities(&d, &decode(spec())).is_empty());
    // Unknown facts count as equal.
    let bare = Device {
        id: Some(Uuid::new_v4()),
        ..Default::default()
    };
    assert!(incompatibilities(&bare, &decode(spec())).is_empty());
}

#[tokio::test]
async fn several_devices_are_multiple_devices() {
    let p = provider();
    p.api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.api()
        .insert(project(), our_device(MACHINE, DeviceState::Provisioning));
    let err = p.create_machine(req()).await.unwrap_err();
    assert!(
        matches!(err, Error::MultipleDevices { ref devices, .. } if devices.len() == 2),
        "{err:?}"
    );
    assert!(matches!(
        p.get_machine_status(req()).await,
        Err(Error::MultipleDevices { ref devices, .. }) if devices.len() == 2
    ));
    assert_eq!(p.api().calls(Operation::CreateDevice), 0);
}

#[tokio::test]
async fn concurrent_create_on_same_machine_is_aborted() {
    let p = provider();
    p.api().gate_creates();
    let a = p.create_machine(req());
    let b = async {
        p.api().create_entered.notified().await;
        let r = p.create_machine(req()).await;
        // Another machine is not blocked (its lookup runs; its create would be gated).
        let other = p
            .get_machine_status(req_with("other-machine", &spec()))
            .await;
        p.api().create_release.notify_one();
        (r, other)
    };
    let (ra, (rb, other)) = tokio::join!(a, b);
    assert!(ra.is_ok());
    assert!(
        matches!(rb, Err(Error::MachineBusy { ref machine }) if machine == MACHINE),
        "{rb:?}"
    );
    assert!(matches!(other, Err(Error::NoDeviceForMachine { .. })));
    assert_eq!(p.api().device_count(), 1);
    // The guard is released: a later call succeeds.
    p.create_machine(req()).await.unwrap();
}

#[tokio::test]
async fn deadline_passed_before_create() {
    let p = provider();
    let mut r = req();
    r.deadline = Some(Instant::now());
    assert!(matches!(
        p.create_machine(r).await,
        Err(Error::DeadlinePassed { .. })
    ));
    assert_eq!(p.api().calls(Operation::CreateDevice), 0);
}

#[tokio::test]
async fn api_errors_are_scrubbed_of_secrets() {
    let p = provider();
    let line = USER_DATA.lines().nth(1).unwrap();
    p.api().fail_next(
        Operation::CreateDevice,
        Fault::Status(422, format!("bad userdata `{line}` for token {TOKEN}")),
    );
    let err = p.create_machine(req()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        !text.contains("SECRET") && !text.contains("USERDATA"),
        "{text}"
    );
    assert!(text.contains("<redacted>"), "{text}");
    assert_eq!(err_status(&err), Some(422));

    // Whole userData echoed in a transport reason, and a capacity message.
    let p = provider();
    p.api().fail_next(
        Operation::FindDeviceById,
        Fault::Transport(format!("proxy said: {USER_DATA}")),
    );
    let text = p
        .get_machine_status(req_id(pid(Uuid::new_v4())))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !text.contains("USERDATA") && !text.contains("sekrit"),
        "{text}"
    );

    let p = provider();
    p.api().fail_next(
        Operation::CreateDevice,
        Fault::Status(422, format!("no capacity for {TOKEN}")),
    );
    let text = p.create_machine(req()).await.unwrap_err().to_string();
    assert!(!text.contains("SECRET"), "{text}");
}

/// The HTTP status of the API error an error passes on.
fn err_status(e: &Error) -> Option<u16> {
    e.api_error().and_then(metal::Error::status)
}

// ---------------------------------------------------------------- GetMachineStatus

#[tokio::test]
async fn status_by_provider_id() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    for form in [
        pid(id),
        format!("equinixmetal://sv/{id}"),
        format!("packet://{id}"),
        id.to_string(),
    ] {
        let info = p.get_machine_status(req_id(form)).await.unwrap();
        assert_eq!(
            info,
            MachineInfo {
                provider_id: pid(id),
                node_name: MACHINE.into()
            }
        );
    }
    assert_eq!(p.api().calls(Operation::FindDeviceById), 4);
    assert_eq!(p.api().calls(Operation::FindProjectDevices), 0);
    assert_invalid(
        p.get_machine_status(req_id("aws:///i-1")).await,
        "providerID",
    );
}

#[tokio::test]
async fn status_not_found_cases() {
    let p = provider();
    let unknown = Uuid::new_v4();
    assert!(matches!(
        p.get_machine_status(req_id(pid(unknown))).await,
        Err(Error::DeviceNotFound { device }) if device == unknown
    ));

    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.api().fail_next(
        Operation::FindDeviceById,
        Fault::Status(403, "You are not authorized to view this device".into()),
    );
    assert!(matches!(
        p.get_machine_status(req_id(pid(id))).await,
        Err(Error::DeviceNotFound { .. })
    ));

    let gone = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Deprovisioning));
    assert!(matches!(
        p.get_machine_status(req_id(pid(gone))).await,
        Err(Error::DeviceDeprovisioning { device }) if device == gone
    ));
}

/// A device that exists but is another cluster's (or another project's) is refused alike by
/// every call that names it: never "not found", never touched.
#[tokio::test]
async fn devices_of_other_clusters_are_refused_by_every_call() {
    let p = provider();
    let mut foreign = our_device(MACHINE, DeviceState::Active);
    foreign.tags = Some(vec!["kubernetes.io/cluster/other".into(), ROLE.into()]);
    let fid = p.api().insert(project(), foreign);
    let mut elsewhere = our_device(MACHINE, DeviceState::Active);
    elsewhere.project_lite = Some(crate::metal::Href {
        href: format!("/metal/v1/projects/{OTHER_PROJECT}"),
    });
    let eid = p.api().insert(project(), elsewhere);

    for (id, want) in [
        (
            fid,
            Foreign::MissingClusterTag {
                tag: CLUSTER.into(),
            },
        ),
        (eid, Foreign::OtherProject { project: project() }),
    ] {
        let results = [
            p.get_machine_status(req_id(pid(id))).await.map(drop),
            p.delete_machine(req_id(pid(id))).await,
            p.shutdown_machine(req_id(pid(id))).await,
        ];
        for result in results {
            match result {
                Err(Error::DeviceNotInCluster { device, why }) => {
                    assert_eq!((device, &why), (id, &want));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            p.api().device(id).map(|d| d.state),
            Some(Some(DeviceState::Active))
        );
    }
    assert_eq!(p.api().calls(Operation::DeleteDevice), 0);
    assert_eq!(p.api().calls(Operation::PerformAction), 0);
}

#[tokio::test]
async fn status_keeps_api_error_codes() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    for code in [401, 429, 500, 503] {
        p.api().fail_next(
            Operation::FindDeviceById,
            Fault::Status(code, "nope".into()),
        );
        let err = p.get_machine_status(req_id(pid(id))).await.unwrap_err();
        assert_eq!(err_status(&err), Some(code), "{err:?}");
    }
    p.api().fail_next(
        Operation::FindProjectDevices,
        Fault::Status(401, "Invalid authentication token".into()),
    );
    assert_eq!(
        err_status(&p.get_machine_status(req()).await.unwrap_err()),
        Some(401)
    );
}

#[tokio::test]
async fn status_by_lookup() {
    let p = provider();
    assert!(matches!(
        p.get_machine_status(req()).await,
        Err(Error::NoDeviceForMachine { .. })
    ));

    // Ours in another cluster, ours in another project, and a device whose identity tag
    // names another machine: none of them is this machine.
    let mut other_cluster = our_device(MACHINE, DeviceState::Active);
    other_cluster.tags = Some(vec![
        "kubernetes.io/cluster/other".into(),
        identity_tag(MACHINE),
    ]);
    p.api().insert(project(), other_cluster);
    p.api().insert(
        OTHER_PROJECT.parse().unwrap(),
        our_device(MACHINE, DeviceState::Active),
    );
    let mut renamed = our_device(MACHINE, DeviceState::Active);
    renamed.tags = Some(vec![
        CLUSTER.into(),
        ROLE.into(),
        identity_tag("someone-else"),
    ]);
    p.api().insert(project(), renamed);
    assert!(matches!(
        p.get_machine_status(req()).await,
        Err(Error::NoDeviceForMachine { .. })
    ));

    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Provisioning));
    assert_eq!(
        p.get_machine_status(req()).await.unwrap().provider_id,
        pid(id)
    );
    // One list call, filtered server-side by the cluster tag and the hostname.
    let q = p.api().state().list_queries.last().cloned().unwrap();
    assert_eq!(q.tag.as_deref(), Some(CLUSTER));
    assert_eq!(q.hostname.as_deref(), Some(MACHINE));
}

#[tokio::test]
async fn device_from_before_identity_tags_is_adopted_not_duplicated() {
    let p = provider();
    // What the Go provider created: hostname and cluster/role tags, no identity tag.
    let mut legacy = our_device(MACHINE, DeviceState::Active);
    legacy.tags = Some(vec![CLUSTER.into(), ROLE.into()]);
    let id = p.api().insert(project(), legacy);
    assert_eq!(
        p.get_machine_status(req()).await.unwrap().provider_id,
        pid(id)
    );
    let created = p.create_machine(req()).await.unwrap();
    assert_eq!(created.provider_id, pid(id));
    assert_eq!(
        p.api().calls(Operation::CreateDevice),
        0,
        "no second device"
    );
}

#[tokio::test]
async fn status_does_not_need_user_data() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    let mut r = req_id(pid(id));
    r.secrets.remove("userData");
    p.get_machine_status(r).await.unwrap();
}

// ---------------------------------------------------------------- DeleteMachine

#[tokio::test]
async fn delete_by_provider_id_is_idempotent() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    let mut r = req_id(pid(id));
    r.secrets.remove("userData");
    p.delete_machine(r.clone()).await.unwrap();
    assert!(p.api().device(id).is_none());
    p.delete_machine(r.clone()).await.unwrap();
    assert_eq!(p.api().calls(Operation::DeleteDevice), 1);
    // 403 on the GET counts as gone.
    p.api().fail_next(
        Operation::FindDeviceById,
        Fault::Status(403, "forbidden".into()),
    );
    p.delete_machine(r).await.unwrap();
}

#[tokio::test]
async fn delete_tolerates_create_never_having_run() {
    let p = provider();
    p.delete_machine(req()).await.unwrap();
    assert_eq!(p.api().calls(Operation::DeleteDevice), 0);
}

#[tokio::test]
async fn delete_by_lookup_removes_every_claiming_device() {
    let p = provider();
    let a = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    let b = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Failed));
    let other = p
        .api()
        .insert(project(), our_device("other-machine", DeviceState::Active));
    p.delete_machine(req()).await.unwrap();
    assert!(p.api().device(a).is_none() && p.api().device(b).is_none());
    assert!(p.api().device(other).is_some());
}

#[tokio::test]
async fn delete_of_deprovisioning_or_vanishing_device_is_ok() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Deprovisioning));
    p.delete_machine(req_id(pid(id))).await.unwrap();
    assert_eq!(p.api().calls(Operation::DeleteDevice), 0);

    let id = p
        .api()
        .insert(project(), our_device("m2", DeviceState::Active));
    p.api().fail_next(
        Operation::DeleteDevice,
        Fault::Status(404, "Not found".into()),
    );
    p.delete_machine(MachineRequest {
        machine_name: "m2".into(),
        ..req_id(pid(id))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn locked_device_needs_unlock_on_delete() {
    let p = provider();
    let mut d = our_device(MACHINE, DeviceState::Active);
    d.locked = Some(true);
    let id = p.api().insert(project(), d);
    match p.delete_machine(req_id(pid(id))).await {
        Err(Error::DeviceLocked { device }) => assert_eq!(device, id),
        other => panic!("{other:?}"),
    }
    assert!(p.api().device(id).is_some());
    assert_eq!(p.api().calls(Operation::DeleteDevice), 0);

    let r = MachineRequest {
        provider_spec: serde_json::to_vec(&spec_with("unlockOnDelete", json!(true))).unwrap(),
        ..req_id(pid(id))
    };
    p.delete_machine(r).await.unwrap();
    assert!(p.api().device(id).is_none());
    let s = p.api().state();
    assert_eq!(s.updates.len(), 1);
    assert_eq!(s.updates[0].1.locked, Some(false));
}

#[tokio::test]
async fn stale_lock_view_is_handled() {
    // The list said unlocked, the DELETE says locked: unlock (allowed) and delete again.
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.api().fail_next(
        Operation::DeleteDevice,
        Fault::Status(422, "Cannot delete a locked device".into()),
    );
    let r = MachineRequest {
        provider_spec: serde_json::to_vec(&spec_with("unlockOnDelete", json!(true))).unwrap(),
        ..req()
    };
    p.delete_machine(r).await.unwrap();
    assert!(p.api().device(id).is_none());
    // Not allowed: the device stays locked.
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.api().fail_next(
        Operation::DeleteDevice,
        Fault::Status(422, "Cannot delete a locked device".into()),
    );
    assert!(matches!(
        p.delete_machine(req()).await,
        Err(Error::DeviceLocked { device }) if device == id
    ));
    assert!(p.api().device(id).is_some());
}

#[tokio::test]
async fn delete_passes_other_errors_through() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.api().fail_next(
        Operation::DeleteDevice,
        Fault::Status(503, "unavailable".into()),
    );
    assert_eq!(
        err_status(&p.delete_machine(req_id(pid(id))).await.unwrap_err()),
        Some(503)
    );
    p.api().fail_next(
        Operation::FindDeviceById,
        Fault::Status(401, "bad token".into()),
    );
    assert_eq!(
        err_status(&p.delete_machine(req_id(pid(id))).await.unwrap_err()),
        Some(401)
    );
}

// ---------------------------------------------------------------- ShutDownMachine

#[tokio::test]
async fn shutdown_powers_off_once() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.shutdown_machine(req_id(pid(id))).await.unwrap();
    assert_eq!(
        p.api().device(id).unwrap().state,
        Some(DeviceState::Inactive)
    );
    {
        let s = p.api().state();
        assert_eq!(s.actions.len(), 1);
        assert_eq!(
            serde_json::to_value(&s.actions[0].1).unwrap(),
            json!({"type": "power_off"})
        );
    }
    // Already off: nothing to do.
    p.shutdown_machine(req_id(pid(id))).await.unwrap();
    p.shutdown_machine(req()).await.unwrap();
    assert_eq!(p.api().calls(Operation::PerformAction), 1);
}

#[tokio::test]
async fn shutdown_while_provisioning_is_failed_precondition_and_failed_is_ok() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Provisioning));
    let err = p.shutdown_machine(req_id(pid(id))).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::DeviceNotReady {
                state: DeviceState::Provisioning,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        p.api().calls(Operation::PerformAction),
        0,
        "no action the API would refuse"
    );

    let failed = p
        .api()
        .insert(project(), our_device("other-machine", DeviceState::Failed));
    let mut r = req_id(pid(failed));
    r.machine_name = "other-machine".into();
    p.shutdown_machine(r)
        .await
        .expect("nothing runs on a failed device");
    assert_eq!(p.api().calls(Operation::PerformAction), 0);
}

/// The API refusing a power-off (422) is a device fact, not a malformed request; its text
/// is kept, scrubbed of secrets.
#[tokio::test]
async fn a_refused_power_off_names_the_device() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.api().fail_next(
        Operation::PerformAction,
        Fault::Status(422, format!("Device is busy ({TOKEN})")),
    );
    let err = p.shutdown_machine(req_id(pid(id))).await.unwrap_err();
    match &err {
        Error::PowerOffRefused { device, source } => {
            assert_eq!(*device, id);
            assert_eq!(source.status(), Some(422));
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.to_string().contains(TOKEN), "{err}");
}

#[tokio::test]
async fn shutdown_of_missing_machine_is_ok() {
    let p = provider();
    p.shutdown_machine(req()).await.unwrap();
    p.shutdown_machine(req_id(pid(Uuid::new_v4())))
        .await
        .unwrap();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.api()
        .fail_next(Operation::PerformAction, Fault::Status(404, "gone".into()));
    p.shutdown_machine(req_id(pid(id))).await.unwrap();
    assert_eq!(p.api().calls(Operation::PerformAction), 1);
}

#[tokio::test]
async fn shutdown_by_lookup() {
    let p = provider();
    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    p.shutdown_machine(req()).await.unwrap();
    assert_eq!(
        p.api().device(id).unwrap().state,
        Some(DeviceState::Inactive)
    );
}

// ---------------------------------------------------------------- ListMachines

fn list_req(spec: &Value) -> ListRequest {
    ListRequest {
        provider_spec: serde_json::to_vec(spec).unwrap(),
        secrets: secrets(),
        deadline: None,
    }
}

#[tokio::test]
async fn list_filters_and_maps() {
    let p = provider();
    let ours = p
        .api()
        .insert(project(), our_device("m1", DeviceState::Active));
    let failed = p
        .api()
        .insert(project(), our_device("m2", DeviceState::Failed));
    p.api()
        .insert(project(), our_device("m3", DeviceState::Deprovisioning));
    let mut other_tool = our_device("made-by-terraform", DeviceState::Provisioning);
    other_tool.tags = Some(vec![ROLE.into(), CLUSTER.into()]);
    let other_tool = p.api().insert(project(), other_tool);
    let mut no_role = our_device("m4", DeviceState::Active);
    no_role.tags = Some(vec![CLUSTER.into(), identity_tag("m4")]);
    p.api().insert(project(), no_role);
    let mut other_cluster = our_device("m5", DeviceState::Active);
    other_cluster.tags = Some(vec!["kubernetes.io/cluster/other".into(), ROLE.into()]);
    p.api().insert(project(), other_cluster);
    let mut no_host = our_device("m6", DeviceState::Active);
    no_host.hostname = None;
    p.api().insert(project(), no_host);
    p.api().insert(
        OTHER_PROJECT.parse().unwrap(),
        our_device("m7", DeviceState::Active),
    );

    let mut r = list_req(&spec());
    r.secrets.remove("userData");
    let got = p.list_machines(r).await.unwrap();
    let want: BTreeMap<String, String> = [
        (pid(ours), "m1"),
        (pid(failed), "m2"),
        (pid(other_tool), "made-by-terraform"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(p.api().calls(Operation::FindProjectDevices), 1);
    assert_eq!(
        p.api().state().list_queries[0].tag.as_deref(),
        Some(CLUSTER)
    );
}

#[tokio::test]
async fn list_validates_and_passes_errors() {
    let p = provider();
    assert_invalid(
        p.list_machines(list_req(&spec_with("tags", json!([ROLE]))))
            .await,
        "providerSpec.tags",
    );
    assert_eq!(p.api().total_calls(), 0);
    p.api().fail_next(
        Operation::FindProjectDevices,
        Fault::Status(403, "forbidden".into()),
    );
    assert_eq!(
        err_status(&p.list_machines(list_req(&spec())).await.unwrap_err()),
        Some(403)
    );
}

#[test]
fn machine_name_rules() {
    for ok in ["a", "m-1", &"a".repeat(63)] {
        validate_machine_name(ok, true).unwrap();
    }
    for bad in ["", "A", "a_b", "-a", "a-", "a.b", &"a".repeat(64)] {
        assert!(validate_machine_name(bad, true).is_err(), "{bad}");
    }
    validate_machine_name("a.b-c", false).unwrap();
    assert!(validate_machine_name("a b", false).is_err());
}

#[test]
fn volume_ids_are_empty() {
    assert!(provider().get_volume_ids(b"anything").unwrap().is_empty());
}

/// A class that no longer validates (an unknown field, a broken field only create uses)
/// refuses CreateMachine but never traps a Machine: status, list, shutdown and delete use
/// what they need and go on.
#[tokio::test]
async fn a_broken_class_refuses_create_only() {
    let mut broken = spec_with("machineTyp", json!("c3.small.x86"));
    broken["metro"] = json!("not a slug!");
    let p = provider();
    assert_invalid(
        p.create_machine(req_with(MACHINE, &broken)).await,
        "providerSpec.machineTyp",
    );
    assert_eq!(p.api().calls(Operation::CreateDevice), 0);

    let id = p
        .api()
        .insert(project(), our_device(MACHINE, DeviceState::Active));
    let mut r = req_with(MACHINE, &broken);
    r.secrets.remove("userData");
    let info = p.get_machine_status(r.clone()).await.unwrap();
    assert_eq!(info.provider_id, pid(id));
    let listed = p
        .list_machines(ListRequest {
            provider_spec: r.provider_spec.clone(),
            secrets: r.secrets.clone(),
            deadline: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.get(&pid(id)).map(String::as_str), Some(MACHINE));
    p.shutdown_machine(r.clone()).await.unwrap();
    p.delete_machine(r.clone()).await.unwrap();
    assert!(p.api().device(id).is_none());

    // What these calls need must still be there: the cluster tag names the devices.
    let mut no_cluster = broken.clone();
    no_cluster["tags"] = json!([ROLE]);
    assert_invalid(
        p.delete_machine(req_with(MACHINE, &no_cluster)).await,
        "providerSpec.tags",
    );
}
