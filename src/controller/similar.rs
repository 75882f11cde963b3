//! MCM's "similar status" rule (`isMachineStatusSimilar` in `machine_util.go`): a status
//! write is skipped when nothing but timestamps would change, so a Machine whose create is
//! retried every 5 s (a transient driver error) does not cost the API server a write every
//! 5 s, and watchers of Machines (MCM's MachineSet controller, Gardener) are not woken for
//! nothing.
//!
//! The rule, as MCM applies it to every `lastOperation` + `currentStatus` write:
//! - the `lastUpdateTime` of both `lastOperation` and `currentStatus` is ignored;
//! - descriptions whose similarity ratio (1 − Levenshtein distance / mean length, on bytes)
//!   is above 0.75 count as equal (a repeated cloud error differing only in a request ID);
//! - but a `lastOperation` last written more than 30 minutes ago is always rewritten, so the
//!   record never looks abandoned.
//!
//! Stricter than MCM where our updates carry more: `conditions` and `lastKnownState` are
//! compared exactly (MCM writes those through other paths that compare them too).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{
    crd::{CurrentStatus, LastOperation, MachineStatus},
    status::{StatusUpdate, elapsed},
};

/// How old a `lastOperation` may get before it is rewritten even when similar.
pub const FORCE_REWRITE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Descriptions more similar than this count as equal.
pub const DESCRIPTION_SIMILARITY: f64 = 0.75;

/// Levenshtein distance on bytes (as MCM's `utilstrings.Levenshtein`).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=a.len()).collect();
    for (x, &cb) in b.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = x + 1;
        for (y, &ca) in a.iter().enumerate() {
            let above = row[y + 1];
            let substitute = diagonal + usize::from(ca != cb);
            row[y + 1] = substitute.min(above + 1).min(row[y] + 1);
            diagonal = above;
        }
    }
    row[a.len()]
}

/// MCM's `StringSimilarityRatio`: 1 − distance / mean length. Two empty strings give NaN
/// in Go, which is never "above 0.75"; here too.
pub fn similarity_ratio(a: &str, b: &str) -> f64 {
    let mean = (a.len() + b.len()) as f64 / 2.0;
    1.0 - levenshtein(a, b) as f64 / mean
}

fn last_operation_similar(new: &LastOperation, old: &LastOperation, now: Timestamp) -> bool {
    let fresh = old
        .last_update_time
        .as_ref()
        .is_some_and(|t| elapsed(now, t.0) <= FORCE_REWRITE_AFTER);
    let description_same = new.description == old.description
        || similarity_ratio(&new.description, &old.description) > DESCRIPTION_SIMILARITY;
    fresh
        && description_same
        && new.error_code == old.error_code
        && new.state == old.state
        && new.type_ == old.type_
}

fn current_similar(new: &CurrentStatus, old: &CurrentStatus) -> bool {
    new.phase == old.phase && new.timeout_active == old.timeout_active
}

/// Whether writing `update` over `old` would change nothing but timestamps (MCM: skip the
/// write). An empty update is trivially similar.
pub fn is_similar(update: &StatusUpdate, old: Option<&MachineStatus>, now: Timestamp) -> bool {
    let default = MachineStatus::default();
    let old = old.unwrap_or(&default);
    let last_operation = match (&update.last_operation, &old.last_operation) {
        (None, _) => true,
        (Some(new), Some(old)) => last_operation_similar(new, old, now),
        (Some(_), None) => false,
    };
    let current = match (&update.current, &old.current_status) {
        (None, _) => true,
        (Some(new), Some(old)) => current_similar(new, old),
        (Some(_), None) => false,
    };
    let conditions = update
        .conditions
        .as_ref()
        .is_none_or(|c| old.conditions.as_ref() == Some(c));
    let last_known_state = update
        .last_known_state
        .as_ref()
        .is_none_or(|s| old.last_known_state.as_ref() == Some(s));
    last_operation && current && conditions && last_known_state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::status::{self, phase};
    use tonic::Code;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The status a create-flow failure at `at` writes, as the Machine then holds it.
    fn written(update: &StatusUpdate) -> MachineStatus {
        MachineStatus {
            last_operation: update.last_operation.clone(),
            current_status: update.current.clone(),
            ..Default::default()
        }
    }

    fn failure(message: &str, at: Timestamp) -> StatusUpdate {
        status::create_failed(
            Code::Unavailable,
            message,
            at,
            Some(ts("2026-01-01T00:00:00Z")),
            Duration::from_secs(1200),
        )
    }

    #[test]
    fn levenshtein_and_ratio_match_mcms() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("abc", "abc"), 0);
        assert!((similarity_ratio("abcd", "abce") - 0.75).abs() < 1e-9);
        assert!(similarity_ratio("", "").is_nan());
    }

    #[test]
    fn a_repeated_failure_is_similar_whatever_its_timestamps() {
        let first = failure("connection refused", ts("2026-01-01T00:01:00Z"));
        let old = written(&first);
        let again = failure("connection refused", ts("2026-01-01T00:01:05Z"));
        assert!(is_similar(&again, Some(&old), ts("2026-01-01T00:01:05Z")));
        // A request ID that changes does not make it different either.
        let a = failure(
            "metal API 503 (request id 7f3a9c21-0d4e-4b1f-9a77-1c2d3e4f5a6b)",
            ts("2026-01-01T00:01:00Z"),
        );
        let b = failure(
            "metal API 503 (request id 0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e)",
            ts("2026-01-01T00:01:05Z"),
        );
        assert!(is_similar(
            &b,
            Some(&written(&a)),
            ts("2026-01-01T00:01:05Z")
        ));
    }

    #[test]
    fn a_real_change_is_written() {
        let old = written(&failure("connection refused", ts("2026-01-01T00:01:00Z")));
        let now = ts("2026-01-01T00:01:05Z");
        // Another code.
        let other = status::create_failed(
            Code::InvalidArgument,
            "connection refused",
            now,
            Some(ts("2026-01-01T00:00:00Z")),
            Duration::from_secs(1200),
        );
        assert!(!is_similar(&other, Some(&old), now));
        // Another phase (the creation timeout passed).
        let late = ts("2026-01-01T00:20:00Z");
        let failed = failure("connection refused", late);
        assert_eq!(failed.current.as_ref().unwrap().phase, phase::FAILED);
        assert!(!is_similar(&failed, Some(&old), ts("2026-01-01T00:19:00Z")));
        // A different description.
        let other = failure("no route to host: the Metal API endpoint is down", now);
        assert!(!is_similar(&other, Some(&old), now));
        // Nothing written before.
        assert!(!is_similar(&other, None, now));
        // New conditions or lastKnownState.
        let lks = StatusUpdate {
            last_known_state: Some("x".into()),
            ..Default::default()
        };
        assert!(!is_similar(&lks, Some(&old), now));
        assert!(is_similar(&StatusUpdate::default(), Some(&old), now));
    }

    #[test]
    fn a_similar_record_older_than_30_minutes_is_rewritten() {
        let old = written(&failure("connection refused", ts("2026-01-01T00:01:00Z")));
        // Keep the phase equal (the creation timeout has passed by then) so only the age
        // of the record differs.
        let at = |now| {
            let mut update = failure("connection refused", now);
            update.current = old.current_status.clone();
            update
        };
        let within = ts("2026-01-01T00:31:00Z");
        assert!(is_similar(&at(within), Some(&old), within));
        let after = ts("2026-01-01T00:31:01Z");
        assert!(!is_similar(&at(after), Some(&old), after));
    }
}
