//! The failover loop: for one delivery of a task, try the route's targets in the order its
//! strategy gives, skipping those whose breaker is open or that are cooling down, rotating
//! keys, retrying flaky answers in place, switching to the context-length or content-filter
//! fallback route on those refusals, all within the task's one deadline. Each attempt is
//! recorded; `action::decide` says what follows a failure. When every target failed for a
//! reason that may pass, the outcome asks for the task to come back later (a delayed NAK),
//! so a long outage is waited out in the queue instead of failing the task.
//!
//! The loop reads provider health through [`ProviderHealth`] and hands streamed chunks to
//! a [`ChunkSink`]; it knows nothing of NATS messages, acks or results (`process.rs` does),
//! so its unit tests run it against an in-memory health and a loopback fake provider.
//! This file walks the chain of routes; `leg.rs` goes down one route's targets step by
//! step; `call.rs` makes one call with its timeouts.

mod call;
mod leg;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde_json::Value;
use shared::config::{MAX_FALLBACK_HOPS, RouteConfig, Strategy, TargetConfig, split_direct};
use shared::task::now_ms;
use shared::{Attempt, FailureClass, Task};
use tracing::info;

use crate::action::Chain;
use crate::deps::Routing;
use crate::health::ProviderHealth;
use crate::provider::ProviderError;
use crate::relay::ChunkSink;

/// Shortest delay before a task whose targets are all unavailable comes back.
const MIN_RETRY_LATER: Duration = Duration::from_millis(100);
/// Longest such delay: the queue is checked again at least this often during an outage.
const MAX_RETRY_LATER: Duration = Duration::from_secs(60);

/// How one delivery of a task ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub answer: Result<Value, ProviderError>,
    /// The attempts of this delivery, in order.
    pub attempts: Vec<Attempt>,
    /// Provider and model that answered.
    pub answered_by: Option<(String, String)>,
    /// Targets tried before the one that answered.
    pub fallback_depth: u32,
}

impl Outcome {
    /// A delivery that failed before any provider was called.
    pub(crate) fn failed(class: FailureClass, message: &str) -> Self {
        Self {
            answer: Err(ProviderError::new(class, message)),
            attempts: Vec::new(),
            answered_by: None,
            fallback_depth: 0,
        }
    }
}

/// One delivery of a task going down its chain: what the loop reads and where it reports.
#[derive(Debug)]
pub(crate) struct Failover<'a, H, S> {
    pub task: &'a Task,
    /// JetStream delivery count of this attempt at the task.
    pub delivery: i64,
    /// Attempts made by earlier deliveries.
    pub prior: &'a [Attempt],
    pub routing: &'a Routing,
    pub health: &'a H,
    pub chunks: &'a S,
}

/// The targets of one leg of the chain (a route, or one directly addressed target).
struct Leg {
    strategy: Strategy,
    targets: Vec<TargetConfig>,
    context_length_fallback: Option<String>,
    content_filter_fallback: Option<String>,
}

impl Leg {
    fn resolve(name: &str, routing: &Routing) -> Option<Self> {
        if let Some(route) = routing.routes.get(name) {
            return Some(Self::from_route(route));
        }
        let (provider, model) = split_direct(name, &routing.provider_configs, &routing.routes)?;
        let config = routing.provider_configs.get(provider)?;
        Some(Self {
            strategy: Strategy::Priority,
            targets: vec![TargetConfig::direct(provider, model, config)],
            context_length_fallback: None,
            content_filter_fallback: None,
        })
    }

    fn from_route(route: &RouteConfig) -> Self {
        Self {
            strategy: route.strategy,
            targets: route.targets.clone(),
            context_length_fallback: route.context_length_fallback.clone(),
            content_filter_fallback: route.content_filter_fallback.clone(),
        }
    }

    fn fallback(&self, chain: Chain) -> Option<&String> {
        match chain {
            Chain::ContextLength => self.context_length_fallback.as_ref(),
            Chain::ContentFilter => self.content_filter_fallback.as_ref(),
        }
    }
}

