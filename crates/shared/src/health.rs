//! Provider health as every worker sees it: one record per target (circuit breaker, error
//! window, latency, rate-limit cooldown) and one per API key (taken out of rotation, cooling
//! down), kept in the `providers` key-value bucket so what one worker learns, all use at
//! once. Workers update records with compare-and-set; the gateway and the CLI read them.
//! Each worker also keeps one record per provider with its current limit of calls in flight
//! to it (its own: one writer per record), so the report shows every worker's limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::FailureClass;
use crate::config::Config;

/// Records not updated for this long are stale and read as absent (the bucket's `max_age`
/// drops them too, silently): a refused key or an open breaker is forgotten after a day.
pub const RECORD_TTL_MS: u64 = 86_400_000;

/// Records fetched per request when reading the whole bucket.
const READ_BATCH: usize = 256;
/// How long the server keeps a reading consumer that was not deleted (its reader died).
const READ_CONSUMER_IDLE: Duration = Duration::from_secs(30);
/// Header naming a key-value delete or purge marker.
const KV_OPERATION: &str = "KV-Operation";

/// Whether a record last updated at `updated_ms` still counts at `now`.
pub fn is_fresh(updated_ms: u64, now: u64) -> bool {
    updated_ms.saturating_add(RECORD_TTL_MS) > now
}

/// A circuit breaker's position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    #[default]
    Closed,
    /// Calls are turned away until `open_until_ms`; then one probe may go.
    Open,
    /// One probe is in flight; its outcome closes or reopens the breaker.
    HalfOpen,
}

/// Health of one target (provider + model).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetHealth {
    pub provider: String,
    pub model: String,
    pub state: BreakerState,
    pub consecutive_failures: u32,
    /// Start of the current error-ratio window and the calls and failures in it.
    pub window_start_ms: u64,
    pub window_calls: u32,
    pub window_failures: u32,
    /// Open: when a probe may go. Half-open: when the probe counts as lost.
    pub open_until_ms: u64,
    /// Rate-limited (a keyless target): no calls before this.
    pub cooldown_until_ms: u64,
    /// Exponentially weighted moving average of successful call time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ewma_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_class: Option<FailureClass>,
    pub updated_ms: u64,
}

/// Health of one API key of a provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyHealth {
    pub provider: String,
    /// The key's environment variable name (never the key).
    pub label: String,
    /// Taken out of rotation: the provider refused it (401/403).
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rate-limited: not used before this.
    pub cooldown_until_ms: u64,
    pub updated_ms: u64,
}

/// How often a worker rewrites its limit records even when they did not change, so a
/// reader can tell a live worker's record from that of a worker that died.
pub const LIMIT_REFRESH_MS: u64 = 15_000;
/// A limit record older than this is from a worker that is gone: the report leaves it out.
const LIMIT_STALE_MS: u64 = 4 * LIMIT_REFRESH_MS;

/// One worker's limit of calls in flight to one provider (`call_limit.rs` in the worker).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitRecord {
    pub provider: String,
    pub worker: String,
    pub limit: usize,
    pub updated_ms: u64,
}

/// `limit.<provider>.<worker id>`.
pub fn limit_key(provider: &str, worker: &str) -> String {
    format!("limit.{provider}.{}", safe_token(worker))
}

/// `target.<provider>.<model>`: the model is made a safe token (a short hash keeps two
/// models that differ only in unsafe characters apart).
pub fn target_key(provider: &str, model: &str) -> String {
    format!("target.{provider}.{}", safe_token(model))
}

/// `key.<provider>.<label>`.
pub fn key_key(provider: &str, label: &str) -> String {
    format!("key.{provider}.{}", safe_token(label))
}

/// Longest model or key label kept in a health key before it is cut (and hashed): keys are
/// subjects, and nats-server drops a connection whose protocol line passes 4 KiB.
const MAX_KEY_TOKEN: usize = 128;

