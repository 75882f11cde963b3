//! One test's processes in its own namespace: `metal-driver sim`, `serve` and `controller`
//! (and MCM's `machine-controller-manager`), started, restarted and torn down.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use metal_driver::controller::crd::Machine;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::support::{
    BIN, PROJECT, TOKEN, apply_class_and_secret, apply_sample, dyn_api, e2e_kubeconfig, eventually,
    free_port, repo_root, uuid_of,
};

/// A subprocess whose first stdout line is `listening on URL`; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub url: String,
}

impl Proc {
    pub async fn spawn(name: &str, args: &[String], logs: &Path) -> Proc {
        let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("log file");
        let mut child = Command::new(BIN)
            .args(args)
            .env("METAL_DRIVER_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{name}: no `listening on` line within 60s (see {})",
                    logs.display()
                )
            })
            .expect("read stdout")
            .unwrap_or_else(|| panic!("{name} exited before listening (see {})", logs.display()));
        let url = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name}: unexpected first line {first:?}"))
            .to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proc {
            name: name.to_owned(),
            child,
            url,
        }
    }

    /// SIGKILL, no goodbye: what a crash looks like.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([format!("-{sig}"), pid.to_string()])
                .status();
        }
    }

    /// SIGTERM and wait: every role of ours exits on SIGTERM (a controller stopped while it
    /// is still starting too), so one that is still running after 15 s fails the test.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
            panic!("{} ignored SIGTERM for 15 s; killed", self.name);
        }
    }
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
    pub sim: Proc,
    pub serve: Proc,
    pub controller: Option<Proc>,
    pub controller_args: Vec<String>,
    pub controller_starts: usize,
    pub mcm: Option<Child>,
    /// The test's own controller flags (`Opts::controller_flags`), for the oracle.
    pub shared_flags: Vec<String>,
}

impl Stack {
    pub async fn start(client: Client, kubeconfig: &str, ns: &str, opts: &Opts) -> Stack {
        let logs = repo_root().join("target/e2e-logs").join(ns);
        std::fs::create_dir_all(&logs).expect("log dir");
        let s = |v: &str| v.to_owned();
        let target = opts.target_kubeconfig.as_deref().unwrap_or(kubeconfig);
        let sim = Proc::spawn(
            "sim",
            &[
                s("sim"),
                s("--listen=127.0.0.1:0"),
                format!("--provision-seconds={}", opts.provision_seconds),
                s("--deprovision-seconds=0.5"),
                format!("--latency-ms={}", opts.latency_ms),
                format!("--register-nodes-kubeconfig={target}"),
            ],
            &logs,
        )
        .await;
        let serve = Proc::spawn(
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
            http: reqwest::Client::new(),
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
        let p = Proc::spawn(&name, &self.controller_args, &self.logs).await;
        // The side port answers /healthz once the process is up.
        let health = format!("{}/healthz", p.url);
        let http = self.http.clone();
        eventually("controller /healthz", Duration::from_secs(30), || {
            let (http, health) = (http.clone(), health.clone());
            async move {
                http.get(&health)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        self.controller = Some(p);
    }

    pub async fn start_mcm(&mut self) {
        let bin = mcm_binary();
        let port = free_port();
        let log =
            std::fs::File::create(self.logs.join("machine-controller-manager.log")).expect("log");
        let child = Command::new(&bin)
            .args([
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
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.mcm = Some(child);
        let url = format!("http://127.0.0.1:{port}/healthz");
        let http = self.http.clone();
        eventually(
            "machine-controller-manager /healthz",
            Duration::from_secs(60),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    http.get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    /// Live devices of the sim project (deprovisioning ones excluded): UUID → device JSON.
    pub async fn devices(&self) -> BTreeMap<String, Value> {
        let url = format!("{}/projects/{PROJECT}/devices?per_page=1000", self.sim.url);
        let body: Value = self
            .http
            .get(&url)
            .header("X-Auth-Token", TOKEN)
            .send()
            .await
            .expect("list devices")
            .json()
            .await
            .expect("devices json");
        body["devices"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| !matches!(d["state"].as_str(), Some("deprovisioning" | "deleted")))
            .map(|d| (d["id"].as_str().unwrap_or_default().to_owned(), d))
            .collect()
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
        if let Some(mut mcm) = self.mcm.take() {
            let _ = mcm.start_kill();
            let _ = mcm.wait().await;
        }
        if let Some(mut c) = self.controller.take() {
            c.stop().await;
        }
        self.serve.stop().await;
        self.sim.stop().await;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &dp).await;
    }
}

/// The MCM binary: `$METAL_DRIVER_E2E_MCM_BIN`, else whatever `hack/kube-bins.sh` built.
pub fn mcm_binary() -> PathBuf {
    if let Ok(p) = std::env::var("METAL_DRIVER_E2E_MCM_BIN")
        && !p.is_empty()
    {
        return p.into();
    }
    let out = std::process::Command::new(repo_root().join("hack/kube-bins.sh"))
        .args(["--quiet", "machine-controller-manager"])
        .output()
        .expect("run hack/kube-bins.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("machine-controller-manager="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("hack/kube-bins.sh gave no machine-controller-manager: {text}"))
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
