//! Typed configuration: one TOML file plus `SWITCHYARD__SECTION__KEY` environment overrides,
//! loaded through the `config` crate, then checked by [`Config::validate`], which reports
//! every problem with the key it concerns. Provider API keys come only from the environment
//! variable a provider names, and are held as [`Secret`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::Capability;
use crate::agents::{AgentProfile, Catalog, Team, Weights};

mod artifacts;
mod mcp;
mod memory;
mod prices;
mod providers;
mod routes;
mod threads;
mod tools;
mod web_tools;

pub use artifacts::ArtifactsConfig;
pub use mcp::{INHERITED_ENV, McpServerConfig};
pub use memory::{DEFAULT_MEMORY_FILE, MemoryConfig};
pub use prices::{Price, TOKENS_PER_PRICE_UNIT, price_key};
pub use providers::{Adapter, ApiKey, ConcurrencyConfig, ProviderConfig, ProviderKind};
pub use routes::{
    MAX_FALLBACK_HOPS, MIN_WINDOW, RouteConfig, SIMULATED_WINDOW, Strategy, TargetConfig,
    split_direct,
};
pub use threads::ThreadsConfig;
pub use tools::{MAX_QUOTA_WINDOW_SECS, RunCodeConfig, ToolQuota, ToolsConfig, known_tools};
pub use web_tools::{
    HttpFetchConfig, NewsApi, SearchApi, SsrfConfig, StockApi, Upstream, UpstreamApi, WeatherConfig,
};

/// The configuration `switchyard up` uses when no file is given: the simulated provider only.
pub const DEFAULT_TOML: &str = include_str!("../../../../switchyard.toml");

/// Prefix of environment overrides: `SWITCHYARD__GATEWAY__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "SWITCHYARD";
const ENV_SEPARATOR: &str = "__";

/// NATS URL when none is configured: a local server on the standard port.
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// One replica: right for a single server; a 3-node cluster sets 3.
const DEFAULT_REPLICAS: usize = 1;
/// Queue bound: enough for bursts, small enough that a stuck fleet is noticed as 429s.
const DEFAULT_QUEUE_MAX_MSGS: i64 = 100_000;
/// 1 GiB of queued tasks at most.
const DEFAULT_QUEUE_MAX_BYTES: i64 = 1 << 30;
/// Tasks older than a day are no longer wanted by anyone.
const DEFAULT_QUEUE_MAX_AGE_SECS: u64 = 86_400;
/// Short, so a dead worker's task is redelivered quickly; live workers send progress acks.
const DEFAULT_ACK_WAIT_MS: u64 = 30_000;
/// Bounded redelivery: four provider attempts, then a reserve delivery that records the
/// failure if the last attempt's worker died.
const DEFAULT_MAX_DELIVER: i64 = 5;
/// NATS inboxes only (what `new_inbox()` makes):
/// a subject the publisher subscribes to, never a stream's, the server's or Switchyard's.
const DEFAULT_REPLY_PREFIXES: &[&str] = &["_INBOX."];
/// Results are kept a day so late clients can still fetch them.
const DEFAULT_RESULTS_TTL_SECS: u64 = 86_400;
/// Events are kept a week for dashboards and replays.
const DEFAULT_EVENTS_MAX_AGE_SECS: u64 = 7 * 86_400;
/// 1 GiB of events at most.
const DEFAULT_EVENTS_MAX_BYTES: i64 = 1 << 30;
/// Loopback by default: exposing the gateway is a deliberate choice.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// 4 MiB covers long prompts; larger inputs belong in the artifacts store.
const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// How long a synchronous call waits for its answer unless the caller asks otherwise.
const DEFAULT_TIMEOUT_MS: u64 = 120_000;
/// Upper bound a caller may ask for with `x-switchyard-timeout-ms`.
const DEFAULT_MAX_TIMEOUT_MS: u64 = 600_000;
/// Lower bound a caller may ask for with `x-switchyard-timeout-ms`: a shorter deadline cannot
/// cover one provider call, so such tasks only expire in the queue and fill the DLQ.
const DEFAULT_MIN_TIMEOUT_MS: u64 = 1_000;
/// Time a client gets to send a request's line and headers (and an idle keep-alive
/// connection to start its next request): real clients need milliseconds, and a client
/// that dribbles its headers holds a connection at most this long.
const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Time a client gets to send a whole request body: the largest default body (4 MiB) at
/// 1 Mbit/s takes about 34 s; a client trickling slower is holding a connection, not sending.
const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 60_000;
/// Time a stopping gateway gives in-flight requests before closing their connections.
const DEFAULT_GATEWAY_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// No browser origin: the gateway does not authenticate yet, so a page allowed to call it
/// could use its provider keys for any visitor whose browser can reach it.
const DEFAULT_CORS_ALLOWED_ORIGINS: &[&str] = &[];
/// Tasks one worker runs at once per capability.
const DEFAULT_WORKER_CONCURRENCY: usize = 64;
/// Time a draining worker gives in-flight tasks before it exits anyway.
const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Tasks in flight per capability across all workers (`max_ack_pending`).
const DEFAULT_MAX_IN_FLIGHT: i64 = 1_000;
/// Consecutive failures of a target that open its circuit breaker.
const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Share of failed calls in the window that opens a breaker…
const DEFAULT_ERROR_RATIO: f64 = 0.5;
/// …once the window holds at least this many calls (a few failures prove nothing).
const DEFAULT_MIN_CALLS: u32 = 20;
/// Length of the error-ratio window.
const DEFAULT_WINDOW_SECS: u64 = 60;
/// How long an open breaker turns calls away before one probe is let through.
const DEFAULT_OPEN_MS: u64 = 30_000;
/// Rate-limit cooldown when the provider gave no `Retry-After`.
const DEFAULT_COOLDOWN_MS: u64 = 10_000;
/// How often a worker shares its success counts and latency with the others.
const DEFAULT_FLUSH_MS: u64 = 1_000;
/// Dead letters are kept two weeks for inspection and replay.
const DEFAULT_DLQ_MAX_AGE_SECS: u64 = 14 * 86_400;
/// Enough letters to diagnose a long outage; a burst of failures (every request of a flood
/// with a 1 ms deadline dead-letters) pushes out the oldest instead of growing the store.
const DEFAULT_DLQ_MAX_MSGS: i64 = 10_000;
/// 256 MiB: a letter carries its request (up to `gateway.max_body_bytes`), so the count
/// alone does not bound the store.
const DEFAULT_DLQ_MAX_BYTES: i64 = 256 << 20;
use crate::names::DEFAULT_CAPABILITY;

