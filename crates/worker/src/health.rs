//! This worker's view of shared provider health, and its share of keeping it: a local copy
//! of the `providers` bucket kept current by a watch (so deciding whether a target may be
//! called costs no round trip), compare-and-set updates on every failure, breaker change,
//! cooldown and disabled key (so every worker learns at once), and success counts and
//! latency folded in every `health.flush_ms` (so the hot path does not write per call).
//! The failover loop sees it through [`ProviderHealth`], which its unit tests implement
//! in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use shared::FailureClass;
use shared::config::{ApiKey, HealthConfig};
use shared::health::{
    BreakerState, KeyHealth, Snapshot, TargetHealth, is_fresh, key_key, target_key,
};
use shared::task::now_ms;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Weight of the newest sample in the latency average.
const LATENCY_ALPHA: f64 = 0.2;
/// Tries of one compare-and-set before giving up (another worker kept winning).
const CAS_TRIES: u32 = 8;

/// Whether a target may be called now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Go,
    /// The breaker's wait is over: one caller may probe, if it wins the claim.
    Probe,
    /// Not before this time (ms): breaker open or cooling down.
    Skip(u64),
}

/// Successes not yet shared: count and summed latency.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    calls: u32,
    latency_sum_ms: f64,
}

/// The local copy of the bucket, with each key's revision so an older value (a watch
/// delivery overtaken by this worker's own write) never replaces a newer one.
#[derive(Debug, Default)]
struct Cache {
    records: Snapshot,
    revisions: HashMap<String, u64>,
}

impl Cache {
    fn put(&mut self, key: &str, revision: u64, value: &[u8]) {
        if self.advance(key, revision) {
            self.records.insert(key, value);
        }
    }

    fn remove(&mut self, key: &str, revision: u64) {
        if self.advance(key, revision) {
            self.records.remove(key);
        }
    }

    /// Records `revision` for `key` if it is newer than the one held; false if it is not.
    fn advance(&mut self, key: &str, revision: u64) -> bool {
        if self
            .revisions
            .get(key)
            .is_some_and(|&known| known >= revision)
        {
            return false;
        }
        self.revisions.insert(key.to_owned(), revision);
        true
    }
}

/// The outcome of trying to become a target's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// This caller probes.
    Won,
    /// Another caller probes, or the breaker reopened.
    Lost,
    /// The breaker is already closed (the local copy was behind): call normally.
    Healthy,
}

#[derive(Debug)]
pub(crate) struct Health {
    store: kv::Store,
    config: HealthConfig,
    cache: Mutex<Cache>,
    pending: Mutex<HashMap<(String, String), Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Health {
    /// Starts keeping the copy current (every record's latest value, then each change)
    /// and flushing successes, until `shutdown`.
    pub(crate) fn start(
        store: kv::Store,
        config: HealthConfig,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let health = Arc::new(Self {
            store,
            config,
            cache: Mutex::new(Cache::default()),
            pending: Mutex::new(HashMap::new()),
        });
        tracker.spawn(health.clone().watch(shutdown.clone()));
        tracker.spawn(health.clone().flush_loop(shutdown));
        health
    }

    async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        shared::nats::follow_bucket(&self.store, "providers", &shutdown, |entry| {
            let mut cache = lock(&self.cache);
            match entry.operation {
                kv::Operation::Put => cache.put(&entry.key, entry.revision, &entry.value),
                kv::Operation::Delete | kv::Operation::Purge => {
                    cache.remove(&entry.key, entry.revision);
                }
            }
        })
        .await;
    }

