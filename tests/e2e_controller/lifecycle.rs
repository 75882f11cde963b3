//! A Machine's life from the samples: create, scale with MCM, orphans, a controller crash
//! mid-create, bad and broken classes, and health from Node conditions.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use metal_driver::controller::{crd::MachineClass, never_created::NO_CREATE_SENT};
use serde_json::json;

use crate::{
    stack::{Opts, assert_bijection, scrape, with_temp_ns},
    support::{
        CLUSTER_TAG, MACHINE_FINALIZER, ROLE_TAG, apply_class_and_secret, apply_sample, dyn_api,
        eventually, machine_gone, machine_in_phase, managers, phases_until_running, uuid_of,
    },
};

/// a) Secret + MachineClass + Machine from the samples → one device, providerID, Pending then
/// Running (the sim registers the Node); delete → device, Node, finalizer, Machine gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn a_machine_lifecycle_from_samples() {
    with_temp_ns(
        "a",
        Opts {
            provision_seconds: 3.0,
            ..Opts::default()
        },
        |stack| async move {
            let client = stack.client.clone();
            let ns = stack.ns.clone();
            // The controller's start-up orphan collection lists devices once per class; let
            // it pass before there is a class, so the request counts below are the create's.
            let metrics_url = format!(
                "{}/metrics",
                stack.controller.as_ref().expect("controller").url
            );
            let http = stack.http.clone();
            eventually(
                "start-up orphan collection",
                Duration::from_secs(30),
                || {
                    let (http, url) = (http.clone(), metrics_url.clone());
                    async move {
                        let text = http.get(&url).send().await.ok()?.text().await.ok()?;
                        text.contains(
                            "metal_driver_controller_reconciles_total{controller=\"orphans\"}",
                        )
                        .then_some(())
                    }
                },
            )
            .await;
            let class = apply_class_and_secret(&client, &ns).await;
            let machine_name = format!("{ns}-m1");
            apply_sample(&client, &ns, "machine.yaml", |m| {
                m["metadata"]["name"] = json!(machine_name)
            })
            .await;
            let machines = stack.machines();

            // Poll quickly and record every phase seen, to catch Pending before Running.
            let (m, phases) = phases_until_running(&machines, &machine_name, "").await;
            assert!(
                phases.contains(&"Pending".to_owned()),
                "phases seen: {phases:?}"
            );
            // Counted before this test lists devices itself: the whole create cost one lookup
            // and one POST. The controller leaves the lookup to CreateMachine (which adopts an
            // existing device) rather than asking GetMachineStatus first for a Machine without
            // a ProviderID.
            let stats = stack.sim_stats().await;
            assert_eq!(stats["requests"]["createDevice"], 1, "{stats}");
            assert_eq!(stats["requests"]["findProjectDevices"], 1, "{stats}");
            assert!(m.finalizers().iter().any(|f| f == MACHINE_FINALIZER));
            assert_eq!(
                m.annotations()
                    .get("machinepriority.machine.sapcloud.io")
                    .map(String::as_str),
                Some("3")
            );
            assert_eq!(m.node_name(), Some(machine_name.as_str()));
            let pid = m.provider_id().expect("providerID").to_owned();
            assert!(pid.starts_with("equinixmetal://"), "{pid}");
            let devices = stack.devices().await;
            assert_eq!(devices.len(), 1, "{devices:?}");
            assert!(devices.contains_key(&uuid_of(&pid)));
            let nodes: Api<Node> = Api::all(client.clone());
            let node = nodes
                .get(&machine_name)
                .await
                .expect("Node registered by the sim");
            assert_eq!(
                node.spec.as_ref().and_then(|s| s.provider_id.as_deref()),
                Some(pid.as_str())
            );
            let classes: Api<MachineClass> = Api::namespaced(client.clone(), &ns);
            let c = classes.get(&class).await.expect("class");
            assert!(
                c.finalizers().iter().any(|f| f == MACHINE_FINALIZER),
                "class finalizer while referenced"
            );
            // What the controller wrote is filed under its field manager: the Machine (object
            // and status), the class's finalizer and the Node's finalizer and labels.
            let machine_managers =
                managers(&machines.get(&machine_name).await.expect("get").metadata);
            for want in [("metal-driver", ""), ("metal-driver", "status")] {
                assert!(
                    machine_managers
                        .iter()
                        .any(|(m, s)| (m.as_str(), s.as_str()) == want),
                    "Machine managedFields {machine_managers:?}"
                );
            }
            let node = nodes.get(&machine_name).await.expect("Node");
            for (what, meta) in [("class", &c.metadata), ("Node", &node.metadata)] {
                let found = managers(meta);
                assert!(
                    found.iter().any(|(m, _)| m == "metal-driver"),
                    "{what} managedFields {found:?}"
                );
            }
            let metrics = scrape(&stack).await;
            assert!(
                metrics
                    .contains("metal_driver_controller_reconciles_total{controller=\"machine\"}"),
                "controller metrics missing from /metrics"
            );

            let t = Instant::now();
            machines
                .delete(&machine_name, &DeleteParams::default())
                .await
                .expect("delete machine");
            machine_gone(&machines, &machine_name, Duration::from_secs(60)).await;
            let s = &stack;
            eventually("device gone", Duration::from_secs(30), || async move {
                s.devices().await.is_empty().then_some(())
            })
            .await;
            eventually("Node gone", Duration::from_secs(30), || {
                let nodes = nodes.clone();
                let name = machine_name.clone();
                async move { nodes.get_opt(&name).await.ok()?.is_none().then_some(()) }
            })
            .await;
            eventually("class finalizer released", Duration::from_secs(30), || {
                let classes = classes.clone();
                let class = class.clone();
                async move {
                    let c = classes.get(&class).await.ok()?;
                    (!c.finalizers().iter().any(|f| f == MACHINE_FINALIZER)).then_some(())
                }
            })
            .await;
            eprintln!(
                "a: phases {phases:?}; delete completed in {:.1}s",
                t.elapsed().as_secs_f64()
            );
            stack
        },
    )
    .await;
}

