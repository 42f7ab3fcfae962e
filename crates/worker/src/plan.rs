//! The order in which a route's targets are tried for one task, by its strategy: configured
//! priority, a weighted random draw, lowest recent latency, or lowest price.

use shared::config::{Strategy, TargetConfig};

/// Indexes of `targets` in the order to try them. `latency_ms` gives a target's recent
/// average, `None` when unknown; unknown targets go first under `latency`, so each is
/// measured before it can be judged.
pub(crate) fn order(
    strategy: Strategy,
    targets: &[TargetConfig],
    latency_ms: impl Fn(&TargetConfig) -> Option<f64>,
) -> Vec<usize> {
    let mut indexes: Vec<usize> = (0..targets.len()).collect();
    match strategy {
        Strategy::Priority => {}
        Strategy::Weighted => return weighted(targets),
        Strategy::Latency => {
            let known: Vec<f64> = targets
                .iter()
                .map(|t| latency_ms(t).unwrap_or(f64::NEG_INFINITY))
                .collect();
            indexes.sort_by(|&a, &b| known[a].total_cmp(&known[b]));
        }
        Strategy::Cost => {
            indexes.sort_by(|&a, &b| targets[a].unit_cost().total_cmp(&targets[b].unit_cost()));
        }
    }
    indexes
}

/// A random order in which each next target is drawn with probability proportional to
/// its weight among those left: the first choice splits traffic by weight, and the rest
/// are still there as fallbacks.
fn weighted(targets: &[TargetConfig]) -> Vec<usize> {
    let mut left: Vec<usize> = (0..targets.len()).collect();
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|&i| u64::from(targets[i].weight)).sum();
        let pick = if total == 0 {
            0
        } else {
            let mut ticket = fastrand::u64(0..total);
            left.iter()
                .position(|&i| {
                    let w = u64::from(targets[i].weight);
                    if ticket < w {
                        true
                    } else {
                        ticket -= w;
                        false
                    }
                })
                .unwrap_or(0)
        };
        out.push(left.remove(pick));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::ProviderConfig;

    fn target(model: &str, weight: u32, cost: f64) -> TargetConfig {
        let provider: ProviderConfig =
            serde_json::from_value(serde_json::json!({"kind": "simulated"})).unwrap();
        TargetConfig {
            weight,
            input_cost_per_mtok: Some(cost),
            ..TargetConfig::direct("p", model, &provider)
        }
    }

    #[test]
    fn priority_keeps_the_configured_order() {
        let t = [
            target("a", 1, 3.0),
            target("b", 1, 1.0),
            target("c", 1, 2.0),
        ];
        assert_eq!(order(Strategy::Priority, &t, |_| None), vec![0, 1, 2]);
    }

    #[test]
    fn cost_puts_the_cheapest_first() {
        let t = [
            target("a", 1, 3.0),
            target("b", 1, 1.0),
            target("c", 1, 2.0),
        ];
        assert_eq!(order(Strategy::Cost, &t, |_| None), vec![1, 2, 0]);
    }

    #[test]
    fn latency_tries_unknown_then_fastest() {
        let t = [
            target("a", 1, 0.0),
            target("b", 1, 0.0),
            target("c", 1, 0.0),
        ];
        let lat = |t: &TargetConfig| match t.model.as_str() {
            "a" => Some(300.0),
            "b" => None,
            _ => Some(100.0),
        };
        assert_eq!(order(Strategy::Latency, &t, lat), vec![1, 2, 0]);
    }

    #[test]
    fn weighted_splits_first_choices_by_weight_and_keeps_every_target() {
        let t = [
            target("a", 3, 0.0),
            target("b", 1, 0.0),
            target("c", 0, 0.0),
        ];
        let mut firsts = [0u32; 3];
        for _ in 0..4000 {
            let o = order(Strategy::Weighted, &t, |_| None);
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2]);
            firsts[o[0]] += 1;
        }
        // Expect 3000 / 1000 / 0; allow wide statistical slack.
        assert!((2700..=3300).contains(&firsts[0]), "{firsts:?}");
        assert!((700..=1300).contains(&firsts[1]), "{firsts:?}");
        assert_eq!(firsts[2], 0);
    }
}
