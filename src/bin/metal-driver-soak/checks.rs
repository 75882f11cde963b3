//! The soak's invariants, judged once on what the run left ([`Outcome`]): each one a named
//! pass/fail with the figure behind it. The soak passes only if every check does.

use std::sync::atomic::Ordering;

use crate::{controller_stack::LaneOutcome, stack::StackOutcome, tally::Figures};

/// Everything the run left, read once after the drain.
pub struct Outcome {
    pub seed: u64,
    /// The driver lane's tally.
    pub figures: Figures,
    /// The simulator's counts and the driver's history.
    pub stack: StackOutcome,
    /// Entries of the last ListMachines through the driver (`usize::MAX` if it failed).
    pub final_list: usize,
    pub lane: Option<LaneOutcome>,
}

impl Outcome {
    /// Controller-lane Machines that got a device, and a line for each one whose
    /// `spec.providerID` changed (none without the lane).
    pub fn lane_devices(&self) -> (u64, Vec<String>) {
        self.lane
            .as_ref()
            .map_or((0, Vec::new()), |o| o.lane.tally.provider_ids.devices())
    }
}

/// One invariant: its name, whether it held, and the figure that says so.
pub struct Check {
    pub name: &'static str,
    pub pass: bool,
    pub figure: String,
}

impl Check {
    fn new(name: &'static str, pass: bool, figure: String) -> Self {
        Self { name, pass, figure }
    }
}

/// Every check, in report order: the driver lane's and the stack's, then the controller
/// lane's (with the chaos's when it ran).
pub fn checks(o: &Outcome) -> Vec<Check> {
    let mut checks = driver_checks(o);
    if let Some(lane) = &o.lane {
        checks.extend(lane_checks(lane));
    }
    checks
}

fn driver_checks(o: &Outcome) -> Vec<Check> {
    let f = &o.figures;
    let stats = &o.stack.stats;
    let driver = &o.stack.driver;
    let (lane_devices, lane_multi) = o.lane_devices();
    let api_requests: u64 = stats.requests.values().sum();
    let faults_total: u64 = stats.faults.values().sum();
    vec![
        Check::new(
            "exactly one device per machine",
            stats.devices_created == f.machines_created + lane_devices
                && f.multi.is_empty()
                && lane_multi.is_empty()
                && f.distinct_provider_ids == f.machines_created,
            format!(
                "{} devices created for {} machines ({} of them Machines of the controller lane); {} machines answered with more than one ProviderID",
                stats.devices_created,
                f.machines_created + lane_devices,
                lane_devices,
                f.multi.len() + lane_multi.len()
            ),
        ),
        Check::new(
            "zero devices left after deletes",
            o.stack.leftover.is_empty() && o.final_list == 0,
            format!(
                "{} devices in the simulator, final ListMachines {} entries",
                o.stack.leftover.len(),
                o.final_list
            ),
        ),
        Check::new(
            "zero orphans",
            f.list_unknown == 0 && f.list_foreign_device == 0,
            format!(
                "{} lists; {} entries of unknown machines, {} second devices",
                f.lists, f.list_unknown, f.list_foreign_device
            ),
        ),
        Check::new(
            "every RPC got a final answer",
            f.rpc_started == f.rpc_answered && f.rpc_hung == 0,
            format!(
                "{} RPCs sent, {} answered, {} hung",
                f.rpc_started, f.rpc_answered, f.rpc_hung
            ),
        ),
        Check::new(
            "every machine finished its lifecycle",
            f.machines_started == f.machines_done && f.machines_started == f.machines_created,
            format!(
                "{} started, {} created, {} finished",
                f.machines_started, f.machines_created, f.machines_done
            ),
        ),
        Check::new(
            "no anomaly on the way",
            f.anomalies.is_empty(),
            format!("{} anomalies", f.anomalies.len()),
        ),
        Check::new(
            "no panic in driver logs",
            driver.panics.is_empty(),
            format!(
                "{} driver runs, {} panics",
                driver.runs,
                driver.panics.len()
            ),
        ),
        Check::new(
            "SIGTERM'd drivers exit 0",
            driver.bad_exits.is_empty(),
            format!(
                "{} SIGTERM, {} SIGKILL, bad exits: {:?}",
                driver.sigterms, driver.sigkills, driver.bad_exits
            ),
        ),
        Check::new(
            "faults were injected",
            faults_total > 0,
            format!("{faults_total} faults in {api_requests} API requests"),
        ),
    ]
}

