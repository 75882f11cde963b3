//! `metal-driver machine create|status|list|shutdown|delete`: a CLI client of a running driver.
//!
//! Why: to drive (and debug) a driver exactly as MCM's machine controller would, without a
//! cluster. The class and Secrets come from kubectl-style YAML files (see [`crate::manifest`]),
//! so the same `kubernetes/*.yaml` a cluster would get can be tried against `serve` + `sim`.
//!
//! Output is for humans by default and one JSON object with `-o json`. A gRPC error becomes
//! `<Code>: <message>` and a non-zero exit. Secret data is sent to the driver and nowhere else.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::json;

use crate::{
    cmi::{
        calls::{CallError, MachineRef},
        client::{ClientError, CmiClient},
    },
    manifest::{self, ManifestError},
    secret_data::{MissingUserData, SecretData},
};

/// Flags of `metal-driver machine`. They are global, so they may come before or after the
/// action (`machine --endpoint … create --name m1`).
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  metal-driver machine create --endpoint tcp://127.0.0.1:9090 --class kubernetes/machine-class.yaml --secret kubernetes/secret.yaml --name m1\n  metal-driver machine list --class kubernetes/machine-class.yaml --secret kubernetes/secret.yaml -o json"
)]
pub struct MachineArgs {
    /// What to do with the machine.
    #[command(subcommand)]
    pub action: MachineAction,

    /// TLS towards a driver started with --tls-cert (and mutual TLS with --tls-client-ca).
    #[command(flatten)]
    pub tls: crate::cmi::client::ClientTlsArgs,

    /// The driver's CMI endpoint: tcp://HOST:PORT or unix:///PATH.
    #[arg(long, env = "CMI_ENDPOINT", value_name = "ENDPOINT", global = true)]
    pub endpoint: Option<String>,

    /// MachineClass YAML file (kubectl style; a multi-document file may also hold its
    /// Secrets). Its top-level providerSpec is sent as the ProviderSpec of every call.
    #[arg(long, value_name = "FILE", global = true)]
    pub class: Option<PathBuf>,

    /// Secret YAML file, repeatable; data/stringData are merged in the order given, later
    /// files win (MCM merges secretRef, then credentialsSecretRef). Without any --secret, the
    /// Secrets in the --class file are used.
    #[arg(long = "secret", value_name = "FILE", global = true)]
    pub secrets: Vec<PathBuf>,

    /// Machine name (the MCM Machine object's name; the device hostname). Needed by create,
    /// status, shutdown and delete.
    #[arg(long, value_name = "NAME", global = true)]
    pub name: Option<String>,

    /// ProviderID of the machine (equinixmetal://UUID), for status, shutdown and delete;
    /// without it the driver finds the device by the machine name.
    #[arg(long, value_name = "ID", global = true)]
    pub provider_id: Option<String>,

    /// Deadline of the call (sent as grpc-timeout), e.g. 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,

    /// Output format: text for humans, json for one JSON object on stdout.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output: OutputFormat,
}

/// The CMI Machine call to make.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineAction {
    /// CreateMachine: create (or find, it is idempotent) the device for --name.
    Create,
    /// GetMachineStatus: the ProviderID and node name of --name.
    Status,
    /// ListMachines: every machine of the class's cluster (ProviderID → name).
    List,
    /// ShutDownMachine: power off --name (kept, still billed).
    Shutdown,
    /// DeleteMachine: delete the device of --name.
    Delete,
}

impl MachineAction {
    /// The lower-case name, as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Status => "status",
            Self::List => "list",
            Self::Shutdown => "shutdown",
            Self::Delete => "delete",
        }
    }
}

/// How results are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// One line per result, for humans.
    #[default]
    Text,
    /// One JSON object, for scripts.
    Json,
}

/// Why a `machine` command failed; `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum MachineCliError {
    /// Neither `--endpoint` nor `CMI_ENDPOINT` was given.
    #[error(
        "no driver endpoint: pass --endpoint or set CMI_ENDPOINT (tcp://HOST:PORT or unix:///PATH)"
    )]
    NoEndpoint,
    /// A flag the action needs is absent, or one it cannot use is present.
    #[error("{action}: {problem}")]
    Usage {
        action: &'static str,
        problem: String,
    },
    /// The MachineClass or a Secret file could not be decoded.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// create: the Secrets have no userData, which the controller would refuse as well.
    #[error(transparent)]
    Secrets(#[from] MissingUserData),
    /// The endpoint is malformed or the driver is unreachable.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The driver answered with a gRPC error.
    #[error("{code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
}

