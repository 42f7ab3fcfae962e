//! Provider settings: which wire format and preset a provider uses, where it lives, its
//! key pool, and its per-attempt timeouts. Presets (Groq, OpenRouter, Anthropic, Gemini, …)
//! are data — a base URL and a key variable over one of four adapters — not code.

use std::time::Duration;

use serde::Deserialize;

use super::{Problems, Secret};
use crate::Capability;

/// Per-attempt total timeout of a provider call.
const DEFAULT_PROVIDER_TIMEOUT_MS: u64 = 60_000;
/// A provider that has not started streaming in this long is treated as stalled.
const DEFAULT_FIRST_TOKEN_TIMEOUT_MS: u64 = 30_000;
/// A stream silent for this long between chunks is treated as stalled.
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// A worker's first limit of calls in flight to one provider: a worker's default
/// concurrency per capability, so a fresh worker is no slower than one without the limit.
const DEFAULT_CONCURRENCY_INITIAL: usize = 64;
/// Lowest limit: one call at a time still makes progress (and measures the provider).
const DEFAULT_CONCURRENCY_MIN: usize = 1;
/// Highest limit: room for a worker serving several capabilities to grow past its start.
const DEFAULT_CONCURRENCY_MAX: usize = 256;
/// A rate limit or a slow answer halves the limit, as TCP halves its window on a loss.
const DEFAULT_DECREASE_FACTOR: f64 = 0.5;
/// Largest limit accepted: far above any provider's tolerance for one process.
const MAX_CONCURRENCY: usize = 65_536;

/// The wire format an adapter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    Simulated,
    OpenAi,
    Anthropic,
    Gemini,
    Replicate,
}

/// A provider preset: the adapter it uses plus where it lives and which variable holds its
/// key by default. `openai` with a `base_url` covers any other OpenAI-compatible server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Built in, offline, deterministic; answers are labelled `simulated`.
    Simulated,
    Openai,
    Groq,
    Openrouter,
    Cerebras,
    Novita,
    /// Hugging Face Inference Providers (the router).
    Huggingface,
    Together,
    Mistral,
    Deepseek,
    Ollama,
    Vllm,
    /// llama.cpp's `llama-server`.
    Llamacpp,
    Anthropic,
    Gemini,
    Replicate,
}

impl ProviderKind {
    /// The adapter, default base URL and default key variable (`None`: keyless, local).
    pub fn preset(self) -> (Adapter, Option<&'static str>, Option<&'static str>) {
        use Adapter::{Anthropic, Gemini, OpenAi, Replicate, Simulated};
        match self {
            ProviderKind::Simulated => (Simulated, None, None),
            ProviderKind::Openai => (
                OpenAi,
                Some("https://api.openai.com/v1"),
                Some("OPENAI_API_KEY"),
            ),
            ProviderKind::Groq => (
                OpenAi,
                Some("https://api.groq.com/openai/v1"),
                Some("GROQ_API_KEY"),
            ),
            ProviderKind::Openrouter => (
                OpenAi,
                Some("https://openrouter.ai/api/v1"),
                Some("OPENROUTER_API_KEY"),
            ),
            ProviderKind::Cerebras => (
                OpenAi,
                Some("https://api.cerebras.ai/v1"),
                Some("CEREBRAS_API_KEY"),
            ),
            ProviderKind::Novita => (
                OpenAi,
                Some("https://api.novita.ai/openai/v1"),
                Some("NOVITA_API_KEY"),
            ),
            ProviderKind::Huggingface => (
                OpenAi,
                Some("https://router.huggingface.co/v1"),
                Some("HF_TOKEN"),
            ),
            ProviderKind::Together => (
                OpenAi,
                Some("https://api.together.xyz/v1"),
                Some("TOGETHER_API_KEY"),
            ),
            ProviderKind::Mistral => (
                OpenAi,
                Some("https://api.mistral.ai/v1"),
                Some("MISTRAL_API_KEY"),
            ),
            ProviderKind::Deepseek => (
                OpenAi,
                Some("https://api.deepseek.com/v1"),
                Some("DEEPSEEK_API_KEY"),
            ),
            ProviderKind::Ollama => (OpenAi, Some("http://127.0.0.1:11434/v1"), None),
            ProviderKind::Vllm => (OpenAi, Some("http://127.0.0.1:8000/v1"), None),
            ProviderKind::Llamacpp => (OpenAi, Some("http://127.0.0.1:8081/v1"), None),
            ProviderKind::Anthropic => (
                Anthropic,
                Some("https://api.anthropic.com/v1"),
                Some("ANTHROPIC_API_KEY"),
            ),
            ProviderKind::Gemini => (
                Gemini,
                Some("https://generativelanguage.googleapis.com/v1beta"),
                Some("GEMINI_API_KEY"),
            ),
            ProviderKind::Replicate => (
                Replicate,
                Some("https://api.replicate.com/v1"),
                Some("REPLICATE_API_TOKEN"),
            ),
        }
    }

