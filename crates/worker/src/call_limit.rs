//! How many calls a worker makes to one provider at once: an adaptive limit per provider,
//! additive increase and multiplicative decrease (AIMD, as TCP sizes its window). Each call
//! holds a [`Slot`]; what the call says about the provider's load ([`signal`]) moves the
//! limit: it grows by one after `limit` calls answered in time while the limit was in use,
//! and is multiplied by `decrease_factor` on a 429, a timeout, a 529 "overloaded" or an
//! answer slower than `latency_target_ms`, once per window (calls that started before the
//! last decrease do not lower it again). So a worker backs off as a provider strains
//! instead of hammering it, and finds its way back up when it recovers.
//!
//! The slots are a tokio semaphore whose size follows the limit: taking a free slot is one
//! atomic operation, waiting is fair (first come, first served) and cancel-safe (a waiter
//! dropped mid-wait takes nothing). Lowering the limit below the calls in flight leaves a
//! debt that the next slots to come back pay instead of returning.
//!
//! [`share`] keeps each limit in the shared `providers` bucket, one record per provider and
//! worker, so `GET /v1/providers` shows every worker's limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv;
use shared::FailureClass;
use shared::config::ConcurrencyConfig;
use shared::health::{LIMIT_REFRESH_MS, LimitRecord, limit_key};
use shared::task::now_ms;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::provider::ProviderError;

/// Anthropic's "overloaded" status: the provider says outright it has too much to do.
const OVERLOADED: u16 = 529;
/// How often the limits are looked at for a change worth sharing: a change shows in
/// `/v1/providers` within this, at one write per changed provider.
const SHARE_EVERY: Duration = Duration::from_secs(1);

/// What one call says about the provider's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Answered in time.
    Good,
    /// A sign of overload: back off.
    Overloaded(Reason),
    /// Nothing about load (the request or a key was refused, the answer was malformed, …).
    Neutral,
}

/// Why the limit was lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    RateLimited,
    /// 529: the provider said it is overloaded.
    Overloaded,
    TimedOut,
    /// Answered, but slower than `latency_target_ms`.
    Slow,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimited => "rate_limited",
            Reason::Overloaded => "overloaded",
            Reason::TimedOut => "timeout",
            Reason::Slow => "slow",
        }
    }
}

/// What a call's outcome says about load: `Ok` carries its latency (streams: to the first
/// chunk with output), compared with the provider's latency target if it has one.
pub(crate) fn signal(
    outcome: Result<Duration, &ProviderError>,
    target: Option<Duration>,
) -> Signal {
    let err = match outcome {
        Ok(latency) if target.is_some_and(|t| latency > t) => {
            return Signal::Overloaded(Reason::Slow);
        }
        Ok(_) => return Signal::Good,
        Err(err) => err,
    };
    match err.class {
        FailureClass::RateLimited => Signal::Overloaded(Reason::RateLimited),
        FailureClass::Timeout => Signal::Overloaded(Reason::TimedOut),
        FailureClass::Upstream5xx if err.status == Some(OVERLOADED) => {
            Signal::Overloaded(Reason::Overloaded)
        }
        // Other outages count toward the breaker instead; the rest judge the request or a
        // key, or are ours.
        FailureClass::Upstream5xx
        | FailureClass::InvalidResponse
        | FailureClass::Network
        | FailureClass::Auth
        | FailureClass::ModelUnavailable
        | FailureClass::BadRequest
        | FailureClass::ContextLength
        | FailureClass::ContentFilter
        | FailureClass::Cancelled
        | FailureClass::DeadlineExceeded
        | FailureClass::Internal
        | FailureClass::ToolLimit => Signal::Neutral,
    }
}

/// One provider's limit in one worker.
#[derive(Debug)]
pub(crate) struct CallLimit {
    provider: String,
    min: usize,
    max: usize,
    decrease_factor: f64,
    latency_target: Option<Duration>,
    slots: Semaphore,
    limit: AtomicUsize,
    /// Slots to forget as they come back: the limit fell below the calls in flight.
    debt: AtomicUsize,
    in_flight: AtomicUsize,
    /// Calls answered in time, with the limit in use, since it last changed.
    good: AtomicUsize,
    /// How many times the limit was lowered: a slot's call that started before the latest
    /// decrease does not lower it again.
    decreases: AtomicU64,
    /// Held while the limit changes (never across an await).
    change: Mutex<()>,
}

