//! Secrets never leak, as a matrix: a real `metal-driver serve` process at every log level
//! (trace, debug, info) and format (text, json), every RPC, and the error paths — a wrong
//! token, a bad spec, injected 503s and dropped responses, and a Metal API error that
//! echoes the whole request body (token header included) back in its message. The API
//! token, userData, customData and every device's root password must appear in none of:
//! the process's logs, the error messages, the `/metrics` text, or `Debug` output.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::{Body, to_bytes},
    extract::{Request, State},
    response::Response,
};
use metal_driver::{
    cmi::{
        calls::{CallError, MachineRef},
        client::CmiClient,
        v1::CreateMachineRequest,
    },
    metal::Operation,
    sim::{self, Fault, SimArgs, SimHandle},
};
use serde_json::{Value, json};

use crate::{process::DriverProcess, support::spec};

const TOKEN: &str = "tok-MATRIX-5c0ffee1d";
const WRONG_TOKEN: &str = "tok-MATRIX-WRONG-77aa";
const USER_DATA_LINE: &str = "bootstrap-token: USERDATA-MATRIX-31c7";
const QUOTED_LINE: &str = "join: \"QUOTED-MATRIX-0b9e\"";
const CUSTOM: &str = "CUSTOMDATA-MATRIX-8d2f";
/// Tabs and double spaces: the API client flattens whitespace in error texts.
const SPACED_LINE: &str = "secret:\t\tSPACED-MATRIX-4e21  tail";

fn user_data() -> String {
    format!("#cloud-config\n{USER_DATA_LINE}\n{QUOTED_LINE}\n{SPACED_LINE}\n")
}

fn secrets_with(token: &str) -> HashMap<String, Vec<u8>> {
    HashMap::from([
        ("apiToken".to_owned(), token.as_bytes().to_vec()),
        ("userData".to_owned(), user_data().into_bytes()),
    ])
}

fn secret_spec() -> Value {
    let mut s = spec();
    s["customData"] = json!({ "k": CUSTOM });
    s
}

/// A front for the simulator that behaves like a careless API: a create for a machine
/// whose name contains `echo` is answered 422 with the request's token header and whole
/// body pasted into the error message. Everything else is passed through.
#[derive(Clone)]
struct Echo {
    upstream: String,
    http: reqwest::Client,
}

async fn echo_or_forward(State(echo): State<Arc<Echo>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let token = parts
        .headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = String::from_utf8_lossy(&body).into_owned();
    if parts.method == http::Method::POST
        && parts.uri.path().ends_with("/devices")
        && text.contains("echo")
    {
        let message = format!("invalid request from token {token}: {text}");
        return Response::builder()
            .status(422)
            .header("content-type", "application/json")
            .body(Body::from(json!({ "errors": [message] }).to_string()))
            .unwrap();
    }
    let url = format!(
        "{}{}",
        echo.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut out = echo
        .http
        .request(parts.method.clone(), url)
        .body(body.to_vec());
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            out = out.header(name, value);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let mut builder = Response::builder().status(resp.status().as_u16());
            for (name, value) in resp.headers() {
                if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
                    builder = builder.header(name, value);
                }
            }
            builder
                .body(Body::from(resp.bytes().await.unwrap_or_default()))
                .unwrap()
        }
        Err(_) => Response::builder().status(502).body(Body::empty()).unwrap(),
    }
}