/// A value that must never be printed: `Debug` and `Display` show `*****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret as read from the environment, trimmed: a key pasted with a trailing newline
    /// or spaces is the key without them (providers read it so, and echo it so).
    pub fn new(value: String) -> Self {
        match value.trim() {
            trimmed if trimmed.len() == value.len() => Self(value),
            trimmed => Self(trimmed.to_owned()),
        }
    }

    /// The secret itself, for the one place that sends it to its provider.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// Everything a Switchyard process is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub results: ResultsConfig,
    #[serde(default)]
    pub events: EventsConfig,
    /// Conversation threads and chat sessions (`docs/threads.md`).
    #[serde(default)]
    pub threads: ThreadsConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Per-capability settings; capabilities named only by routes get the defaults.
    #[serde(default)]
    pub capabilities: BTreeMap<String, CapabilityConfig>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model aliases callers put in `model`.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// What models cost, by `provider/model`.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub dlq: DlqConfig,
    /// Agents beyond the shipped ones, or replacing one of the same name.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentProfile>,
    /// Teams beyond the shipped ones, or replacing one of the same name.
    #[serde(default)]
    pub teams: BTreeMap<String, Team>,
    /// How routing weighs capability match, load and record when it picks an agent.
    #[serde(default)]
    pub agent_routing: Weights,
    /// The tool loop's bounds and the built-in tools chat requests may use.
    #[serde(default)]
    pub tools: ToolsConfig,
    /// MCP servers whose tools `switchyard tools` serves as `mcp.<server>.<tool>`.
    #[serde(default)]
    pub mcp: BTreeMap<String, McpServerConfig>,
    /// The episodic memory index (`switchyard memory`).
    #[serde(default)]
    pub memory: MemoryConfig,
    /// The object store of large inputs and outputs, and when an output goes there.
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    /// The shipped catalog with `agents` and `teams` added: the agents this deployment runs.
    #[serde(skip)]
    pub catalog: Catalog,
}

/// Circuit breakers and cooldowns, shared by all workers through the `providers` bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_error_ratio")]
    pub error_ratio: f64,
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            error_ratio: DEFAULT_ERROR_RATIO,
            min_calls: DEFAULT_MIN_CALLS,
            window_secs: DEFAULT_WINDOW_SECS,
            open_ms: DEFAULT_OPEN_MS,
            cooldown_ms: DEFAULT_COOLDOWN_MS,
            flush_ms: DEFAULT_FLUSH_MS,
        }
    }
}

/// The `DLQ` stream of tasks that failed for good.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    #[serde(default = "default_dlq_max_age_secs")]
    pub max_age_secs: u64,
    /// Most dead letters kept; the oldest go first.
    #[serde(default = "default_dlq_max_msgs")]
    pub max_msgs: i64,
    /// Most bytes of dead letters kept; the oldest go first.
    #[serde(default = "default_dlq_max_bytes")]
    pub max_bytes: i64,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            max_age_secs: DEFAULT_DLQ_MAX_AGE_SECS,
            max_msgs: DEFAULT_DLQ_MAX_MSGS,
            max_bytes: DEFAULT_DLQ_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// Replicas for streams and buckets.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: default_nats_url(),
            replicas: DEFAULT_REPLICAS,
        }
    }
}

/// Limits of the `TASKS` stream and its consumers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default = "default_queue_max_msgs")]
    pub max_msgs: i64,
    #[serde(default = "default_queue_max_bytes")]
    pub max_bytes: i64,
    #[serde(default = "default_queue_max_age_secs")]
    pub max_age_secs: u64,
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Subject prefixes a task's `reply_to` may start with (besides its own
    /// `stream.<task id>`); see [`crate::reply`].
    #[serde(default = "default_reply_prefixes")]
    pub reply_prefixes: Vec<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_msgs: DEFAULT_QUEUE_MAX_MSGS,
            max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            max_age_secs: DEFAULT_QUEUE_MAX_AGE_SECS,
            ack_wait_ms: DEFAULT_ACK_WAIT_MS,
            max_deliver: DEFAULT_MAX_DELIVER,
            reply_prefixes: default_reply_prefixes(),
        }
    }
}

impl QueueConfig {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    #[serde(default = "default_results_ttl_secs")]
    pub ttl_secs: u64,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            ttl_secs: DEFAULT_RESULTS_TTL_SECS,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    #[serde(default = "default_events_max_age_secs")]
    pub max_age_secs: u64,
    #[serde(default = "default_events_max_bytes")]
    pub max_bytes: i64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_age_secs: DEFAULT_EVENTS_MAX_AGE_SECS,
            max_bytes: DEFAULT_EVENTS_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default = "default_timeout_ms")]
    pub default_timeout_ms: u64,
    #[serde(default = "default_max_timeout_ms")]
    pub max_timeout_ms: u64,
    #[serde(default = "default_min_timeout_ms")]
    pub min_timeout_ms: u64,
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    #[serde(default = "default_gateway_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Browser origins (`https://app.example.com`) allowed to call the API (CORS); empty:
    /// no CORS headers at all. Never a wildcard (see `check_origin`).
    #[serde(default = "default_cors_allowed_origins")]
    pub cors_allowed_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            default_timeout_ms: DEFAULT_TIMEOUT_MS,
            max_timeout_ms: DEFAULT_MAX_TIMEOUT_MS,
            min_timeout_ms: DEFAULT_MIN_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            drain_timeout_ms: DEFAULT_GATEWAY_DRAIN_TIMEOUT_MS,
            cors_allowed_origins: default_cors_allowed_origins(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Capabilities this worker serves; empty means every configured capability.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Tasks this worker runs at once, per capability.
    #[serde(default = "default_worker_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Where the worker answers `GET /healthz` and `GET /readyz` for an orchestrator's
    /// probes (`host:port`); none when unset.
    #[serde(default)]
    pub health_listen: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            capabilities: Vec::new(),
            concurrency: DEFAULT_WORKER_CONCURRENCY,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            health_listen: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityConfig {
    /// Tasks in flight across all workers (the consumer's `max_ack_pending`).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: i64,
}

impl Default for CapabilityConfig {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// One configuration problem, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Every problem found while loading or validating.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(key: &str, problem: impl Into<String>) -> Self {
        Self {
            problems: vec![ConfigProblem {
                key: key.to_owned(),
                problem: problem.into(),
            }],
        }
    }
}