impl CallLimit {
    pub(crate) fn new(provider: &str, config: &ConcurrencyConfig) -> Self {
        Self {
            provider: provider.to_owned(),
            min: config.min,
            max: config.max,
            decrease_factor: config.decrease_factor,
            latency_target: config.latency_target(),
            slots: Semaphore::new(config.initial),
            limit: AtomicUsize::new(config.initial),
            debt: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            good: AtomicUsize::new(0),
            decreases: AtomicU64::new(0),
            change: Mutex::new(()),
        }
    }

    pub(crate) fn provider(&self) -> &str {
        &self.provider
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub(crate) fn latency_target(&self) -> Option<Duration> {
        self.latency_target
    }

    /// A slot at once, if one is free.
    pub(crate) fn try_slot(&self) -> Option<Slot<'_>> {
        self.slots.try_acquire().ok().map(|p| self.slot_from(p))
    }

    /// A slot, waiting at most `wait` for one; `None` if none came in time.
    pub(crate) async fn slot(&self, wait: Duration) -> Option<Slot<'_>> {
        if let Some(slot) = self.try_slot() {
            return Some(slot);
        }
        match tokio::time::timeout(wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Some(self.slot_from(permit)),
            // The semaphore is never closed; a timeout is the only way to get here.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    fn slot_from<'a>(&'a self, permit: SemaphorePermit<'a>) -> Slot<'a> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Slot {
            limit: self,
            permit: Some(permit),
            epoch: self.decreases.load(Ordering::Acquire),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.change.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call answered in time: after `limit` of them with the limit in use, one more slot.
    fn answered_in_time(&self) {
        let limit = self.limit();
        // Calls far below the limit say nothing about whether more would be welcome.
        if self.in_flight.load(Ordering::Relaxed).saturating_mul(2) < limit {
            return;
        }
        if self.good.fetch_add(1, Ordering::AcqRel) + 1 < limit {
            return;
        }
        let _change = self.lock();
        let limit = self.limit();
        if self.good.load(Ordering::Acquire) < limit || limit >= self.max {
            return;
        }
        self.good.store(0, Ordering::Release);
        self.limit.store(limit + 1, Ordering::Relaxed);
        // A pending debt is one slot less to forget; else the semaphore grows.
        if self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_err()
        {
            self.slots.add_permits(1);
        }
        debug!(provider = %self.provider, limit = limit + 1, "provider concurrency limit raised");
    }

    /// A sign of overload from a call that started at decrease number `epoch`.
    fn overloaded(&self, epoch: u64, reason: Reason) {
        let _change = self.lock();
        if self.decreases.load(Ordering::Acquire) != epoch {
            // A decrease since this call started already answered the same overload.
            return;
        }
        let limit = self.limit();
        // The cast rounds down, as wanted; a limit is far below where f64 loses precision.
        let lowered = ((limit as f64 * self.decrease_factor) as usize)
            .max(self.min)
            .min(limit);
        self.decreases.fetch_add(1, Ordering::AcqRel);
        self.good.store(0, Ordering::Release);
        if lowered == limit {
            return;
        }
        self.limit.store(lowered, Ordering::Relaxed);
        let cut = limit - lowered;
        let forgotten = self.slots.forget_permits(cut);
        self.debt.fetch_add(cut - forgotten, Ordering::AcqRel);
        info!(
            provider = %self.provider,
            limit = lowered,
            from = limit,
            reason = reason.as_str(),
            "provider concurrency limit lowered"
        );
    }
}

/// Keeps `worker`'s record of each limit in the `providers` bucket until `shutdown`: written
/// when the limit changed and at least every `LIMIT_REFRESH_MS` (so a reader can leave out a
/// worker that died), deleted when the worker stops.
pub(crate) async fn share(
    limits: Vec<Arc<CallLimit>>,
    store: kv::Store,
    worker: String,
    shutdown: CancellationToken,
) {
    // What each provider's record last said, and when it was written.
    let mut written: HashMap<String, (usize, u64)> = HashMap::new();
    let mut ticker = tokio::time::interval(SHARE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        for calls in &limits {
            let (provider, limit, now) = (calls.provider(), calls.limit(), now_ms());
            let due = written.get(provider).is_none_or(|&(said, at)| {
                said != limit || now.saturating_sub(at) >= LIMIT_REFRESH_MS
            });
            if !due {
                continue;
            }
            let record = LimitRecord {
                provider: provider.to_owned(),
                worker: worker.clone(),
                limit,
                updated_ms: now,
            };
            let Ok(value) = serde_json::to_vec(&record) else {
                continue;
            };
            match store.put(limit_key(provider, &worker), value.into()).await {
                Ok(_) => {
                    written.insert(provider.to_owned(), (limit, now));
                }
                Err(e) => {
                    debug!(provider, error = %e, "could not share a limit of calls in flight")
                }
            }
        }
    }
    for calls in &limits {
        if let Err(e) = store.delete(limit_key(calls.provider(), &worker)).await {
            debug!(provider = calls.provider(), error = %e, "could not remove a limit record");
        }
    }
}

/// Leave to make one call to the provider at a time; the call's outcome is told with
/// [`Slot::record`]. Dropping it (also mid-call, when the task is cancelled) frees it.
#[derive(Debug)]
pub(crate) struct Slot<'a> {
    limit: &'a CallLimit,
    permit: Option<SemaphorePermit<'a>>,
    /// Decreases of the limit when the current call started.
    epoch: u64,
}

