//! A chat request that cannot fit its route's context window goes to the route's
//! `context_length_fallback` (when that one fits it), or is refused with 400
//! `context_length_exceeded`, before anything is published or any provider called.
//!
//! It fits a target when its prompt's tokens (counted in the target's encoding, see
//! `shared::tokens`) plus the answer's (`max_completion_tokens` or `max_tokens`, else the
//! target's output reserve) are within the target's window, and fits a route when it fits
//! any of its targets. Counting is exact only when it matters: a bound from the texts'
//! lengths (every token is at least one byte) settles almost every request in microseconds.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use shared::Task;
use shared::config::{Config, MAX_FALLBACK_HOPS, TargetConfig, split_direct};
use shared::tokens::{Encoding, count_request, request_upper_bound};

use crate::error::ApiError;

/// Sends `task` to the first route of its fallback chain that it fits, or refuses it.
pub fn fit(config: &Config, task: &mut Task) -> Result<(), ApiError> {
    let answer = requested_answer(&task.request);
    let bound = request_upper_bound(&task.request);
    let mut counts = Counts::new(&task.request);
    let first = targets(config, &task.route);
    // The cheap test first: within the bound, it fits whatever the encoding.
    if first
        .iter()
        .any(|t| bound + answer.unwrap_or(u64::from(t.reserve())) <= u64::from(t.window()))
    {
        return Ok(());
    }
    if fits(&first, answer, &mut counts) {
        return Ok(());
    }
    let mut route = task.route.clone();
    for _ in 0..MAX_FALLBACK_HOPS {
        let Some(next) = config
            .routes
            .get(&route)
            .and_then(|r| r.context_length_fallback.clone())
        else {
            break;
        };
        if fits(&targets(config, &next), answer, &mut counts) {
            task.route = next;
            return Ok(());
        }
        route = next;
    }
    // Named by the largest window of the route asked for.
    let largest = first.iter().max_by_key(|t| t.window());
    let (tokens, window) = largest.map_or((bound, 0), |t| {
        (counts.get(Encoding::of(&t.model)), t.window())
    });
    Err(ApiError::ContextLengthExceeded {
        prompt_tokens: tokens,
        answer_tokens: answer
            .or(largest.map(|t| u64::from(t.reserve())))
            .unwrap_or(0),
        window,
    })
}

/// The targets `route` may send to: its own, or the one it addresses directly.
fn targets(config: &Config, route: &str) -> Vec<TargetConfig> {
    if let Some(r) = config.routes.get(route) {
        return r.targets.clone();
    }
    split_direct(route, &config.providers, &config.routes)
        .and_then(|(provider, model)| {
            config
                .providers
                .get(provider)
                .map(|p| TargetConfig::direct(provider, model, p))
        })
        .into_iter()
        .collect()
}

fn fits(targets: &[TargetConfig], answer: Option<u64>, counts: &mut Counts<'_>) -> bool {
    targets.iter().any(|t| {
        counts.get(Encoding::of(&t.model)) + answer.unwrap_or(u64::from(t.reserve()))
            <= u64::from(t.window())
    })
}

/// The answer's tokens the caller asked for, if it asked.
fn requested_answer(body: &Map<String, Value>) -> Option<u64> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| body.get(*key).and_then(Value::as_u64))
}

/// The request's prompt tokens per encoding, each counted once.
struct Counts<'a> {
    body: &'a Map<String, Value>,
    done: BTreeMap<Encoding, u64>,
}

impl<'a> Counts<'a> {
    fn new(body: &'a Map<String, Value>) -> Self {
        Self {
            body,
            done: BTreeMap::new(),
        }
    }

    fn get(&mut self, encoding: Encoding) -> u64 {
        let body = self.body;
        *self
            .done
            .entry(encoding)
            .or_insert_with(|| count_request(encoding, body))
    }
}
