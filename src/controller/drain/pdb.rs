//! PodDisruptionBudgets, as far as a drain needs them: which budget covers a pod, and whether
//! a budget can never allow an eviction (then the drain fails at once instead of retrying
//! for hours).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{core::v1::Pod, policy::v1::PodDisruptionBudget},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

/// Whether `selector` selects `labels`, per `metav1.LabelSelectorAsSelector`: an empty
/// selector selects everything; an unknown operator selects nothing.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let by_expressions = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false,
            }
        })
    });
    by_labels && by_expressions
}

/// The first budget in `pdbs` (the pod's namespace) whose selector selects the pod. A budget
/// without a selector selects nothing.
pub fn covering<'a>(pdbs: &'a [PodDisruptionBudget], pod: &Pod) -> Option<&'a PodDisruptionBudget> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&EMPTY);
    pdbs.iter().find(|pdb| {
        pdb.spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|sel| selects(sel, labels))
    })
}

/// MCM's "misconfigured" budget: its status is current, every expected pod is healthy, and
/// still no disruption is allowed (e.g. `maxUnavailable: 0`). Waiting cannot help.
pub fn is_misconfigured(pdb: &PodDisruptionBudget) -> bool {
    let Some(st) = pdb.status.as_ref() else {
        return false;
    };
    if pdb.metadata.generation.unwrap_or(0) != st.observed_generation.unwrap_or(0) {
        return false;
    }
    st.expected_pods > 0 && st.current_healthy >= st.expected_pods && st.disruptions_allowed == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pdb(v: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(v).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert!(selects(&sel, &labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!selects(&sel, &labels(&[("app", "web"), ("tier", "back")])));
        assert!(!selects(
            &sel,
            &labels(&[("app", "web"), ("tier", "edge"), ("canary", "1")])
        ));
        assert!(!selects(&sel, &labels(&[("tier", "edge")])));
        assert!(selects(&LabelSelector::default(), &labels(&[])));
        let odd: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}))
        .unwrap();
        assert!(!selects(&odd, &labels(&[("a", "2")])));
        let not_in: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]},
                                 {"key": "b", "operator": "Exists"}]}))
        .unwrap();
        assert!(selects(&not_in, &labels(&[("b", "")])));
        assert!(!selects(&not_in, &labels(&[("a", "x"), ("b", "")])));
    }

    #[test]
    fn the_covering_budget_is_found_by_selector() {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "labels": {"app": "web"}}}))
                .unwrap();
        let budgets = vec![
            pdb(json!({"metadata": {"name": "none"}, "spec": {}})),
            pdb(
                json!({"metadata": {"name": "db"}, "spec": {"selector": {"matchLabels": {"app": "db"}}}}),
            ),
            pdb(
                json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}}}),
            ),
        ];
        assert_eq!(
            covering(&budgets, &pod).and_then(|p| p.metadata.name.as_deref()),
            Some("web")
        );
        assert!(covering(&budgets[..2], &pod).is_none());
    }

    #[test]
    fn misconfigured_means_all_healthy_and_still_zero_allowed() {
        let with = |generation: i64, observed: i64, expected: i32, healthy: i32, allowed: i32| {
            pdb(json!({"metadata": {"name": "b", "generation": generation},
                "status": {"observedGeneration": observed, "expectedPods": expected,
                           "currentHealthy": healthy, "desiredHealthy": expected,
                           "disruptionsAllowed": allowed}}))
        };
        assert!(is_misconfigured(&with(1, 1, 2, 2, 0)));
        // Not every pod healthy yet: waiting can help.
        assert!(!is_misconfigured(&with(1, 1, 2, 1, 0)));
        assert!(!is_misconfigured(&with(1, 1, 2, 2, 1)));
        assert!(!is_misconfigured(&with(1, 1, 0, 0, 0)));
        // Status not caught up with the spec: do not judge.
        assert!(!is_misconfigured(&with(2, 1, 2, 2, 0)));
        assert!(!is_misconfigured(&pdb(json!({"metadata": {"name": "b"}}))));
    }
}
