//! SIGTERM to a real `metal-driver serve` process with calls in flight: they finish within
//! the grace period, new calls are refused, the exit code is 0, and a create cut off by the
//! end of the grace period leaves nothing the next CreateMachine cannot find.

use std::time::Duration;

use metal_driver::{
    cmi::{
        calls::{CallError, Created, MachineRef},
        client::CmiClient,
    },
    sim::{self, SimArgs},
};
use tonic::Code;

use crate::{
    process::DriverProcess,
    support::{secrets, spec},
};

/// CreateMachine of `name` in the usual class.
async fn create(cmi: &CmiClient, name: &str) -> Result<Created, CallError> {
    let (provider_spec, secrets) = (spec().to_string().into_bytes(), secrets());
    cmi.create_machine(MachineRef::new(name, &provider_spec, &secrets))
        .await
}

fn devices_named(sim: &metal_driver::sim::SimHandle, name: &str) -> usize {
    sim.devices()
        .iter()
        .filter(|d| d.hostname.as_deref() == Some(name))
        .count()
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_refuses_new_ones_and_exits_zero() {
    let mut args = SimArgs::for_tests();
    args.latency_ms = 700;
    let sim = sim::spawn(args).await.unwrap();
    let mut driver = DriverProcess::start(&sim.base_url(), &["--grace-period", "20s"]).await;
    let cmi = driver.client(Duration::from_secs(30)).await;

    let names: Vec<String> = (0..4).map(|i| format!("it-term-{i}")).collect();
    let in_flight: Vec<_> = names
        .iter()
        .map(|name| {
            let (cmi, name) = (cmi.clone(), name.clone());
            tokio::spawn(async move { create(&cmi, &name).await })
        })
        .collect();
    // Each create needs a lookup and a POST (2 × 700 ms): SIGTERM lands in the middle.
    tokio::time::sleep(Duration::from_millis(400)).await;
    driver.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new call on a fresh connection: refused (the listener is closed).
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        match metal_driver::cmi::client::CmiClient::connect(
            &driver.endpoint,
            Duration::from_secs(5),
        )
        .await
        {
            Err(_) => Err(Code::Unavailable),
            Ok(c) => c.get_plugin_info().await.map(|_| ()).map_err(|e| e.code()),
        }
    })
    .await
    .expect("the new call is answered, not left hanging");
    assert!(fresh.is_err(), "a call after SIGTERM must be refused");

    let mut provider_ids = Vec::new();
    for (name, call) in names.iter().zip(in_flight) {
        let answer = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("in-flight call ends within the grace period")
            .unwrap();
        let created = answer
            .unwrap_or_else(|s| panic!("{name}: in-flight create failed during drain: {s:?}"));
        provider_ids.push(created.provider_id);
    }
    let code = driver.wait(Duration::from_secs(25)).await;
    assert_eq!(code, Some(0), "graceful exit; logs:\n{}", driver.logs());
    let logs = driver.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    for (name, pid) in names.iter().zip(&provider_ids) {
        assert_eq!(devices_named(&sim, name), 1, "{name}: exactly one device");
        assert!(
            sim.devices()
                .iter()
                .any(|d| d.id.map(|u| format!("equinixmetal://{u}")).as_deref() == Some(pid))
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_create_cut_off_by_the_grace_period_is_found_by_the_next_create() {
    let mut args = SimArgs::for_tests();
    args.latency_ms = 1200;
    let sim = sim::spawn(args).await.unwrap();
    let mut driver = DriverProcess::start(&sim.base_url(), &["--grace-period", "1500ms"]).await;
    let cmi = driver.client(Duration::from_secs(30)).await;
    let call = tokio::spawn({
        let cmi = cmi.clone();
        async move { create(&cmi, "it-cutoff").await }
    });
    // The lookup takes 1.2 s, the POST another 1.2 s: the grace period ends during the POST.
    tokio::time::sleep(Duration::from_millis(300)).await;
    driver.signal("-TERM");
    let code = driver.wait(Duration::from_secs(15)).await;
    assert_eq!(
        code,
        Some(0),
        "exit 0 after the grace period; logs:\n{}",
        driver.logs()
    );
    let cut_off = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the client gets an answer")
        .unwrap();
    // Whatever the client saw (likely Unavailable), it must be retryable, never a success
    // without a device.
    if let Err(s) = &cut_off {
        assert!(
            matches!(
                s.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown | Code::DeadlineExceeded
            ),
            "{s:?}"
        );
    }
    // Let any POST the simulator already accepted finish committing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = devices_named(&sim, "it-cutoff");
    assert!(before <= 1, "never two devices");

    // The next driver's CreateMachine finds the device (or creates the only one).
    let driver2 = DriverProcess::start(&sim.base_url(), &[]).await;
    let cmi2 = driver2.client(Duration::from_secs(30)).await;
    let created = create(&cmi2, "it-cutoff").await.expect("retry succeeds");
    assert_eq!(
        devices_named(&sim, "it-cutoff"),
        1,
        "exactly one device after the retry (before: {before})"
    );
    if let Ok(first) = cut_off {
        assert_eq!(first.provider_id, created.provider_id);
    }
    assert_eq!(sim.stats().devices_created, 1);
    driver2.kill().await;
    sim.shutdown().await;
}