/// b) MachineDeployment with 3 replicas reconciled by MCM's binary + our controller → 3
/// devices; scale to 5, then 1 → device count follows, one device per Machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn b_machine_deployment_scales_with_mcm() {
    with_temp_ns(
        "b",
        Opts {
            with_mcm: true,
            provision_seconds: 1.0,
            ..Opts::default()
        },
        |stack| async move {
            let client = stack.client.clone();
            let ns = stack.ns.clone();
            apply_class_and_secret(&client, &ns).await;
            let md_name = format!("{ns}-md");
            apply_sample(&client, &ns, "machine-deployment.yaml", |md| {
                md["metadata"]["name"] = json!(md_name);
                md["spec"]["selector"]["matchLabels"]["name"] = json!(md_name);
                md["spec"]["template"]["metadata"]["labels"]["name"] = json!(md_name);
            })
            .await;
            let mds = dyn_api(&client, &ns, "MachineDeployment");
            for replicas in [3usize, 5, 1] {
                let t = Instant::now();
                mds.patch(
                    &md_name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                )
                .await
                .expect("scale");
                let s = &stack;
                eventually(
                    &format!("{replicas} devices and Machines"),
                    Duration::from_secs(120),
                    || async move {
                        let devices = s.devices().await;
                        let machines = s.machines().list(&Default::default()).await.ok()?.items;
                        let settled = machines.len() == replicas
                            && machines.iter().all(|m| {
                                m.metadata.deletion_timestamp.is_none() && m.provider_id().is_some()
                            });
                        (devices.len() == replicas && settled).then_some(())
                    },
                )
                .await;
                assert_bijection(&stack, replicas).await;
                eprintln!(
                    "b: {replicas} replicas settled in {:.1}s",
                    t.elapsed().as_secs_f64()
                );
            }
            stack
        },
    )
    .await;
}