/// Where the configuration text comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A TOML file on disk.
    File(&'a Path),
    /// TOML text held in memory (tests, the built-in default).
    Toml(&'a str),
}

impl Config {
    /// Loads `source`, applies `SWITCHYARD__…` overrides from `env`, resolves provider keys
    /// from `env`, and validates. `env` is passed in (not read here) so tests stay hermetic.
    pub fn load(source: Source<'_>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("worker.capabilities")
            .with_list_parse_key("gateway.cors_allowed_origins")
            .with_list_parse_key("queue.reply_prefixes")
            .with_list_parse_key("tools.chat_allowed")
            .with_list_parse_key("tools.ssrf.allow_networks")
            .with_list_parse_key("tools.ssrf.allow_hosts")
            .source(Some(overrides));
        let builder = config::Config::builder();
        let builder = match source {
            Source::File(path) => builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            ),
            Source::Toml(text) => {
                builder.add_source(config::File::from_str(text, config::FileFormat::Toml))
            }
        };
        let mut cfg: Config = builder
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::single("(file)", e.to_string()))?;
        let mut missing = Vec::new();
        for (name, provider) in &mut cfg.providers {
            let (keys, unset) = providers::read_keys(&provider.key_envs(), env);
            provider.keys = keys;
            missing.extend(
                unset
                    .into_iter()
                    .map(|var| (format!("providers.{name}.api_key_env"), var)),
            );
        }
        cfg.tools.resolve_keys(env);
        for (name, server) in &mut cfg.mcp {
            missing.extend(server.resolve(name, env));
        }
        let providers = cfg.providers.clone();
        for (name, route) in &mut cfg.routes {
            missing.extend(routes::resolve_route(name, route, &providers, env));
        }
        let mut p = Problems::default();
        match Catalog::shipped_for(cfg.routes.keys().map(String::as_str)) {
            Ok(mut catalog) => {
                catalog.extend(Catalog {
                    agents: cfg.agents.clone(),
                    teams: cfg.teams.clone(),
                });
                cfg.catalog = catalog;
            }
            Err(e) => p.add("agents", e),
        }
        for (key, var) in missing {
            p.add(&key, format!("environment variable {var} is not set"));
        }
        if let Err(e) = cfg.validate() {
            p.0.extend(e.problems);
        }
        p.finish()?;
        let priced: Vec<Vec<Option<Price>>> = cfg
            .routes
            .values()
            .map(|r| {
                r.targets
                    .iter()
                    .map(|t| cfg.price(&t.provider, &t.model))
                    .collect()
            })
            .collect();
        for (route, prices) in cfg.routes.values_mut().zip(priced) {
            for (target, price) in route.targets.iter_mut().zip(prices) {
                target.price = price;
            }
        }
        Ok(cfg)
    }

    /// Checks every setting and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        if self.nats.url.trim().is_empty() {
            p.add("nats.url", "must not be empty");
        }
        for (i, server) in crate::nats::servers(&self.nats.url).enumerate() {
            if server.parse::<async_nats::ServerAddr>().is_err() {
                p.add(
                    "nats.url",
                    format!(
                        "server {} ({}) is not a NATS URL (nats://host:port, comma-separated for several)",
                        i + 1,
                        crate::nats::redacted(server)
                    ),
                );
            }
        }
        if !(1..=5).contains(&self.nats.replicas) {
            p.add("nats.replicas", "must be between 1 and 5");
        }
        p.positive("queue.max_msgs", self.queue.max_msgs);
        p.positive("queue.max_bytes", self.queue.max_bytes);
        if self.queue.max_deliver < 2 {
            p.add(
                "queue.max_deliver",
                "must be at least 2: one attempt plus the reserve delivery that records a failure",
            );
        }
        if self.queue.ack_wait_ms < 100 {
            p.add("queue.ack_wait_ms", "must be at least 100");
        }
        if self.queue.max_age_secs == 0 {
            p.add("queue.max_age_secs", "must be greater than 0");
        }
        for (i, prefix) in self.queue.reply_prefixes.iter().enumerate() {
            if let Err(problem) = crate::reply::check_prefix(prefix) {
                p.add(&format!("queue.reply_prefixes[{i}]"), problem);
            }
        }
        let gateway_replies = crate::reply::GATEWAY_REPLY_PREFIX;
        if !self
            .queue
            .reply_prefixes
            .iter()
            .any(|p| !p.is_empty() && gateway_replies.starts_with(p.as_str()))
        {
            p.add(
                "queue.reply_prefixes",
                format!(
                    "must allow the gateway's reply subjects for session turns \
                     ({gateway_replies}…), e.g. \"_INBOX.\""
                ),
            );
        }
        if self.results.ttl_secs == 0 {
            p.add("results.ttl_secs", "must be greater than 0");
        }
        p.positive("events.max_bytes", self.events.max_bytes);
        if let Some(listen) = &self.worker.health_listen
            && listen.parse::<SocketAddr>().is_err()
        {
            p.add(
                "worker.health_listen",
                format!("must be host:port with an IP address, e.g. 0.0.0.0:8081 (got {listen:?})"),
            );
        }
        if self.gateway.listen.parse::<SocketAddr>().is_err() {
            p.add(
                "gateway.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080",
                    self.gateway.listen
                ),
            );
        }
        if self.gateway.max_body_bytes == 0 {
            p.add("gateway.max_body_bytes", "must be greater than 0");
        }
        if self.gateway.default_timeout_ms == 0 {
            p.add("gateway.default_timeout_ms", "must be greater than 0");
        }
        if self.gateway.default_timeout_ms > self.gateway.max_timeout_ms {
            p.add(
                "gateway.default_timeout_ms",
                "must not exceed gateway.max_timeout_ms",
            );
        }
        if self.gateway.min_timeout_ms == 0 {
            p.add("gateway.min_timeout_ms", "must be greater than 0");
        }
        if self.gateway.min_timeout_ms > self.gateway.default_timeout_ms {
            p.add(
                "gateway.min_timeout_ms",
                "must not exceed gateway.default_timeout_ms",
            );
        }
        for (key, value) in [
            (
                "gateway.header_read_timeout_ms",
                self.gateway.header_read_timeout_ms,
            ),
            (
                "gateway.body_read_timeout_ms",
                self.gateway.body_read_timeout_ms,
            ),
        ] {
            if value == 0 {
                p.add(key, "must be greater than 0");
            }
        }
        for (i, origin) in self.gateway.cors_allowed_origins.iter().enumerate() {
            if let Err(problem) = check_origin(origin) {
                p.add(&format!("gateway.cors_allowed_origins[{i}]"), problem);
            }
        }
        if self.worker.concurrency == 0 {
            p.add("worker.concurrency", "must be at least 1");
        }
        let known = self.capability_names();
        for (i, cap) in self.worker.capabilities.iter().enumerate() {
            let key = format!("worker.capabilities[{i}]");
            match cap.parse::<Capability>() {
                Err(e) => p.add(&key, format!("{cap:?} {e}")),
                Ok(c) if !known.contains(&c) => {
                    p.add(
                        &key,
                        format!("{cap:?} is not used by any route or [capabilities] entry"),
                    );
                }
                Ok(_) => {}
            }
        }
        // Queues named `agent-…` carry agents' steps; chat capabilities must not look like one.
        let reserved = |c: &str| {
            c.starts_with(crate::agents::QUEUE_PREFIX) || c == crate::names::WORKFLOW_CAPABILITY
        };
        for (name, route) in &self.routes {
            if reserved(&route.capability) {
                p.add(
                    &format!("routes.{name}.capability"),
                    "names starting `agent-`, and `workflow`, are reserved for agents' queues",
                );
            }
        }
        for (name, cap) in &self.capabilities {
            if let Err(e) = name.parse::<Capability>() {
                p.add(&format!("capabilities.{name}"), format!("name {e}"));
            }
            if reserved(name) {
                p.add(
                    &format!("capabilities.{name}"),
                    "names starting `agent-`, and `workflow`, are reserved for agents' queues",
                );
            }
            p.positive(
                &format!("capabilities.{name}.max_in_flight"),
                cap.max_in_flight,
            );
        }
        for (name, provider) in &self.providers {
            providers::validate_provider(&mut p, name, provider);
        }
        if self.routes.is_empty() {
            p.add("routes", "at least one route is needed");
        }
        for (name, route) in &self.routes {
            routes::validate_route(&mut p, name, route, &self.routes, &self.providers);
        }
        prices::validate_prices(&mut p, &self.prices, &self.routes, &self.providers);
        self.validate_health(&mut p);
        self.tools.validate(&mut p, &|s| self.mcp.contains_key(s));
        self.threads.validate(&mut p);
        mcp::validate(&mut p, &self.mcp);
        self.memory.validate(&mut p, self.events.max_age_secs);
        self.artifacts.validate(&mut p);
        if self.dlq.max_age_secs == 0 {
            p.add("dlq.max_age_secs", "must be greater than 0");
        }
        p.positive("dlq.max_msgs", self.dlq.max_msgs);
        p.positive("dlq.max_bytes", self.dlq.max_bytes);
        for problem in self
            .catalog
            .problems(|r| self.routes.contains_key(r), &|s| {
                self.mcp.contains_key(s)
            })
            .into_iter()
            .chain(self.agent_routing.problems())
        {
            p.add(&problem.field, problem.problem);
        }
        p.finish()
    }

    fn validate_health(&self, p: &mut Problems) {
        let h = &self.health;
        if h.failure_threshold == 0 {
            p.add("health.failure_threshold", "must be at least 1");
        }
        if !(h.error_ratio > 0.0 && h.error_ratio <= 1.0) {
            p.add("health.error_ratio", "must be above 0 and at most 1");
        }
        for (key, value) in [
            ("health.window_secs", h.window_secs),
            ("health.open_ms", h.open_ms),
            ("health.cooldown_ms", h.cooldown_ms),
            ("health.flush_ms", h.flush_ms),
        ] {
            if value == 0 {
                p.add(key, "must be greater than 0");
            }
        }
    }

    /// Every capability named by a route or a `[capabilities]` entry (valid names only),
    /// plus the default one, which `provider/model` requests use.
    pub fn capability_names(&self) -> BTreeSet<Capability> {
        self.routes
            .values()
            .map(|r| r.capability.as_str())
            .chain(std::iter::once(DEFAULT_CAPABILITY))
            .chain(self.capabilities.keys().map(String::as_str))
            .filter_map(|c| c.parse().ok())
            // Each agent's steps have a queue of their own, capped at its concurrency, and
            // workflows have one for their control messages.
            .chain(self.catalog.agents.values().filter_map(|a| a.queue().ok()))
            .chain(
                (!self.catalog.agents.is_empty())
                    .then(|| crate::names::WORKFLOW_CAPABILITY.parse().ok())
                    .flatten(),
            )
            .collect()
    }

    /// The price of `provider`/`model` (`provider` as configured, `model` as sent to it):
    /// its `[prices]` entry, else the one a route target for it sets; `None` when unknown.
    pub fn price(&self, provider: &str, model: &str) -> Option<Price> {
        prices::lookup(&self.prices, &self.routes, provider, model)
    }

    /// The capabilities a worker with this configuration serves.
    pub fn worker_capabilities(&self) -> Vec<Capability> {
        let all = self.capability_names();
        if self.worker.capabilities.is_empty() {
            return all.into_iter().collect();
        }
        all.into_iter()
            .filter(|c| self.worker.capabilities.iter().any(|w| w == c.as_str()))
            .collect()
    }

    /// Settings of one capability (defaults when it has no `[capabilities]` entry).
    pub fn capability(&self, capability: &Capability) -> CapabilityConfig {
        self.capabilities
            .get(capability.as_str())
            .cloned()
            .unwrap_or_default()
    }
}

