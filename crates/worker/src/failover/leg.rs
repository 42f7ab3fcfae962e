//! Going down one leg's targets, in named steps: [`Failover::ready`] waits for a slot under
//! the provider's limit of calls in flight, then decides whether a target may be called now
//! (breaker, cooldown, usable keys, the half-open probe);
//! [`Failover::try_target`] goes through its keys; [`Failover::try_key`] calls with one key,
//! retrying in place while the classifier says so; [`Failover::report`] tells health what
//! a failure says about the target, and [`Failover::note_passing`] when it may be back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use shared::config::{ApiKey, TargetConfig};
use shared::task::now_ms;
use shared::{Attempt, FailureClass};
use tracing::{debug, warn};

use super::call::is_refusal;
use super::{Failover, Leg, LegEnd, Tally};
use crate::action::{Action, Chain, Effect, decide, effect};
use crate::call_limit::{Slot, signal};
use crate::deps::Runtime;
use crate::health::{Admission, Probe, ProviderHealth};
use crate::plan;
use crate::provider::ProviderError;
use crate::relay::ChunkSink;

/// What an answer refused by the provider's content filter is recorded as.
const REFUSED: &str = "the provider refused the content";
/// When a lost probe's target is looked at again, if its record gives no time.
const LOST_PROBE_PAUSE_MS: u64 = 1000;
/// When a task whose targets were all at their limits of calls in flight (but the last,
/// which failed) may come back.
const SATURATED_RETRY_MS: u64 = 1000;

/// A target that may be called now: its adapter, the keys to try, in rotation order
/// (`None`: the target takes no key), and the slot its calls are made with.
struct Ready<'t> {
    runtime: &'t Runtime,
    keys: Vec<Option<&'t ApiKey>>,
    slot: Slot<'t>,
}

/// Whether a target may be called now.
enum Gate<'t> {
    Open(Ready<'t>),
    /// Skipped (noted in the tally): on to the next target.
    Closed,
    /// The task's time ran out waiting for a slot.
    Stop(ProviderError),
}

/// How calling with one key ended.
enum KeyEnd {
    /// Rotate to the target's next key.
    NextKey,
    /// Move to the leg's next target.
    NextTarget,
    /// The leg is over.
    Leg(LegEnd),
}