impl From<CallError> for MachineCliError {
    fn from(error: CallError) -> Self {
        Self::Rpc {
            code: error.code(),
            message: error.message().to_owned(),
        }
    }
}

/// What a call returned, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created {
        machine: String,
        provider_id: String,
        node_name: String,
    },
    Status {
        machine: String,
        provider_id: String,
        node_name: String,
    },
    /// ProviderID → machine name.
    Listed {
        machines: BTreeMap<String, String>,
    },
    ShutDown {
        machine: String,
    },
    Deleted {
        machine: String,
    },
}

/// Runs one `machine` action and prints its result on stdout.
pub async fn run(args: MachineArgs) -> Result<(), MachineCliError> {
    let output = args.output;
    let outcome = execute(&args).await?;
    println!("{}", render(&outcome, output));
    Ok(())
}

/// Checks the flags, reads the files, connects and makes the call. Separate from [`run`] so
/// tests can see the result without capturing stdout.
pub async fn execute(args: &MachineArgs) -> Result<Outcome, MachineCliError> {
    let action = args.action;
    let usage = |problem: &str| MachineCliError::Usage {
        action: action.as_str(),
        problem: problem.to_owned(),
    };
    let class_path = args
        .class
        .as_ref()
        .ok_or_else(|| usage("--class FILE is required"))?;
    let name = match action {
        MachineAction::List => {
            if args.name.is_some() || args.provider_id.is_some() {
                return Err(usage(
                    "--name and --provider-id do not apply (list reports every machine)",
                ));
            }
            String::new()
        }
        _ => args
            .name
            .clone()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| usage("--name NAME is required"))?,
    };
    if action == MachineAction::Create && args.provider_id.is_some() {
        return Err(usage(
            "--provider-id does not apply (the driver assigns it)",
        ));
    }
    let endpoint = args
        .endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .ok_or(MachineCliError::NoEndpoint)?;

    let class = manifest::load_machine_class(class_path)?;
    let secrets = load_secrets(args, class_path)?;
    let provider_spec = class.provider_spec;
    let provider_id = args.provider_id.clone().unwrap_or_default();

    let tls = args.tls.load()?;
    let client = CmiClient::connect_tls(endpoint, args.timeout, tls.as_ref()).await?;
    let merged = secrets.to_cmi();
    let machine = MachineRef::new(&name, &provider_spec, &merged).with_provider_id(&provider_id);
    let outcome = match action {
        MachineAction::Create => {
            let for_create = secrets.for_create(&name)?;
            let created = client
                .create_machine(MachineRef {
                    secrets: &for_create,
                    ..machine
                })
                .await?;
            Outcome::Created {
                machine: name,
                provider_id: created.provider_id,
                node_name: created.node_name,
            }
        }
        MachineAction::Status => {
            let status = client.get_machine_status(machine).await?;
            Outcome::Status {
                machine: name,
                provider_id: status.provider_id,
                node_name: status.node_name,
            }
        }
        MachineAction::List => {
            let listed = client.list_machines(&provider_spec, &merged).await?;
            Outcome::Listed {
                machines: listed.into_iter().collect(),
            }
        }
        MachineAction::Shutdown => {
            client.shut_down_machine(machine).await?;
            Outcome::ShutDown { machine: name }
        }
        MachineAction::Delete => {
            client.delete_machine(machine).await?;
            Outcome::Deleted { machine: name }
        }
    };
    Ok(outcome)
}

/// The `--secret` files merged in order, or, without any, the Secrets bundled in the class
/// file (none is fine: create then reports the missing userData, and the driver any other
/// key it misses).
fn load_secrets(args: &MachineArgs, class_path: &Path) -> Result<SecretData, ManifestError> {
    if !args.secrets.is_empty() {
        return manifest::load_secrets(&args.secrets);
    }
    let text = std::fs::read_to_string(class_path).map_err(|source| ManifestError::Read {
        file: class_path.display().to_string(),
        source,
    })?;
    match manifest::parse_secrets(&class_path.display().to_string(), &text) {
        Ok(secrets) => Ok(SecretData::merge(
            secrets.into_iter().map(|secret| secret.data),
        )),
        Err(ManifestError::WrongKind { .. }) => Ok(SecretData::default()),
        Err(error) => Err(error),
    }
}

