//! The failover loop: for one delivery of a task, try the route's targets in the order its
//! strategy gives, skipping those whose breaker is open or that are cooling down, rotating
//! keys, retrying flaky answers in place, switching to the context-length or content-filter
//! fallback route on those refusals, all within the task's one deadline. Each attempt is
//! recorded; `action::decide` says what follows a failure. When every target failed for a
//! reason that may pass, the outcome asks for the task to come back later (a delayed NAK),
//! so a long outage is waited out in the queue instead of failing the task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use shared::config::{MAX_FALLBACK_HOPS, RouteConfig, Strategy, TargetConfig, split_direct};
use shared::names::{
    HEADER_ATTEMPTS, HEADER_FALLBACK_DEPTH, HEADER_MODEL, HEADER_PROVIDER, HEADER_SEQ,
    HEADER_UPSTREAM_MS, stream_subject,
};
use shared::task::now_ms;
use shared::{Attempt, FailureClass, StreamEventKind, Task};
use tracing::{debug, info, warn};

use crate::action::{Action, Chain, Effect, decide, effect};
use crate::assemble::Assembler;
use crate::deps::{Deps, Runtime};
use crate::health::{Admission, Probe};
use crate::plan;
use crate::provider::{Call, ProviderError};
use crate::relay::event_headers;

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

/// The targets of one leg of the chain (a route, or one directly addressed target).
struct Leg {
    strategy: Strategy,
    targets: Vec<TargetConfig>,
    context_length_fallback: Option<String>,
    content_filter_fallback: Option<String>,
}

