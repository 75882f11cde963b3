//! Device state machine and its timers.
//!
//! `queued → provisioning → active | failed`, `active → powering_off → inactive →
//! powering_on → active`, `reinstalling → active`, and `* → deprovisioning → gone`.
//!
//! Time is explicit: every method takes `now`, and due transitions are applied in order by
//! [`Timeline`] when the state is next touched (no background task). That keeps the
//! machine deterministic in tests and costs nothing while idle.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::metal::types::DeviceState;

/// How long each timed phase takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Create → active (or failed); also the length of a reinstall.
    pub provision: Duration,
    /// Delete → gone.
    pub deprovision: Duration,
    /// powering_off → inactive and powering_on → active.
    pub power: Duration,
}

impl Timings {
    /// Share of `provision` spent `queued` before `provisioning` starts.
    pub const QUEUED_SHARE: f64 = 0.2;

    fn queued(&self) -> Duration {
        self.provision.mul_f64(Self::QUEUED_SHARE)
    }
}

/// The transition a device is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    StartProvisioning,
    FinishProvisioning { fail: bool },
    PowerOffDone,
    PowerOnDone,
    ReinstallDone,
    Vanish,
}

/// What a transition means for the rest of the device (addresses, reservations...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Provisioning or a reinstall finished: the device is `active`.
    Activated,
    /// Provisioning finished `failed`.
    Failed,
    /// Deprovisioning finished: remove the device.
    Gone,
}

/// Why an action is refused (becomes a 422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// The lifecycle part of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub state: DeviceState,
    /// The next transition and when it is due.
    pub pending: Option<(Instant, Step)>,
    /// Bumped whenever `pending` changes, so stale timeline entries are skipped.
    pub generation: u64,
    /// `(start, end)` of the current provisioning or reinstall, for `provisioning_percentage`.
    pub window: Option<(Instant, Instant)>,
    /// Whether the initial provisioning ends `failed` (drawn at creation, so a `--seed`
    /// reproduces it).
    pub fails: bool,
}

impl Lifecycle {
    /// A new device: `queued`, provisioning in `timings.provision`, ending `failed` if `fail`.
    pub fn provisioning(now: Instant, timings: &Timings, fail: bool) -> Self {
        let start = now + timings.queued();
        Self {
            state: DeviceState::Queued,
            pending: Some((start, Step::StartProvisioning)),
            generation: 0,
            window: Some((start, now + timings.provision)),
            fails: fail,
        }
    }

    fn set(&mut self, state: DeviceState, pending: Option<(Instant, Step)>) {
        self.state = state;
        self.pending = pending;
        self.generation += 1;
    }

    /// Applies the pending step (due at `at`); the caller reschedules if `pending` is set.
    pub fn advance(&mut self, at: Instant) -> Effect {
        let Some((_, step)) = self.pending else {
            return Effect::None;
        };
        match step {
            Step::StartProvisioning => {
                let end = self.window.map_or(at, |(_, end)| end);
                let fail = self.fails;
                self.set(
                    DeviceState::Provisioning,
                    Some((end.max(at), Step::FinishProvisioning { fail })),
                );
                Effect::None
            }
            Step::FinishProvisioning { fail: true } => {
                self.window = None;
                self.set(DeviceState::Failed, None);
                Effect::Failed
            }
            Step::FinishProvisioning { fail: false } | Step::ReinstallDone => {
                self.window = None;
                self.set(DeviceState::Active, None);
                Effect::Activated
            }
            Step::PowerOffDone => {
                self.set(DeviceState::Inactive, None);
                Effect::None
            }
            Step::PowerOnDone => {
                self.set(DeviceState::Active, None);
                Effect::None
            }
            Step::Vanish => {
                self.set(DeviceState::Deleted, None);
                Effect::Gone
            }
        }
    }

    /// `power_off`: active → powering_off → inactive. Idempotent when already off.
    pub fn power_off(&mut self, now: Instant, timings: &Timings) -> Result<(), Refused> {
        match self.state {
            DeviceState::Active | DeviceState::PoweringOn => {
                self.set(
                    DeviceState::PoweringOff,
                    Some((now + timings.power, Step::PowerOffDone)),
                );
                Ok(())
            }
            DeviceState::Inactive | DeviceState::PoweringOff => Ok(()),
            _ => Err(Refused("Device must be active to be powered off")),
        }
    }

