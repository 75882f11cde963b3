//! `metal-driver demo`: the whole flow with no account. Starts the simulator and the driver
//! on ephemeral loopback ports inside this process, then drives one machine through
//! create → status (until active) → list → shutdown → delete over real gRPC, printing each
//! step with its timing. Exits non-zero if any step does not do what it should.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::{
    cmi::{calls::MachineRef, client::CmiClient},
    metal::DeviceState,
    sim::{self, SimArgs},
    testkit::{Stack, fixture},
};

/// The demo MachineClass's cluster tag (the kit's class, in a shoot of its own).
const DEMO_CLUSTER_TAG: &str = "kubernetes.io/cluster/shoot--dev--demo";

/// Flags of `metal-driver demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Name of the demo Machine (becomes the device hostname).
    #[arg(long, default_value = "demo-machine-0")]
    pub machine_name: String,

    /// How long the simulated device takes from queued to active.
    #[arg(long, default_value_t = 3.0)]
    pub provision_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("step {step} failed: {reason}")]
    Step { step: &'static str, reason: String },
}

fn fail(step: &'static str, reason: impl ToString) -> DemoError {
    DemoError::Step {
        step,
        reason: reason.to_string(),
    }
}

struct Steps {
    started: Instant,
}

impl Steps {
    fn print(&self, step: &str, took: Duration, detail: &str) {
        println!(
            "[{:>6.2}s] {step:<22} {detail}  ({} ms)",
            self.started.elapsed().as_secs_f64(),
            took.as_millis()
        );
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let steps = Steps {
        started: Instant::now(),
    };
    let sim_args = SimArgs {
        provision_seconds: args.provision_seconds,
        ..SimArgs::for_tests()
    };
    let stack = Stack::start(sim_args, |_| {}, Duration::from_secs(30))
        .await
        .map_err(|e| fail(e.step, e.reason))?;
    println!("simulator (Equinix Metal API)   {}", stack.sim.base_url());
    println!("driver (CMI gRPC)               {}", stack.server.endpoint);
    println!(
        "driver metrics                  http://{}/metrics",
        stack.server.http_addr
    );
    println!();

    let result = drive(&steps, &stack.cmi, &stack.sim, &args.machine_name).await;

    stack.stop().await;
    match &result {
        Ok(()) => println!("\ndemo finished: every step behaved as expected"),
        Err(e) => println!("\ndemo FAILED: {e}"),
    }
    result
}

async fn drive(
    steps: &Steps,
    cmi: &CmiClient,
    sim: &sim::SimHandle,
    name: &str,
) -> Result<(), DemoError> {
    let spec = fixture::provider_spec_bytes(DEMO_CLUSTER_TAG);
    let secrets = fixture::secret_data("demo");
    let machine = MachineRef::new(name, &spec, &secrets);

    let t = Instant::now();
    let info = cmi
        .get_plugin_info()
        .await
        .map_err(|e| fail("GetPluginInfo", e))?;
    let caps = cmi
        .get_plugin_capabilities()
        .await
        .map_err(|e| fail("GetPluginCapabilities", e))?;
    let ready = cmi.probe().await.map_err(|e| fail("Probe", e))?;
    steps.print(
        "identity",
        t.elapsed(),
        &format!(
            "{} {} · {} capabilities · ready={}",
            info.name,
            info.version,
            caps.len(),
            ready.unwrap_or(true)
        ),
    );

    let t = Instant::now();
    let created = cmi
        .create_machine(machine)
        .await
        .map_err(|e| fail("CreateMachine", e))?;
    steps.print(
        "CreateMachine",
        t.elapsed(),
        &format!(
            "{name} → {} (node {})",
            created.provider_id, created.node_name
        ),
    );

    let t = Instant::now();
    let again = cmi
        .create_machine(machine)
        .await
        .map_err(|e| fail("CreateMachine (retry)", e))?;
    if again.provider_id != created.provider_id {
        return Err(fail(
            "CreateMachine (retry)",
            format!("a retry returned another device: {}", again.provider_id),
        ));
    }
    steps.print(
        "CreateMachine (retry)",
        t.elapsed(),
        "same device returned: create is idempotent",
    );

    // Poll status until the simulated device is active.
    let t = Instant::now();
    let machine = machine.with_provider_id(&created.provider_id);
    let mut last_state = None;
    loop {
        let status = cmi
            .get_machine_status(machine)
            .await
            .map_err(|e| fail("GetMachineStatus", e))?;
        if status.provider_id != created.provider_id {
            return Err(fail(
                "GetMachineStatus",
                format!("unexpected ProviderID {}", status.provider_id),
            ));
        }
        let state = sim
            .devices()
            .into_iter()
            .find(|d| d.hostname.as_deref() == Some(name))
            .and_then(|d| d.state);
        if state != last_state {
            steps.print(
                "GetMachineStatus",
                t.elapsed(),
                &format!(
                    "{} · device {}",
                    status.node_name,
                    state.map_or("unknown", DeviceState::as_str)
                ),
            );
            last_state = state;
        }
        if state == Some(DeviceState::Active) {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(fail(
                "GetMachineStatus",
                "device did not become active within 120 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let t = Instant::now();
    let listed = cmi
        .list_machines(&spec, &secrets)
        .await
        .map_err(|e| fail("ListMachines", e))?;
    if listed.get(&created.provider_id).map(String::as_str) != Some(name) {
        return Err(fail(
            "ListMachines",
            format!("{name} missing from {listed:?}"),
        ));
    }
    steps.print(
        "ListMachines",
        t.elapsed(),
        &format!(
            "{} machine(s) in the cluster, {name} among them",
            listed.len()
        ),
    );

    let t = Instant::now();
    cmi.shut_down_machine(machine)
        .await
        .map_err(|e| fail("ShutDownMachine", e))?;
    steps.print("ShutDownMachine", t.elapsed(), "power_off accepted");

    let t = Instant::now();
    cmi.delete_machine(machine)
        .await
        .map_err(|e| fail("DeleteMachine", e))?;
    steps.print("DeleteMachine", t.elapsed(), "device deprovisioning");

    let t = Instant::now();
    loop {
        match cmi.get_machine_status(machine).await {
            Err(e) if e.code() == Code::NotFound => {
                steps.print(
                    "GetMachineStatus",
                    t.elapsed(),
                    "NotFound: the machine is gone",
                );
                break;
            }
            Err(e) => return Err(fail("GetMachineStatus after delete", e)),
            Ok(_) if t.elapsed() > Duration::from_secs(60) => {
                return Err(fail(
                    "GetMachineStatus after delete",
                    "device still present after 60 s",
                ));
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    // The API deprovisions asynchronously; wait for the device to vanish entirely.
    let t = Instant::now();
    while !sim.devices().is_empty() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err(fail(
                "final check",
                format!("{} device(s) left in the simulator", sim.devices().len()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    steps.print(
        "deprovisioned",
        t.elapsed(),
        "no device left in the project",
    );
    Ok(())
}