impl Leg {
    fn resolve(name: &str, deps: &Deps) -> Option<Self> {
        if let Some(route) = deps.routes.get(name) {
            return Some(Self::from_route(route));
        }
        let (provider, model) = split_direct(name, &deps.provider_configs)?;
        Some(Self {
            strategy: Strategy::Priority,
            targets: vec![TargetConfig::direct(
                provider,
                model,
                &deps.provider_configs[provider],
            )],
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

/// Runs one delivery of `task`: `prior` attempts were made by earlier deliveries.
pub(crate) async fn run(task: &Task, delivery: i64, prior: &[Attempt], deps: &Deps) -> Outcome {
    let mut tally = Tally::default();
    let mut leg_name = task.route.clone();
    for _hop in 0..=MAX_FALLBACK_HOPS {
        let Some(leg) = Leg::resolve(&leg_name, deps) else {
            let err = ProviderError::new(
                FailureClass::BadRequest,
                format!("unknown route {leg_name:?}"),
            );
            return finish(tally, Err(err), None);
        };
        match run_leg(task, delivery, prior, deps, &leg, &mut tally).await {
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

enum LegEnd {
    Answered(Value, String, String),
    /// Give up on the task now.
    Stop(ProviderError),
    /// Every target of the leg was tried or skipped.
    Exhausted,
    /// A refusal that the route's fallback chain may handle.
    Fallback(Chain, ProviderError),
}

async fn run_leg(
    task: &Task,
    delivery: i64,
    prior: &[Attempt],
    deps: &Deps,
    leg: &Leg,
    tally: &mut Tally,
) -> LegEnd {
    let order = plan::order(leg.strategy, &leg.targets, |t| {
        deps.health.latency_ms(&t.provider, &t.model)
    });
    for index in order {
        let target = &leg.targets[index];
        let Some(runtime) = deps.runtimes.get(&target.provider) else {
            warn!(provider = %target.provider, "route names an unconfigured provider");
            continue;
        };
        let now = now_ms();
        let admission = deps.health.admit(&target.provider, &target.model, now);
        if let Admission::Skip(until) = admission {
            debug!(provider = %target.provider, model = %target.model, "target unavailable; skipping");
            let class = match deps
                .health
                .target(&target.provider, &target.model)
                .last_class
            {
                Some(FailureClass::RateLimited) => FailureClass::RateLimited,
                _ => FailureClass::Upstream5xx,
            };
            tally.skipped_until(until, class);
            continue;
        }
        let start = deps.rotation.fetch_add(1, Ordering::Relaxed);
        let (keys, back_at) = if target.keys.is_empty() {
            (vec![None], None)
        } else {
            let (keys, back_at) =
                deps.health
                    .usable_keys(&target.provider, &target.keys, start, now);
            (keys.into_iter().map(Some).collect(), back_at)
        };
        if let Some(at) = back_at {
            tally.skipped_until(at, FailureClass::RateLimited);
        }
        if keys.is_empty() {
            if back_at.is_none() {
                tally.last_error.get_or_insert(ProviderError::new(
                    FailureClass::Auth,
                    format!("every key of provider {} was refused", target.provider),
                ));
            }
            continue;
        }
        // Only a target that can actually be called claims the probe.
        if admission == Admission::Probe {
            match deps
                .health
                .claim_probe(&target.provider, &target.model, runtime.timeout)
                .await
            {
                Probe::Won | Probe::Healthy => {}
                Probe::Lost => {
                    let until = match deps.health.admit(&target.provider, &target.model, now_ms()) {
                        Admission::Skip(until) => until,
                        Admission::Go | Admission::Probe => now_ms() + 1000,
                    };
                    tally.skipped_until(until, FailureClass::Upstream5xx);
                    continue;
                }
            }
        }
        tally.targets_tried += 1;
        for (k, key) in keys.iter().enumerate() {
            let mut retries = 0;
            let rotate = loop {
                if task.remaining().is_zero() {
                    return LegEnd::Stop(ProviderError::new(
                        FailureClass::DeadlineExceeded,
                        "the task's deadline passed during failover",
                    ));
                }
                let label = key.map(|k| k.label.clone());
                let call = Call {
                    model: &target.model,
                    request: &task.request,
                    key: key.map(|k| &k.secret),
                };
                let started_ms = now_ms();
                let clock = Instant::now();
                let meta = FirstChunkMeta {
                    provider: &target.provider,
                    model: &target.model,
                    attempts: prior.len() + tally.attempts.len() + 1,
                    depth: tally.targets_tried - 1,
                    upstream_before_ms: prior
                        .iter()
                        .chain(&tally.attempts)
                        .map(|a| a.duration_ms)
                        .sum(),
                };
                let result = attempt(task, delivery, deps, runtime, call, meta).await;
                let elapsed = clock.elapsed();
                let mut record = Attempt {
                    provider: target.provider.clone(),
                    model: target.model.clone(),
                    key: label.clone(),
                    delivery: u64::try_from(delivery).unwrap_or(1),
                    started_ms,
                    duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                    class: None,
                    upstream_status: None,
                    message: None,
                };
                let err = match result {
                    Ok(answer) => {
                        deps.health
                            .success(
                                &target.provider,
                                &target.model,
                                elapsed.as_secs_f64() * 1000.0,
                            )
                            .await;
                        // Anthropic and Gemini refuse content with an answer, not an
                        // error; with a fallback route (and nothing streamed yet) it is
                        // treated as the refusal it is.
                        if leg.content_filter_fallback.is_some()
                            && !task.is_streaming()
                            && is_refusal(&answer)
                        {
                            record.class = Some(FailureClass::ContentFilter);
                            record.message = Some("the provider refused the content".to_owned());
                            tally.attempts.push(record);
                            let err = ProviderError::new(
                                FailureClass::ContentFilter,
                                "the provider refused the content",
                            );
                            tally.last_error = Some(err.clone());
                            return LegEnd::Fallback(Chain::ContentFilter, err);
                        }
                        tally.attempts.push(record);
                        return LegEnd::Answered(
                            answer,
                            target.provider.clone(),
                            target.model.clone(),
                        );
                    }
                    Err(err) => err,
                };
                record.class = Some(err.class);
                record.upstream_status = err.status;
                record.message = Some(err.message.clone());
                tally.attempts.push(record);
                warn!(
                    provider = %target.provider,
                    model = %target.model,
                    key = label.as_deref().unwrap_or("-"),
                    class = err.class.as_str(),
                    status = err.status,
                    "attempt failed"
                );
                match effect(&err) {
                    Effect::None => {}
                    Effect::Unwell => {
                        deps.health
                            .failure(&target.provider, &target.model, err.class)
                            .await
                    }
                    Effect::CoolDown => match &label {
                        Some(label) => {
                            deps.health
                                .cool_key(&target.provider, label, err.retry_after)
                                .await
                        }
                        None => {
                            deps.health
                                .cool_target(&target.provider, &target.model, err.retry_after)
                                .await
                        }
                    },
                    Effect::DisableKey => {
                        if let Some(label) = &label {
                            deps.health
                                .disable_key(&target.provider, label, &err.message)
                                .await;
                        }
                    }
                }
                let action = decide(&err, retries, k + 1 < keys.len());
                if err.class.is_transient() {
                    tally.passing = Some(err.class);
                    let now = now_ms();
                    // When this target (or key) is back, as the effect above just recorded.
                    let target_back = match deps.health.admit(&target.provider, &target.model, now)
                    {
                        Admission::Skip(until) => Some(until),
                        Admission::Go | Admission::Probe => None,
                    };
                    let key_back = label
                        .as_deref()
                        .and_then(|l| deps.health.key_back_at(&target.provider, l, now));
                    let asked = err
                        .retry_after
                        .map(|wait| now + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
                    match target_back.or(key_back).or(asked) {
                        Some(at) => tally.back_at_most(at),
                        None => tally.retry_soon = true,
                    }
                }
                tally.last_error = Some(err.clone());
                match action {
                    Action::RetrySame(pause) => {
                        // This failure may just have opened the breaker.
                        if deps.health.admit(&target.provider, &target.model, now_ms())
                            != Admission::Go
                        {
                            break false;
                        }
                        retries += 1;
                        tokio::time::sleep(pause.min(task.remaining())).await;
                    }
                    Action::RotateKey => break true,
                    Action::FailOver => break false,
                    Action::Fallback(chain) => return LegEnd::Fallback(chain, err),
                    Action::FailFast => return LegEnd::Stop(err),
                }
            };
            if !rotate {
                break;
            }
        }
    }
    LegEnd::Exhausted
}

/// One call to one target with its timeouts; streaming calls forward chunks as they come.
async fn attempt(
    task: &Task,
    delivery: i64,
    deps: &Deps,
    runtime: &Runtime,
    call: Call<'_>,
    meta: FirstChunkMeta<'_>,
) -> Result<Value, ProviderError> {
    let budget = task.remaining().min(runtime.timeout);
    // Set once a chunk reached the caller: from then on a timeout is partial, no failover.
    let published = AtomicBool::new(false);
    let work = async {
        if task.is_streaming() {
            stream_to_caller(task, delivery, deps, runtime, call, meta, &published).await
        } else {
            runtime.provider.complete(call).await
        }
    };
    let timed_out = |class, message: String| ProviderError {
        partial: published.load(Ordering::Relaxed),
        ..ProviderError::new(class, message)
    };
    match tokio::time::timeout(budget, work).await {
        Ok(outcome) => outcome,
        Err(_) if task.remaining().is_zero() => Err(timed_out(
            FailureClass::DeadlineExceeded,
            "the task's deadline passed while the provider was answering".to_owned(),
        )),
        Err(_) => Err(timed_out(
            FailureClass::Timeout,
            format!("provider did not answer within {} ms", budget.as_millis()),
        )),
    }
}

/// Who answers, sent with the first chunk so the gateway can say so in its headers.
struct FirstChunkMeta<'a> {
    provider: &'a str,
    model: &'a str,
    attempts: usize,
    depth: u32,
    /// Time earlier attempts spent with providers.
    upstream_before_ms: u64,
}

/// Forwards each chunk to `stream.<task id>` as it arrives and returns the assembled
/// completion. The first chunk must come within the first-token timeout and each next one
/// within the idle timeout; a failure after the first chunk is partial (no failover).
async fn stream_to_caller(
    task: &Task,
    delivery: i64,
    deps: &Deps,
    runtime: &Runtime,
    call: Call<'_>,
    meta: FirstChunkMeta<'_>,
    published: &AtomicBool,
) -> Result<Value, ProviderError> {
    let clock = Instant::now();
    let opened = tokio::time::timeout(runtime.first_token_timeout, runtime.provider.stream(call));
    let mut chunks = match opened.await {
        Ok(opened) => opened?,
        Err(_) => return Err(stall(runtime.first_token_timeout, "first token", false)),
    };
    let subject = stream_subject(task.id);
    let mut assembler = Assembler::default();
    let mut seq: u64 = 0;
    // Chunks without output (a role, empty text) are held back until output starts: until
    // then nothing the caller would notice was sent, so failing over is still clean.
    let mut held: Vec<Value> = Vec::new();
    loop {
        let (limit, what) = if seq == 0 {
            (
                runtime.first_token_timeout.saturating_sub(clock.elapsed()),
                "first token",
            )
        } else {
            (runtime.idle_timeout, "next chunk")
        };
        let chunk = match tokio::time::timeout(limit, chunks.next()).await {
            Err(_) => return Err(stall(limit, what, seq > 0)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ProviderError {
                    partial: seq > 0,
                    ..e
                });
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        assembler.push(&chunk);
        if seq == 0 && !carries_output(&chunk) {
            held.push(chunk);
            continue;
        }
        published.store(true, Ordering::Relaxed);
        for chunk in held.drain(..).chain(std::iter::once(chunk)) {
            publish_chunk(deps, &subject, &chunk, delivery, seq, &meta, &clock).await;
            seq += 1;
        }
    }
    // A stream that ended without output still sends what it had.
    published.store(true, Ordering::Relaxed);
    for chunk in held {
        publish_chunk(deps, &subject, &chunk, delivery, seq, &meta, &clock).await;
        seq += 1;
    }
    Ok(assembler.finish())
}

/// Whether an answer is a content-filter refusal (`finish_reason: content_filter`).
fn is_refusal(answer: &Value) -> bool {
    answer["choices"][0]["finish_reason"] == "content_filter"
}

/// Whether a chunk carries something the caller sees: text (or reasoning, or a refusal), a
/// tool call or a finish reason.
fn carries_output(chunk: &Value) -> bool {
    chunk["choices"].as_array().into_iter().flatten().any(|c| {
        let delta = &c["delta"];
        ["content", "reasoning_content", "reasoning", "refusal"]
            .iter()
            .any(|field| delta[*field].as_str().is_some_and(|t| !t.is_empty()))
            || delta.get("tool_calls").is_some_and(|t| !t.is_null())
            || !c["finish_reason"].is_null()
    })
}

/// Publishes one chunk on `stream.<task id>`; the first carries who answers.
async fn publish_chunk(
    deps: &Deps,
    subject: &str,
    chunk: &Value,
    delivery: i64,
    seq: u64,
    meta: &FirstChunkMeta<'_>,
    clock: &Instant,
) {
    let mut headers: HeaderMap = event_headers(StreamEventKind::Chunk, delivery);
    headers.insert(HEADER_SEQ, seq.to_string().as_str());
    if seq == 0 {
        headers.insert(HEADER_PROVIDER, meta.provider);
        headers.insert(HEADER_MODEL, meta.model);
        headers.insert(HEADER_ATTEMPTS, meta.attempts.to_string().as_str());
        headers.insert(HEADER_FALLBACK_DEPTH, meta.depth.to_string().as_str());
        let upstream = u128::from(meta.upstream_before_ms) + clock.elapsed().as_millis();
        headers.insert(HEADER_UPSTREAM_MS, upstream.to_string().as_str());
    }
    let payload = Bytes::from(serde_json::to_vec(chunk).unwrap_or_default());
    if let Err(e) = deps
        .client
        .publish_with_headers(subject.to_owned(), headers, payload)
        .await
    {
        // Chunks are the fast path; the stored result is the durable one.
        warn!(error = %e, "could not publish a stream chunk");
    }
}

fn stall(limit: Duration, what: &str, partial: bool) -> ProviderError {
    ProviderError {
        partial,
        ..ProviderError::new(
            FailureClass::Timeout,
            format!("provider sent no {what} within {} ms", limit.as_millis()),
        )
    }
}
