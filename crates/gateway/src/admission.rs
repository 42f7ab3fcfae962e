//! Admission control: a request that cannot be answered within its deadline is refused at
//! once with 429 and a `Retry-After`, instead of queueing, waiting until 504 and leaving its
//! work to run for nobody. The estimate comes from JetStream's own books: each capability's
//! queued tasks (consumer `num_pending`) and the rate its workers take them (consumer
//! `delivered` over time), sampled in the background, plus what this gateway admitted since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use shared::names::{TASKS_STREAM, consumer_name};
use shared::{Capability, Priority};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often each capability's queue is sampled: often enough to see a burst build up,
/// rarely enough to cost nats-server nothing (3 consumer-info calls per capability).
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Weight of the newest rate sample in the moving average.
const RATE_WEIGHT: f64 = 0.3;
/// Longest `Retry-After` suggested: past this, the backlog estimate is too uncertain.
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// A capability's queue as last sampled.
#[derive(Debug, Default, Clone)]
struct Load {
    /// Tasks waiting per priority, at the last sample.
    pending: HashMap<Priority, u64>,
    /// Tasks this gateway published since the last sample (not in `pending` yet).
    admitted_since: u64,
    /// Deliveries counted at the last sample, summed over priorities.
    delivered: u64,
    /// Tasks taken per second while there was work (a moving average); `None` until seen.
    rate: Option<f64>,
    sampled_at: Option<Instant>,
}

/// Why a request was refused: the backlog would outlast its deadline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overloaded {
    /// Seconds until the backlog ahead of it has drained, at the current rate.
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Admission {
    loads: Arc<Mutex<HashMap<Capability, Load>>>,
}

impl Admission {
    /// Admits a request for `capability` at `priority` that must be answered within
    /// `remaining`, or says how long until it could be.
    pub fn admit(
        &self,
        capability: &Capability,
        priority: Priority,
        remaining: Duration,
    ) -> Result<(), Overloaded> {
        let mut loads = lock(&self.loads);
        let Some(load) = loads.get_mut(capability) else {
            return Ok(());
        };
        let verdict = judge(load, priority, remaining);
        if verdict.is_ok() {
            load.admitted_since = load.admitted_since.saturating_add(1);
        }
        verdict
    }

    /// Samples every capability's queue until `stop`.
    pub async fn sample(
        self,
        js: jetstream::Context,
        capabilities: Vec<Capability>,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let Ok(stream) = js.get_stream_no_info(TASKS_STREAM).await else {
                continue;
            };
            for capability in &capabilities {
                let mut pending = HashMap::new();
                let mut delivered = 0u64;
                for priority in Priority::ALL {
                    match stream
                        .consumer_info(consumer_name(capability, priority))
                        .await
                    {
                        Ok(info) => {
                            pending.insert(priority, info.num_pending);
                            delivered += info.delivered.consumer_sequence;
                        }
                        Err(e) => {
                            debug!(error = %e, %capability, "could not sample a queue");
                        }
                    }
                }
                let mut loads = lock(&self.loads);
                let load = loads.entry(capability.clone()).or_default();
                record(load, pending, delivered, Instant::now());
            }
        }
    }
}

/// Folds a new sample into `load`.
fn record(load: &mut Load, pending: HashMap<Priority, u64>, delivered: u64, now: Instant) {
    if let Some(then) = load.sampled_at {
        let taken = delivered.saturating_sub(load.delivered);
        let busy = taken > 0 || pending.values().any(|p| *p > 0);
        let seconds = now.duration_since(then).as_secs_f64();
        // An idle queue says nothing about how fast work is taken: keep the last rate.
        if busy && seconds > 0.0 {
            #[expect(clippy::cast_precision_loss, reason = "task counts are far below 2^52")]
            let sample = taken as f64 / seconds;
            load.rate = Some(match load.rate {
                Some(rate) => rate * (1.0 - RATE_WEIGHT) + sample * RATE_WEIGHT,
                None => sample,
            });
        }
    }
    load.pending = pending;
    load.delivered = delivered;
    load.admitted_since = 0;
    load.sampled_at = Some(now);
}

