//! Every RPC's happy path over real gRPC, plus health, GetVolumeIDs and the side port.

use std::time::Duration;

use metal_driver::metal::DeviceState;
use tonic::Code;

use crate::support::{CLUSTER_TAG, Env, secrets, spec, uuid_of};

#[tokio::test]
async fn identity_reports_name_capabilities_and_readiness() {
    let env = Env::start().await;
    let info = env.cmi.get_plugin_info().await.unwrap();
    assert_eq!(info.name, "metal.driver.cmi");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));

    let caps = env.cmi.get_plugin_capabilities().await.unwrap();
    let mut types: Vec<i32> = caps
        .iter()
        .map(|rpc| rpc.capability().map_or(0, |c| c as i32))
        .collect();
    types.sort_unstable();
    assert_eq!(
        types,
        vec![1, 2, 3, 4, 5, 6],
        "every RPC we implement is advertised, with the proto's numbers"
    );

    let ready = env.cmi.probe().await.unwrap();
    assert_eq!(ready, Some(true));
    env.stop().await;
}

#[tokio::test]
async fn machine_lifecycle_create_status_list_shutdown_delete() {
    let env = Env::start().await;
    let (spec, secrets) = (spec(), secrets());

    let created = env
        .create("it-life-1", &spec, &secrets)
        .await
        .expect("create");
    assert_eq!(created.node_name, "it-life-1");
    let id = uuid_of(&created.provider_id);
    let device = env
        .live_devices()
        .into_iter()
        .find(|d| d.id == Some(id))
        .expect("device exists in the sim");
    assert_eq!(device.hostname.as_deref(), Some("it-life-1"));
    assert!(device.has_tag(CLUSTER_TAG));
    assert!(device.has_tag("kubernetes.io/role/node"));
    assert_eq!(
        device.plan.and_then(|p| p.slug).as_deref(),
        Some("c3.small.x86")
    );
    assert_eq!(device.metro.and_then(|m| m.code).as_deref(), Some("sv"));

    // Status by ProviderID, and by name alone (lookup).
    let by_id = env
        .status("it-life-1", &created.provider_id, &spec, &secrets)
        .await
        .expect("status by id");
    assert_eq!(by_id.provider_id, created.provider_id);
    assert_eq!(by_id.node_name, "it-life-1");
    let by_name = env
        .status("it-life-1", "", &spec, &secrets)
        .await
        .expect("status by name");
    assert_eq!(by_name.provider_id, created.provider_id);

    let list = env.list(&spec, &secrets).await.expect("list");
    assert_eq!(
        list.get(&created.provider_id).map(String::as_str),
        Some("it-life-1")
    );

    env.shutdown_machine("it-life-1", &created.provider_id, &spec, &secrets)
        .await
        .expect("shutdown");
    let state = env
        .sim
        .devices()
        .into_iter()
        .find(|d| d.id == Some(id))
        .and_then(|d| d.state);
    assert!(
        matches!(
            state,
            Some(DeviceState::PoweringOff | DeviceState::Inactive)
        ),
        "power_off reached the device: {state:?}"
    );
    // Shutting down again is fine (CMI: OK if already terminated).
    env.shutdown_machine("it-life-1", &created.provider_id, &spec, &secrets)
        .await
        .expect("shutdown is idempotent");

    env.delete("it-life-1", &created.provider_id, &spec, &secrets)
        .await
        .expect("delete");
    let err = env
        .status("it-life-1", &created.provider_id, &spec, &secrets)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(env.live_devices().is_empty());
    // Delete is idempotent: the device is already gone.
    env.delete("it-life-1", &created.provider_id, &spec, &secrets)
        .await
        .expect("second delete is OK");
    env.delete("it-life-1", "", &spec, &secrets)
        .await
        .expect("delete by name of a gone machine is OK");
    assert!(
        !env.list(&spec, &secrets)
            .await
            .unwrap()
            .contains_key(&created.provider_id)
    );
    env.stop().await;
}