    async fn flush_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.flush_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.flush().await;
                    return;
                }
                _ = ticker.tick() => self.flush().await,
            }
        }
    }

    /// Shares the successes counted since the last flush.
    pub(crate) async fn flush(&self) {
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        for ((provider, model), p) in pending {
            let window = self.window_ms();
            self.update_target(&provider, &model, |t, now| {
                roll_window(t, now, window);
                t.window_calls = t.window_calls.saturating_add(p.calls);
                let mean = p.latency_sum_ms / f64::from(p.calls.max(1));
                // n samples at once weigh as n single updates would.
                let weight =
                    1.0 - (1.0 - LATENCY_ALPHA).powi(i32::try_from(p.calls).unwrap_or(i32::MAX));
                t.latency_ewma_ms = Some(match t.latency_ewma_ms {
                    Some(old) => old + weight * (mean - old),
                    None => mean,
                });
            })
            .await;
        }
    }

    fn window_ms(&self) -> u64 {
        self.config.window_secs.saturating_mul(1000)
    }

    /// `read` applied to the cached record of a target, without copying it (the answer
    /// path asks this for every task).
    fn with_target<R>(
        &self,
        provider: &str,
        model: &str,
        read: impl FnOnce(&TargetHealth) -> R,
    ) -> R {
        let cache = lock(&self.cache);
        let record = cache
            .records
            .targets
            .get(&target_key(provider, model))
            .filter(|t| is_fresh(t.updated_ms, now_ms()));
        match record {
            Some(t) => read(t),
            None => read(&TargetHealth::default()),
        }
    }

    fn cooldown(&self, asked: Option<Duration>) -> u64 {
        asked.map_or(self.config.cooldown_ms, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        })
    }

    async fn update_target(
        &self,
        provider: &str,
        model: &str,
        change: impl Fn(&mut TargetHealth, u64),
    ) {
        let key = target_key(provider, model);
        self.update(&key, |t: &mut TargetHealth, now| {
            t.provider = provider.to_owned();
            t.model = model.to_owned();
            change(t, now);
        })
        .await;
    }

    async fn update_key(&self, provider: &str, label: &str, change: impl Fn(&mut KeyHealth, u64)) {
        let key = key_key(provider, label);
        self.update(&key, |k: &mut KeyHealth, now| {
            k.provider = provider.to_owned();
            k.label = label.to_owned();
            change(k, now);
        })
        .await;
    }

    /// Read, change, compare-and-set; again on conflict. The local copy takes the new value
    /// at once (the watch confirms it later).
    async fn update<T>(&self, key: &str, change: impl Fn(&mut T, u64))
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Default + HasUpdated,
    {
        for _ in 0..CAS_TRIES {
            let entry = match self.store.entry(key).await {
                Ok(entry) => entry,
                Err(e) => {
                    warn!(error = %e, key, "could not read provider health");
                    return;
                }
            };
            let revision = entry.as_ref().map(|e| e.revision);
            let mut record: T = entry
                .as_ref()
                .and_then(|e| serde_json::from_slice(&e.value).ok())
                .unwrap_or_default();
            let now = now_ms();
            change(&mut record, now);
            record.set_updated(now);
            if self.put_if(key, &record, revision).await {
                return;
            }
        }
        debug!(key, "provider health update lost to other writers");
    }

    /// Writes `record` if the key is still at `revision` (`None`: if it does not exist).
    async fn put_if<T: serde::Serialize>(
        &self,
        key: &str,
        record: &T,
        revision: Option<u64>,
    ) -> bool {
        let Ok(bytes) = serde_json::to_vec(record) else {
            return false;
        };
        let bytes = Bytes::from(bytes);
        let written = match revision {
            Some(revision) => self.store.update(key, bytes.clone(), revision).await.ok(),
            None => self.store.create(key, bytes.clone()).await.ok(),
        };
        match written {
            Some(revision) => {
                lock(&self.cache).put(key, revision, &bytes);
                true
            }
            None => false,
        }
    }
}

/// What the failover loop asks and tells about provider health. [`Health`] keeps it in the
/// shared `providers` bucket; the loop's unit tests keep it in memory.
pub(crate) trait ProviderHealth: Sync {
    /// The target's recent latency average, if it has one.
    fn latency_ms(&self, provider: &str, model: &str) -> Option<f64>;
    /// Whether `provider`/`model` may be called at `now`.
    fn admit(&self, provider: &str, model: &str, now: u64) -> Admission;
    /// The class of the target's last recorded failure.
    fn last_class(&self, provider: &str, model: &str) -> Option<FailureClass>;
    /// The keys of a pool that may be used now, in rotation order from `start`, and the
    /// earliest time a cooling key comes back (ms), if any is cooling.
    fn usable_keys<'a>(
        &self,
        provider: &str,
        keys: &'a [ApiKey],
        start: usize,
        now: u64,
    ) -> (Vec<&'a ApiKey>, Option<u64>);
    /// When a cooling key is back (ms), if it is cooling.
    fn key_back_at(&self, provider: &str, label: &str, now: u64) -> Option<u64>;
    /// Tries to become the one probe of a target whose breaker wait is over.
    fn claim_probe(
        &self,
        provider: &str,
        model: &str,
        probe_for: Duration,
    ) -> impl Future<Output = Probe> + Send;
    /// A call answered.
    fn success(
        &self,
        provider: &str,
        model: &str,
        latency_ms: f64,
    ) -> impl Future<Output = ()> + Send;
    /// A call failed in a way that says the target is unwell.
    fn failure(
        &self,
        provider: &str,
        model: &str,
        class: FailureClass,
    ) -> impl Future<Output = ()> + Send;
    /// A keyless target asked for a pause (429).
    fn cool_target(
        &self,
        provider: &str,
        model: &str,
        pause: Option<Duration>,
    ) -> impl Future<Output = ()> + Send;
    /// A key was rate-limited.
    fn cool_key(
        &self,
        provider: &str,
        label: &str,
        pause: Option<Duration>,
    ) -> impl Future<Output = ()> + Send;
    /// A key was refused.
    fn disable_key(
        &self,
        provider: &str,
        label: &str,
        reason: &str,
    ) -> impl Future<Output = ()> + Send;
}