async fn echo_front(sim: &SimHandle) -> String {
    let echo = Arc::new(Echo {
        upstream: sim.base_url(),
        http: metal_driver::metal::tls::http_client_builder()
            .build()
            .unwrap(),
    });
    let app = axum::Router::new()
        .fallback(echo_or_forward)
        .with_state(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn expect_err<T>(r: Result<T, CallError>, what: &str) -> Result<CallError, String> {
    match r {
        Err(s) => Ok(s),
        Ok(_) => Err(format!("{what}: expected an error")),
    }
}

/// Every RPC, success and error paths; returns every error message the client saw.
async fn exercise(cmi: &CmiClient, sim: &SimHandle, tag: &str) -> Vec<String> {
    let s = secret_spec();
    let good = secrets_with(TOKEN);
    let spec_bytes = |v: &Value| v.to_string().into_bytes();
    let mut errors = Vec::new();
    cmi.get_plugin_info().await.unwrap();
    cmi.get_plugin_capabilities().await.unwrap();
    cmi.probe().await.unwrap();

    let name = format!("it-matrix-{tag}");
    let create = |name: &str, spec: &Value, secrets: &HashMap<String, Vec<u8>>| {
        let (name, spec, secrets) = (name.to_owned(), spec_bytes(spec), secrets.clone());
        async move {
            cmi.create_machine(MachineRef::new(&name, &spec, &secrets))
                .await
        }
    };
    let created = create(&name, &s, &good).await.expect("create");
    create(&name, &s, &good).await.expect("idempotent create");
    let s_bytes = spec_bytes(&s);
    let status = |provider_id: &str| {
        let machine = MachineRef::new(&name, &s_bytes, &good);
        let provider_id = provider_id.to_owned();
        async move {
            cmi.get_machine_status(machine.with_provider_id(&provider_id))
                .await
        }
    };
    status(&created.provider_id).await.expect("status");
    status("").await.expect("status by lookup");
    cmi.list_machines(&s_bytes, &good).await.expect("list");
    cmi.get_volume_ids(b"[]").await.expect("volumes");

    // Error paths.
    let mut push = |r: Result<CallError, String>| match r {
        Ok(status) => errors.push(status.message().to_owned()),
        Err(unexpected) => panic!("{unexpected}"),
    };

    push(expect_err(
        create(&format!("{name}-w"), &s, &secrets_with(WRONG_TOKEN)).await,
        "wrong token",
    ));
    let mut bad = s.clone();
    bad["OS"] = json!("no_such_os");
    push(expect_err(
        create(&format!("{name}-os"), &bad, &good).await,
        "bad OS",
    ));
    let mut invalid = s.clone();
    invalid["metro"] = json!(42);
    push(expect_err(
        create(&format!("{name}-sp"), &invalid, &good).await,
        "bad spec",
    ));
    push(expect_err(
        create(&format!("{name}-echo"), &s, &good).await,
        "echoed 422",
    ));
    // --api-max-retries 1: two attempts per call, both fail.
    sim.inject(Operation::FindDeviceById, Fault::ServerError, 2);
    push(expect_err(status(&created.provider_id).await, "503s"));
    sim.inject(Operation::CreateDevice, Fault::Drop, 1);
    if let Err(e) = create(&format!("{name}-drop"), &s, &good).await {
        errors.push(e.message().to_owned());
    }
    sim.inject(Operation::CreateDevice, Fault::TooManyRequests, 2);
    if let Err(e) = create(&format!("{name}-429"), &s, &good).await {
        errors.push(e.message().to_owned());
    }

    // Power off and delete everything (also the machines the error paths may have made).
    let machine = MachineRef::new(&name, &s_bytes, &good).with_provider_id(&created.provider_id);
    cmi.shut_down_machine(machine).await.expect("shutdown");
    for (machine, pid) in [
        (name.clone(), created.provider_id.clone()),
        (format!("{name}-drop"), String::new()),
    ] {
        let machine = MachineRef::new(&machine, &s_bytes, &good).with_provider_id(&pid);
        cmi.delete_machine(machine).await.expect("delete");
    }
    errors
}

#[tokio::test]
async fn no_secret_at_any_level_or_format_on_any_path() {
    let mut args = SimArgs::for_tests();
    args.tokens = vec![TOKEN.parse().unwrap()];
    let sim = sim::spawn(args).await.unwrap();
    let api = echo_front(&sim).await;
    let mut root_passwords = Vec::new();
    let mut checked = 0;
    for level in ["trace", "debug", "info"] {
        for format in ["text", "json"] {
            let driver = DriverProcess::start(
                &api,
                &[
                    "--log-level",
                    level,
                    "--log-format",
                    format,
                    "--api-max-retries",
                    "1",
                ],
            )
            .await;
            let cmi = driver.client(Duration::from_secs(60)).await;
            let errors = exercise(&cmi, &sim, &format!("{level}-{format}")).await;
            root_passwords.extend(
                sim.devices()
                    .into_iter()
                    .filter_map(|d| d.root_password.map(|p| p.expose().clone())),
            );
            let metrics = driver.metrics().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let logs = driver.logs();
            driver.kill().await;

            assert!(
                logs.contains("it-matrix"),
                "{level}/{format}: the logs really cover the calls:\n{logs}"
            );
            if level == "trace" {
                assert!(
                    logs.contains("invalid request from token"),
                    "{level}/{format}: the echoing 422 was exercised"
                );
            }
            assert!(
                !root_passwords.is_empty(),
                "devices have root passwords to look for"
            );
            let mut needles: Vec<&str> = vec![
                TOKEN,
                WRONG_TOKEN,
                "USERDATA-MATRIX-31c7",
                "QUOTED-MATRIX-0b9e",
                "SPACED-MATRIX-4e21",
                CUSTOM,
            ];
            needles.extend(root_passwords.iter().map(String::as_str));
            for needle in &needles {
                let line = logs
                    .lines()
                    .find(|l| l.contains(needle))
                    .unwrap_or_default();
                assert!(
                    !logs.contains(needle),
                    "{level}/{format}: a secret reached the logs: {needle} in\n{line}"
                );
                assert!(
                    !metrics.contains(needle),
                    "{level}/{format}: a secret reached the metrics: {needle}"
                );
                for e in &errors {
                    assert!(
                        !e.contains(needle),
                        "{level}/{format}: a secret reached an error message: {e}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6);

    // Debug output of everything that holds a secret.
    let request = CreateMachineRequest {
        machine_name: "m".into(),
        provider_spec: secret_spec().to_string().into_bytes(),
        secrets: secrets_with(TOKEN),
        last_known_state: Vec::new(),
    };
    let creds =
        metal_driver::provider::credentials::Credentials::from_secrets(&secrets_with(TOKEN), true)
            .unwrap();
    let parsed =
        metal_driver::provider::spec::ProviderSpec::decode(secret_spec().to_string().as_bytes())
            .unwrap();
    let devices = sim.devices();
    let debug = format!(
        "{request:?} {creds:?} {parsed:?} {devices:?} {:?}",
        sim.stats()
    );
    for needle in [TOKEN, "USERDATA-MATRIX-31c7", CUSTOM]
        .iter()
        .copied()
        .chain(root_passwords.iter().map(String::as_str))
    {
        assert!(!debug.contains(needle), "Debug shows a secret: {needle}");
    }
    sim.shutdown().await;
}
