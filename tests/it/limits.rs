//! Resource limits of a real `metal-driver serve` process: flooding it past
//! `--max-in-flight` gets every call an answer (OK or Unavailable) with bounded memory; a
//! client deadline shorter than the Metal API's latency ends the call promptly with
//! DeadlineExceeded and the driver stops working on it; oversized requests are refused.

use std::time::{Duration, Instant};

use metal_driver::{
    cmi::calls::MachineRef,
    metal::Operation,
    sim::{self, SimArgs},
};
use tonic::Code;

use crate::{
    process::DriverProcess,
    support::{secrets, spec},
};

#[tokio::test]
async fn flood_past_max_in_flight_every_call_answered_memory_bounded() {
    let mut args = SimArgs::for_tests();
    args.latency_ms = 600;
    let sim = sim::spawn(args).await.unwrap();
    let driver = DriverProcess::start(
        &sim.base_url(),
        &["--max-in-flight", "8", "--log-level", "error"],
    )
    .await;
    // Several connections, so the flood is not throttled by one HTTP/2 connection's limits.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(driver.client(Duration::from_secs(30)).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = driver.rss_kib();
    assert!(baseline > 0, "VmRSS readable");

    const CALLS: usize = 800;
    let payload = "x".repeat(16 * 1024); // bigger requests make unbounded queueing visible
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let cmi = clients[i % clients.len()].clone();
        let mut s = spec();
        s["customData"] = serde_json::json!({ "pad": payload });
        let provider_spec = s.to_string().into_bytes();
        calls.spawn(async move {
            let started = Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(60),
                cmi.list_machines(&provider_spec, &secrets()),
            )
            .await;
            (answer, started.elapsed())
        });
    }
    let mut peak = baseline;
    let (mut ok, mut shed, mut other) = (0, 0, Vec::new());
    while !calls.is_empty() {
        peak = peak.max(driver.rss_kib());
        if let Ok(Some(joined)) =
            tokio::time::timeout(Duration::from_millis(50), calls.join_next()).await
        {
            let (answer, _elapsed) = joined.unwrap();
            match answer.expect("every call is answered (hang guard 60 s)") {
                Ok(_) => ok += 1,
                Err(s) if s.code() == Code::Unavailable => shed += 1,
                Err(s) => other.push(format!("{:?}: {}", s.code(), s.message())),
            }
        }
    }
    peak = peak.max(driver.rss_kib());
    assert!(other.is_empty(), "only OK or Unavailable: {other:?}");
    assert_eq!(ok + shed, CALLS);
    assert!(ok >= 8, "the driver kept serving under overload ({ok} OK)");
    assert!(shed > 0, "calls beyond --max-in-flight were shed ({ok} OK)");
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "flood: {CALLS} calls, {ok} OK, {shed} Unavailable; RSS {baseline} KiB → peak {peak} KiB"
    );
    // Generous bound: 800 × 16 KiB of requests alone would be 12.5 MiB if all were buffered.
    assert!(
        growth_mib < 200,
        "RSS grew by {growth_mib} MiB under the flood"
    );

    // The driver is still healthy afterwards.
    let cmi = &clients[0];
    let listed = cmi
        .list_machines(spec().to_string().as_bytes(), &secrets())
        .await;
    assert!(listed.is_ok(), "{listed:?}");
    driver.kill().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_short_client_deadline_ends_the_call_and_the_driver_stops_retrying() {
    let mut args = SimArgs::for_tests();
    args.latency_ms = 2500;
    let sim = sim::spawn(args).await.unwrap();
    let driver = DriverProcess::start(&sim.base_url(), &[]).await;
    let cmi = driver.client(Duration::from_millis(600)).await;
    let device = uuid::Uuid::new_v4();
    let (provider_spec, secrets) = (spec().to_string().into_bytes(), secrets());
    let provider_id = format!("equinixmetal://{device}");
    let machine = MachineRef::new("it-deadline", &provider_spec, &secrets);

    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        cmi.get_machine_status(machine.with_provider_id(&provider_id)),
    )
    .await
    .expect("answered, not hung");
    let elapsed = started.elapsed();
    let status = answer.expect_err("the Metal API is slower than the deadline");
    // The client's own timer and the driver's answer race: either says the deadline passed.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "prompt: {elapsed:?}");

    // A create (lookup + POST) under the same short deadline: no device may appear later.
    let create = cmi.create_machine(machine).await;
    let create = create.expect_err("deadline");
    assert!(
        matches!(create.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{create:?}"
    );

    // Long after: the driver made one attempt per call and gave up at the deadline, so the
    // simulator saw one GET and one list, and never a POST or a retry.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = sim.stats();
    let calls = |op| stats.requests_of(op);
    assert_eq!(
        calls(Operation::FindDeviceById),
        1,
        "no retry after the deadline: {:?}",
        stats.requests
    );
    assert_eq!(
        calls(Operation::CreateDevice),
        0,
        "no create after the deadline: {:?}",
        stats.requests
    );
    assert!(
        calls(Operation::FindProjectDevices) <= 1,
        "{:?}",
        stats.requests
    );
    assert!(sim.devices().is_empty());
    driver.kill().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn oversized_requests_are_refused_and_the_driver_stays_up() {
    let sim = sim::spawn(SimArgs::for_tests()).await.unwrap();
    let driver = DriverProcess::start(&sim.base_url(), &["--max-message-bytes", "65536"]).await;
    let cmi = driver.client(Duration::from_secs(10)).await;
    let list = |bytes: Vec<u8>| {
        let cmi = cmi.clone();
        async move { cmi.list_machines(&bytes, &secrets()).await }
    };
    let mut big = spec();
    big["customData"] = serde_json::json!({ "pad": "y".repeat(200 * 1024) });
    let refused = list(big.to_string().into_bytes())
        .await
        .expect_err("over --max-message-bytes");
    assert!(
        matches!(
            refused.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{refused:?}"
    );
    assert!(
        list(spec().to_string().into_bytes()).await.is_ok(),
        "a normal call still works"
    );
    driver.kill().await;
    sim.shutdown().await;
}