/// `text` with every character outside `[A-Za-z0-9_-]` replaced by `_`, cut to
/// `MAX_KEY_TOKEN` characters, plus an FNV-1a hash of the original when anything was
/// replaced or cut.
fn safe_token(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .take(MAX_KEY_TOKEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned == text && !text.is_empty() {
        return cleaned;
    }
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{cleaned}-{:08x}", hash & 0xffff_ffff)
}

/// Every health record in the bucket.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub targets: HashMap<String, TargetHealth>,
    pub keys: HashMap<String, KeyHealth>,
    pub limits: HashMap<String, LimitRecord>,
}

impl Snapshot {
    /// Reads every record in one pass: a consumer delivering the last value of each key,
    /// fetched in batches, not a look-up per key. Undecodable records are skipped (a newer
    /// writer's format).
    pub async fn read(store: &kv::Store) -> Result<Self, async_nats::Error> {
        let consumer = store
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("{}>", store.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::None,
                inactive_threshold: READ_CONSUMER_IDLE,
                ..Default::default()
            })
            .await?;
        let name = consumer.cached_info().name.clone();
        let read = Self::drain(store, consumer).await;
        // The server removes it after `READ_CONSUMER_IDLE` anyway.
        let _ = store.stream.delete_consumer(&name).await;
        read
    }

    async fn drain(
        store: &kv::Store,
        consumer: consumer::PullConsumer,
    ) -> Result<Self, async_nats::Error> {
        let mut snapshot = Snapshot::default();
        let mut pending = consumer.cached_info().num_pending;
        while pending > 0 {
            let mut batch = consumer.fetch().max_messages(READ_BATCH).messages().await?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message?;
                got += 1;
                pending = message.info()?.pending;
                let Some(key) = message.subject.strip_prefix(store.prefix.as_str()) else {
                    continue;
                };
                let removed = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(KV_OPERATION))
                    .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
                if removed {
                    snapshot.remove(key);
                } else {
                    snapshot.insert(key, &message.payload);
                }
            }
            // Records can expire between the count and the fetch: nothing left is the end.
            if got == 0 {
                break;
            }
        }
        Ok(snapshot)
    }

    /// Drops the record under `key` (deleted or purged).
    pub fn remove(&mut self, key: &str) {
        self.targets.remove(key);
        self.keys.remove(key);
        self.limits.remove(key);
    }

    /// Adds one record by its bucket key.
    pub fn insert(&mut self, key: &str, value: &[u8]) {
        if key.starts_with("target.") {
            if let Ok(t) = serde_json::from_slice(value) {
                self.targets.insert(key.to_owned(), t);
            }
        } else if key.starts_with("key.") {
            if let Ok(k) = serde_json::from_slice(value) {
                self.keys.insert(key.to_owned(), k);
            }
        } else if key.starts_with("limit.")
            && let Ok(l) = serde_json::from_slice(value)
        {
            self.limits.insert(key.to_owned(), l);
        }
    }

    /// Each live worker's limit of calls in flight to `provider`, by worker id.
    fn limits_of(&self, provider: &str, now_ms: u64) -> BTreeMap<&str, usize> {
        self.limits
            .values()
            .filter(|l| {
                l.provider == provider && now_ms.saturating_sub(l.updated_ms) < LIMIT_STALE_MS
            })
            .map(|l| (l.worker.as_str(), l.limit))
            .collect()
    }

    /// The report `GET /v1/providers` and `switchyard providers` show: every configured
    /// target with its breaker state, latency, error ratio and cooldown end, each key, and
    /// each live worker's limit of calls in flight to the target's provider.
    pub fn report(&self, config: &Config, now_ms: u64) -> Value {
        let mut targets: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (name, route) in &config.routes {
            for t in &route.targets {
                targets
                    .entry((t.provider.clone(), t.model.clone()))
                    .or_default()
                    .insert(name.clone());
            }
        }
        let data: Vec<Value> = targets
            .into_iter()
            .map(|((provider, model), routes)| {
                let health = self
                    .targets
                    .get(&target_key(&provider, &model))
                    .filter(|t| is_fresh(t.updated_ms, now_ms))
                    .cloned()
                    .unwrap_or_default();
                let labels = config
                    .routes
                    .values()
                    .flat_map(|r| &r.targets)
                    .filter(|t| t.provider == provider && t.model == model)
                    .flat_map(|t| t.keys.iter().map(|k| k.label.clone()))
                    .collect::<BTreeSet<_>>();
                let keys: Vec<Value> = labels
                    .iter()
                    .map(|label| {
                        let k = self
                            .keys
                            .get(&key_key(&provider, label))
                            .filter(|k| is_fresh(k.updated_ms, now_ms));
                        let state = match k {
                            Some(k) if k.disabled => "disabled",
                            Some(k) if k.cooldown_until_ms > now_ms => "cooling_down",
                            _ => "active",
                        };
                        json!({
                            "label": label,
                            "state": state,
                            "reason": k.and_then(|k| k.reason.clone()),
                            "cooldown_until_ms": k.map(|k| k.cooldown_until_ms).filter(|&t| t > now_ms),
                        })
                    })
                    .collect();
                let state = match health.state {
                    BreakerState::Open if now_ms >= health.open_until_ms => "half_open",
                    BreakerState::Open => "open",
                    BreakerState::HalfOpen => "half_open",
                    BreakerState::Closed => "closed",
                };
                let window_live =
                    now_ms.saturating_sub(health.window_start_ms) < config.health.window_secs * 1000;
                let error_ratio = (window_live && health.window_calls > 0)
                    .then(|| f64::from(health.window_failures) / f64::from(health.window_calls));
                json!({
                    "provider": provider,
                    "model": model,
                    "routes": routes,
                    "state": state,
                    "consecutive_failures": health.consecutive_failures,
                    "error_ratio": error_ratio,
                    "calls_in_window": if window_live { health.window_calls } else { 0 },
                    "latency_ms": health.latency_ewma_ms.map(|l| (l * 10.0).round() / 10.0),
                    "open_until_ms": (health.state != BreakerState::Closed).then_some(health.open_until_ms),
                    "cooldown_until_ms": Some(health.cooldown_until_ms).filter(|&t| t > now_ms),
                    "last_failure_class": health.last_class,
                    "keys": keys,
                    "calls_in_flight_limit": self.limits_of(&provider, now_ms),
                })
            })
            .collect();
        json!({"object": "list", "data": data})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_safe_tokens() {
        assert_eq!(target_key("groq", "llama-3_1"), "target.groq.llama-3_1");
        let a = target_key("openrouter", "meta-llama/llama-3.1-8b");
        let b = target_key("openrouter", "meta-llama_llama-3_1-8b");
        assert_ne!(a, b);
        assert!(a.starts_with("target.openrouter.meta-llama_llama-3_1-8b-"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        );
        assert_eq!(key_key("groq", "GROQ_KEY_2"), "key.groq.GROQ_KEY_2");
        assert!(target_key("p", "").starts_with("target.p.-"));
        // A huge model name still makes a short key, and two that share a long prefix
        // stay apart.
        let long = target_key("p", &"x".repeat(5000));
        assert!(long.len() < 150, "{}", long.len());
        assert_ne!(long, target_key("p", &"x".repeat(4999)));
    }

    #[test]
    fn the_report_shows_each_live_workers_limit_for_the_provider() {
        let toml = "[providers.sim]\nkind = \"simulated\"\n[routes.x]\nprovider = \"sim\"\nmodel = \"m\"\n";
        let config = Config::load(crate::config::Source::Toml(toml), &HashMap::new()).unwrap();
        let now = 1_000_000;
        let mut snapshot = Snapshot::default();
        for (worker, limit, updated_ms) in [
            ("worker-a", 12, now - 1000),
            ("worker-b", 3, now),
            ("worker-gone", 64, now - LIMIT_STALE_MS),
        ] {
            let record = LimitRecord {
                provider: "sim".into(),
                worker: worker.into(),
                limit,
                updated_ms,
            };
            let value = serde_json::to_vec(&record).unwrap();
            snapshot.insert(&limit_key("sim", worker), &value);
        }
        let report = snapshot.report(&config, now);
        assert_eq!(
            report["data"][0]["calls_in_flight_limit"],
            json!({"worker-a": 12, "worker-b": 3})
        );
        snapshot.remove(&limit_key("sim", "worker-a"));
        let report = snapshot.report(&config, now);
        assert_eq!(
            report["data"][0]["calls_in_flight_limit"],
            json!({"worker-b": 3})
        );
    }
}
