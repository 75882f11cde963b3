//! Criterion micro-benchmarks of the hot pure functions on every RPC's path:
//! providerSpec decode + validate, ProviderID parse, and decoding one full page (1,000
//! devices) of `GET /projects/{id}/devices` as the simulator serves it.
//!
//! `cargo bench --bench pure` measures; `cargo bench --bench pure -- --test` (what
//! `make bench-smoke` runs) executes each benchmark once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use metal_driver::metal::types::DeviceList;
use metal_driver::provider::spec::ProviderSpec;
use metal_driver::provider_id::ProviderId;
use metal_driver::sim::{self, DEFAULT_PROJECT, DEFAULT_TOKEN, SimArgs};
use metal_driver::testkit::fixture;

/// A providerSpec as Gardener's Equinix Metal extension emits it for a worker pool.
const SPEC: &str = r#"{
  "projectID": "5d1ef2a4-0000-4000-8000-000000000001",
  "metro": "sv",
  "facilities": ["sv15", "sv16"],
  "machineType": "c3.small.x86",
  "OS": "ubuntu_22_04",
  "billingCycle": "hourly",
  "tags": [
    "kubernetes.io/cluster/shoot--garden--bench",
    "kubernetes.io/role/node",
    "worker.gardener.cloud/pool:cpu-worker"
  ],
  "sshKeys": ["2f5e0c6a-1b1a-4c43-9d3e-7e0b5c3b8a11"],
  "ipAddresses": [
    {"addressFamily": 4, "public": false, "cidr": 31},
    {"addressFamily": 4, "public": true, "cidr": 31},
    {"addressFamily": 6, "public": true, "cidr": 127}
  ],
  "customData": {"gardener": {"pool": "cpu-worker", "zone": "sv15"}},
  "description": "gardener worker"
}"#;

fn provider_spec(c: &mut Criterion) {
    let bytes = SPEC.as_bytes();
    // A bad spec must still be cheap to reject: errors are on the hot path of a
    // CrashLoopBackOff'ing MachineClass.
    let typo = SPEC.replacen("machineType", "machinetype", 1);
    assert!(
        ProviderSpec::decode(bytes).is_ok(),
        "the bench spec is valid"
    );
    assert!(ProviderSpec::decode(typo.as_bytes()).is_err());
    let mut g = c.benchmark_group("providerSpec");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("decode+validate", |b| {
        b.iter(|| ProviderSpec::decode(black_box(bytes)))
    });
    g.bench_function("decode+reject unknown field", |b| {
        b.iter(|| ProviderSpec::decode(black_box(typo.as_bytes())))
    });
    g.finish();
}

fn provider_id(c: &mut Criterion) {
    let forms = [
        (
            "equinixmetal://uuid",
            "equinixmetal://8a1f3e2c-5b7d-4c1e-9f0a-1b2c3d4e5f60",
        ),
        (
            "equinixmetal://metro/uuid",
            "equinixmetal://sv/8a1f3e2c-5b7d-4c1e-9f0a-1b2c3d4e5f60",
        ),
        (
            "packet://uuid",
            "packet://8a1f3e2c-5b7d-4c1e-9f0a-1b2c3d4e5f60",
        ),
        ("bare uuid", "8a1f3e2c-5b7d-4c1e-9f0a-1b2c3d4e5f60"),
        ("invalid", "aws:///eu-west-1a/i-0abc"),
    ];
    let mut g = c.benchmark_group("ProviderId::parse");
    for (name, s) in forms {
        g.bench_function(name, |b| b.iter(|| ProviderId::parse(black_box(s))));
    }
    g.finish();
}

/// One page of 1,000 devices, byte for byte what the simulator answers to
/// `GET /projects/{id}/devices?per_page=1000` (IPs, metro, plan, OS, tags...).
fn device_page() -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sim = sim::spawn(SimArgs::for_tests())
            .await
            .expect("simulator starts");
        for i in 0..1000 {
            sim.create_device_direct(
                DEFAULT_PROJECT,
                fixture::machine_device(
                    &format!("shoot--garden--bench-cpu-worker-z1-{i:05}"),
                    "kubernetes.io/cluster/shoot--garden--bench",
                ),
            );
        }
        let url = format!(
            "{}/projects/{DEFAULT_PROJECT}/devices?per_page=1000&page=1",
            sim.base_url()
        );
        let body = metal_driver::metal::tls::http_client_builder()
            .build()
            .expect("http client")
            .get(url)
            .header("X-Auth-Token", DEFAULT_TOKEN)
            .send()
            .await
            .expect("list request")
            .error_for_status()
            .expect("list answered 200")
            .bytes()
            .await
            .expect("list body")
            .to_vec();
        sim.shutdown().await;
        body
    })
}

fn page_decode(c: &mut Criterion) {
    let page = device_page();
    let decoded: DeviceList = serde_json::from_slice(&page).expect("page decodes");
    assert_eq!(decoded.devices.len(), 1000);
    let mut g = c.benchmark_group("DeviceList");
    g.throughput(Throughput::Bytes(page.len() as u64));
    g.sample_size(30);
    g.bench_function("decode 1000-device page", |b| {
        b.iter(|| serde_json::from_slice::<DeviceList>(black_box(&page)).map(|l| l.devices.len()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = provider_spec, provider_id, page_decode
}
criterion_main!(benches);
