//! ListMachines sees every device, on every page, and nothing of another cluster.

use metal_driver::{metal::Operation, sim::SimArgs, testkit::fixture::device};

use crate::support::{CLUSTER_TAG, Env, PROJECT, ROLE_TAG, secrets, spec};

#[tokio::test]
async fn list_machines_pages_through_thousands_of_devices() {
    let mut args = SimArgs::for_tests();
    // A server that caps pages below what we ask for must not hide devices.
    args.per_page_max = 500;
    let env = Env::with(args, |_| {}).await;
    let project = PROJECT;
    let ours = 1_300;
    for i in 0..ours {
        env.sim.create_device_direct(
            project,
            device(
                &format!("ours-{i:04}"),
                vec![CLUSTER_TAG.into(), ROLE_TAG.into()],
            ),
        );
        env.sim.create_device_direct(
            project,
            device(
                &format!("theirs-{i:04}"),
                vec!["kubernetes.io/cluster/shoot--other".into(), ROLE_TAG.into()],
            ),
        );
    }
    // Made by another tool with our cluster tag but without a role tag: not a node of ours.
    env.sim
        .create_device_direct(project, device("bastion", vec![CLUSTER_TAG.into()]));
    assert_eq!(env.sim.devices().len(), 2 * ours + 1);

    let list = env.list(&spec(), &secrets()).await.expect("list");
    assert_eq!(list.len(), ours, "every one of ours, none of theirs");
    for (provider_id, name) in &list {
        assert!(provider_id.starts_with("equinixmetal://"), "{provider_id}");
        assert!(name.starts_with("ours-"), "{name}");
    }
    let names: std::collections::BTreeSet<_> = list.values().collect();
    assert_eq!(names.len(), ours, "hostnames map one to one");
    // Server-side tag filtering: ⌈1300 / 500⌉ pages, not a scan of all 2,601 devices.
    assert_eq!(env.api_calls(Operation::FindProjectDevices), 3);
    env.stop().await;
}