/// c) A device with the class's cluster and role tags created directly in the sim (no Machine)
/// → deleted by orphan collection within the configured period; a Machine's device stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn c_orphan_device_is_collected() {
    with_temp_ns(
        "c",
        Opts {
            orphan_period: "3s",
            provision_seconds: 1.0,
            ..Opts::default()
        },
        |stack| async move {
            let client = stack.client.clone();
            let ns = stack.ns.clone();
            apply_class_and_secret(&client, &ns).await;
            let keep = format!("{ns}-keep");
            apply_sample(&client, &ns, "machine.yaml", |m| {
                m["metadata"]["name"] = json!(keep)
            })
            .await;
            let kept = eventually("Machine has a device", Duration::from_secs(60), || {
                let machines = stack.machines();
                let keep = keep.clone();
                async move { machines.get(&keep).await.ok()?.provider_id().map(uuid_of) }
            })
            .await;
            let orphan = stack
                .create_device_directly(&format!("{ns}-orphan"), &[CLUSTER_TAG, ROLE_TAG])
                .await;
            assert!(stack.devices().await.contains_key(&orphan));
            let t = Instant::now();
            let (s, o) = (&stack, &orphan);
            eventually(
                "orphan device deleted",
                Duration::from_secs(30),
                || async move { (!s.devices().await.contains_key(o)).then_some(()) },
            )
            .await;
            eprintln!(
                "c: orphan collected {:.1}s after it appeared (period 3s)",
                t.elapsed().as_secs_f64()
            );
            // Two more periods: the Machine's device must survive collection.
            tokio::time::sleep(Duration::from_secs(7)).await;
            let devices = stack.devices().await;
            assert_eq!(
                devices.keys().collect::<Vec<_>>(),
                vec![&kept],
                "only the Machine's device remains"
            );
            stack
        },
    )
    .await;
}

/// d) The controller dies in the middle of creates and is restarted → exactly one device per
/// Machine. To land the crash exactly between "the device exists at the provider" and
/// "`spec.providerID` is persisted", the controller is frozen (SIGSTOP) as soon as the sim sees
/// the first createDevice request, the driver is left to finish (its answers sit unread in
/// the frozen controller's socket), and the controller is then SIGKILLed and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn d_controller_killed_mid_create() {
    let opts = Opts {
        latency_ms: 300,
        provision_seconds: 1.0,
        ..Opts::default()
    };
    with_temp_ns("d", opts, |mut stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_class_and_secret(&client, &ns).await;
        let names: Vec<String> = (1..=4).map(|i| format!("{ns}-m{i}")).collect();
        for n in &names {
            apply_sample(&client, &ns, "machine.yaml", |m| m["metadata"]["name"] = json!(n)).await;
        }
        let s = &stack;
        eventually("first createDevice request", Duration::from_secs(60), || async move {
            let stats = s.sim_stats().await;
            (stats["requests"]["createDevice"].as_u64().unwrap_or(0) >= 1).then_some(())
        })
        .await;
        stack.controller.as_ref().expect("controller").signal("STOP").await;
        let s = &stack;
        eventually("the in-flight creates committed", Duration::from_secs(30), || async move {
            let stats = s.sim_stats().await;
            let asked = stats["requests"]["createDevice"].as_u64().unwrap_or(0);
            let made = stats["devices_created"].as_u64().unwrap_or(0);
            (made >= 1 && made >= asked).then_some(())
        })
        .await;
        // Give the driver time to finish its answers, then crash the frozen controller.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stack.kill_controller().await;
        let machines = stack.machines().list(&Default::default()).await.expect("list").items;
        let without_id = machines.iter().filter(|m| m.provider_id().is_none()).count();
        let created = stack.sim_stats().await["devices_created"].as_u64().unwrap_or(0);
        eprintln!("d: crashed with {created} device(s) at the provider and {without_id}/4 Machines without providerID");
        assert!(created >= 1 && without_id >= 1, "the crash did not land mid-create");

        let t = Instant::now();
        stack.start_controller().await;
        let s = &stack;
        eventually("4 devices, each claimed by one Machine", Duration::from_secs(90), || async move {
            let devices = s.devices().await;
            let machines = s.machines().list(&Default::default()).await.ok()?.items;
            (devices.len() == 4 && machines.iter().all(|m| m.provider_id().is_some())).then_some(())
        })
        .await;
        // No late duplicates either.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_bijection(&stack, 4).await;
        let stats = stack.sim_stats().await;
        assert_eq!(stats["devices_created"].as_u64(), Some(4), "devices ever created: {stats}");
        eprintln!("d: recovered {:.1}s after restart (includes the 3s leader lease expiry)", t.elapsed().as_secs_f64());
        stack
    })
    .await;
}

