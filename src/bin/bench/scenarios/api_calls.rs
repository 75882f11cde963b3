//! Item 3, Metal API requests per RPC, counted by the simulator per operationId.

use std::collections::BTreeMap;

use metal_driver::metal::Operation;
use metal_driver::sim::{DEFAULT_PROJECT, Fault, SimArgs};
use metal_driver::testkit::fixture;

use crate::Ctx;
use crate::calls::{BenchMachine, CLUSTER_TAG, connect, create, list, outcome};
use crate::report::Report;
use crate::stack::{Driver, Sim};

pub(crate) fn api_calls(ctx: &Ctx, report: &mut Report) {
    report.section("3. Metal API requests per RPC (counted by the simulator)");
    let mut rows: Vec<Vec<String>> = Vec::new();
    let diff = |before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>| -> (u64, String) {
        let mut total = 0;
        let mut parts = Vec::new();
        for (op, n) in after {
            let d = n - before.get(op).copied().unwrap_or(0);
            if d > 0 {
                total += d;
                parts.push(format!("{op} {d}"));
            }
        }
        (total, parts.join(", "))
    };
    {
        let sim = Sim::start(SimArgs::for_tests());
        let driver = Driver::start(ctx, &sim.url(), &[], "api-calls");
        ctx.rt.block_on(async {
            let cmi = connect(&driver).await;
            let mut row =
                |what: &str, target: &str, before: BTreeMap<String, u64>, outcome: String| {
                    let (n, detail) = diff(&before, &sim.requests());
                    rows.push(vec![
                        what.into(),
                        target.into(),
                        format!("**{n}**"),
                        detail,
                        outcome,
                    ]);
                };
            let b = sim.requests();
            let created = create(&cmi, "bench-calls-0").await;
            row("CreateMachine, fresh", "≤ 2", b, outcome(&created));
            let pid = created.unwrap_or_default();

            let b = sim.requests();
            let again = create(&cmi, "bench-calls-0").await;
            row(
                "CreateMachine, retried (device exists)",
                "≤ 2",
                b,
                outcome(&again),
            );

            sim.handle().inject(Operation::CreateDevice, Fault::Drop, 1);
            let b = sim.requests();
            let lost = create(&cmi, "bench-calls-1").await;
            row(
                "CreateMachine, response lost (201 dropped)",
                "≤ 2 + lookup",
                b,
                outcome(&lost),
            );

            let b = sim.requests();
            let machine = BenchMachine::new("bench-calls-0", &pid);
            let st = cmi.get_machine_status(machine.machine()).await;
            row("GetMachineStatus (ProviderID)", "1", b, outcome(&st));

            let b = sim.requests();
            let by_name = BenchMachine::new("bench-calls-0", "");
            let st = cmi.get_machine_status(by_name.machine()).await;
            row(
                "GetMachineStatus (no ProviderID: lookup)",
                "1",
                b,
                outcome(&st),
            );

            let b = sim.requests();
            let sd = cmi.shut_down_machine(machine.machine()).await;
            row("ShutDownMachine (ProviderID)", "—", b, outcome(&sd));

            let b = sim.requests();
            let del = cmi.delete_machine(machine.machine()).await;
            row("DeleteMachine (ProviderID)", "1", b, outcome(&del));
        });
    }
    report.table(
        &["RPC", "target", "API requests", "by operationId", "result"],
        &rows,
    );

    // ListMachines over N devices of the class, next to devices of other clusters.
    let sim = Sim::start(SimArgs::for_tests());
    let foreign = ctx.pick(500, 3_000);
    sim.seed(
        "bench-other",
        "kubernetes.io/cluster/shoot--garden--other",
        foreign,
    );
    let driver = Driver::start(ctx, &sim.url(), &[], "api-calls-list");
    let sizes: &[usize] = if ctx.quick {
        &[0, 1, 1_000, 1_001]
    } else {
        &[0, 1, 999, 1_000, 1_001, 2_000, 2_500, 5_000]
    };
    let mut list_rows = Vec::new();
    ctx.rt.block_on(async {
        let cmi = connect(&driver).await;
        let mut have = 0;
        for &n in sizes {
            for i in have..n {
                let name = format!("bench-list-{i:05}");
                sim.handle().create_device_direct(
                    DEFAULT_PROJECT,
                    fixture::machine_device(&name, CLUSTER_TAG),
                );
            }
            have = n;
            let b = sim.requests();
            let got = list(&cmi).await;
            let (calls, _) = diff(&b, &sim.requests());
            let target = n.div_ceil(1000).max(1);
            list_rows.push(vec![
                n.to_string(),
                foreign.to_string(),
                target.to_string(),
                format!("**{calls}**"),
                match got {
                    Ok(len) if len == n => format!("OK, {len} machines"),
                    Ok(len) => format!("WRONG: {len} machines"),
                    Err(s) => format!("{:?}", s.code()),
                },
            ]);
        }
    });
    report.text("ListMachines (server-side tag filter, `per_page=1000`):\n");
    report.table(
        &[
            "class devices N",
            "other devices",
            "target ⌈N/1000⌉",
            "API requests",
            "result",
        ],
        &list_rows,
    );
}
