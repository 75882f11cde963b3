//! The metrics Gardener keeps, scraped from the controller's side port after a flow.

use std::time::Duration;

use serde_json::json;

use crate::{
    stack::{Opts, scrape, with_temp_ns},
    support::{apply_class_and_secret, apply_sample, eventually, machine_gone, machine_in_phase},
};

/// Asserts `needle` is in `text`, printing the MCM part of `text` when it is not.
#[track_caller]
fn assert_series(text: &str, needle: &str) {
    if !text.contains(needle) {
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mcm_") || l.starts_with("process_"))
            .collect();
        panic!("missing {needle:?} in\n{}", ours.join("\n"));
    }
}

/// The series Gardener's ServiceMonitor keeps on port 10259 (`mcm_machine_*`,
/// `mcm_machine_controller_frozen`, `mcm_misc_scrape_failure_total`, `process_*`,
/// `mcm_workqueue_*`), scraped after a Machine of a MachineDeployment went Running and again
/// after it was deleted, with MCM's names, label sets and values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: hack/e2e.sh"]
async fn metrics_gardener_keeps_after_a_flow() {
    with_temp_ns("metrics", Opts::default(), |stack| async move {
        let client = stack.client.clone();
        let ns = stack.ns.clone();
        let class = apply_class_and_secret(&client, &ns).await;
        let name = format!("{ns}-m1");
        apply_sample(&client, &ns, "machine.yaml", |m| {
            m["metadata"]["name"] = json!(name);
            m["metadata"]["labels"] = json!({"name": "pool-a"});
            m["spec"]["nodeTemplate"] =
                json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "sv"}}});
        })
        .await;
        let machines = stack.machines();
        let m = machine_in_phase(&machines, &name, "Running", Duration::from_secs(90)).await;
        let pid = m.provider_id().expect("providerID").to_owned();
        let created = m
            .metadata
            .creation_timestamp
            .as_ref()
            .expect("creationTimestamp")
            .0
            .as_second();

        let text = scrape(&stack).await;
        let who = format!("name=\"{name}\",namespace=\"{ns}\"");
        let placement = format!(
            "{{namespace=\"{ns}\",machine_deployment=\"pool-a\",instance_type=\"c3.small.x86\",zone=\"sv\"}}"
        );
        for needle in [
            "# TYPE mcm_machine_items_total gauge\nmcm_machine_items_total 1\n".to_owned(),
            format!("mcm_machine_current_status_phase{{{who}}} 1\n"),
            format!(
                "mcm_machine_info{{{who},createdAt=\"{created}\",spec_provider_id=\"{pid}\",spec_class_api_group=\"\",spec_class_kind=\"MachineClass\",spec_class_name=\"{class}\",node_name=\"{name}\"}} 1\n"
            ),
            format!("mcm_machine_status_condition{{{who},condition=\"Ready\"}} 1\n"),
            "# TYPE mcm_machine_controller_frozen gauge\nmcm_machine_controller_frozen 0\n".to_owned(),
            "# TYPE mcm_misc_scrape_failure counter\n".to_owned(),
            format!("mcm_machine_create_duration_seconds{placement} "),
            format!("mcm_machine_join_duration_seconds{placement} "),
            "# TYPE mcm_machine_num_failed_join unknown\n".to_owned(),
            "process_cpu_seconds_total ".to_owned(),
            "process_resident_memory_bytes ".to_owned(),
            "process_open_fds ".to_owned(),
            "process_max_fds ".to_owned(),
            "process_start_time_seconds ".to_owned(),
            "process_virtual_memory_bytes ".to_owned(),
            "mcm_workqueue_adds_total{name=\"machine\"} ".to_owned(),
            "mcm_workqueue_depth{name=\"machine\"} ".to_owned(),
            "mcm_workqueue_work_duration_seconds_count{name=\"machine\"} ".to_owned(),
            "mcm_workqueue_queue_duration_seconds_count{name=\"machine\"} ".to_owned(),
            "mcm_workqueue_longest_running_processor_seconds{name=\"machine\"} ".to_owned(),
            "mcm_workqueue_unfinished_work_seconds{name=\"machine\"} ".to_owned(),
            "mcm_workqueue_adds_total{name=\"machineclass\"} ".to_owned(),
            // Our own series stay beside MCM's.
            "metal_driver_controller_reconciles_total{controller=\"machine\"} ".to_owned(),
        ] {
            assert_series(&text, &needle);
        }
        // Join took at least as long as create, both whole seconds.
        let value = |series: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(series))
                .unwrap_or_else(|| panic!("no {series}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let create = value(&format!("mcm_machine_create_duration_seconds{placement}"));
        let join = value(&format!("mcm_machine_join_duration_seconds{placement}"));
        assert!(create.fract() == 0.0 && join.fract() == 0.0 && join >= create, "{create} {join}");

        machines
            .delete(&name, &Default::default())
            .await
            .expect("delete Machine");
        machine_gone(&machines, &name, Duration::from_secs(60)).await;
        // The series are read from the controller's Machine cache, which hears of the delete
        // through its watch, a moment after the API server answers that it is gone.
        let text = eventually("the Machine gone from the series", Duration::from_secs(15), || {
            let stack = &stack;
            async move {
                let text = scrape(stack).await;
                text.contains("mcm_machine_items_total 0\n").then_some(text)
            }
        })
        .await;
        assert_series(&text, "mcm_machine_items_total 0\n");
        assert_series(&text, &format!("mcm_machine_delete_duration_seconds{placement} "));
        // A deleted Machine leaves the per-Machine series.
        assert!(!text.contains(&format!("mcm_machine_info{{{who}")), "{text}");
        assert!(stack.devices().await.is_empty());
        stack
    })
    .await;
}