/// e) A MachineClass with a bad providerSpec → phase CrashLoopBackOff, errorCode
/// InvalidArgument, a message naming the field, and no device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn e_bad_provider_spec_crash_loops() {
    with_temp_ns("e", Opts::default(), |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_sample(&client, &ns, "secret.yaml", |_| {}).await;
        apply_sample(&client, &ns, "machine-class.yaml", |c| {
            c["providerSpec"]
                .as_object_mut()
                .expect("providerSpec")
                .remove("machineType");
        })
        .await;
        let name = format!("{ns}-bad");
        apply_sample(&client, &ns, "machine.yaml", |m| {
            m["metadata"]["name"] = json!(name)
        })
        .await;
        let m = machine_in_phase(
            &stack.machines(),
            &name,
            "CrashLoopBackOff",
            Duration::from_secs(60),
        )
        .await;
        let lo = m
            .status
            .as_ref()
            .and_then(|s| s.last_operation.clone())
            .expect("lastOperation");
        assert_eq!(lo.error_code.as_deref(), Some("InvalidArgument"), "{lo:?}");
        assert_eq!((lo.type_.as_str(), lo.state.as_str()), ("Create", "Failed"));
        assert!(
            lo.description.starts_with("Cloud provider message - "),
            "{}",
            lo.description
        );
        assert!(
            lo.description.contains("machineType"),
            "message should name the field: {}",
            lo.description
        );
        assert!(m.provider_id().is_none());
        assert!(stack.devices().await.is_empty(), "no device for a bad spec");
        assert_eq!(stack.sim_stats().await["devices_created"].as_u64(), Some(0));
        eprintln!("e: {}", lo.description);

        // Deleting it is blocked while the spec is bad (the driver cannot look for a device
        // it might have made, so MCM's rule applies: retry, never assume). Fixing the class
        // unblocks it through the class watch.
        let machines = stack.machines();
        machines
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete");
        let t = Instant::now();
        apply_sample(&client, &ns, "machine-class.yaml", |_| {}).await;
        machine_gone(&machines, &name, Duration::from_secs(30)).await;
        eprintln!(
            "e: deletion completed {:.1}s after the class was fixed",
            t.elapsed().as_secs_f64()
        );
        stack
    })
    .await;
}