/// What the loop learned while going down the chain, for the end-of-chain decision.
#[derive(Default)]
struct Tally {
    attempts: Vec<Attempt>,
    targets_tried: u32,
    last_error: Option<ProviderError>,
    /// A failure or skip that may pass with time (outage, cooldown, open breaker).
    passing: Option<FailureClass>,
    /// Earliest time (ms) a skipped target or key is back.
    back_at: Option<u64>,
    /// A target failed for a passing reason but may be called again at once (no cooldown,
    /// breaker still closed): come back after the usual backoff, not the latest `back_at`.
    retry_soon: bool,
}

impl Tally {
    fn skipped_until(&mut self, until: u64, class: FailureClass) {
        self.back_at_most(until);
        self.passing.get_or_insert(class);
    }

    fn back_at_most(&mut self, until: u64) {
        self.back_at = Some(self.back_at.map_or(until, |b| b.min(until)));
    }
}

/// How going down one leg ended.
enum LegEnd {
    /// The answer, and the provider and model that gave it.
    Answered(Value, String, String),
    /// Give up on the task now.
    Stop(ProviderError),
    /// Every target of the leg was tried or skipped.
    Exhausted,
    /// A refusal that the route's fallback chain may handle.
    Fallback(Chain, ProviderError),
}

impl<H: ProviderHealth, S: ChunkSink> Failover<'_, H, S> {
    /// Runs the delivery down the task's route and its fallback routes.
    pub(crate) async fn run(&self) -> Outcome {
        let mut tally = Tally::default();
        let mut leg_name = self.task.route.clone();
        for _hop in 0..=MAX_FALLBACK_HOPS {
            let Some(leg) = Leg::resolve(&leg_name, self.routing) else {
                let err = ProviderError::new(
                    FailureClass::BadRequest,
                    format!("unknown route {leg_name:?}"),
                );
                return finish(tally, Err(err), None);
            };
            match self.run_leg(&leg, &mut tally).await {
                LegEnd::Answered(answer, provider, model) => {
                    return finish(tally, Ok(answer), Some((provider, model)));
                }
                LegEnd::Stop(err) => return finish(tally, Err(err), None),
                LegEnd::Exhausted => break,
                LegEnd::Fallback(chain, err) => match leg.fallback(chain) {
                    Some(next) => {
                        info!(from = %leg_name, to = %next, ?chain, "switching to the fallback route");
                        leg_name = next.clone();
                    }
                    None => return finish(tally, Err(err), None),
                },
            }
        }
        let err = end_of_chain(&mut tally);
        finish(tally, Err(err), None)
    }
}

fn finish(
    tally: Tally,
    answer: Result<Value, ProviderError>,
    answered_by: Option<(String, String)>,
) -> Outcome {
    Outcome {
        answer,
        attempts: tally.attempts,
        answered_by,
        fallback_depth: tally.targets_tried.saturating_sub(1),
    }
}

/// The error when no target answered: one that asks to come back later when something may
/// pass (honoured by the NAK delay), else the last failure.
fn end_of_chain(tally: &mut Tally) -> ProviderError {
    let summary = summarize(&tally.attempts);
    if let Some(class) = tally.passing {
        let delay = tally.back_at.map(|at| {
            Duration::from_millis(at.saturating_sub(now_ms()))
                .clamp(MIN_RETRY_LATER, MAX_RETRY_LATER)
        });
        let last = tally.last_error.take();
        return ProviderError {
            class: last.as_ref().map_or(class, |e| {
                if e.class.is_transient() {
                    e.class
                } else {
                    class
                }
            }),
            message: format!("every target failed or is unavailable{summary}"),
            status: last.as_ref().and_then(|e| e.status),
            retry_after: delay.or_else(|| last.and_then(|e| e.retry_after)),
            partial: false,
        };
    }
    match tally.last_error.take() {
        Some(e) => ProviderError {
            message: format!("{}{summary}", e.message),
            ..e
        },
        None => ProviderError::new(FailureClass::Internal, "the route has no usable target"),
    }
}

/// ` (provider/model: class, …)` for the attempts made, to say what was tried.
fn summarize(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = attempts
        .iter()
        .map(|a| {
            format!(
                "{}/{}: {}",
                a.provider,
                a.model,
                a.class.map_or("answered", FailureClass::as_str)
            )
        })
        .collect();
    format!(" ({})", parts.join(", "))
}
