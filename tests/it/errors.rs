//! Bad input gets InvalidArgument naming the field, never a panic, and nothing is created.
//! API failures keep their own codes (401, 403, 422, capacity).

use std::collections::HashMap;

use metal_driver::{metal::Operation, sim::SimArgs};
use serde_json::{Value, json};
use tonic::Code;

use crate::support::{Env, PROJECT, secrets, secrets_with, spec};

fn without(key: &str) -> Value {
    let mut s = spec();
    s.as_object_mut().unwrap().remove(key);
    s
}

fn with(key: &str, value: Value) -> Value {
    let mut s = spec();
    s[key] = value;
    s
}

/// (what, machine name, providerSpec bytes, secrets, the field the message must name)
type BadCase = (
    &'static str,
    String,
    Vec<u8>,
    HashMap<String, Vec<u8>>,
    &'static str,
);

#[tokio::test]
async fn bad_create_input_is_invalid_argument_naming_the_field() {
    let env = Env::start().await;
    let good = secrets();
    let mut no_token = good.clone();
    no_token.remove("apiToken");
    let mut no_user_data = good.clone();
    no_user_data.remove("userData");

    let long_name = "a".repeat(64);
    let cases: Vec<BadCase> = vec![
        (
            "empty name",
            String::new(),
            spec().to_string().into_bytes(),
            good.clone(),
            "machineName",
        ),
        (
            "name over 63",
            long_name,
            spec().to_string().into_bytes(),
            good.clone(),
            "machineName",
        ),
        (
            "name with capitals",
            "Bad_Name".into(),
            spec().to_string().into_bytes(),
            good.clone(),
            "machineName",
        ),
        (
            "empty spec",
            "m".into(),
            Vec::new(),
            good.clone(),
            "providerSpec",
        ),
        (
            "spec not JSON",
            "m".into(),
            b"{not json".to_vec(),
            good.clone(),
            "providerSpec",
        ),
        (
            "spec is an array",
            "m".into(),
            b"[1,2]".to_vec(),
            good.clone(),
            "providerSpec",
        ),
        (
            "spec is a number",
            "m".into(),
            b"42".to_vec(),
            good.clone(),
            "providerSpec",
        ),
        (
            "unknown field",
            "m".into(),
            with("machineTyp", json!("x")).to_string().into_bytes(),
            good.clone(),
            "machineTyp",
        ),
        (
            "no projectID",
            "m".into(),
            without("projectID").to_string().into_bytes(),
            good.clone(),
            "projectID",
        ),
        (
            "no metro or facilities",
            "m".into(),
            without("metro").to_string().into_bytes(),
            good.clone(),
            "metro",
        ),
        (
            "no machineType",
            "m".into(),
            without("machineType").to_string().into_bytes(),
            good.clone(),
            "machineType",
        ),
        (
            "no OS nor ipxeScriptUrl",
            "m".into(),
            without("OS").to_string().into_bytes(),
            good.clone(),
            "OS",
        ),
        (
            "no tags",
            "m".into(),
            without("tags").to_string().into_bytes(),
            good.clone(),
            "tags",
        ),
        (
            "no cluster tag",
            "m".into(),
            with("tags", json!(["kubernetes.io/role/node"]))
                .to_string()
                .into_bytes(),
            good.clone(),
            "kubernetes.io/cluster/",
        ),
        (
            "no role tag",
            "m".into(),
            with("tags", json!(["kubernetes.io/cluster/x"]))
                .to_string()
                .into_bytes(),
            good.clone(),
            "kubernetes.io/role/",
        ),
        (
            "bad billingCycle",
            "m".into(),
            with("billingCycle", json!("weekly"))
                .to_string()
                .into_bytes(),
            good.clone(),
            "billingCycle",
        ),
        (
            "wrong type",
            "m".into(),
            with("tags", json!("one-string")).to_string().into_bytes(),
            good.clone(),
            "tags",
        ),
        (
            "no apiToken",
            "m".into(),
            spec().to_string().into_bytes(),
            no_token,
            "apiToken",
        ),
        (
            "no userData",
            "m".into(),
            spec().to_string().into_bytes(),
            no_user_data,
            "userData",
        ),
        (
            "1 MiB spec",
            "m".into(),
            vec![b' '; 1024 * 1024],
            good.clone(),
            "providerSpec",
        ),
    ];
    for (what, name, spec_bytes, secrets, field) in cases {
        let err = env
            .create_raw(&name, spec_bytes, &secrets)
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(field),
            "{what}: message {:?} should name {field}",
            err.message()
        );
    }
    assert_eq!(
        env.api_calls(Operation::CreateDevice),
        0,
        "no bad input reached the API"
    );
    assert!(env.sim.devices().is_empty());
    env.stop().await;
}