/// f) Health from Node conditions: Running → (Node NotReady) Unknown → (health timeout)
/// Failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn f_node_health_drives_phases() {
    let opts = Opts {
        controller_flags: vec!["--machine-health-timeout=4s"],
        ..Opts::default()
    };
    with_temp_ns("f", opts, |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_class_and_secret(&client, &ns).await;
        let name = format!("{ns}-m1");
        apply_sample(&client, &ns, "machine.yaml", |m| m["metadata"]["name"] = json!(name)).await;
        let machines = stack.machines();
        machine_in_phase(&machines, &name, "Running", Duration::from_secs(60)).await;
        // The "kubelet" reports NotReady (the sim's registrar only refreshes every 10 s).
        let nodes: Api<Node> = Api::all(client.clone());
        let not_ready = json!({"status": {"conditions": [{
            "type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "e2e",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]}});
        nodes.patch_status(&name, &PatchParams::default(), &Patch::Strategic(not_ready)).await.expect("NotReady");
        let t = Instant::now();
        let unknown = machine_in_phase(&machines, &name, "Unknown", Duration::from_secs(30)).await;
        let lo = unknown.status.as_ref().and_then(|s| s.last_operation.clone()).expect("lastOperation");
        assert_eq!(lo.type_, "HealthCheck");
        let failed = machine_in_phase(&machines, &name, "Failed", Duration::from_secs(30)).await;
        let lo = failed.status.as_ref().and_then(|s| s.last_operation.clone()).expect("lastOperation");
        assert_eq!((lo.type_.as_str(), lo.state.as_str()), ("HealthCheck", "Failed"));
        eprintln!("f: Running → Unknown → Failed in {:.1}s (health timeout 4s)", t.elapsed().as_secs_f64());
        stack
    })
    .await;
}

/// A MachineClass with an unknown providerSpec field: CreateMachine would refuse it, so its
/// Machines go CrashLoopBackOff with InvalidArgument, are marked as never having sent a
/// create, and no device is made. Deleting one needs no API call at all: the Metal API never
/// hears its name (no create, no lookup, no delete). Once the class is mended, the other
/// Machine loses the mark and gets its device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn broken_class_machine_goes_from_crashloop_to_gone() {
    with_temp_ns("broken", Opts::default(), |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        apply_sample(&client, &ns, "secret.yaml", |_| {}).await;
        let broken = |c: &mut serde_json::Value| {
            let spec = c["providerSpec"].as_object_mut().expect("providerSpec");
            let machine_type = spec.remove("machineType").expect("machineType");
            spec.insert("machineTyp".into(), machine_type);
        };
        let class = apply_sample(&client, &ns, "machine-class.yaml", broken).await;
        let names = [format!("{ns}-m1"), format!("{ns}-m2")];
        for name in &names {
            apply_sample(&client, &ns, "machine.yaml", |m| {
                m["metadata"]["name"] = json!(name);
                m["spec"]["class"]["name"] = json!(class);
            })
            .await;
        }
        let machines = stack.machines();
        for name in &names {
            let m = machine_in_phase(&machines, name, "CrashLoopBackOff", Duration::from_secs(60))
                .await;
            let last = m
                .status
                .as_ref()
                .and_then(|s| s.last_operation.as_ref())
                .expect("lastOperation");
            assert_eq!(
                last.error_code.as_deref(),
                Some("InvalidArgument"),
                "{last:?}"
            );
            assert!(last.description.contains("machineTyp"), "{last:?}");
            assert!(m.provider_id().is_none());
            assert_eq!(
                m.annotations().get(NO_CREATE_SENT).map(String::as_str),
                Some("true"),
                "{:?}",
                m.annotations()
            );
        }

        let [m1, m2] = &names;
        machines
            .delete(m1, &Default::default())
            .await
            .expect("delete Machine");
        machine_gone(&machines, m1, Duration::from_secs(60)).await;
        let stats = stack.sim_stats().await;
        assert_eq!(
            stats["requests"]["createDevice"].as_u64().unwrap_or(0),
            0,
            "{stats}"
        );
        assert_eq!(
            stats["requests"]["deleteDevice"].as_u64().unwrap_or(0),
            0,
            "{stats}"
        );
        assert!(
            stats["hostname_lookups"].get(m1.as_str()).is_none(),
            "the API heard of {m1}: {stats}"
        );
        assert!(stack.devices().await.is_empty());

        // Mended: the mark goes, the create is sent, the device is made.
        apply_sample(&client, &ns, "machine-class.yaml", |_| {}).await;
        let m = eventually("Machine with a ProviderID", Duration::from_secs(60), || {
            let machines = machines.clone();
            async move {
                machines
                    .get(m2)
                    .await
                    .ok()
                    .filter(|m| m.provider_id().is_some())
            }
        })
        .await;
        assert!(
            !m.annotations().contains_key(NO_CREATE_SENT),
            "{:?}",
            m.annotations()
        );
        assert_eq!(stack.devices().await.len(), 1);
        stack
    })
    .await;
}
