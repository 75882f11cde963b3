//! Retries can never produce a second server: repeated, concurrent and lost-response creates.

use std::sync::Arc;

use metal_driver::{
    metal::Operation,
    sim::{Fault, SimArgs},
};
use tonic::Code;

use crate::support::{Env, secrets, spec, uuid_of};

#[tokio::test]
async fn retried_create_returns_the_same_device() {
    let env = Env::start().await;
    let first = env.create("it-idem", &spec(), &secrets()).await.unwrap();
    for _ in 0..3 {
        let again = env.create("it-idem", &spec(), &secrets()).await.unwrap();
        assert_eq!(again.provider_id, first.provider_id);
    }
    assert_eq!(
        env.api_calls(Operation::CreateDevice),
        1,
        "one POST for four CreateMachine calls"
    );
    assert_eq!(env.live_devices().len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn lost_create_response_yields_exactly_one_device() {
    let env = Env::start().await;
    // The API commits the device, then the connection drops before any response.
    env.sim.inject(Operation::CreateDevice, Fault::Drop, 1);
    let result = env.create("it-lost", &spec(), &secrets()).await;
    match &result {
        Ok(r) => assert_eq!(env.live_devices()[0].id, Some(uuid_of(&r.provider_id))),
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
    }
    // Whatever the first call answered, the client's retry finds the committed device.
    let retry = env
        .create("it-lost", &spec(), &secrets())
        .await
        .expect("retry succeeds");
    let devices = env.live_devices();
    assert_eq!(
        devices.len(),
        1,
        "exactly one device after a lost response: {devices:?}"
    );
    assert_eq!(devices[0].id, Some(uuid_of(&retry.provider_id)));
    assert_eq!(
        env.sim.stats().faults.get("drop").copied().unwrap_or(0),
        1,
        "the fault really fired"
    );
    env.stop().await;
}

#[tokio::test]
async fn concurrent_creates_for_one_machine_make_one_device() {
    let env = Arc::new(Env::start().await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            env.create("it-race", &spec(), &secrets()).await
        }));
    }
    let mut ok_ids = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => ok_ids.push(r.provider_id),
            Err(s) => assert_eq!(
                s.code(),
                Code::Aborted,
                "concurrent calls are refused as Aborted: {s:?}"
            ),
        }
    }
    assert!(!ok_ids.is_empty(), "at least one call creates the machine");
    ok_ids.dedup();
    assert_eq!(ok_ids.len(), 1, "every success names the same device");
    assert_eq!(env.live_devices().len(), 1, "exactly one device");
    Arc::try_unwrap(env).ok().expect("sole owner").stop().await;
}

#[tokio::test]
async fn failed_device_is_replaced() {
    let mut args = SimArgs::for_tests();
    args.fail_rate = 1.0;
    let env = Env::with(args, |_| {}).await;
    let first = env.create("it-failed", &spec(), &secrets()).await.unwrap();
    // Provisioning is instant in tests, so the device is already `failed`.
    let failed = env
        .sim
        .devices()
        .into_iter()
        .find(|d| d.id == Some(uuid_of(&first.provider_id)))
        .unwrap();
    assert_eq!(failed.state, Some(metal_driver::metal::DeviceState::Failed));
    let second = env.create("it-failed", &spec(), &secrets()).await.unwrap();
    assert_ne!(
        second.provider_id, first.provider_id,
        "a failed device is replaced, not adopted"
    );
    let live: Vec<_> = env
        .live_devices()
        .into_iter()
        .filter(|d| d.id == Some(uuid_of(&first.provider_id)))
        .collect();
    assert!(live.is_empty(), "the failed device is being deleted");
    env.stop().await;
}