#[tokio::test]
async fn alternate_api_token_is_really_used() {
    let env = Env::start().await;
    let mut s = secrets();
    let token = s.remove("apiToken").unwrap();
    s.insert("alternateApiToken".into(), token);
    env.create("it-alt-token", &spec(), &s)
        .await
        .expect("alternateApiToken works");
    env.stop().await;
}

#[tokio::test]
async fn malformed_provider_id_is_invalid_argument() {
    let env = Env::start().await;
    for bad in [
        "aws:///i-123",
        "equinixmetal://not-a-uuid",
        "equinixmetal://",
    ] {
        let err = env.status("m", bad, &spec(), &secrets()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(
            err.message().contains("providerID"),
            "{bad}: {}",
            err.message()
        );
        let err = env.delete("m", bad, &spec(), &secrets()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
    env.stop().await;
}

#[tokio::test]
async fn api_rejections_keep_their_codes() {
    let other_project = "5d1ef2a4-0000-4000-8000-000000000002";
    let mut args = SimArgs::for_tests();
    args.projects = vec![PROJECT, other_project.parse().unwrap()];
    args.tokens = vec![
        "sim-token".parse().unwrap(),
        format!("narrow-token:{other_project}").parse().unwrap(),
    ];
    args.capacity = vec!["sv:m3.large.x86=0".parse().unwrap()];
    let env = Env::with(args, |_| {}).await;

    // 401: a token the API does not know.
    let err = env
        .create(
            "it-401",
            &spec(),
            &secrets_with("wrong-token", "#cloud-config\n"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = env
        .list(&spec(), &secrets_with("wrong-token", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // 403: a valid token without access to the project.
    let err = env
        .create(
            "it-403",
            &spec(),
            &secrets_with("narrow-token", "#cloud-config\n"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // 422: a plan, OS or metro the API does not have.
    for (key, value) in [
        ("machineType", "z9.huge.x86"),
        ("OS", "windows_95"),
        ("metro", "xx"),
    ] {
        let err = env
            .create("it-422", &with(key, json!(value)), &secrets())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{key}: {err:?}");
    }

    // No capacity.
    let err = env
        .create(
            "it-cap",
            &with("machineType", json!("m3.large.x86")),
            &secrets(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // 404: a device that does not exist.
    let err = env
        .status(
            "it-404",
            &format!("equinixmetal://{}", uuid::Uuid::new_v4()),
            &spec(),
            &secrets(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(env.live_devices().is_empty());
    env.stop().await;
}

#[tokio::test]
async fn reservations_in_order_then_on_demand_unless_reserved_only() {
    let r1 = "11111111-1111-4111-8111-111111111111";
    let r2 = "22222222-2222-4222-8222-222222222222";
    let mut args = SimArgs::for_tests();
    args.reservations = vec![
        format!("{r1}=sv:c3.small.x86").parse().unwrap(),
        format!("{r2}=sv:c3.small.x86").parse().unwrap(),
    ];
    let env = Env::with(args, |_| {}).await;
    let s = with("reservationIDs", json!([r1, r2]));

    let a = env.create("it-res-a", &s, &secrets()).await.unwrap();
    let b = env.create("it-res-b", &s, &secrets()).await.unwrap();
    let c = env
        .create("it-res-c", &s, &secrets())
        .await
        .expect("falls back to on-demand");
    let reservation_of = |pid: &str| {
        let id = crate::support::uuid_of(pid);
        env.sim
            .devices()
            .into_iter()
            .find(|d| d.id == Some(id))
            .and_then(|d| d.hardware_reservation)
            .and_then(|r| r.id)
            .map(|u| u.to_string())
    };
    assert_eq!(reservation_of(&a.provider_id).as_deref(), Some(r1));
    assert_eq!(reservation_of(&b.provider_id).as_deref(), Some(r2));
    assert_eq!(
        reservation_of(&c.provider_id),
        None,
        "the on-demand fallback carries no reservation"
    );

    let mut reserved_only = s.clone();
    reserved_only["reservedDevicesOnly"] = json!(true);
    let err = env
        .create("it-res-d", &reserved_only, &secrets())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(env.live_devices().len(), 3);
    env.stop().await;
}

#[tokio::test]
async fn facilities_are_honoured() {
    let env = Env::start().await;
    let mut s = without("metro");
    s["facilities"] = json!(["da11"]);
    let created = env
        .create("it-fac", &s, &secrets())
        .await
        .expect("create in a facility");
    let id = crate::support::uuid_of(&created.provider_id);
    let device = env
        .sim
        .devices()
        .into_iter()
        .find(|d| d.id == Some(id))
        .unwrap();
    assert_eq!(
        device.facility.and_then(|f| f.code).as_deref(),
        Some("da11")
    );
    env.stop().await;
}