    /// `power_on`: inactive → powering_on → active. Idempotent when already on.
    pub fn power_on(&mut self, now: Instant, timings: &Timings) -> Result<(), Refused> {
        match self.state {
            DeviceState::Inactive | DeviceState::PoweringOff => {
                self.set(
                    DeviceState::PoweringOn,
                    Some((now + timings.power, Step::PowerOnDone)),
                );
                Ok(())
            }
            DeviceState::Active | DeviceState::PoweringOn => Ok(()),
            _ => Err(Refused("Device must be inactive to be powered on")),
        }
    }

    /// `reboot`: an active device stays active; an inactive one powers on.
    pub fn reboot(&mut self, now: Instant, timings: &Timings) -> Result<(), Refused> {
        match self.state {
            DeviceState::Active => Ok(()),
            DeviceState::Inactive => self.power_on(now, timings),
            _ => Err(Refused("Device must be active or inactive to be rebooted")),
        }
    }

    /// `rescue`: accepted (and not simulated further) for a running or stopped device.
    pub fn rescue(&mut self) -> Result<(), Refused> {
        match self.state {
            DeviceState::Active | DeviceState::Inactive => Ok(()),
            _ => Err(Refused(
                "Device must be active or inactive to enter rescue mode",
            )),
        }
    }

    /// `reinstall`: reinstalling for `timings.provision`, then active.
    pub fn reinstall(&mut self, now: Instant, timings: &Timings) -> Result<(), Refused> {
        match self.state {
            DeviceState::Active | DeviceState::Inactive | DeviceState::Failed => {
                let end = now + timings.provision;
                self.window = Some((now, end));
                self.set(DeviceState::Reinstalling, Some((end, Step::ReinstallDone)));
                Ok(())
            }
            _ => Err(Refused(
                "Device must be active, inactive or failed to be reinstalled",
            )),
        }
    }

    /// Delete: deprovisioning, gone after `timings.deprovision`. Idempotent.
    pub fn deprovision(&mut self, now: Instant, timings: &Timings) {
        if self.state != DeviceState::Deprovisioning {
            self.window = None;
            self.set(
                DeviceState::Deprovisioning,
                Some((now + timings.deprovision, Step::Vanish)),
            );
        }
    }

    /// `provisioning_percentage` while provisioning or reinstalling.
    pub fn percentage(&self, now: Instant) -> Option<f32> {
        if !matches!(
            self.state,
            DeviceState::Provisioning | DeviceState::Reinstalling
        ) {
            return None;
        }
        let (start, end) = self.window?;
        let total = end.saturating_duration_since(start).as_secs_f64();
        let done = now.saturating_duration_since(start).as_secs_f64();
        let pct = if total > 0.0 {
            (done / total * 100.0).clamp(0.0, 99.0)
        } else {
            99.0
        };
        Some(pct.floor() as f32)
    }
}

/// Due transitions across all devices, earliest first.
#[derive(Debug, Default)]
pub struct Timeline {
    heap: BinaryHeap<Reverse<(Instant, u64, Uuid, u64)>>,
    seq: u64,
}

impl Timeline {
    /// Records that `device`'s lifecycle (at `generation`) has a step due at `at`.
    pub fn schedule(&mut self, device: Uuid, life: &Lifecycle) {
        if let Some((at, _)) = life.pending {
            self.seq += 1;
            self.heap
                .push(Reverse((at, self.seq, device, life.generation)));
        }
    }

    /// The next entry due at or before `now`: `(due, device, generation)`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Uuid, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, ..))) if *at <= now => {
                let Reverse((at, _, id, generation)) = self.heap.pop()?;
                Some((at, id, generation))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timings = Timings {
        provision: Duration::from_secs(10),
        deprovision: Duration::from_secs(2),
        power: Duration::from_secs(1),
    };

