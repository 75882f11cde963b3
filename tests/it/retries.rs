//! 429 and 5xx are retried with backoff (honouring Retry-After); a create is never retried
//! blindly; persistent failures surface as Unavailable.

use metal_driver::{
    metal::Operation,
    sim::{Fault, SimArgs},
};
use tonic::Code;

use crate::support::{Env, secrets, spec};

#[tokio::test]
async fn throttled_calls_succeed_after_retry_after() {
    let env = Env::start().await;
    let created = env.create("it-429", &spec(), &secrets()).await.unwrap();
    env.sim
        .inject(Operation::FindDeviceById, Fault::TooManyRequests, 2);
    let status = env
        .status("it-429", &created.provider_id, &spec(), &secrets())
        .await
        .expect("succeeds after 429s");
    assert_eq!(status.provider_id, created.provider_id);
    assert_eq!(env.sim.stats().faults.get("429").copied().unwrap_or(0), 2);
    let metrics = env.metrics.render();
    assert!(
        metrics.contains(
            "metal_driver_metal_api_retries_total{endpoint=\"findDeviceById\",reason=\"429\"} 2"
        ),
        "{metrics}"
    );

    // A create refused with 429 was not committed, so it is retried as is.
    env.sim
        .inject(Operation::CreateDevice, Fault::TooManyRequests, 1);
    env.create("it-429-b", &spec(), &secrets())
        .await
        .expect("create after 429");
    assert_eq!(env.live_devices().len(), 2);
    env.stop().await;
}

#[tokio::test]
async fn create_answered_5xx_is_looked_up_before_any_new_post() {
    let env = Env::start().await;
    env.sim
        .inject(Operation::CreateDevice, Fault::ServerError, 1);
    let created = env
        .create("it-5xx", &spec(), &secrets())
        .await
        .expect("recovers");
    assert_eq!(env.live_devices().len(), 1);
    assert_eq!(
        env.api_calls(Operation::CreateDevice),
        2,
        "one failed POST, one after the lookup found nothing"
    );
    assert!(
        env.api_calls(Operation::FindProjectDevices) >= 2,
        "looked up before the first and the second POST"
    );
    assert!(created.provider_id.starts_with("equinixmetal://"));
    env.stop().await;
}

#[tokio::test]
async fn persistent_server_errors_are_unavailable() {
    let mut args = SimArgs::for_tests();
    args.fault_rate_5xx = 1.0;
    let env = Env::with(args, |c| c.max_retries = 3).await;
    let err = env
        .status(
            "it-down",
            &format!("equinixmetal://{}", uuid::Uuid::new_v4()),
            &spec(),
            &secrets(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        env.api_calls(Operation::FindDeviceById),
        4,
        "first attempt + 3 retries"
    );
    let err = env
        .create("it-down", &spec(), &secrets())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        env.api_calls(Operation::CreateDevice),
        0,
        "no POST while even the lookup fails"
    );
    env.stop().await;
}
