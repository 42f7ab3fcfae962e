//! Choosing the agent for a step: among the agents that have what the step needs, the one
//! with the best score of capability match, current load and past performance (weights
//! configurable, default 0.5 / 0.3 / 0.2). Every candidate's score parts are kept, so the
//! step records why its agent was chosen. Pure: load and performance are read elsewhere.

use serde::{Deserialize, Serialize};

use shared::agents::AgentProfile;

pub use shared::agents::Weights;

/// Match for a capability an agent lists first (what it is for).
const PRIMARY_MATCH: f64 = 1.0;
/// Match for a capability it lists further down (what it can also do).
const SECONDARY_MATCH: f64 = 0.75;
/// Weight of review scores against success rate in performance, when there are reviews.
const REVIEW_SHARE: f64 = 0.4;

/// An agent's load, from JetStream's books: its consumer's pending and ack-pending counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub in_flight: u64,
    pub queued: u64,
    pub capacity: u32,
}

/// An agent's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Performance {
    pub succeeded: u64,
    pub failed: u64,
    /// Mean review score in `[0, 1]`, if any of its work was reviewed.
    pub review_score: Option<f64>,
    /// Mean step latency, for display.
    pub mean_latency_ms: Option<f64>,
}

/// Weight of the newest observation in an agent's running means: recent behaviour counts,
/// one odd step does not swing the record.
const RECENT: f64 = 0.2;

impl Performance {
    /// Takes in one finished step: whether it succeeded, and its model time (counted for
    /// successes only: a step that failed before any model answered took no model time).
    pub fn record_step(&mut self, succeeded: bool, latency_ms: u64) {
        if succeeded {
            self.succeeded = self.succeeded.saturating_add(1);
            self.mean_latency_ms = Some(running_mean(self.mean_latency_ms, as_f64(latency_ms)));
        } else {
            self.failed = self.failed.saturating_add(1);
        }
    }

    /// Takes in one review of work the agent contributed to, scored in `[0, 1]`.
    pub fn record_review(&mut self, score: f64) {
        self.review_score = Some(running_mean(self.review_score, score.clamp(0.0, 1.0)));
    }

    /// Share of its steps that succeeded, once it has run any.
    pub fn success_rate(&self) -> Option<f64> {
        let all = self.succeeded.saturating_add(self.failed);
        (all > 0).then(|| as_f64(self.succeeded) / as_f64(all))
    }
}

fn running_mean(mean: Option<f64>, x: f64) -> f64 {
    mean.map_or(x, |m| m + RECENT * (x - m))
}

/// One candidate's score and its parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub agent: String,
    pub capability: f64,
    pub load: f64,
    pub performance: f64,
    pub total: f64,
}

/// The chosen agent and every candidate's score, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub agent: String,
    pub candidates: Vec<Scored>,
}

/// How well `agent` fits a step needing `needs`: the mean over the needs of
/// [`PRIMARY_MATCH`], [`SECONDARY_MATCH`] or 0.
pub fn capability_match(agent: &AgentProfile, needs: &[String]) -> f64 {
    if needs.is_empty() {
        return 0.0;
    }
    let sum: f64 = needs
        .iter()
        .map(
            |need| match agent.capabilities.iter().position(|c| c == need) {
                Some(0) => PRIMARY_MATCH,
                Some(_) => SECONDARY_MATCH,
                None => 0.0,
            },
        )
        .sum();
    sum / as_f64(needs.len() as u64)
}

/// 1 when idle, ½ with every slot busy, ⅓ with as much queued again, … (`1 / (1 + use)`).
pub fn load_score(load: Load) -> f64 {
    let busy = as_f64(load.in_flight.saturating_add(load.queued));
    let capacity = as_f64(u64::from(load.capacity.max(1)));
    1.0 / (1.0 + busy / capacity)
}

/// Success rate with one imagined success and failure (so a newcomer scores ½, not 0 or
/// 1), blended with the mean review score when there is one.
pub fn performance_score(p: Performance) -> f64 {
    let success = as_f64(p.succeeded.saturating_add(1))
        / as_f64(p.succeeded.saturating_add(p.failed).saturating_add(2));
    match p.review_score {
        Some(review) => success * (1.0 - REVIEW_SHARE) + review.clamp(0.0, 1.0) * REVIEW_SHARE,
        None => success,
    }
}