    pub fn adapter(self) -> Adapter {
        self.preset().0
    }
}

/// One key of a pool: the variable it came from (safe to show) and the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The environment variable's name; how the key is named in health reports and logs.
    pub label: String,
    pub secret: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Base URL up to and including the version, e.g. `https://api.groq.com/openai/v1`;
    /// defaults to the preset's.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Variable holding the API key (never the key itself); defaults to the preset's.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// More key variables: the pool is `api_key_env` followed by these, used in rotation.
    #[serde(default)]
    pub api_key_envs: Vec<String>,
    /// Total time one attempt may take.
    #[serde(default = "default_provider_timeout_ms")]
    pub timeout_ms: u64,
    /// Streaming: time until the first chunk.
    #[serde(default = "default_first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    /// Streaming: longest silence between chunks.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Models callers may address directly as `provider/model`, besides those the routes
    /// give this provider. Nothing else is addressable: each addressable model may get a
    /// record in the shared `providers` bucket, so the list bounds what callers can create.
    #[serde(default)]
    pub direct_models: Vec<String>,
    /// Simulated provider: delay before the answer (or before the first streamed chunk).
    #[serde(default)]
    pub latency_ms: u64,
    /// Simulated provider: delay between streamed chunks.
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// Simulated provider: calls it serves at once; one more is answered 429, so rate
    /// limits and the adaptive limit of calls in flight can be seen offline.
    #[serde(default)]
    pub capacity: Option<usize>,
    /// The adaptive limit of one worker's calls in flight to this provider.
    #[serde(default)]
    pub concurrency: ConcurrencyConfig,
    /// The key pool, read from the environment at load time.
    #[serde(skip)]
    pub keys: Vec<ApiKey>,
}

/// How many calls one worker makes to a provider at once: a limit that grows by one after
/// each `limit` calls answered in time while it was in use, and is multiplied by
/// `decrease_factor` when the provider answers 429, times out, says it is overloaded (529)
/// or answers slower than `latency_target_ms`; always between `min` and `max`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// The limit a worker starts with.
    #[serde(default = "default_concurrency_initial")]
    pub initial: usize,
    #[serde(default = "default_concurrency_min")]
    pub min: usize,
    #[serde(default = "default_concurrency_max")]
    pub max: usize,
    /// What the limit is multiplied by on a sign of overload (rounded down, at least `min`).
    #[serde(default = "default_decrease_factor")]
    pub decrease_factor: f64,
    /// A call slower than this (streams: to their first chunk with output) is a sign of
    /// overload. Unset: latency never lowers the limit, since an answer's time grows with
    /// its length and no default could tell a long answer from a slow provider.
    #[serde(default)]
    pub latency_target_ms: Option<u64>,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        Self {
            initial: DEFAULT_CONCURRENCY_INITIAL,
            min: DEFAULT_CONCURRENCY_MIN,
            max: DEFAULT_CONCURRENCY_MAX,
            decrease_factor: DEFAULT_DECREASE_FACTOR,
            latency_target_ms: None,
        }
    }
}

impl ConcurrencyConfig {
    pub fn latency_target(&self) -> Option<Duration> {
        self.latency_target_ms.map(Duration::from_millis)
    }

    fn validate(&self, p: &mut Problems, key: &str) {
        if self.min == 0 {
            p.add(&format!("{key}.min"), "must be at least 1");
        }
        if self.max > MAX_CONCURRENCY {
            p.add(
                &format!("{key}.max"),
                format!("must be at most {MAX_CONCURRENCY}"),
            );
        }
        if self.min > self.max {
            p.add(&format!("{key}.max"), "must be at least min");
        }
        if !(self.min..=self.max).contains(&self.initial) {
            p.add(&format!("{key}.initial"), "must be between min and max");
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor < 1.0) {
            p.add(
                &format!("{key}.decrease_factor"),
                "must be greater than 0 and less than 1",
            );
        }
        if self.latency_target_ms == Some(0) {
            p.add(
                &format!("{key}.latency_target_ms"),
                "must be greater than 0 (leave it out to ignore latency)",
            );
        }
    }
}