/// Whether a request at `priority` would be answered within `remaining`: the tasks ahead
/// of it (its priority and higher, plus what this gateway admitted since the sample) taken
/// at the measured rate. With no rate measured yet there is no evidence to refuse on.
fn judge(load: &Load, priority: Priority, remaining: Duration) -> Result<(), Overloaded> {
    let Some(rate) = load.rate.filter(|r| *r > 0.0) else {
        return Ok(());
    };
    // `ALL` runs from the most to the least urgent; workers take them in that order.
    let rank = Priority::ALL
        .iter()
        .position(|p| *p == priority)
        .unwrap_or(Priority::ALL.len());
    let ahead: u64 = Priority::ALL
        .iter()
        .take(rank + 1)
        .filter_map(|p| load.pending.get(p))
        .sum::<u64>()
        .saturating_add(load.admitted_since);
    #[expect(clippy::cast_precision_loss, reason = "task counts are far below 2^52")]
    let wait = (ahead.saturating_add(1)) as f64 / rate;
    if wait <= remaining.as_secs_f64() {
        return Ok(());
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive number of seconds, capped"
    )]
    let retry_after_secs = (wait.ceil() as u64).clamp(1, MAX_RETRY_AFTER_SECS);
    Err(Overloaded { retry_after_secs })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is one call that leaves the map consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rate: Option<f64>, pending: &[(Priority, u64)], admitted_since: u64) -> Load {
        Load {
            pending: pending.iter().copied().collect(),
            admitted_since,
            rate,
            ..Load::default()
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn refuses_only_when_the_backlog_outlasts_the_deadline() {
        // 2 tasks/s, 9 queued: the 10th is answered in 5 s.
        let l = load(Some(2.0), &[(Priority::Normal, 9)], 0);
        assert_eq!(judge(&l, Priority::Normal, SEC * 5), Ok(()));
        assert_eq!(
            judge(&l, Priority::Normal, SEC * 4),
            Err(Overloaded {
                retry_after_secs: 5
            })
        );
    }

    #[test]
    fn lower_priority_work_is_not_ahead_of_higher() {
        let l = load(Some(1.0), &[(Priority::Low, 100), (Priority::High, 1)], 0);
        assert_eq!(judge(&l, Priority::High, SEC * 3), Ok(()));
        assert!(judge(&l, Priority::Low, SEC * 3).is_err());
    }

    #[test]
    fn what_this_gateway_admitted_since_the_sample_counts() {
        let l = load(Some(1.0), &[], 10);
        assert!(judge(&l, Priority::Normal, SEC * 5).is_err());
    }

    #[test]
    fn no_rate_no_refusal_and_retry_after_is_capped() {
        assert_eq!(
            judge(
                &load(None, &[(Priority::Normal, 1_000)], 0),
                Priority::Normal,
                SEC
            ),
            Ok(())
        );
        let slow = load(Some(0.01), &[(Priority::Normal, 1_000)], 0);
        assert_eq!(
            judge(&slow, Priority::Normal, SEC),
            Err(Overloaded {
                retry_after_secs: MAX_RETRY_AFTER_SECS
            })
        );
    }

    #[test]
    fn the_rate_is_learned_while_busy_and_kept_while_idle() {
        let start = Instant::now();
        let mut l = Load::default();
        record(&mut l, HashMap::new(), 0, start);
        assert_eq!(l.rate, None);
        record(&mut l, [(Priority::Normal, 5)].into(), 10, start + SEC * 2);
        assert_eq!(l.rate, Some(5.0));
        // Idle: nothing taken, nothing waiting.
        record(&mut l, HashMap::new(), 10, start + SEC * 4);
        assert_eq!(l.rate, Some(5.0));
        assert_eq!(l.admitted_since, 0);
    }
}
