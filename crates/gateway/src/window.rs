//! A chat request that cannot fit its route's context window goes to the route's
//! `context_length_fallback` (when that one fits it), or is refused with 400
//! `context_length_exceeded`, before anything is published or any provider called.
//!
//! It fits a target when its prompt's tokens (counted in the target's encoding, see
//! `shared::tokens`) plus the answer's (`max_completion_tokens` or `max_tokens`, else the
//! target's output reserve) are within the target's window, and fits a route when it fits
//! any of its targets. Counting is exact only when it matters: a bound from the texts'
//! lengths (every token is at least one byte) settles almost every request in microseconds.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};
use shared::Task;
use shared::config::{Config, MAX_FALLBACK_HOPS, TargetConfig, split_direct};
use shared::tokens::{Encoding, count_request_until, request_upper_bound};

use crate::error::ApiError;

/// Whether `task` fits its route by the length bound alone (no counting): true for almost
/// every request, in well under a microsecond per kilobyte.
pub fn fits_by_bound(config: &Config, task: &Task) -> bool {
    let answer = requested_answer(&task.request);
    let bound = request_upper_bound(&task.request);
    let targets = targets(config, &task.route);
    // A model without targets is refused elsewhere (`build_task`), not here.
    targets.is_empty()
        || targets.iter().any(|t| {
            bound.saturating_add(answer.unwrap_or(u64::from(t.reserve()))) <= u64::from(t.window())
        })
}

/// Sends `task` to the first route of its fallback chain that it fits, counting its tokens
/// exactly (up to the largest window of the chain), or refuses it. Counting a large request
/// in an OpenAI encoding takes milliseconds: run it off the async threads.
pub fn fit(config: &Config, mut task: Task) -> Result<Task, ApiError> {
    let answer = requested_answer(&task.request);
    let bound = request_upper_bound(&task.request);
    let first = targets(config, &task.route);
    // The fallback chain, each with its targets; counting stops past the largest window
    // of them all, which no prompt above it fits.
    let mut chain = vec![(task.route.clone(), first)];
    while chain.len() <= MAX_FALLBACK_HOPS {
        let Some(next) = chain
            .last()
            .and_then(|(route, _)| config.routes.get(route))
            .and_then(|r| r.context_length_fallback.clone())
        else {
            break;
        };
        let targets = targets(config, &next);
        chain.push((next, targets));
    }
    let limit = chain
        .iter()
        .flat_map(|(_, targets)| targets.iter().map(|t| u64::from(t.window())))
        .max()
        .unwrap_or(0);
    let mut counts = Counts::new(&task.request, limit);
    if let Some((route, _)) = chain
        .iter()
        .find(|(_, targets)| fits(targets, answer, &mut counts))
    {
        let route = route.clone();
        task.route = route;
        return Ok(task);
    }
    // Named by the largest window of the route asked for.
    let largest = chain
        .first()
        .and_then(|(_, first)| first.iter().max_by_key(|t| t.window()));
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
fn targets<'a>(config: &'a Config, route: &str) -> Cow<'a, [TargetConfig]> {
    if let Some(r) = config.routes.get(route) {
        return Cow::Borrowed(&r.targets);
    }
    split_direct(route, &config.providers, &config.routes)
        .and_then(|(provider, model)| {
            config
                .providers
                .get(provider)
                .map(|p| TargetConfig::direct(provider, model, p))
        })
        .into_iter()
        .collect::<Vec<_>>()
        .into()
}

fn fits(targets: &[TargetConfig], answer: Option<u64>, counts: &mut Counts<'_>) -> bool {
    targets.iter().any(|t| {
        counts
            .get(Encoding::of(&t.model))
            .saturating_add(answer.unwrap_or(u64::from(t.reserve())))
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
/// Exact up to `limit`; past it, counting stops (the prompt fits no window then).
struct Counts<'a> {
    body: &'a Map<String, Value>,
    limit: u64,
    done: BTreeMap<Encoding, u64>,
}

impl<'a> Counts<'a> {
    fn new(body: &'a Map<String, Value>, limit: u64) -> Self {
        Self {
            body,
            limit,
            done: BTreeMap::new(),
        }
    }

    fn get(&mut self, encoding: Encoding) -> u64 {
        let (body, limit) = (self.body, self.limit);
        *self
            .done
            .entry(encoding)
            .or_insert_with(|| count_request_until(encoding, body, limit))
    }
}