impl ProviderHealth for Health {
    fn latency_ms(&self, provider: &str, model: &str) -> Option<f64> {
        self.with_target(provider, model, |t| t.latency_ewma_ms)
    }

    fn admit(&self, provider: &str, model: &str, now: u64) -> Admission {
        self.with_target(provider, model, |t| admission(t, now))
    }

    fn last_class(&self, provider: &str, model: &str) -> Option<FailureClass> {
        self.with_target(provider, model, |t| t.last_class)
    }

    fn key_back_at(&self, provider: &str, label: &str, now: u64) -> Option<u64> {
        lock(&self.cache)
            .records
            .keys
            .get(&key_key(provider, label))
            .filter(|k| is_fresh(k.updated_ms, now) && !k.disabled && k.cooldown_until_ms > now)
            .map(|k| k.cooldown_until_ms)
    }

    fn usable_keys<'a>(
        &self,
        provider: &str,
        keys: &'a [ApiKey],
        start: usize,
        now: u64,
    ) -> (Vec<&'a ApiKey>, Option<u64>) {
        let cache = lock(&self.cache);
        let mut usable = Vec::new();
        let mut back_at: Option<u64> = None;
        for i in 0..keys.len() {
            let key = &keys[(start + i) % keys.len()];
            let record = cache
                .records
                .keys
                .get(&key_key(provider, &key.label))
                .filter(|k| is_fresh(k.updated_ms, now));
            match record {
                Some(k) if k.disabled => {}
                Some(k) if k.cooldown_until_ms > now => {
                    back_at =
                        Some(back_at.map_or(k.cooldown_until_ms, |b| b.min(k.cooldown_until_ms)));
                }
                _ => usable.push(key),
            }
        }
        (usable, back_at)
    }

    async fn claim_probe(&self, provider: &str, model: &str, probe_for: Duration) -> Probe {
        let key = target_key(provider, model);
        let Ok(Some(entry)) = self.store.entry(&key).await else {
            return Probe::Lost;
        };
        let Ok(mut record) = serde_json::from_slice::<TargetHealth>(&entry.value) else {
            return Probe::Lost;
        };
        let now = now_ms();
        lock(&self.cache).put(&key, entry.revision, &entry.value);
        match admission(&record, now) {
            Admission::Probe => {}
            Admission::Go => return Probe::Healthy,
            Admission::Skip(_) => return Probe::Lost,
        }
        record.state = BreakerState::HalfOpen;
        record.open_until_ms = now + u64::try_from(probe_for.as_millis()).unwrap_or(u64::MAX);
        record.updated_ms = now;
        if self.put_if(&key, &record, Some(entry.revision)).await {
            info!(provider, model, "circuit half-open: probing");
            Probe::Won
        } else {
            Probe::Lost
        }
    }

    async fn success(&self, provider: &str, model: &str, latency_ms: f64) {
        let changes_breaker = self.with_target(provider, model, |t| {
            t.state != BreakerState::Closed || t.consecutive_failures > 0
        });
        if changes_breaker {
            let window = self.window_ms();
            self.update_target(provider, model, |t, now| {
                if t.state != BreakerState::Closed {
                    info!(provider, model, "circuit closed: target answered");
                }
                t.state = BreakerState::Closed;
                t.consecutive_failures = 0;
                roll_window(t, now, window);
                t.window_calls = t.window_calls.saturating_add(1);
                t.latency_ewma_ms = Some(
                    t.latency_ewma_ms
                        .map_or(latency_ms, |old| old + LATENCY_ALPHA * (latency_ms - old)),
                );
            })
            .await;
            return;
        }
        let mut pending = lock(&self.pending);
        let p = pending
            .entry((provider.to_owned(), model.to_owned()))
            .or_default();
        p.calls = p.calls.saturating_add(1);
        p.latency_sum_ms += latency_ms;
    }

    async fn failure(&self, provider: &str, model: &str, class: FailureClass) {
        let cfg = self.config.clone();
        let window = self.window_ms();
        self.update_target(provider, model, |t, now| {
            roll_window(t, now, window);
            t.window_calls = t.window_calls.saturating_add(1);
            t.window_failures = t.window_failures.saturating_add(1);
            t.consecutive_failures = t.consecutive_failures.saturating_add(1);
            t.last_class = Some(class);
            let ratio_tripped = t.window_calls >= cfg.min_calls
                && f64::from(t.window_failures) / f64::from(t.window_calls) >= cfg.error_ratio;
            let tripped = t.consecutive_failures >= cfg.failure_threshold || ratio_tripped;
            // A failed probe reopens at once; a closed breaker opens when tripped.
            if t.state == BreakerState::HalfOpen || (t.state == BreakerState::Closed && tripped) {
                warn!(
                    provider,
                    model,
                    consecutive_failures = t.consecutive_failures,
                    class = class.as_str(),
                    "circuit open"
                );
                t.state = BreakerState::Open;
                t.open_until_ms = now + cfg.open_ms;
            }
        })
        .await;
    }

    async fn cool_target(&self, provider: &str, model: &str, pause: Option<Duration>) {
        let pause = self.cooldown(pause);
        self.update_target(provider, model, |t, now| {
            t.cooldown_until_ms = t.cooldown_until_ms.max(now + pause);
            t.last_class = Some(FailureClass::RateLimited);
        })
        .await;
    }

    async fn cool_key(&self, provider: &str, label: &str, pause: Option<Duration>) {
        let pause = self.cooldown(pause);
        self.update_key(provider, label, |k, now| {
            k.cooldown_until_ms = k.cooldown_until_ms.max(now + pause);
        })
        .await;
    }

    async fn disable_key(&self, provider: &str, label: &str, reason: &str) {
        warn!(
            provider,
            key = label,
            reason,
            "API key refused; taken out of rotation"
        );
        self.update_key(provider, label, |k, _| {
            k.disabled = true;
            k.reason = Some(reason.to_owned());
        })
        .await;
    }
}