    /// Applies every step due by `now`, like the state does.
    fn run_until(life: &mut Lifecycle, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some((at, _)) = life.pending {
            if at > now {
                break;
            }
            effects.push(life.advance(at));
        }
        effects
    }

    #[test]
    fn provisioning_timeline_with_percentage() {
        let t0 = Instant::now();
        let mut l = Lifecycle::provisioning(t0, &T, false);
        assert_eq!(l.state, DeviceState::Queued);
        assert_eq!(l.percentage(t0), None);
        run_until(&mut l, t0 + Duration::from_millis(1999));
        assert_eq!(l.state, DeviceState::Queued);
        run_until(&mut l, t0 + Duration::from_secs(2));
        assert_eq!(l.state, DeviceState::Provisioning);
        assert_eq!(l.percentage(t0 + Duration::from_secs(6)), Some(50.0));
        assert!(run_until(&mut l, t0 + Duration::from_millis(9999)).is_empty());
        assert_eq!(
            run_until(&mut l, t0 + Duration::from_secs(10)),
            vec![Effect::Activated]
        );
        assert_eq!(l.state, DeviceState::Active);
        assert_eq!(l.percentage(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn zero_duration_reaches_the_end_in_one_sweep() {
        let t0 = Instant::now();
        let zero = Timings {
            provision: Duration::ZERO,
            ..T
        };
        let mut l = Lifecycle::provisioning(t0, &zero, true);
        let mut effects = Vec::new();
        while let Some((at, _)) = l.pending {
            effects.push(l.advance(at));
        }
        assert_eq!(effects, vec![Effect::None, Effect::Failed]);
        assert_eq!(l.state, DeviceState::Failed);
    }

    #[test]
    fn power_cycle_reinstall_and_delete() {
        let t0 = Instant::now();
        let mut l = Lifecycle::provisioning(t0, &T, false);
        assert!(
            l.power_off(t0, &T).is_err(),
            "queued devices cannot power off"
        );
        let t1 = t0 + Duration::from_secs(10);
        run_until(&mut l, t1);
        l.power_off(t1, &T).unwrap();
        assert_eq!(l.state, DeviceState::PoweringOff);
        l.power_off(t1, &T).unwrap();
        run_until(&mut l, t1 + Duration::from_secs(1));
        assert_eq!(l.state, DeviceState::Inactive);
        let t2 = t1 + Duration::from_secs(5);
        l.power_on(t2, &T).unwrap();
        assert_eq!(l.state, DeviceState::PoweringOn);
        run_until(&mut l, t2 + Duration::from_secs(1));
        assert_eq!(l.state, DeviceState::Active);
        l.reinstall(t2, &T).unwrap();
        assert_eq!(l.state, DeviceState::Reinstalling);
        assert_eq!(
            run_until(&mut l, t2 + Duration::from_secs(10)),
            vec![Effect::Activated]
        );
        let t3 = t2 + Duration::from_secs(20);
        l.deprovision(t3, &T);
        let generation = l.generation;
        l.deprovision(t3 + Duration::from_secs(1), &T);
        assert_eq!(l.generation, generation, "second delete changes nothing");
        assert!(l.power_on(t3, &T).is_err());
        assert_eq!(
            run_until(&mut l, t3 + Duration::from_secs(2)),
            vec![Effect::Gone]
        );
    }

    #[test]
    fn timeline_orders_and_skips_nothing_due_later() {
        let t0 = Instant::now();
        let mut tl = Timeline::default();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let la = Lifecycle::provisioning(t0 + Duration::from_secs(5), &T, false);
        let lb = Lifecycle::provisioning(t0, &T, false);
        tl.schedule(a, &la);
        tl.schedule(b, &lb);
        assert_eq!(tl.pop_due(t0), None);
        assert_eq!(
            tl.pop_due(t0 + Duration::from_secs(60)).map(|e| e.1),
            Some(b)
        );
        assert_eq!(
            tl.pop_due(t0 + Duration::from_secs(60)).map(|e| e.1),
            Some(a)
        );
        assert_eq!(tl.pop_due(t0 + Duration::from_secs(60)), None);
    }
}