/// Formats an outcome: a line (or lines) of text, or one compact JSON object.
pub fn render(outcome: &Outcome, format: OutputFormat) -> String {
    match format {
        OutputFormat::Text => render_text(outcome),
        OutputFormat::Json => render_json(outcome).to_string(),
    }
}

fn with_node(provider_id: &str, node_name: &str) -> String {
    if node_name.is_empty() {
        provider_id.to_owned()
    } else {
        format!("{provider_id} (node {node_name})")
    }
}

fn render_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Created {
            machine,
            provider_id,
            node_name,
        } => {
            format!(
                "created machine {machine}: {}",
                with_node(provider_id, node_name)
            )
        }
        Outcome::Status {
            machine,
            provider_id,
            node_name,
        } => {
            format!("machine {machine}: {}", with_node(provider_id, node_name))
        }
        Outcome::Listed { machines } if machines.is_empty() => "no machines".to_owned(),
        Outcome::Listed { machines } => {
            // Sorted by name, aligned: NAME  PROVIDER-ID.
            let mut rows: Vec<(&String, &String)> =
                machines.iter().map(|(id, name)| (name, id)).collect();
            rows.sort();
            let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
            rows.iter()
                .map(|(name, id)| format!("{name:<width$}  {id}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Outcome::ShutDown { machine } => format!("shut down machine {machine}"),
        Outcome::Deleted { machine } => format!("deleted machine {machine}"),
    }
}

fn render_json(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Created {
            machine,
            provider_id,
            node_name,
        } => json!({
            "action": "create", "machineName": machine, "providerID": provider_id, "nodeName": node_name,
        }),
        Outcome::Status {
            machine,
            provider_id,
            node_name,
        } => json!({
            "action": "status", "machineName": machine, "providerID": provider_id, "nodeName": node_name,
        }),
        Outcome::Listed { machines } => json!({ "action": "list", "machineList": machines }),
        Outcome::ShutDown { machine } => json!({ "action": "shutdown", "machineName": machine }),
        Outcome::Deleted { machine } => json!({ "action": "delete", "machineName": machine }),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use clap::Parser;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::cmi::v1::{
        CreateMachineRequest, CreateMachineResponse, DeleteMachineRequest, DeleteMachineResponse,
        GetMachineStatusRequest, GetMachineStatusResponse, GetVolumeIDsRequest,
        GetVolumeIDsResponse, ListMachinesRequest, ListMachinesResponse, ShutDownMachineRequest,
        ShutDownMachineResponse,
        machine_server::{Machine, MachineServer},
    };

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(clap::Subcommand, Debug)]
    enum TestCommand {
        Machine(MachineArgs),
    }

    fn parse(argv: &[&str]) -> Result<MachineArgs, clap::Error> {
        let mut full = vec!["metal-driver", "machine"];
        full.extend_from_slice(argv);
        TestCli::try_parse_from(full).map(|cli| match cli.command {
            TestCommand::Machine(args) => args,
        })
    }

    fn samples(file: &str) -> String {
        manifest::sample_dir().join(file).display().to_string()
    }

    #[test]
    fn flags_parse_before_and_after_the_action() {
        let args = parse(&[
            "--endpoint",
            "tcp://127.0.0.1:1",
            "create",
            "--class",
            "c.yaml",
            "--secret",
            "a.yaml",
            "--secret",
            "b.yaml",
            "--name",
            "m1",
            "--timeout",
            "30s",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(args.action, MachineAction::Create);
        assert_eq!(args.endpoint.as_deref(), Some("tcp://127.0.0.1:1"));
        assert_eq!(
            args.secrets,
            vec![PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]
        );
        assert_eq!(args.timeout, Duration::from_secs(30));
        assert_eq!(args.output, OutputFormat::Json);
        let args = parse(&["list"]).unwrap();
        assert_eq!(args.timeout, Duration::from_secs(120));
        assert_eq!(args.output, OutputFormat::Text);
        assert!(parse(&["reboot"]).is_err());
        assert!(parse(&["list", "-o", "yaml"]).is_err());
    }

    #[tokio::test]
    async fn usage_errors_come_before_any_io() {
        let class = samples("machine-class.yaml");
        let endpoint = "tcp://127.0.0.1:1";
        let cases: &[(&[&str], &str)] = &[
            (
                &["create", "--name", "m1"],
                "create: --class FILE is required",
            ),
            (
                &["status", "--class", &class],
                "status: --name NAME is required",
            ),
            (
                &["list", "--class", &class, "--name", "m1"],
                "list: --name and --provider-id do not apply",
            ),
            (
                &[
                    "create",
                    "--class",
                    &class,
                    "--name",
                    "m1",
                    "--provider-id",
                    "x",
                ],
                "create: --provider-id does not apply",
            ),
        ];
        for (argv, expected) in cases {
            let mut argv = argv.to_vec();
            argv.extend(["--endpoint", endpoint]);
            let error = execute(&parse(&argv).unwrap())
                .await
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(expected), "{error}");
        }
        let mut args = parse(&["list", "--class", &class]).unwrap();
        args.endpoint = None;
        assert!(matches!(
            execute(&args).await,
            Err(MachineCliError::NoEndpoint)
        ));
    }

    #[test]
    fn text_and_json_output() {
        let created = Outcome::Created {
            machine: "m1".into(),
            provider_id: "equinixmetal://abc".into(),
            node_name: "m1".into(),
        };
        assert_eq!(
            render(&created, OutputFormat::Text),
            "created machine m1: equinixmetal://abc (node m1)"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&created, OutputFormat::Json)).unwrap();
        assert_eq!(json["providerID"], "equinixmetal://abc");
        assert_eq!(json["nodeName"], "m1");
        let listed = Outcome::Listed {
            machines: BTreeMap::from([
                ("equinixmetal://2".to_owned(), "b".to_owned()),
                ("equinixmetal://1".to_owned(), "long-a".to_owned()),
            ]),
        };
        assert_eq!(
            render(&listed, OutputFormat::Text),
            "b       equinixmetal://2\nlong-a  equinixmetal://1"
        );
        let rendered = render(&listed, OutputFormat::Json);
        assert!(!rendered.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&rendered).unwrap();
        assert_eq!(json["machineList"]["equinixmetal://1"], "long-a");
        let empty = Outcome::Listed {
            machines: BTreeMap::new(),
        };
        assert_eq!(render(&empty, OutputFormat::Text), "no machines");
        assert_eq!(
            render(
                &Outcome::Deleted {
                    machine: "m1".into()
                },
                OutputFormat::Text
            ),
            "deleted machine m1"
        );
    }

    /// One recorded call: machine name, ProviderSpec, Secrets, ProviderID.
    type Call = (String, Vec<u8>, HashMap<String, Vec<u8>>, String);

    /// A driver stand-in that records what it was sent.
    #[derive(Clone, Default)]
    struct Fake {
        seen: Arc<Mutex<Vec<Call>>>,
    }

    impl Fake {
        fn record(&self, name: &str, spec: &[u8], secrets: &HashMap<String, Vec<u8>>, id: &str) {
            self.seen.lock().unwrap().push((
                name.into(),
                spec.to_vec(),
                secrets.clone(),
                id.into(),
            ));
        }
    }

    #[tonic::async_trait]
    impl Machine for Fake {
        async fn create_machine(
            &self,
            request: Request<CreateMachineRequest>,
        ) -> Result<Response<CreateMachineResponse>, Status> {
            let r = request.into_inner();
            self.record(&r.machine_name, &r.provider_spec, &r.secrets, "");
            Ok(Response::new(CreateMachineResponse {
                provider_id: "equinixmetal://d1".into(),
                node_name: r.machine_name,
                ..Default::default()
            }))
        }
        async fn delete_machine(
            &self,
            request: Request<DeleteMachineRequest>,
        ) -> Result<Response<DeleteMachineResponse>, Status> {
            let r = request.into_inner();
            self.record(
                &r.machine_name,
                &r.provider_spec,
                &r.secrets,
                &r.provider_id,
            );
            Ok(Response::new(DeleteMachineResponse::default()))
        }
        async fn get_machine_status(
            &self,
            request: Request<GetMachineStatusRequest>,
        ) -> Result<Response<GetMachineStatusResponse>, Status> {
            let r = request.into_inner();
            self.record(
                &r.machine_name,
                &r.provider_spec,
                &r.secrets,
                &r.provider_id,
            );
            Err(Status::not_found(format!(
                "machine {} not found",
                r.machine_name
            )))
        }
        async fn list_machines(
            &self,
            request: Request<ListMachinesRequest>,
        ) -> Result<Response<ListMachinesResponse>, Status> {
            assert!(
                request.metadata().get("grpc-timeout").is_some(),
                "no deadline sent"
            );
            let r = request.into_inner();
            self.record("", &r.provider_spec, &r.secrets, "");
            Ok(Response::new(ListMachinesResponse {
                machine_list: HashMap::from([("equinixmetal://d1".to_owned(), "m1".to_owned())]),
            }))
        }
        async fn shut_down_machine(
            &self,
            request: Request<ShutDownMachineRequest>,
        ) -> Result<Response<ShutDownMachineResponse>, Status> {
            let r = request.into_inner();
            self.record(
                &r.machine_name,
                &r.provider_spec,
                &r.secrets,
                &r.provider_id,
            );
            Ok(Response::new(ShutDownMachineResponse::default()))
        }
        async fn get_volume_i_ds(
            &self,
            _request: Request<GetVolumeIDsRequest>,
        ) -> Result<Response<GetVolumeIDsResponse>, Status> {
            Err(Status::unimplemented("GetVolumeIDs"))
        }
    }

    async fn serve(fake: Fake) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MachineServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("tcp://{addr}")
    }

    #[tokio::test]
    async fn calls_the_driver_with_the_decoded_manifests() {
        let fake = Fake::default();
        let endpoint = serve(fake.clone()).await;
        let class = samples("machine-class.yaml");
        let secret = samples("secret.yaml");
        let base = [
            "--endpoint",
            endpoint.as_str(),
            "--class",
            class.as_str(),
            "--secret",
            secret.as_str(),
        ];

        let mut argv = vec!["create", "--name", "m1"];
        argv.extend(base);
        let outcome = execute(&parse(&argv).unwrap()).await.unwrap();
        assert_eq!(
            render(&outcome, OutputFormat::Text),
            "created machine m1: equinixmetal://d1 (node m1)"
        );

        let mut argv = vec!["list"];
        argv.extend(base);
        let outcome = execute(&parse(&argv).unwrap()).await.unwrap();
        assert_eq!(
            render(&outcome, OutputFormat::Text),
            "m1  equinixmetal://d1"
        );

        let mut argv = vec![
            "delete",
            "--name",
            "m1",
            "--provider-id",
            "equinixmetal://d1",
        ];
        argv.extend(base);
        assert_eq!(
            execute(&parse(&argv).unwrap()).await.unwrap(),
            Outcome::Deleted {
                machine: "m1".into()
            }
        );

        let mut argv = vec!["status", "--name", "m2"];
        argv.extend(base);
        let error = execute(&parse(&argv).unwrap()).await.unwrap_err();
        assert_eq!(error.to_string(), "NotFound: machine m2 not found");

        let seen = fake.seen.lock().unwrap();
        let (name, spec, secrets, _) = &seen[0];
        assert_eq!(name, "m1");
        let spec: serde_json::Value = serde_json::from_slice(spec).unwrap();
        assert_eq!(spec["machineType"], "c3.small.x86");
        assert_eq!(secrets["apiToken"], b"sim-token");
        // What the controller sends: the machine name in create's userData, and the data as
        // merged in every other call.
        let user_data = String::from_utf8_lossy(&secrets["userData"]);
        assert!(user_data.contains("hostname: m1\n"), "{user_data}");
        assert!(!user_data.contains("<<MACHINE_NAME>>"), "{user_data}");
        let (_, _, delete_secrets, delete_id) = &seen[2];
        assert!(String::from_utf8_lossy(&delete_secrets["userData"]).contains("<<MACHINE_NAME>>"));
        assert_eq!(delete_id, "equinixmetal://d1");
    }

    #[tokio::test]
    async fn create_without_user_data_is_refused_before_the_call() {
        let fake = Fake::default();
        let endpoint = serve(fake.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("credentials.yaml");
        std::fs::write(
            &secret,
            "apiVersion: v1\nkind: Secret\nstringData: {apiToken: TOPSECRET}\n",
        )
        .unwrap();
        let class = samples("machine-class.yaml");
        let args = parse(&[
            "create",
            "--name",
            "m1",
            "--endpoint",
            &endpoint,
            "--class",
            &class,
            "--secret",
            secret.to_str().unwrap(),
        ])
        .unwrap();
        let error = execute(&args).await.unwrap_err();
        assert!(matches!(error, MachineCliError::Secrets(_)), "{error:?}");
        assert!(!error.to_string().contains("TOPSECRET"), "{error}");
        assert!(fake.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unreachable_driver_is_a_connect_error() {
        let class = samples("machine-class.yaml");
        // Port 1 on loopback: nothing listens there.
        let args = parse(&["list", "--endpoint", "tcp://127.0.0.1:1", "--class", &class]).unwrap();
        assert!(matches!(
            execute(&args).await,
            Err(MachineCliError::Connect(_))
        ));
    }
}