#[tokio::test]
async fn legacy_provider_ids_are_accepted() {
    let env = Env::start().await;
    let (spec, secrets) = (spec(), secrets());
    let created = env.create("it-legacy", &spec, &secrets).await.unwrap();
    let id = uuid_of(&created.provider_id);
    for legacy in [
        format!("equinixmetal://sv/{id}"),
        format!("packet://{id}"),
        id.to_string(),
    ] {
        let s = env
            .status("it-legacy", &legacy, &spec, &secrets)
            .await
            .unwrap_or_else(|e| panic!("{legacy}: {e:?}"));
        assert_eq!(
            s.provider_id, created.provider_id,
            "emitted in the new form for {legacy}"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn get_volume_ids_is_empty_for_unmappable_specs() {
    let env = Env::start().await;
    let ids = env
        .cmi
        .get_volume_ids(br#"[{"csi":{"driver":"x","volumeHandle":"v"}}]"#)
        .await
        .expect("GetVolumeIDs");
    assert!(ids.is_empty());
    env.stop().await;
}

#[tokio::test]
async fn standard_health_service_reports_serving() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let env = Env::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        env.server.endpoint.to_string().trim_start_matches("tcp://")
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "cmi.v1.Machine", "cmi.v1.Identity"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn side_port_serves_health_and_metrics_with_mcm_names() {
    let env = Env::start().await;
    let (spec, secrets) = (spec(), secrets());
    let created = env.create("it-metrics", &spec, &secrets).await.unwrap();
    let _ = env.status("it-metrics", "", &spec, &secrets).await.unwrap();
    let _ = env
        .status(
            "it-metrics",
            &created.provider_id.replace("equinixmetal://", "bogus://"),
            &spec,
            &secrets,
        )
        .await;

    let base = format!("http://{}", env.server.http_addr);
    let http = metal_driver::metal::tls::http_client_builder()
        .build()
        .unwrap();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "grpc_server_handled_total{grpc_service=\"cmi.v1.Machine\",grpc_method=\"CreateMachine\",grpc_code=\"OK\"} 1",
        "grpc_server_handled_total{grpc_service=\"cmi.v1.Machine\",grpc_method=\"GetMachineStatus\",grpc_code=\"InvalidArgument\"} 1",
        "mcm_cloud_api_requests_total{provider=\"equinixmetal\",service=\"createDevice\"} 1",
        "mcm_cloud_api_api_request_duration_seconds_count{provider=\"equinixmetal\",service=\"findProjectDevices\"}",
        "mcm_cloud_api_driver_requests_failed_total{provider=\"equinixmetal\",operation=\"get_machine_status\",error_code=\"3\"} 1",
        "mcm_cloud_api_driver_request_duration_seconds_count{provider=\"equinixmetal\",operation=\"create_machine\"} 1",
        "metal_driver_metal_api_requests_total{endpoint=\"createDevice\",status=\"201\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    env.stop().await;
}

#[tokio::test]
async fn driver_acts_only_on_its_cluster() {
    let env = Env::start().await;
    let secrets = secrets();
    let ours = spec();
    let mut theirs = spec();
    theirs["tags"] = serde_json::json!([
        "kubernetes.io/cluster/shoot--other--cluster",
        "kubernetes.io/role/node"
    ]);
    let created = env.create("it-foreign", &theirs, &secrets).await.unwrap();

    // Same project, other cluster: not listed for our class, and a status by its
    // ProviderID refuses it rather than calling it gone (which would make MCM create).
    let err = env
        .status("it-foreign", &created.provider_id, &ours, &secrets)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("not part of this cluster"),
        "{}",
        err.message()
    );
    assert!(
        !env.list(&ours, &secrets)
            .await
            .unwrap()
            .contains_key(&created.provider_id)
    );
    // A delete through our class refuses to touch it, and says why.
    let err = env
        .delete("it-foreign", &created.provider_id, &ours, &secrets)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("not part of this cluster"),
        "{}",
        err.message()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        env.live_devices().len(),
        1,
        "the other cluster's device survives"
    );
    env.stop().await;
}
