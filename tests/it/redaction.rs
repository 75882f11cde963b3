//! Secrets never reach a log line: a full flow, error paths included, with every log
//! captured at trace level in both text and JSON, must not contain the API token, the
//! userData, the customData or a device's root password.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use metal_driver::{
    metal::Operation,
    sim::{Fault, SimArgs},
};
use serde_json::json;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::support::{Env, spec};

const TOKEN: &str = "tok-LEAKCHECK-4b1d9e7a";
const USER_DATA: &str = "#cloud-config\nbootstrap: USERDATA-LEAKCHECK-93ac";
const CUSTOM: &str = "CUSTOMDATA-LEAKCHECK-55e1";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let c = Capture::default();
            let (text, json) = (c.clone(), c.clone());
            tracing_subscriber::registry()
                .with(EnvFilter::new("trace,h2=info,hyper=info,tower=info"))
                .with(
                    fmt::layer()
                        .with_writer(move || text.clone())
                        .with_ansi(false),
                )
                .with(
                    fmt::layer()
                        .json()
                        .with_current_span(true)
                        .with_span_list(true)
                        .with_writer(move || json.clone()),
                )
                .init();
            c
        })
        .clone()
}

#[tokio::test]
async fn no_secret_in_any_log_line_or_error() {
    let logs = capture();
    let mut args = SimArgs::for_tests();
    args.tokens = vec![TOKEN.parse().unwrap()];
    let env = Env::with(args, |_| {}).await;
    let secrets = crate::support::secrets_with(TOKEN, USER_DATA);
    let mut s = spec();
    s["customData"] = json!({ "k": CUSTOM });

    let mut messages = Vec::new();
    let created = env.create("it-redact", &s, &secrets).await.expect("create");
    let _ = env
        .create("it-redact", &s, &secrets)
        .await
        .expect("idempotent create");
    env.status("it-redact", &created.provider_id, &s, &secrets)
        .await
        .expect("status");
    env.list(&s, &secrets).await.expect("list");
    env.sim
        .inject(Operation::FindDeviceById, Fault::ServerError, 10);
    messages.push(
        env.status("it-redact", &created.provider_id, &s, &secrets)
            .await
            .unwrap_err()
            .message()
            .to_owned(),
    );
    env.sim.inject(Operation::CreateDevice, Fault::Drop, 1);
    let _ = env
        .create("it-redact-2", &s, &secrets)
        .await
        .map_err(|e| messages.push(e.message().to_owned()));
    // Error paths: a wrong token, a bad spec, a 422 from the API.
    let wrong = crate::support::secrets_with("tok-WRONG-LEAKCHECK", USER_DATA);
    messages.push(
        env.create("it-redact-3", &s, &wrong)
            .await
            .unwrap_err()
            .message()
            .to_owned(),
    );
    let mut bad = s.clone();
    bad["OS"] = json!("no_such_os");
    messages.push(
        env.create("it-redact-4", &bad, &secrets)
            .await
            .unwrap_err()
            .message()
            .to_owned(),
    );
    env.shutdown_machine("it-redact", &created.provider_id, &s, &secrets)
        .await
        .expect("shutdown");
    env.delete("it-redact", &created.provider_id, &s, &secrets)
        .await
        .expect("delete");

    let root_passwords: Vec<String> = env
        .sim
        .devices()
        .into_iter()
        .filter_map(|d| d.root_password.map(|p| p.expose().clone()))
        .collect();
    let metrics = env.metrics.render();
    env.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("it-redact"),
        "the capture really saw this test's logs"
    );
    let mut needles = vec![TOKEN, "tok-WRONG-LEAKCHECK", "USERDATA-LEAKCHECK", CUSTOM];
    needles.extend(root_passwords.iter().map(String::as_str));
    for needle in needles {
        assert!(
            !text.contains(needle),
            "a secret reached the logs: {needle}"
        );
        assert!(
            !metrics.contains(needle),
            "a secret reached the metrics: {needle}"
        );
        for m in &messages {
            assert!(
                !m.contains(needle),
                "a secret reached an error message: {m}"
            );
        }
    }
}