/// Checks one CORS origin. It must be written as browsers send `Origin` (scheme, lowercase
/// host, optional port; no path), because it is compared byte for byte. A wildcard is
/// refused: while the gateway does not authenticate, `*` would let every web page use it,
/// and its provider keys, through the browser of anyone who can reach it (a gateway on
/// localhost included).
fn check_origin(origin: &str) -> Result<(), String> {
    if origin.contains('*') {
        return Err(format!(
            "{origin:?}: wildcards are not allowed while the gateway does not authenticate \
             (any web page could use it); list each origin"
        ));
    }
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let exact = host.is_some_and(|h| {
        !h.is_empty()
            && h.chars().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, '.' | '-' | ':' | '[' | ']')
            })
    });
    if exact {
        Ok(())
    } else {
        Err(format!(
            "{origin:?} is not an origin as browsers send it: http:// or https://, a lowercase \
             host and an optional port, no path or trailing slash (e.g. https://app.example.com)"
        ))
    }
}

#[derive(Default)]
pub(crate) struct Problems(Vec<ConfigProblem>);

impl Problems {
    pub(crate) fn add(&mut self, key: &str, problem: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.to_owned(),
            problem: problem.into(),
        });
    }

    pub(crate) fn positive(&mut self, key: &str, value: i64) {
        if value <= 0 {
            self.add(key, "must be greater than 0");
        }
    }

    fn finish(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

fn default_nats_url() -> String {
    DEFAULT_NATS_URL.to_owned()
}
fn default_replicas() -> usize {
    DEFAULT_REPLICAS
}
fn default_queue_max_msgs() -> i64 {
    DEFAULT_QUEUE_MAX_MSGS
}
fn default_queue_max_bytes() -> i64 {
    DEFAULT_QUEUE_MAX_BYTES
}
fn default_queue_max_age_secs() -> u64 {
    DEFAULT_QUEUE_MAX_AGE_SECS
}
fn default_ack_wait_ms() -> u64 {
    DEFAULT_ACK_WAIT_MS
}
fn default_max_deliver() -> i64 {
    DEFAULT_MAX_DELIVER
}
fn default_reply_prefixes() -> Vec<String> {
    DEFAULT_REPLY_PREFIXES
        .iter()
        .map(|p| (*p).to_owned())
        .collect()
}
fn default_results_ttl_secs() -> u64 {
    DEFAULT_RESULTS_TTL_SECS
}
fn default_events_max_age_secs() -> u64 {
    DEFAULT_EVENTS_MAX_AGE_SECS
}
fn default_events_max_bytes() -> i64 {
    DEFAULT_EVENTS_MAX_BYTES
}
fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_timeout_ms() -> u64 {
    DEFAULT_MAX_TIMEOUT_MS
}
fn default_min_timeout_ms() -> u64 {
    DEFAULT_MIN_TIMEOUT_MS
}
fn default_header_read_timeout_ms() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_MS
}
fn default_body_read_timeout_ms() -> u64 {
    DEFAULT_BODY_READ_TIMEOUT_MS
}
fn default_gateway_drain_timeout_ms() -> u64 {
    DEFAULT_GATEWAY_DRAIN_TIMEOUT_MS
}
fn default_cors_allowed_origins() -> Vec<String> {
    DEFAULT_CORS_ALLOWED_ORIGINS
        .iter()
        .map(|o| (*o).to_owned())
        .collect()
}
fn default_worker_concurrency() -> usize {
    DEFAULT_WORKER_CONCURRENCY
}
fn default_drain_timeout_ms() -> u64 {
    DEFAULT_DRAIN_TIMEOUT_MS
}
fn default_max_in_flight() -> i64 {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_failure_threshold() -> u32 {
    DEFAULT_FAILURE_THRESHOLD
}
fn default_error_ratio() -> f64 {
    DEFAULT_ERROR_RATIO
}
fn default_min_calls() -> u32 {
    DEFAULT_MIN_CALLS
}
fn default_window_secs() -> u64 {
    DEFAULT_WINDOW_SECS
}
fn default_open_ms() -> u64 {
    DEFAULT_OPEN_MS
}
fn default_cooldown_ms() -> u64 {
    DEFAULT_COOLDOWN_MS
}
fn default_flush_ms() -> u64 {
    DEFAULT_FLUSH_MS
}
fn default_dlq_max_age_secs() -> u64 {
    DEFAULT_DLQ_MAX_AGE_SECS
}
fn default_dlq_max_msgs() -> i64 {
    DEFAULT_DLQ_MAX_MSGS
}
fn default_dlq_max_bytes() -> i64 {
    DEFAULT_DLQ_MAX_BYTES
}
pub(crate) fn default_capability() -> String {
    DEFAULT_CAPABILITY.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn keys(err: &ConfigError) -> Vec<&str> {
        err.problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn built_in_default_is_valid() {
        let cfg = Config::load(Source::Toml(DEFAULT_TOML), &env(&[])).unwrap();
        assert!(!cfg.routes.is_empty());
        assert!(
            cfg.worker_capabilities()
                .iter()
                .any(|c| c.as_str() == "chat")
        );
    }

    #[test]
    fn the_shipped_agents_run_on_queues_of_their_own() {
        let cfg = Config::load(Source::Toml(DEFAULT_TOML), &env(&[])).unwrap();
        assert_eq!(cfg.catalog.teams["default"].agents.len(), 5);
        let planner: Capability = "agent-planner".parse().unwrap();
        assert!(cfg.capability_names().contains(&planner));
        // The default configuration has no `agents` route: they call its first route.
        assert_eq!(cfg.catalog.agents["writer"].route, "simulated");
    }

    #[test]
    fn agent_queue_names_are_reserved() {
        let toml = format!(
            "{DEFAULT_TOML}\n[capabilities.agent-x]\nmax_in_flight = 2\n[routes.sneaky]\nprovider = \"simulated\"\nmodel = \"m\"\ncapability = \"workflow\"\n"
        );
        let err = Config::load(Source::Toml(&toml), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("capabilities.agent-x"), "{err}");
        assert!(err.contains("routes.sneaky.capability"), "{err}");
    }

    #[test]
    fn tools_settings_are_checked_and_chat_allows_none_by_default() {
        let cfg = Config::load(Source::Toml(DEFAULT_TOML), &env(&[])).unwrap();
        assert!(cfg.tools.chat_allowed.is_empty());
        assert!(!cfg.tools.chat_may_use("calculator"));
        assert_eq!(cfg.tools.max_iterations, 6);
        let cfg = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[("SWITCHYARD__TOOLS__CHAT_ALLOWED", "calculator")]),
        )
        .unwrap();
        assert!(cfg.tools.chat_may_use("calculator"));
        let err = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[
                ("SWITCHYARD__TOOLS__CHAT_ALLOWED", "calculator,shell"),
                ("SWITCHYARD__TOOLS__MAX_ITERATIONS", "0"),
                ("SWITCHYARD__TOOLS__CALL_TIMEOUT_MS", "0"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "tools.chat_allowed[1]",
            "tools.max_iterations",
            "tools.call_timeout_ms",
        ] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
        assert!(!err.contains("tools.chat_allowed[0]"), "{err}");
    }

    #[test]
    fn nats_url_may_list_several_servers_each_checked() {
        let cfg = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[(
                "SWITCHYARD__NATS__URL",
                "nats://a:4222, nats://b:4222,c:4222",
            )]),
        )
        .unwrap();
        assert_eq!(crate::nats::servers(&cfg.nats.url).count(), 3);
        let err = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[(
                "SWITCHYARD__NATS__URL",
                "nats://a:4222,nats://u:secret@b:notaport",
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nats.url: server 2"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn tool_quotas_are_checked() {
        let toml =
            format!("{DEFAULT_TOML}\n[tools.quotas.calculator]\nwindow_secs = 60\nper_agent = 5\n");
        let cfg = Config::load(Source::Toml(&toml), &env(&[])).unwrap();
        assert_eq!(cfg.tools.quotas["calculator"].per_agent, Some(5));
        let toml = format!(
            "{DEFAULT_TOML}\n[tools.quotas.shell]\nwindow_secs = 60\ncalls = 1\n\
             [tools.quotas.calculator]\nwindow_secs = 0\n"
        );
        let err = Config::load(Source::Toml(&toml), &env(&[]))
            .unwrap_err()
            .to_string();
        for problem in [
            "tools.quotas.shell: `shell` is not a built-in tool",
            "tools.quotas.calculator.window_secs",
            "tools.quotas.calculator: sets neither",
        ] {
            assert!(err.contains(problem), "{problem} missing from {err}");
        }
    }

    #[test]
    fn run_code_settings_have_defaults_and_are_checked() {
        let cfg = Config::load(Source::Toml(DEFAULT_TOML), &env(&[])).unwrap();
        let run_code = &cfg.tools.run_code;
        assert_eq!(run_code.bwrap, std::path::Path::new("/usr/bin/bwrap"));
        assert_eq!(run_code.python, std::path::Path::new("/usr/bin/python3"));
        assert!(run_code.wall_time_ms < cfg.tools.call_timeout_ms);
        let cfg = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[("SWITCHYARD__TOOLS__RUN_CODE__MEMORY_MB", "64")]),
        )
        .unwrap();
        assert_eq!(cfg.tools.run_code.memory_mb, 64);
        let err = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[
                ("SWITCHYARD__TOOLS__RUN_CODE__BWRAP", "bwrap"),
                ("SWITCHYARD__TOOLS__RUN_CODE__WALL_TIME_MS", "10000"),
                ("SWITCHYARD__TOOLS__RUN_CODE__MAX_PROCESSES", "0"),
                ("SWITCHYARD__TOOLS__RUN_CODE__MAX_OUTPUT_BYTES", "1000000"),
                ("SWITCHYARD__TOOLS__RUN_CODE__MAX_CONCURRENT", "0"),
                ("SWITCHYARD__TOOLS__RUN_CODE__UID_BASE", "5"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "tools.run_code.bwrap",
            "tools.run_code.wall_time_ms",
            "tools.run_code.max_processes",
            "tools.run_code.max_output_bytes",
            "tools.run_code.max_concurrent",
            "tools.run_code.uid_base",
        ] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
        assert!(!err.contains("tools.run_code.python"), "{err}");
        let unknown = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[("SWITCHYARD__TOOLS__RUN_CODE__NETWORK", "true")]),
        );
        assert!(unknown.unwrap_err().to_string().contains("network"));
    }

    #[test]
    fn routing_weights_are_configurable_and_checked() {
        let toml = format!("{DEFAULT_TOML}\n[agent_routing]\nload = 0.7\n");
        let cfg = Config::load(Source::Toml(&toml), &env(&[])).unwrap();
        assert_eq!(cfg.agent_routing.load, 0.7);
        assert_eq!(
            cfg.agent_routing.capability, 0.5,
            "the rest keep their defaults"
        );
        let toml = format!(
            "{DEFAULT_TOML}\n[agent_routing]\ncapability = -1.0\nload = 0.0\nperformance = 0.0\n"
        );
        let err = Config::load(Source::Toml(&toml), &env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("agent_routing.capability"),
            "{err}"
        );
        let toml = format!(
            "{DEFAULT_TOML}\n[agent_routing]\ncapability = 0.0\nload = 0.0\nperformance = 0.0\n"
        );
        let err = Config::load(Source::Toml(&toml), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("agent_routing"), "{err}");
    }

    #[test]
    fn own_agents_and_teams_are_checked_by_name() {
        let toml = format!(
            "{DEFAULT_TOML}\n[agents.scribe]\nrole = \"Scribe\"\ncapabilities = [\"writing\"]\nroute = \"ghost\"\nsystem_prompt = \"Write.\"\nmax_concurrency = 0\n[teams.press]\nagents = [\"scribe\", \"nobody\"]\n"
        );
        let err = Config::load(Source::Toml(&toml), &env(&[])).unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "agents.scribe.route",
                "agents.scribe.max_concurrency",
                "teams.press.agents[1]"
            ]
        );
    }

    #[test]
    fn environment_overrides_file() {
        let cfg = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[
                ("SWITCHYARD__GATEWAY__LISTEN", "0.0.0.0:9999"),
                ("SWITCHYARD__QUEUE__MAX_DELIVER", "7"),
                ("SWITCHYARD__WORKER__CAPABILITIES", "chat"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.gateway.listen, "0.0.0.0:9999");
        assert_eq!(cfg.queue.max_deliver, 7);
        assert_eq!(cfg.worker.capabilities, vec!["chat".to_owned()]);
    }

    #[test]
    fn the_worker_probe_address_is_checked_when_set() {
        let load = |vars: &[(&str, &str)]| Config::load(Source::Toml(DEFAULT_TOML), &env(vars));
        assert_eq!(load(&[]).unwrap().worker.health_listen, None);
        let cfg = load(&[("SWITCHYARD__WORKER__HEALTH_LISTEN", "0.0.0.0:8081")]).unwrap();
        assert_eq!(cfg.worker.health_listen.as_deref(), Some("0.0.0.0:8081"));
        let err = load(&[("SWITCHYARD__WORKER__HEALTH_LISTEN", "localhost")]).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.key == "worker.health_listen"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            Config::load(Source::Toml("[gateway]\nlisten_addr = \"x\"\n"), &env(&[])).unwrap_err();
        assert!(err.problems[0].problem.contains("listen_addr"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let toml = r#"
            [queue]
            max_deliver = 0
            [gateway]
            listen = "nowhere"
            default_timeout_ms = 5000
            min_timeout_ms = 6000
            header_read_timeout_ms = 0
            body_read_timeout_ms = 0
            [worker]
            concurrency = 0
            capabilities = ["Bad.Name"]
            [providers.up]
            kind = "openai"
            base_url = "ftp://example.com"
            api_key_env = "UP_KEY"
            [routes.fast]
            capability = "chat.>"
            provider = "missing"
            model = ""
        "#;
        let err = Config::load(Source::Toml(toml), &env(&[])).unwrap_err();
        let keys = keys(&err);
        for expected in [
            "queue.max_deliver",
            "gateway.listen",
            "gateway.min_timeout_ms",
            "gateway.header_read_timeout_ms",
            "gateway.body_read_timeout_ms",
            "worker.concurrency",
            "worker.capabilities[0]",
            "providers.up.base_url",
            "providers.up.api_key_env",
            "routes.fast.capability",
            "routes.fast.provider",
            "routes.fast.model",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn reply_prefixes_are_inboxes_never_server_or_switchyard_subjects() {
        let cfg = Config::load(Source::Toml(DEFAULT_TOML), &env(&[])).unwrap();
        assert_eq!(cfg.queue.reply_prefixes, ["_INBOX."]);
        let err = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[(
                "SWITCHYARD__QUEUE__REPLY_PREFIXES",
                "$KV.,tasks.,_INBOX.x.,,results.",
            )]),
        )
        .unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "queue.reply_prefixes[0]",
                "queue.reply_prefixes[1]",
                "queue.reply_prefixes[3]",
                "queue.reply_prefixes[4]",
                "queue.reply_prefixes",
            ],
            "{err}"
        );
    }

    #[test]
    fn cors_origins_are_exact_origins_and_never_a_wildcard() {
        let cfg = Config::load(Source::Toml(DEFAULT_TOML), &env(&[])).unwrap();
        assert!(
            cfg.gateway.cors_allowed_origins.is_empty(),
            "off by default"
        );
        let cfg = Config::load(
            Source::Toml(DEFAULT_TOML),
            &env(&[(
                "SWITCHYARD__GATEWAY__CORS_ALLOWED_ORIGINS",
                "https://app.example.com,http://localhost:5173",
            )]),
        )
        .unwrap();
        assert_eq!(
            cfg.gateway.cors_allowed_origins,
            ["https://app.example.com", "http://localhost:5173"]
        );
        let toml = DEFAULT_TOML.replace(
            "cors_allowed_origins = []",
            r#"cors_allowed_origins = ["*", "https://ok.example", "app.example.com", "https://app.example.com/", "https://App.example.com", "null"]"#,
        );
        let err = Config::load(Source::Toml(&toml), &env(&[])).unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "gateway.cors_allowed_origins[0]",
                "gateway.cors_allowed_origins[2]",
                "gateway.cors_allowed_origins[3]",
                "gateway.cors_allowed_origins[4]",
                "gateway.cors_allowed_origins[5]",
            ],
            "{err}"
        );
    }

    #[test]
    fn api_key_comes_from_environment_and_never_prints() {
        let toml = r#"
            [providers.up]
            kind = "openai"
            base_url = "http://127.0.0.1:1/v1"
            api_key_env = "UP_KEY"
            [routes.fast]
            provider = "up"
            model = "m"
        "#;
        let cfg = Config::load(Source::Toml(toml), &env(&[("UP_KEY", "sk-very-secret")])).unwrap();
        let provider = &cfg.providers["up"];
        assert_eq!(provider.keys[0].secret.expose(), "sk-very-secret");
        // Whitespace around a key is not part of it; a key of only whitespace is unset.
        let padded = Config::load(
            Source::Toml(toml),
            &env(&[("UP_KEY", " \tsk-very-secret\r\n")]),
        )
        .unwrap();
        assert_eq!(
            padded.providers["up"].keys[0].secret.expose(),
            "sk-very-secret"
        );
        let err = Config::load(Source::Toml(toml), &env(&[("UP_KEY", " \n")])).unwrap_err();
        assert_eq!(keys(&err), ["providers.up.api_key_env"]);
        let printed = format!("{cfg:?}");
        assert!(!printed.contains("sk-very-secret"));
        assert!(printed.contains("*****"));
    }

    #[test]
    fn presets_fill_base_url_and_key_variable() {
        let toml = r#"
            [providers.groq]
            kind = "groq"
            [providers.local]
            kind = "ollama"
            [routes.fast]
            strategy = "latency"
            targets = [
                { provider = "groq", model = "llama-3.1-8b-instant" },
                { provider = "local", model = "llama3.1" },
            ]
        "#;
        let err = Config::load(Source::Toml(toml), &env(&[])).unwrap_err();
        assert_eq!(keys(&err), vec!["providers.groq.api_key_env"], "{err}");
        let cfg = Config::load(Source::Toml(toml), &env(&[("GROQ_API_KEY", "gk")])).unwrap();
        let groq = &cfg.providers["groq"];
        assert_eq!(groq.base_url(), Some("https://api.groq.com/openai/v1"));
        assert_eq!(groq.kind.adapter(), Adapter::OpenAi);
        assert!(cfg.providers["local"].keys.is_empty());
        let route = &cfg.routes["fast"];
        assert_eq!(route.strategy, Strategy::Latency);
        assert_eq!(route.targets[0].keys[0].label, "GROQ_API_KEY");
    }

    #[test]
    fn key_pools_and_target_pools_are_read() {
        let toml = r#"
            [providers.a]
            kind = "anthropic"
            api_key_envs = ["A1", "A2"]
            [routes.smart]
            targets = [
                { provider = "a", model = "m" },
                { provider = "a", model = "n", api_key_envs = ["A3", "A4"] },
            ]
        "#;
        let err = Config::load(
            Source::Toml(toml),
            &env(&[("A1", "1"), ("A2", "2"), ("A3", "3")]),
        )
        .unwrap_err();
        assert_eq!(keys(&err), vec!["routes.smart.targets[1].api_key_envs"]);
        let vars = env(&[("A1", "1"), ("A2", "2"), ("A3", "3"), ("A4", "4")]);
        let cfg = Config::load(Source::Toml(toml), &vars).unwrap();
        let labels = |i: usize| -> Vec<String> {
            cfg.routes["smart"].targets[i]
                .keys
                .iter()
                .map(|k| k.label.clone())
                .collect()
        };
        assert_eq!(labels(0), vec!["A1", "A2"]);
        assert_eq!(labels(1), vec!["A3", "A4"]);
    }

    #[test]
    fn route_shapes_and_fallbacks_are_checked() {
        let toml = r#"
            [providers.sim]
            kind = "simulated"
            [routes.both]
            provider = "sim"
            model = "a"
            targets = [{ provider = "sim", model = "b" }, { provider = "sim", model = "c" }]
            [routes.none]
            context_length_fallback = "missing"
            [routes.self]
            provider = "sim"
            model = "a"
            content_filter_fallback = "self"
            [routes.other]
            capability = "code"
            provider = "sim"
            model = "a"
            [routes."a/b"]
            provider = "sim"
            model = "a"
            context_length_fallback = "other"
        "#;
        let err = Config::load(Source::Toml(toml), &env(&[])).unwrap_err();
        let keys = keys(&err);
        for expected in [
            "routes.both",
            "routes.none.targets",
            "routes.none.context_length_fallback",
            "routes.self.content_filter_fallback",
            "routes.a/b",
            "routes.a/b.context_length_fallback",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn windows_come_from_the_target_the_route_or_the_family() {
        let toml = r#"
            [providers.sim]
            kind = "simulated"
            [providers.oa]
            kind = "openai"
            base_url = "http://127.0.0.1:1/v1"
            [routes.mixed]
            context_window = 50000
            output_reserve = 1000
            targets = [
                { provider = "oa", model = "gpt-4o", context_window = 20000, output_reserve = 500 },
                { provider = "oa", model = "claude-sonnet-4" },
            ]
            [routes.family]
            targets = [{ provider = "oa", model = "gpt-4o-mini" }, { provider = "oa", model = "gpt-4" }]
            [routes.sim]
            provider = "sim"
            model = "anything"
        "#;
        let cfg = Config::load(Source::Toml(toml), &env(&[])).unwrap();
        let mixed = &cfg.routes["mixed"];
        assert_eq!(mixed.targets[0].window(), 20_000);
        assert_eq!(mixed.targets[0].reserve(), 500);
        assert_eq!(mixed.targets[1].window(), 50_000);
        assert_eq!(mixed.targets[1].reserve(), 1_000);
        let smallest = mixed.smallest_window().unwrap();
        assert_eq!((smallest.tokens, smallest.reserve), (20_000, 500));
        assert_eq!(smallest.encoding, crate::tokens::Encoding::O200k);
        assert_eq!(mixed.largest_window(), Some(50_000));
        let family = cfg.routes["family"].smallest_window().unwrap();
        assert_eq!((family.tokens, family.reserve), (8_192, 2_048));
        assert_eq!(family.encoding, crate::tokens::Encoding::Cl100k);
        assert_eq!(cfg.routes["family"].largest_window(), Some(128_000));
        assert_eq!(cfg.routes["sim"].targets[0].window(), SIMULATED_WINDOW);
    }

    #[test]
    fn windows_and_reserves_are_checked() {
        let toml = r#"
            [providers.sim]
            kind = "simulated"
            [routes.tiny]
            provider = "sim"
            model = "a"
            context_window = 100
            [routes.greedy]
            targets = [{ provider = "sim", model = "a", context_window = 1000, output_reserve = 600 }]
        "#;
        let err = Config::load(Source::Toml(toml), &env(&[])).unwrap_err();
        let keys = keys(&err);
        for expected in [
            "routes.tiny.context_window",
            "routes.greedy.targets[0].output_reserve",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn direct_addresses_split_on_the_first_slash_and_name_configured_models_only() {
        let toml = "[providers.openrouter]\nkind = \"openrouter\"\ndirect_models = [\"meta-llama/llama-3.1-8b\"]\n[routes.x]\nprovider = \"openrouter\"\nmodel = \"m\"\n";
        let cfg = Config::load(Source::Toml(toml), &env(&[("OPENROUTER_API_KEY", "k")])).unwrap();
        let split = |name| split_direct(name, &cfg.providers, &cfg.routes);
        assert_eq!(
            split("openrouter/meta-llama/llama-3.1-8b"),
            Some(("openrouter", "meta-llama/llama-3.1-8b"))
        );
        assert_eq!(
            split("openrouter/m"),
            Some(("openrouter", "m")),
            "a route's model"
        );
        assert_eq!(
            split("openrouter/anything-else"),
            None,
            "neither listed nor routed"
        );
        assert_eq!(split("nobody/model"), None);
        assert_eq!(split("openrouter/"), None);
        assert_eq!(split("fast"), None);
        let err = Config::load(
            Source::Toml(&toml.replace("[\"meta-llama/llama-3.1-8b\"]", "[\" \"]")),
            &env(&[("OPENROUTER_API_KEY", "k")]),
        )
        .unwrap_err();
        assert_eq!(keys(&err), ["providers.openrouter.direct_models[0]"]);
    }

    #[test]
    fn prices_are_read_by_provider_and_model_from_the_table_or_a_target() {
        // Model names keep their case, dots and slashes as keys.
        let toml = r#"
            [providers.sim]
            kind = "simulated"
            [routes.cheap]
            strategy = "cost"
            targets = [
              { provider = "sim", model = "Big-1.5" },
              { provider = "sim", model = "small", input_cost_per_mtok = 0.1, output_cost_per_mtok = 0.4 },
              { provider = "sim", model = "unpriced" },
            ]
            [prices."sim/Big-1.5"]
            input_per_mtok = 3.0
            output_per_mtok = 15.0
            [prices."sim/org/model.v2"]
            input_per_mtok = 0.0
            output_per_mtok = 0.0
        "#;
        let cfg = Config::load(Source::Toml(toml), &env(&[])).unwrap();
        let big = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
        };
        assert_eq!(cfg.price("sim", "Big-1.5"), Some(big));
        assert_eq!(
            cfg.price("sim", "small"),
            Some(Price {
                input_per_mtok: 0.1,
                output_per_mtok: 0.4
            }),
            "a target's own price is the model's price"
        );
        assert_eq!(
            cfg.price("sim", "org/model.v2")
                .map(|p| p.cost(1_000, 1_000)),
            Some(0.0),
            "free is a known price"
        );
        assert_eq!(cfg.price("sim", "unpriced"), None);
        assert_eq!(cfg.price("sim", "big-1.5"), None, "names are exact");
        // The cost strategy orders by the same prices: the table's reach the targets.
        let units: Vec<f64> = cfg.routes["cheap"]
            .targets
            .iter()
            .map(TargetConfig::unit_cost)
            .collect();
        assert_eq!(units, [18.0, 0.5, 0.0]);
    }

    #[test]
    fn bad_prices_are_reported_by_key() {
        let toml = r#"
            [providers.sim]
            kind = "simulated"
            [routes.a]
            targets = [{ provider = "sim", model = "m", input_cost_per_mtok = 1.0 }]
            [routes.b]
            targets = [{ provider = "sim", model = "m", input_cost_per_mtok = 2.0 }]
            [prices."nobody/m"]
            input_per_mtok = 1.0
            output_per_mtok = 1.0
            [prices.nomodel]
            input_per_mtok = -1.0
            output_per_mtok = 1.0
        "#;
        let err = Config::load(Source::Toml(toml), &env(&[])).unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "prices.\"nobody/m\"",
                "prices.\"nomodel\"",
                "prices.\"nomodel\".input_per_mtok",
                "routes.b.targets[0]",
            ],
            "{err}"
        );
        // A target may repeat the table's price, not contradict it.
        let table = "[prices.\"sim/m\"]\ninput_per_mtok = 1.0\noutput_per_mtok = 0.0\n";
        let agreeing = toml.replace("input_cost_per_mtok = 2.0", "input_cost_per_mtok = 1.0");
        let agreeing = agreeing.split("[prices.").next().unwrap().to_owned() + table;
        Config::load(Source::Toml(&agreeing), &env(&[])).unwrap();
        let contradicting = agreeing.replace("output_per_mtok = 0.0", "output_per_mtok = 5.0");
        let err = Config::load(Source::Toml(&contradicting), &env(&[])).unwrap_err();
        assert_eq!(keys(&err), ["routes.a.targets[0]", "routes.b.targets[0]"]);
    }

    #[test]
    fn a_providers_concurrency_has_defaults_and_bad_values_are_named() {
        let base = "[routes.x]\nprovider = \"sim\"\nmodel = \"m\"\n[providers.sim]\nkind = \"simulated\"\n";
        let cfg = Config::load(Source::Toml(base), &env(&[])).unwrap();
        assert_eq!(
            cfg.providers["sim"].concurrency,
            ConcurrencyConfig::default()
        );
        let set = format!(
            "{base}[providers.sim.concurrency]\ninitial = 4\nmin = 2\nmax = 8\ndecrease_factor = 0.7\nlatency_target_ms = 500\n"
        );
        let cfg = Config::load(Source::Toml(&set), &env(&[])).unwrap();
        let c = &cfg.providers["sim"].concurrency;
        assert_eq!((c.initial, c.min, c.max), (4, 2, 8));
        assert_eq!(c.latency_target(), Some(Duration::from_millis(500)));
        let bad = format!(
            "{base}[providers.sim.concurrency]\ninitial = 9\nmin = 0\nmax = 8\ndecrease_factor = 1.0\nlatency_target_ms = 0\n"
        );
        let err = Config::load(Source::Toml(&bad), &env(&[])).unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "providers.sim.concurrency.min",
                "providers.sim.concurrency.initial",
                "providers.sim.concurrency.decrease_factor",
                "providers.sim.concurrency.latency_target_ms",
            ],
            "{err}"
        );
        let inverted = format!("{base}[providers.sim.concurrency]\nmin = 9\nmax = 8\n");
        let err = Config::load(Source::Toml(&inverted), &env(&[])).unwrap_err();
        assert!(
            keys(&err).contains(&"providers.sim.concurrency.max"),
            "{err}"
        );
        let unknown = format!("{base}[providers.sim.concurrency]\nlimit = 3\n");
        assert!(Config::load(Source::Toml(&unknown), &env(&[])).is_err());
    }

    #[test]
    fn only_the_simulated_provider_takes_a_capacity() {
        let base = "[routes.x]\nprovider = \"sim\"\nmodel = \"m\"\n[providers.sim]\nkind = \"simulated\"\n";
        let cfg = Config::load(Source::Toml(&format!("{base}capacity = 4\n")), &env(&[])).unwrap();
        assert_eq!(cfg.providers["sim"].capacity, Some(4));
        let err =
            Config::load(Source::Toml(&format!("{base}capacity = 0\n")), &env(&[])).unwrap_err();
        assert_eq!(keys(&err), ["providers.sim.capacity"]);
        let real = format!("{base}[providers.local]\nkind = \"ollama\"\ncapacity = 4\n");
        let err = Config::load(Source::Toml(&real), &env(&[])).unwrap_err();
        assert_eq!(keys(&err), ["providers.local.capacity"]);
    }
}