impl ProviderConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn first_token_timeout(&self) -> Duration {
        Duration::from_millis(self.first_token_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The configured base URL, else the preset's.
    pub fn base_url(&self) -> Option<&str> {
        self.base_url.as_deref().or(self.kind.preset().1)
    }

    /// Names of the variables that make up the key pool, in rotation order. The preset's
    /// variable is the default only at the preset's own URL: a self-hosted server behind
    /// `kind = "openai"` and a `base_url` needs no `OPENAI_API_KEY`.
    pub fn key_envs(&self) -> Vec<String> {
        let preset_default = (self.base_url.is_none() && self.api_key_envs.is_empty())
            .then(|| self.kind.preset().2.map(str::to_owned))
            .flatten();
        self.api_key_env
            .clone()
            .or(preset_default)
            .into_iter()
            .chain(self.api_key_envs.iter().cloned())
            .collect()
    }
}

/// Reads each named variable into a key, trimmed ([`Secret::new`]); the ones that are unset,
/// empty or only whitespace are returned separately so validation can name them.
pub(crate) fn read_keys(
    names: &[String],
    env: &std::collections::HashMap<String, String>,
) -> (Vec<ApiKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match env.get(name).filter(|v| !v.trim().is_empty()) {
            Some(value) => keys.push(ApiKey {
                label: name.clone(),
                secret: Secret::new(value.clone()),
            }),
            None => missing.push(name.clone()),
        }
    }
    (keys, missing)
}

pub(crate) fn validate_provider(p: &mut Problems, name: &str, provider: &ProviderConfig) {
    let key = format!("providers.{name}");
    if let Err(e) = name.parse::<Capability>() {
        p.add(&key, format!("provider name {e}"));
    }
    match (provider.kind.adapter(), provider.base_url()) {
        (Adapter::Simulated, Some(_)) => p.add(
            &format!("{key}.base_url"),
            "the simulated provider takes no base_url",
        ),
        (Adapter::Simulated, None) => {}
        (_, None) => p.add(&format!("{key}.base_url"), "is required for this kind"),
        (_, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            p.add(
                &format!("{key}.base_url"),
                "must start with http:// or https://",
            );
        }
        (_, Some(_)) => {}
    }
    if provider.kind.adapter() == Adapter::Simulated && !provider.key_envs().is_empty() {
        p.add(
            &format!("{key}.api_key_env"),
            "the simulated provider takes no key",
        );
    }
    match (provider.capacity, provider.kind.adapter()) {
        (Some(0), _) => p.add(&format!("{key}.capacity"), "must be at least 1"),
        (Some(_), adapter) if adapter != Adapter::Simulated => p.add(
            &format!("{key}.capacity"),
            "only the simulated provider takes a capacity",
        ),
        _ => {}
    }
    for (i, model) in provider.direct_models.iter().enumerate() {
        if model.trim().is_empty() {
            p.add(&format!("{key}.direct_models[{i}]"), "must not be empty");
        }
    }
    for (field, value) in [
        ("timeout_ms", provider.timeout_ms),
        ("first_token_timeout_ms", provider.first_token_timeout_ms),
        ("idle_timeout_ms", provider.idle_timeout_ms),
    ] {
        if value == 0 {
            p.add(&format!("{key}.{field}"), "must be greater than 0");
        }
    }
    provider
        .concurrency
        .validate(p, &format!("{key}.concurrency"));
}

fn default_provider_timeout_ms() -> u64 {
    DEFAULT_PROVIDER_TIMEOUT_MS
}
fn default_first_token_timeout_ms() -> u64 {
    DEFAULT_FIRST_TOKEN_TIMEOUT_MS
}
fn default_idle_timeout_ms() -> u64 {
    DEFAULT_IDLE_TIMEOUT_MS
}
fn default_concurrency_initial() -> usize {
    DEFAULT_CONCURRENCY_INITIAL
}
fn default_concurrency_min() -> usize {
    DEFAULT_CONCURRENCY_MIN
}
fn default_concurrency_max() -> usize {
    DEFAULT_CONCURRENCY_MAX
}
fn default_decrease_factor() -> f64 {
    DEFAULT_DECREASE_FACTOR
}
