//! Graceful shutdown: in-flight calls finish, new calls are refused, Probe turns unhealthy.

use std::time::Duration;

use metal_driver::{cmi::calls::MachineRef, sim::SimArgs};

use crate::support::{Env, secrets, spec};

#[tokio::test]
async fn in_flight_calls_finish_after_shutdown_begins() {
    let mut args = SimArgs::for_tests();
    args.latency_ms = 400;
    let env = Env::with(args, |_| {}).await;
    let cmi = env.cmi.clone();
    let in_flight = tokio::spawn(async move {
        let (provider_spec, secrets) = (spec().to_string().into_bytes(), secrets());
        cmi.create_machine(MachineRef::new("it-drain", &provider_spec, &secrets))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let devices_before = env.sim.devices().len();
    let sim_devices = {
        let crate::support::Parts { sim, server, stop } = env.into_parts();
        stop.cancel();
        let finished = in_flight.await.unwrap();
        let created = finished.expect("the in-flight create completes during the drain");
        server.wait().await.expect("clean stop");
        let devices = sim.devices();
        assert!(
            devices
                .iter()
                .any(|d| d.id == Some(crate::support::uuid_of(&created.provider_id)))
        );
        sim.shutdown().await;
        devices
    };
    assert_eq!(devices_before, 0);
    assert_eq!(
        sim_devices.len(),
        1,
        "exactly the one device, findable by the next CreateMachine"
    );
}