impl<H: ProviderHealth, S: ChunkSink> Failover<'_, H, S> {
    pub(super) async fn run_leg(&self, leg: &Leg, tally: &mut Tally) -> LegEnd {
        let order = plan::order(leg.strategy, &leg.targets, |t| {
            self.health.latency_ms(&t.provider, &t.model)
        });
        let count = order.len();
        for (position, index) in order.into_iter().enumerate() {
            let target = &leg.targets[index];
            let last = position + 1 == count;
            let mut ready = match self.ready(target, tally, last).await {
                Gate::Open(ready) => ready,
                Gate::Closed => continue,
                Gate::Stop(err) => return LegEnd::Stop(err),
            };
            tally.targets_tried += 1;
            if let Some(end) = self.try_target(leg, target, &mut ready, tally).await {
                return end;
            }
        }
        LegEnd::Exhausted
    }

    /// Whether `target` may be called now, and with which keys; a target that may not is
    /// noted in `tally` (when it is back, or that its keys were refused) and skipped. A
    /// target that is paused (open breaker, cooldown) is skipped at once. A target at its
    /// provider's limit of calls in flight is skipped too when another target follows in the
    /// leg; the `last` one is waited for, at most until the task's deadline. Health is read
    /// again once a slot is had, as it is when the call can go.
    async fn ready<'t>(
        &'t self,
        target: &'t TargetConfig,
        tally: &mut Tally,
        last: bool,
    ) -> Gate<'t> {
        let Some(runtime) = self.routing.runtimes.get(&target.provider) else {
            warn!(provider = %target.provider, "route names an unconfigured provider");
            return Gate::Closed;
        };
        if self.admission(target, tally).is_none() {
            return Gate::Closed;
        }
        let slot = if last {
            runtime.calls.slot(self.task.remaining()).await
        } else {
            let Some(slot) = runtime.calls.try_slot() else {
                debug!(provider = %target.provider, model = %target.model, "provider at its limit of calls in flight; trying the next target");
                // Should no other target answer, the task comes back soon instead.
                tally.skipped_until(
                    now_ms().saturating_add(SATURATED_RETRY_MS),
                    FailureClass::RateLimited,
                );
                return Gate::Closed;
            };
            Some(slot)
        };
        let Some(slot) = slot else {
            return Gate::Stop(ProviderError::new(
                FailureClass::DeadlineExceeded,
                format!(
                    "the task's deadline passed while waiting for one of the {} calls in flight to provider {} to end",
                    runtime.calls.limit(),
                    target.provider
                ),
            ));
        };
        // Health again, as it is now that the call can go.
        let Some(admission) = self.admission(target, tally) else {
            return Gate::Closed;
        };
        let now = now_ms();
        let Some(keys) = self.usable_keys(target, now, tally) else {
            return Gate::Closed;
        };
        // Only a target that can actually be called claims the probe.
        if admission == Admission::Probe && !self.claim_probe(target, runtime, tally).await {
            return Gate::Closed;
        }
        Gate::Open(Ready {
            runtime,
            keys,
            slot,
        })
    }

    /// Whether `target` may be called now (or probed); `None`, noted in `tally`, when it is
    /// paused (open breaker, cooldown) and must be skipped.
    fn admission(&self, target: &TargetConfig, tally: &mut Tally) -> Option<Admission> {
        let admission = self.health.admit(&target.provider, &target.model, now_ms());
        let Admission::Skip(until) = admission else {
            return Some(admission);
        };
        debug!(provider = %target.provider, model = %target.model, "target unavailable; skipping");
        let class = match self.health.last_class(&target.provider, &target.model) {
            Some(FailureClass::RateLimited) => FailureClass::RateLimited,
            _ => FailureClass::Upstream5xx,
        };
        tally.skipped_until(until, class);
        None
    }

    /// The target's keys that may be used now, from the next rotation start; `None` (and
    /// noted in `tally`) when none may.
    fn usable_keys<'t>(
        &self,
        target: &'t TargetConfig,
        now: u64,
        tally: &mut Tally,
    ) -> Option<Vec<Option<&'t ApiKey>>> {
        let start = self.routing.rotation.fetch_add(1, Ordering::Relaxed);
        let (keys, back_at) = if target.keys.is_empty() {
            (vec![None], None)
        } else {
            let (keys, back_at) =
                self.health
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
            return None;
        }
        Some(keys)
    }

    /// Tries to become the probe of a target whose breaker wait is over; false (and noted
    /// in `tally`) when another caller probes.
    async fn claim_probe(
        &self,
        target: &TargetConfig,
        runtime: &Runtime,
        tally: &mut Tally,
    ) -> bool {
        match self
            .health
            .claim_probe(&target.provider, &target.model, runtime.timeout)
            .await
        {
            Probe::Won | Probe::Healthy => true,
            Probe::Lost => {
                let until = match self.health.admit(&target.provider, &target.model, now_ms()) {
                    Admission::Skip(until) => until,
                    Admission::Go | Admission::Probe => now_ms() + LOST_PROBE_PAUSE_MS,
                };
                tally.skipped_until(until, FailureClass::Upstream5xx);
                false
            }
        }
    }

    /// Calls `target` with each key in turn until one answers or a failure says to stop
    /// rotating; `None` moves on to the next target.
    async fn try_target(
        &self,
        leg: &Leg,
        target: &TargetConfig,
        ready: &mut Ready<'_>,
        tally: &mut Tally,
    ) -> Option<LegEnd> {
        let keys = std::mem::take(&mut ready.keys);
        for (k, key) in keys.iter().enumerate() {
            let other_key = k + 1 < keys.len();
            match self
                .try_key(leg, target, ready, *key, other_key, tally)
                .await
            {
                KeyEnd::NextKey => {}
                KeyEnd::NextTarget => return None,
                KeyEnd::Leg(end) => return Some(end),
            }
        }
        None
    }

    /// Calls `target` with one key, again after a pause while the classifier says to
    /// retry in place.
    async fn try_key(
        &self,
        leg: &Leg,
        target: &TargetConfig,
        ready: &mut Ready<'_>,
        key: Option<&ApiKey>,
        other_key: bool,
        tally: &mut Tally,
    ) -> KeyEnd {
        let mut retries = 0;
        loop {
            if self.task.remaining().is_zero() {
                return KeyEnd::Leg(LegEnd::Stop(ProviderError::new(
                    FailureClass::DeadlineExceeded,
                    "the task's deadline passed during failover",
                )));
            }
            let (result, mut record, elapsed) = self.call(target, ready, key, tally).await;
            let err = match result {
                Ok(answer) => {
                    return KeyEnd::Leg(
                        self.answered(leg, target, answer, record, elapsed, tally)
                            .await,
                    );
                }
                Err(err) => err,
            };
            record.class = Some(err.class);
            record.upstream_status = err.status;
            record.message = Some(err.message.clone());
            tally.attempts.push(record);
            let label = key.map(|k| k.label.as_str());
            warn!(
                provider = %target.provider,
                model = %target.model,
                key = label.unwrap_or("-"),
                class = err.class.as_str(),
                status = err.status,
                "attempt failed"
            );
            self.report(target, label, &err).await;
            let action = decide(&err, retries, other_key);
            if err.class.is_transient() {
                self.note_passing(target, label, &err, tally);
            }
            tally.last_error = Some(err.clone());
            match action {
                Action::RetrySame(pause) => {
                    // This failure may just have opened the breaker.
                    if self.health.admit(&target.provider, &target.model, now_ms()) != Admission::Go
                    {
                        return KeyEnd::NextTarget;
                    }
                    retries += 1;
                    tokio::time::sleep(pause.min(self.task.remaining())).await;
                }
                Action::RotateKey => return KeyEnd::NextKey,
                Action::FailOver => return KeyEnd::NextTarget,
                Action::Fallback(chain) => return KeyEnd::Leg(LegEnd::Fallback(chain, err)),
                Action::FailFast => return KeyEnd::Leg(LegEnd::Stop(err)),
            }
        }
    }

    /// One call, timed; the attempt record is filled in but not yet kept. What the call
    /// says about the provider's load (its latency: streams' to their first output) goes to
    /// the provider's limit of calls in flight.
    async fn call(
        &self,
        target: &TargetConfig,
        ready: &mut Ready<'_>,
        key: Option<&ApiKey>,
        tally: &Tally,
    ) -> (Result<Value, ProviderError>, Attempt, Duration) {
        let started_ms = now_ms();
        let clock = std::time::Instant::now();
        let (result, first_output) = self.attempt(target, ready.runtime, key, tally).await;
        let elapsed = clock.elapsed();
        let latency = first_output.unwrap_or(elapsed);
        let calls = &ready.runtime.calls;
        ready.slot.record(signal(
            result.as_ref().map(|_| latency),
            calls.latency_target(),
        ));
        let record = Attempt {
            provider: target.provider.clone(),
            model: target.model.clone(),
            key: key.map(|k| k.label.clone()),
            delivery: u64::try_from(self.delivery).unwrap_or(1),
            started_ms,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            class: None,
            upstream_status: None,
            message: None,
        };
        (result, record, elapsed)
    }

    /// A call answered: the target is well. Anthropic and Gemini refuse content with an
    /// answer, not an error; with a fallback route (and nothing streamed yet) it is treated
    /// as the refusal it is.
    async fn answered(
        &self,
        leg: &Leg,
        target: &TargetConfig,
        answer: Value,
        mut record: Attempt,
        elapsed: Duration,
        tally: &mut Tally,
    ) -> LegEnd {
        self.health
            .success(
                &target.provider,
                &target.model,
                elapsed.as_secs_f64() * 1000.0,
            )
            .await;
        if leg.content_filter_fallback.is_some() && !self.task.is_streaming() && is_refusal(&answer)
        {
            record.class = Some(FailureClass::ContentFilter);
            record.message = Some(REFUSED.to_owned());
            tally.attempts.push(record);
            let err = ProviderError::new(FailureClass::ContentFilter, REFUSED);
            tally.last_error = Some(err.clone());
            return LegEnd::Fallback(Chain::ContentFilter, err);
        }
        tally.attempts.push(record);
        LegEnd::Answered(answer, target.provider.clone(), target.model.clone())
    }

    /// Tells health what a failure says about the target or its key.
    async fn report(&self, target: &TargetConfig, label: Option<&str>, err: &ProviderError) {
        let (provider, model) = (target.provider.as_str(), target.model.as_str());
        match effect(err) {
            Effect::None => {}
            Effect::Unwell => self.health.failure(provider, model, err.class).await,
            Effect::CoolDown => match label {
                Some(label) => self.health.cool_key(provider, label, err.retry_after).await,
                None => {
                    self.health
                        .cool_target(provider, model, err.retry_after)
                        .await
                }
            },
            Effect::DisableKey => {
                if let Some(label) = label {
                    self.health.disable_key(provider, label, &err.message).await;
                }
            }
        }
    }

    /// A failure that may pass: notes when this target (or key) is back, as `report` just
    /// recorded, so the task comes back then rather than at once.
    fn note_passing(
        &self,
        target: &TargetConfig,
        label: Option<&str>,
        err: &ProviderError,
        tally: &mut Tally,
    ) {
        tally.passing = Some(err.class);
        let now = now_ms();
        let target_back = match self.health.admit(&target.provider, &target.model, now) {
            Admission::Skip(until) => Some(until),
            Admission::Go | Admission::Probe => None,
        };
        let key_back = label.and_then(|l| self.health.key_back_at(&target.provider, l, now));
        let asked = err
            .retry_after
            .map(|wait| now + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        match target_back.or(key_back).or(asked) {
            Some(at) => tally.back_at_most(at),
            None => tally.retry_soon = true,
        }
    }
}
