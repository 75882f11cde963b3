//! One test's processes in its own namespace: `metal-driver sim`, `serve` and `controller`
//! (and MCM's `machine-controller-manager`), started, restarted and torn down.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use metal_driver::{
    controller::crd::Machine,
    testkit::child::{Child, Terminated},
};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::{
    BIN, PROJECT, TOKEN, apply_class_and_secret, apply_sample, dyn_api, e2e_kubeconfig, eventually,
    free_port, kube_bin, repo_root, uuid_of,
};

/// Starts `metal-driver <args>` (it prints `listening on URL` first), its stderr in
/// `<logs>/<name>.log`; killed on drop.
async fn spawn_ours(name: &str, args: &[String], logs: &Path) -> Child {
    let mut command = Command::new(BIN);
    // METAL_DRIVER_E2E_LOG_LEVEL (a tracing filter) makes a flaky run's logs say more.
    let level = std::env::var("METAL_DRIVER_E2E_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    command.args(args).env("METAL_DRIVER_LOG_LEVEL", level);
    let log = logs.join(format!("{name}.log"));
    Child::spawn(command, name, &log, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e} (see {})", logs.display()))
}

/// SIGTERM and wait; returns how long it took to exit. Every role of ours exits on SIGTERM
/// (a controller stopped while it is still starting too), so one that is still running after
/// 15 s fails the test.
pub async fn stop(child: Child) -> Duration {
    let what = child.what.clone();
    match child.terminate(Duration::from_secs(15)).await {
        Terminated::Exited(_, took) => took,
        Terminated::WaitFailed(e) => panic!("{what}: waiting for its exit failed: {e}"),
        Terminated::StillRunning => panic!("{what} ignored SIGTERM for 15 s; killed"),
    }
}

/// Waits (`timeout` at most) until `GET url` answers with a success status.
pub async fn wait_ok(http: &reqwest::Client, what: &str, url: &str, timeout: Duration) {
    eventually(what, timeout, || async move {
        http.get(url)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
}

/// `metal-driver sim` for a stack with `opts`, registering Nodes in the cluster of
/// `kubeconfig`.
pub async fn spawn_sim(logs: &Path, opts: &Opts, kubeconfig: &str) -> Child {
    let args = [
        "sim".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        format!("--provision-seconds={}", opts.provision_seconds),
        "--deprovision-seconds=0.5".to_owned(),
        format!("--latency-ms={}", opts.latency_ms),
        format!("--register-nodes-kubeconfig={kubeconfig}"),
    ];
    spawn_ours("sim", &args, logs).await
}

/// Live devices of the sim project at `sim_url` (deprovisioning ones excluded): UUID →
/// device JSON.
pub async fn list_devices(
    http: &reqwest::Client,
    sim_url: &str,
) -> reqwest::Result<BTreeMap<String, Value>> {
    let url = format!("{sim_url}/projects/{PROJECT}/devices?per_page=1000");
    let body: Value = http
        .get(&url)
        .header("X-Auth-Token", TOKEN)
        .send()
        .await?
        .json()
        .await?;
    Ok(body["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| !matches!(d["state"].as_str(), Some("deprovisioning" | "deleted")))
        .map(|d| (d["id"].as_str().unwrap_or_default().to_owned(), d))
        .collect())
}

/// Options of one test's stack.
#[derive(Clone)]
pub struct Opts {
    pub provision_seconds: f64,
    pub latency_ms: u64,
    pub orphan_period: &'static str,
    pub with_mcm: bool,
    /// Flags for `metal-driver controller`, replacing a default of the same name. In an oracle
    /// scenario they go to MCM's machine controller as well, so only MCM's flag names belong
    /// there (ours mirror them).
    pub controller_flags: Vec<&'static str>,
    /// Kubeconfig of a separate target cluster (Nodes); default: the control cluster.
    pub target_kubeconfig: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            provision_seconds: 2.0,
            latency_ms: 0,
            orphan_period: "15m",
            with_mcm: false,
            controller_flags: Vec::new(),
            target_kubeconfig: None,
        }
    }
}

/// sim + serve + controller (+ MCM) for one namespace.
pub struct Stack {
    pub ns: String,
    pub kubeconfig: String,
    pub logs: PathBuf,
    pub client: Client,
    pub http: reqwest::Client,
    sim: Child,
    pub serve: Child,
    pub controller: Option<Child>,
    controller_args: Vec<String>,
    controller_starts: usize,
    mcm: Option<Child>,
    /// The test's own controller flags (`Opts::controller_flags`), for the oracle.
    pub shared_flags: Vec<String>,
}

impl Stack {
    pub async fn start(client: Client, kubeconfig: &str, ns: &str, opts: &Opts) -> Stack {
        let logs = log_dir(ns);
        let s = |v: &str| v.to_owned();
        let target = opts.target_kubeconfig.as_deref().unwrap_or(kubeconfig);
        let sim = spawn_sim(&logs, opts, target).await;
        let serve = spawn_ours(
            "serve",
            &[
                s("serve"),
                s("--endpoint=tcp://127.0.0.1:0"),
                format!("--metal-api-url={}", sim.url),
                s("--http-addr=127.0.0.1:0"),
            ],
            &logs,
        )
        .await;
        let mut controller_args = vec![
            s("controller"),
            format!("--control-kubeconfig={kubeconfig}"),
            format!("--target-kubeconfig={target}"),
            format!("--namespace={ns}"),
            format!("--cmi-endpoint={}", serve.url),
            s("--address=127.0.0.1"),
            s("--port=0"),
            format!("--machine-safety-orphan-vms-period={}", opts.orphan_period),
            s("--machine-health-recheck-period=5s"),
            s("--leader-elect-lease-duration=3s"),
            s("--leader-elect-renew-deadline=2s"),
            s("--leader-elect-retry-period=500ms"),
        ];
        // A test's flag replaces the default of the same name (e.g. --target-kubeconfig=none).
        let flag_name = |a: &str| a.split('=').next().unwrap_or(a).to_owned();
        let overridden: BTreeSet<String> =
            opts.controller_flags.iter().map(|f| flag_name(f)).collect();
        controller_args.retain(|a| !overridden.contains(&flag_name(a)));
        controller_args.extend(opts.controller_flags.iter().map(|f| s(f)));
        let mut stack = Stack {
            ns: ns.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            logs,
            client,
            http: metal_driver::metal::tls::http_client_builder()
                .build()
                .unwrap(),
            sim,
            serve,
            controller: None,
            controller_args,
            controller_starts: 0,
            mcm: None,
            shared_flags: opts.controller_flags.iter().map(|f| s(f)).collect(),
        };
        stack.start_controller().await;
        if opts.with_mcm {
            stack.start_mcm().await;
        }
        stack
    }

    pub async fn start_controller(&mut self) {
        self.controller_starts += 1;
        let name = format!("controller-{}", self.controller_starts);
        let p = spawn_ours(&name, &self.controller_args, &self.logs).await;
        // The side port answers /healthz once the process is up.
        let health = format!("{}/healthz", p.url);
        wait_ok(
            &self.http,
            "controller /healthz",
            &health,
            Duration::from_secs(30),
        )
        .await;
        self.controller = Some(p);
    }

    /// SIGTERM to the controller (see [`stop`]); returns how long it took to exit.
    pub async fn stop_controller(&mut self) -> Duration {
        stop(self.controller.take().expect("controller")).await
    }

    /// SIGKILL to the controller, no goodbye: what a crash looks like.
    pub async fn kill_controller(&mut self) {
        self.controller.take().expect("controller").kill().await;
    }

    /// Starts a Go peer (MCM's binary, the oracle) that listens on `port` of 127.0.0.1 with
    /// `args`, its stdout and stderr in `<logs>/<name>.log`, and waits until it is healthy.
    pub async fn spawn_go_peer(&self, name: &str, bin: &Path, args: &[String], port: u16) -> Child {
        let mut command = Command::new(bin);
        command.args(args);
        let log = self.logs.join(format!("{name}.log"));
        let url = format!("http://127.0.0.1:{port}");
        let child =
            Child::spawn_at(command, name, &log, url.clone()).unwrap_or_else(|e| panic!("{e}"));
        wait_ok(
            &self.http,
            &format!("{name} /healthz"),
            &format!("{url}/healthz"),
            Duration::from_secs(60),
        )
        .await;
        child
    }

    async fn start_mcm(&mut self) {
        let port = free_port();
        let args = [
            format!("--control-kubeconfig={}", self.kubeconfig),
            format!("--target-kubeconfig={}", self.kubeconfig),
            format!("--namespace={}", self.ns),
            "--leader-elect=false".to_owned(),
            "--address=127.0.0.1".to_owned(),
            format!("--port={port}"),
            "--safety-up=2".to_owned(),
            "--safety-down=1".to_owned(),
            "--machine-safety-overshooting-period=1m".to_owned(),
            "--v=3".to_owned(),
        ];
        let bin = kube_bin("METAL_DRIVER_E2E_MCM_BIN", "machine-controller-manager");
        let mcm = self
            .spawn_go_peer("machine-controller-manager", &bin, &args, port)
            .await;
        self.mcm = Some(mcm);
    }

    /// Live devices of the sim project (deprovisioning ones excluded): UUID → device JSON.
    pub async fn devices(&self) -> BTreeMap<String, Value> {
        list_devices(&self.http, &self.sim.url)
            .await
            .expect("list devices")
    }

    pub async fn sim_stats(&self) -> Value {
        self.http
            .get(format!("{}/_sim/stats", self.sim.url))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json")
    }

    pub async fn create_device_directly(&self, hostname: &str, tags: &[&str]) -> String {
        let url = format!("{}/projects/{PROJECT}/devices", self.sim.url);
        let resp = self
            .http
            .post(&url)
            .header("X-Auth-Token", TOKEN)
            .json(&json!({
                "hostname": hostname, "plan": "c3.small.x86", "metro": "sv",
                "operating_system": "ubuntu_22_04", "billing_cycle": "hourly", "tags": tags,
            }))
            .send()
            .await
            .expect("create device");
        assert!(
            resp.status().is_success(),
            "sim refused the device: {}",
            resp.text().await.unwrap_or_default()
        );
        let d: Value = resp.json().await.expect("json");
        d["id"].as_str().expect("id").to_owned()
    }

    pub fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Deletes every Machine(Deployment/Set) and waits until the controller has released
    /// them, then stops the processes.
    pub async fn teardown(mut self) {
        let dp = DeleteParams::default();
        for kind in ["MachineDeployment", "MachineSet"] {
            let api = dyn_api(&self.client, &self.ns, kind);
            let _ = api.delete_collection(&dp, &Default::default()).await;
        }
        let machines = self.machines();
        let _ = machines.delete_collection(&dp, &Default::default()).await;
        if self.controller.is_some() {
            let ok = tokio::time::timeout(Duration::from_secs(60), async {
                while !machines
                    .list(&Default::default())
                    .await
                    .map(|l| l.items.is_empty())
                    .unwrap_or(true)
                {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
            .await;
            if ok.is_err() {
                eprintln!(
                    "teardown: Machines in {} not released within 60s; removing finalizers",
                    self.ns
                );
                for m in machines
                    .list(&Default::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    let patch = json!({"metadata": {"finalizers": null}});
                    let _ = machines
                        .patch(&m.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                        .await;
                }
            }
        }
        if let Some(mcm) = self.mcm.take() {
            mcm.kill().await;
        }
        if let Some(c) = self.controller.take() {
            stop(c).await;
        }
        stop(self.serve).await;
        stop(self.sim).await;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &dp).await;
    }
}

/// Creates the namespace `e2e-<tag>-<random>` and returns its name.
pub async fn create_namespace(client: &Client, tag: &str) -> String {
    let ns = format!(
        "e2e-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
            })),
        )
        .await
        .expect("create namespace");
    ns
}

/// `target/e2e-logs/<ns>/`, created: where the processes of namespace `ns` log.
pub fn log_dir(ns: &str) -> PathBuf {
    let logs = repo_root().join("target/e2e-logs").join(ns);
    std::fs::create_dir_all(&logs).expect("log dir");
    logs
}

/// Creates a namespace `e2e-<tag>-<random>`, runs `body`, tears the stack down whether or not
/// `body` panicked, then re-raises its panic.
pub async fn with_temp_ns<F, Fut>(tag: &str, opts: Opts, body: F)
where
    F: FnOnce(Stack) -> Fut,
    Fut: Future<Output = Stack>,
{
    let Some(kubeconfig) = e2e_kubeconfig() else {
        return;
    };
    let client = Client::try_default()
        .await
        .expect("kube client from KUBECONFIG");
    let ns = create_namespace(&client, tag).await;
    let started = Instant::now();
    let stack = Stack::start(client, &kubeconfig, &ns, &opts).await;
    let logs = stack.logs.clone();
    // The body owns the stack and hands it back; on panic the processes die with it
    // (kill_on_drop), and the namespace is left for inspection.
    match std::panic::AssertUnwindSafe(body(stack))
        .catch_unwind()
        .await
    {
        Ok(stack) => {
            eprintln!(
                "{ns}: scenario passed in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            stack.teardown().await;
        }
        Err(panic) => {
            eprintln!(
                "{ns}: FAILED after {:.1}s; logs in {}",
                started.elapsed().as_secs_f64(),
                logs.display()
            );
            std::panic::resume_unwind(panic);
        }
    }
}

/// Asserts that live devices and Machines correspond one to one via `spec.providerID`.
pub async fn assert_bijection(stack: &Stack, want: usize) {
    let devices = stack.devices().await;
    let machines = stack
        .machines()
        .list(&Default::default())
        .await
        .expect("list machines")
        .items;
    let live: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(devices.len(), want, "devices: {:?}", devices.keys());
    assert_eq!(
        live.len(),
        want,
        "machines: {:?}",
        live.iter().map(|m| m.name_any()).collect::<Vec<_>>()
    );
    let claimed: Vec<String> = live
        .iter()
        .filter_map(|m| m.provider_id())
        .map(uuid_of)
        .collect();
    let unique: BTreeSet<&String> = claimed.iter().collect();
    assert_eq!(
        unique.len(),
        claimed.len(),
        "two Machines claim one device: {claimed:?}"
    );
    let device_ids: BTreeSet<&String> = devices.keys().collect();
    assert_eq!(unique, device_ids, "Machines' providerIDs vs devices");
}

/// The sample class and Secret, and the sample Machine named `<namespace>-m1` (returned).
pub async fn first_machine(stack: &Stack) -> String {
    apply_class_and_secret(&stack.client, &stack.ns).await;
    let name = format!("{}-m1", stack.ns);
    apply_sample(&stack.client, &stack.ns, "machine.yaml", |m| {
        m["metadata"]["name"] = json!(name)
    })
    .await;
    name
}

/// Waits (30 s at most) until the controller's `mcm_machine_controller_frozen` gauge says
/// `frozen`.
pub async fn wait_frozen(stack: &Stack, frozen: bool) {
    let want = format!("mcm_machine_controller_frozen {}", u8::from(frozen));
    let want = &want;
    eventually(want, Duration::from_secs(30), || async move {
        scrape(stack).await.contains(want.as_str()).then_some(())
    })
    .await;
}

/// Scrapes the controller's side port.
pub async fn scrape(stack: &Stack) -> String {
    let url = format!(
        "{}/metrics",
        stack.controller.as_ref().expect("controller").url
    );
    stack
        .http
        .get(&url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}