fn lane_checks(o: &LaneOutcome) -> Vec<Check> {
    let lt = &o.lane.tally;
    let controller = &o.controller;
    let (started_n, running, released, finished) = (
        lt.started.load(Ordering::Relaxed),
        lt.running.load(Ordering::Relaxed),
        lt.released.load(Ordering::Relaxed),
        lt.finished.load(Ordering::Relaxed),
    );
    let mut checks = vec![
        Check::new(
            "every Machine Running, then released after delete",
            started_n > 0 && running == started_n && released == started_n && finished == started_n,
            format!("{started_n} Machines created, {running} Running, {released} released"),
        ),
        Check::new(
            "no Machine left in the cluster",
            o.leftover.as_ref().is_ok_and(Vec::is_empty),
            match &o.leftover {
                Ok(left) => format!("{} left: {left:?}", left.len()),
                Err(e) => format!("cannot list Machines: {e}"),
            },
        ),
        Check::new(
            "no panic in controller logs",
            controller.panics.is_empty(),
            format!(
                "{} controller runs, {} panics",
                controller.runs,
                controller.panics.len()
            ),
        ),
    ];
    if let Some(c) = &o.chaos {
        let max = c.max_failed_in_meltdown.load(Ordering::Relaxed);
        let ends = c.failed_at_meltdown_ends.lock().unwrap().clone();
        checks.push(Check::new(
            "no meltdown: one pool Machine Failed at a time",
            max <= 1 && !ends.is_empty() && ends.iter().all(|&n| n == 1),
            format!(
                "{max} at most at once while every pool Node was NotReady, {ends:?} at the end of each of {} such incidents; {} replaced in all",
                ends.len(),
                c.replaced.load(Ordering::Relaxed)
            ),
        ));
        let outage = c.failed_in_outage.load(Ordering::Relaxed);
        let froze = c.froze.load(Ordering::Relaxed);
        checks.push(Check::new(
            "target API server outage: frozen, and no pool Machine Failed",
            outage == 0 && froze,
            format!("frozen gauge seen 1: {froze}; {outage} pool Machines Failed"),
        ));
        let errors = c.errors.lock().unwrap().clone();
        checks.push(Check::new(
            "the pool recovered from every incident",
            c.recovered.load(Ordering::Relaxed)
                && c.rounds.load(Ordering::Relaxed) >= 1
                && c.incidents.load(Ordering::Relaxed) == 3 * c.rounds.load(Ordering::Relaxed)
                && errors.is_empty(),
            format!(
                "{} rounds, {} incidents, longest {:?}; controller exited by itself {} times (lost lease) and was restarted; errors {errors:?}",
                c.rounds.load(Ordering::Relaxed),
                c.incidents.load(Ordering::Relaxed),
                c.durations.lock().unwrap(),
                controller.self_exits.len()
            ),
        ));
    }
    checks.push(Check::new(
        "SIGTERM'd controllers exit 0",
        controller.bad_exits.is_empty(),
        format!(
            "{} SIGTERM (slowest exit {:.1} s), {} SIGKILL, bad exits: {:?}",
            controller.sigterms,
            controller
                .slowest_term_exit
                .map_or(0.0, |d| d.as_secs_f64()),
            controller.sigkills,
            controller.bad_exits
        ),
    ));
    checks
}

#[cfg(test)]
mod tests {
    use metal_driver::sim::SimStats;

    use super::*;
    use crate::process::History;

    /// A driver-lane run of three machines where everything held.
    fn clean() -> Outcome {
        let figures = Figures {
            machines_started: 3,
            machines_created: 3,
            machines_done: 3,
            concurrent_creates: 1,
            multi: Vec::new(),
            distinct_provider_ids: 3,
            rpc_started: 12,
            rpc_answered: 12,
            rpc_hung: 0,
            outcomes: Default::default(),
            anomalies: Vec::new(),
            lists: 2,
            list_unknown: 0,
            list_foreign_device: 0,
        };
        let stats = SimStats {
            requests: [("createDevice".to_owned(), 20)].into(),
            faults: [("429".to_owned(), 4)].into(),
            devices_created: 3,
            ..Default::default()
        };
        let driver = History {
            runs: 2,
            sigkills: 1,
            sigterms: 1,
            bad_exits: Vec::new(),
            slowest_term_exit: None,
            self_exits: Vec::new(),
            panics: Vec::new(),
        };
        Outcome {
            seed: 7,
            figures,
            stack: StackOutcome {
                stats,
                leftover: Vec::new(),
                driver,
            },
            final_list: 0,
            lane: None,
        }
    }

    fn failed(o: &Outcome) -> Vec<&'static str> {
        checks(o)
            .into_iter()
            .filter(|c| !c.pass)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_clean_run_passes_every_driver_check() {
        let o = clean();
        assert_eq!(checks(&o).len(), 9);
        assert_eq!(failed(&o), Vec::<&str>::new());
    }

    #[test]
    fn a_second_device_fails_exactly_one_device_per_machine() {
        let mut o = clean();
        o.stack.stats.devices_created = 4;
        assert_eq!(failed(&o), ["exactly one device per machine"]);
    }

    #[test]
    fn a_failed_final_list_fails_zero_devices_left() {
        let mut o = clean();
        o.final_list = usize::MAX;
        assert_eq!(failed(&o), ["zero devices left after deletes"]);
    }

    #[test]
    fn a_hung_rpc_and_a_bad_sigterm_exit_fail_their_checks() {
        let mut o = clean();
        o.figures.rpc_hung = 1;
        o.stack
            .driver
            .bad_exits
            .push("run 2: exit status: 1".into());
        assert_eq!(
            failed(&o),
            ["every RPC got a final answer", "SIGTERM'd drivers exit 0"]
        );
    }
}