impl Slot<'_> {
    /// Tells the limit what the call just made with this slot said; the next call made
    /// with it starts now.
    pub(crate) fn record(&mut self, signal: Signal) {
        match signal {
            Signal::Good => self.limit.answered_in_time(),
            Signal::Overloaded(reason) => self.limit.overloaded(self.epoch, reason),
            Signal::Neutral => {}
        }
        self.epoch = self.limit.decreases.load(Ordering::Acquire);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(permit) = self.permit.take() else {
            return;
        };
        let owed = self
            .limit
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if owed {
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(initial: usize, min: usize, max: usize) -> CallLimit {
        CallLimit::new(
            "p",
            &ConcurrencyConfig {
                initial,
                min,
                max,
                decrease_factor: 0.5,
                latency_target_ms: Some(500),
            },
        )
    }

    /// Slots taken at once, until none is free.
    fn take_all(limit: &CallLimit) -> Vec<Slot<'_>> {
        std::iter::from_fn(|| limit.try_slot()).collect()
    }

    #[test]
    fn signals_follow_the_outcome() {
        let target = Some(Duration::from_millis(500));
        let ms = Duration::from_millis;
        assert_eq!(signal(Ok(ms(400)), target), Signal::Good);
        assert_eq!(signal(Ok(ms(500)), target), Signal::Good);
        assert_eq!(
            signal(Ok(ms(501)), target),
            Signal::Overloaded(Reason::Slow)
        );
        assert_eq!(signal(Ok(ms(60_000)), None), Signal::Good, "no target");
        let err = |class, status| ProviderError {
            status,
            ..ProviderError::new(class, "x")
        };
        let cases = [
            (
                FailureClass::RateLimited,
                Some(429),
                Signal::Overloaded(Reason::RateLimited),
            ),
            (
                FailureClass::Timeout,
                None,
                Signal::Overloaded(Reason::TimedOut),
            ),
            (
                FailureClass::Upstream5xx,
                Some(529),
                Signal::Overloaded(Reason::Overloaded),
            ),
            (FailureClass::Upstream5xx, Some(500), Signal::Neutral),
            (FailureClass::Network, None, Signal::Neutral),
            (FailureClass::Auth, Some(401), Signal::Neutral),
            (FailureClass::BadRequest, Some(400), Signal::Neutral),
            (FailureClass::DeadlineExceeded, None, Signal::Neutral),
        ];
        for (class, status, expected) in cases {
            assert_eq!(
                signal(Err(&err(class, status)), target),
                expected,
                "{class:?}"
            );
        }
    }

    #[test]
    fn a_window_of_calls_answered_in_time_raises_the_limit_by_one() {
        let limit = limit(2, 1, 3);
        let mut slots = take_all(&limit);
        assert_eq!(slots.len(), 2);
        slots[0].record(Signal::Good);
        assert_eq!(limit.limit(), 2, "one call is not yet a window");
        slots[1].record(Signal::Good);
        assert_eq!(limit.limit(), 3);
        let third = limit.try_slot().expect("the new slot is free");
        slots.push(third);
        // At the maximum it stays there.
        for slot in &mut slots {
            slot.record(Signal::Good);
        }
        assert_eq!(limit.limit(), 3);
        assert!(limit.try_slot().is_none());
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let limit = limit(8, 1, 64);
        let mut slot = limit.try_slot().unwrap();
        for _ in 0..100 {
            slot.record(Signal::Good);
        }
        assert_eq!(limit.limit(), 8);
    }

    #[test]
    fn a_rate_limit_halves_the_limit_once_per_window() {
        let limit = limit(8, 1, 64);
        let mut slots = take_all(&limit);
        assert_eq!(slots.len(), 8);
        // Every call in flight hears the same 429s: one decrease answers them all.
        for slot in &mut slots {
            slot.record(Signal::Overloaded(Reason::RateLimited));
        }
        assert_eq!(limit.limit(), 4);
        // A call made after the decrease that is rate-limited again lowers it again.
        slots[0].record(Signal::Overloaded(Reason::RateLimited));
        assert_eq!(limit.limit(), 2);
    }

    #[test]
    fn a_slow_answer_lowers_the_limit_and_the_minimum_holds() {
        let limit = limit(3, 2, 8);
        let mut slot = limit.try_slot().unwrap();
        let slow = signal(Ok(Duration::from_secs(2)), limit.latency_target());
        slot.record(slow);
        assert_eq!(
            limit.limit(),
            2,
            "3 × 0.5 rounds down to 1, below the minimum"
        );
        slot.record(slow);
        assert_eq!(limit.limit(), 2);
    }

    #[test]
    fn slots_in_flight_above_a_lowered_limit_are_forgotten_as_they_come_back() {
        let limit = limit(4, 1, 8);
        let mut slots = take_all(&limit);
        slots[0].record(Signal::Overloaded(Reason::RateLimited));
        assert_eq!(limit.limit(), 2);
        slots.truncate(2);
        assert!(
            limit.try_slot().is_none(),
            "two calls in flight fill a limit of 2"
        );
        slots.clear();
        assert_eq!(take_all(&limit).len(), 2);
    }

    #[test]
    fn raising_a_limit_with_a_debt_pays_the_debt() {
        let limit = limit(4, 1, 8);
        let mut slots = take_all(&limit);
        slots[0].record(Signal::Overloaded(Reason::RateLimited));
        // Limit 2 with four in flight: two good answers (a window of 2) raise it to 3.
        slots[1].record(Signal::Good);
        slots[2].record(Signal::Good);
        assert_eq!(limit.limit(), 3);
        slots.clear();
        assert_eq!(take_all(&limit).len(), 3);
    }

    #[tokio::test]
    async fn a_waiter_gets_a_freed_slot_and_a_dropped_waiter_takes_none() {
        let limit = limit(1, 1, 1);
        let held = limit.try_slot().unwrap();
        assert!(
            limit.slot(Duration::from_millis(10)).await.is_none(),
            "none in time"
        );
        {
            // A waiter cancelled mid-wait (its task dropped) leaves nothing behind.
            let waiting = limit.slot(Duration::from_secs(60));
            tokio::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
        }
        let waiter = limit.slot(Duration::from_secs(60));
        tokio::pin!(waiter);
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        drop(held);
        let slot = waiter.await.expect("the freed slot");
        assert!(limit.try_slot().is_none());
        drop(slot);
        assert!(limit.try_slot().is_some(), "a dropped slot is free again");
    }
}