/// Records that carry their last update time.
pub(crate) trait HasUpdated {
    fn set_updated(&mut self, now: u64);
}

impl HasUpdated for TargetHealth {
    fn set_updated(&mut self, now: u64) {
        self.updated_ms = now;
    }
}

impl HasUpdated for KeyHealth {
    fn set_updated(&mut self, now: u64) {
        self.updated_ms = now;
    }
}

/// Starts a new error-ratio window when the current one is over.
fn roll_window(t: &mut TargetHealth, now: u64, window_ms: u64) {
    if now.saturating_sub(t.window_start_ms) >= window_ms {
        t.window_start_ms = now;
        t.window_calls = 0;
        t.window_failures = 0;
    }
}

/// Whether a target with this record may be called at `now`.
pub(crate) fn admission(t: &TargetHealth, now: u64) -> Admission {
    match t.state {
        BreakerState::Open | BreakerState::HalfOpen if now < t.open_until_ms => {
            Admission::Skip(t.open_until_ms)
        }
        BreakerState::Open | BreakerState::HalfOpen => Admission::Probe,
        BreakerState::Closed if t.cooldown_until_ms > now => Admission::Skip(t.cooldown_until_ms),
        BreakerState::Closed => Admission::Go,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_follows_the_breaker_and_cooldown() {
        let mut t = TargetHealth::default();
        assert_eq!(admission(&t, 1000), Admission::Go);
        t.cooldown_until_ms = 2000;
        assert_eq!(admission(&t, 1000), Admission::Skip(2000));
        assert_eq!(admission(&t, 2000), Admission::Go);
        t.state = BreakerState::Open;
        t.open_until_ms = 5000;
        assert_eq!(admission(&t, 3000), Admission::Skip(5000));
        assert_eq!(admission(&t, 5000), Admission::Probe);
        t.state = BreakerState::HalfOpen;
        t.open_until_ms = 6000;
        assert_eq!(admission(&t, 5500), Admission::Skip(6000));
        // A probe that never reported back counts as lost: another may go.
        assert_eq!(admission(&t, 6000), Admission::Probe);
    }

    #[test]
    fn windows_roll_over() {
        let mut t = TargetHealth {
            window_start_ms: 0,
            window_calls: 9,
            window_failures: 4,
            ..TargetHealth::default()
        };
        roll_window(&mut t, 500, 1000);
        assert_eq!(t.window_calls, 9);
        roll_window(&mut t, 1000, 1000);
        assert_eq!(
            (t.window_start_ms, t.window_calls, t.window_failures),
            (1000, 0, 0)
        );
    }
}