/// Scores every agent that matches `needs` at all and picks the best (ties: by name, so
/// the choice is the same on every replica). `None` when no agent matches.
pub fn choose<'a>(
    agents: impl IntoIterator<Item = (&'a AgentProfile, Load, Performance)>,
    needs: &[String],
    weights: Weights,
) -> Option<Decision> {
    let mut candidates: Vec<Scored> = agents
        .into_iter()
        .filter_map(|(agent, load, performance)| {
            let capability = capability_match(agent, needs);
            (capability > 0.0).then(|| {
                let load = load_score(load);
                let performance = performance_score(performance);
                Scored {
                    agent: agent.name.clone(),
                    capability,
                    load,
                    performance,
                    total: weights.capability * capability
                        + weights.load * load
                        + weights.performance * performance,
                }
            })
        })
        .collect();
    candidates.sort_by(|a, b| {
        b.total
            .total_cmp(&a.total)
            .then_with(|| a.agent.cmp(&b.agent))
    });
    let agent = candidates.first()?.agent.clone();
    Some(Decision { agent, candidates })
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn as_f64(n: u64) -> f64 {
    n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, capabilities: &[&str]) -> AgentProfile {
        AgentProfile {
            name: name.into(),
            role: name.into(),
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            route: "r".into(),
            system_prompt: "p".into(),
            tools: vec![],
            max_concurrency: 4,
            description: String::new(),
        }
    }

    fn idle() -> Load {
        Load {
            in_flight: 0,
            queued: 0,
            capacity: 4,
        }
    }

    fn needs(n: &[&str]) -> Vec<String> {
        n.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn the_specialist_wins_over_the_generalist_when_both_are_free() {
        let (specialist, generalist) = (
            agent("researcher", &["research"]),
            agent("analyst", &["analysis", "research"]),
        );
        let d = choose(
            [
                (&generalist, idle(), Performance::default()),
                (&specialist, idle(), Performance::default()),
            ],
            &needs(&["research"]),
            Weights::default(),
        )
        .unwrap();
        assert_eq!(d.agent, "researcher");
        assert_eq!(d.candidates.len(), 2);
        assert_eq!(d.candidates[1].capability, SECONDARY_MATCH);
    }

    #[test]
    fn load_moves_work_away_from_a_busy_agent() {
        let (a, b) = (agent("a", &["research"]), agent("b", &["research"]));
        let busy = Load {
            in_flight: 4,
            queued: 8,
            capacity: 4,
        };
        let d = choose(
            [
                (&a, busy, Performance::default()),
                (&b, idle(), Performance::default()),
            ],
            &needs(&["research"]),
            Weights::default(),
        )
        .unwrap();
        assert_eq!(d.agent, "b");
        assert!(d.candidates[1].load < 0.3);
    }

    #[test]
    fn a_better_record_breaks_a_tie() {
        let (a, b) = (agent("a", &["writing"]), agent("b", &["writing"]));
        let good = Performance {
            succeeded: 20,
            failed: 0,
            review_score: Some(0.9),
            mean_latency_ms: None,
        };
        let d = choose(
            [(&a, idle(), Performance::default()), (&b, idle(), good)],
            &needs(&["writing"]),
            Weights::default(),
        )
        .unwrap();
        assert_eq!(d.agent, "b");
    }

    #[test]
    fn nobody_matching_is_none_and_ties_go_by_name() {
        let a = agent("zed", &["code"]);
        assert!(
            choose(
                [(&a, idle(), Performance::default())],
                &needs(&["review"]),
                Weights::default()
            )
            .is_none()
        );
        let (x, y) = (agent("y", &["code"]), agent("x", &["code"]));
        let d = choose(
            [
                (&x, idle(), Performance::default()),
                (&y, idle(), Performance::default()),
            ],
            &needs(&["code"]),
            Weights::default(),
        )
        .unwrap();
        assert_eq!(d.agent, "x");
    }

    #[test]
    fn score_parts_stay_in_range() {
        for in_flight in [0, 1, 4, 1000] {
            let s = load_score(Load {
                in_flight,
                queued: in_flight,
                capacity: 0,
            });
            assert!((0.0..=1.0).contains(&s));
        }
        assert_eq!(performance_score(Performance::default()), 0.5);
        assert!(
            performance_score(Performance {
                succeeded: 0,
                failed: 50,
                review_score: Some(2.0),
                mean_latency_ms: None
            }) <= 1.0
        );
    }

    #[test]
    fn a_record_counts_steps_and_keeps_running_means() {
        let mut p = Performance::default();
        assert_eq!(p.success_rate(), None);
        p.record_step(true, 100);
        p.record_step(false, 0);
        p.record_step(true, 200);
        assert_eq!((p.succeeded, p.failed), (2, 1));
        assert_eq!(p.success_rate(), Some(2.0 / 3.0));
        assert_eq!(
            p.mean_latency_ms,
            Some(120.0),
            "failures take no model time"
        );
        p.record_review(1.0);
        p.record_review(0.0);
        assert_eq!(p.review_score, Some(0.8));
        p.record_review(7.0);
        assert!(
            (p.review_score.unwrap() - 0.84).abs() < 1e-9,
            "clamped to 1"
        );
    }
}
