//! Graceful shutdown: in-flight calls finish, new calls are refused, Probe turns unhealthy.

use std::time::Duration;

use metal_driver::sim::SimArgs;

use crate::support::{Env, secrets, spec};

#[tokio::test]
async fn in_flight_calls_finish_after_shutdown_begins() {
    let mut args = SimArgs::for_tests();
    args.latency_ms = 400;
    let env = Env::with(args, |_| {}).await;
    let cmi = env.cmi.clone();
    let in_flight = tokio::spawn(async move {
        let mut m = cmi.machine.clone();
        m.create_machine(cmi.request(metal_driver::cmi::v1::CreateMachineRequest {
            machine_name: "it-drain".into(),
            provider_spec: spec().to_string().into_bytes(),
            secrets: secrets(),
            last_known_state: Vec::new(),
        }))
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let devices_before = env.sim.devices().len();
    let sim_devices = {
        let crate::support::Parts { sim, server, stop } = env.into_parts();
        stop.cancel();
        let finished = in_flight.await.unwrap();
        let created = finished
            .expect("the in-flight create completes during the drain")
            .into_inner();
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
