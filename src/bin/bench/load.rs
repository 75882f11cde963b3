//! Closed-loop load: workers calling one operation for a count or a duration, with the
//! latencies and errors of the batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metal_driver::cmi::client::CmiClient;
use metal_driver::sim::DEFAULT_TOKEN;

use crate::calls::BenchMachine;
use crate::report::sorted;

/// One measured operation: a GET straight to the API, or GetMachineStatus via the driver.
// Built once per scenario and cloned per worker: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Op {
    Direct {
        http: reqwest::Client,
        url: String,
    },
    Status {
        cmi: CmiClient,
        machine: Box<BenchMachine>,
    },
    /// Identity.Probe: the gRPC hop alone, no API call.
    Probe {
        cmi: CmiClient,
    },
}

impl Op {
    pub(crate) async fn call(&self) -> Result<(), String> {
        match self {
            Op::Direct { http, url } => {
                let resp = http
                    .get(url)
                    .header("X-Auth-Token", DEFAULT_TOKEN)
                    .send()
                    .await
                    .map_err(|e| format!("transport: {e}"))?;
                let status = resp.status();
                resp.bytes().await.map_err(|e| format!("body: {e}"))?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("http {}", status.as_u16()))
                }
            }
            Op::Status { cmi, machine } => cmi
                .get_machine_status(machine.machine())
                .await
                .map(drop)
                .map_err(|e| format!("{:?}", e.code())),
            Op::Probe { cmi } => cmi
                .probe()
                .await
                .map(drop)
                .map_err(|e| format!("{:?}", e.code())),
        }
    }
}

/// What a batch of calls produced.
#[derive(Default)]
pub(crate) struct Batch {
    /// Latencies of successful calls, µs, ascending.
    pub(crate) latencies_us: Vec<f64>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) elapsed: Duration,
}

impl Batch {
    pub(crate) fn ok(&self) -> usize {
        self.latencies_us.len()
    }

    pub(crate) fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            "0".into()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// `total` calls by `concurrency` closed-loop workers.
pub(crate) async fn run_count(concurrency: usize, total: usize, op: &Op) -> Batch {
    run_workers(concurrency, op, move |_, done| {
        done < total.div_ceil(concurrency)
    })
    .await
}

/// Closed-loop workers calling until `duration` has passed.
pub(crate) async fn run_for(concurrency: usize, duration: Duration, op: &Op) -> Batch {
    let until = Instant::now() + duration;
    run_workers(concurrency, op, move |now, _| now < until).await
}

pub(crate) async fn run_workers(
    concurrency: usize,
    op: &Op,
    go_on: impl Fn(Instant, usize) -> bool + Copy + Send + 'static,
) -> Batch {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut done = 0;
            while go_on(Instant::now(), done) {
                let t = Instant::now();
                match op.call().await {
                    Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                    Err(e) => *errors.entry(e).or_default() += 1,
                }
                done += 1;
            }
            (lat, errors)
        }));
    }
    let mut batch = Batch::default();
    for task in tasks {
        let (lat, errors) = task.await.expect("worker");
        batch.latencies_us.extend(lat);
        for (k, v) in errors {
            *batch.errors.entry(k).or_default() += v;
        }
    }
    batch.elapsed = started.elapsed();
    batch.latencies_us = sorted(std::mem::take(&mut batch.latencies_us));
    batch
}
