//! `[tools]`: the server-side tool loop's bounds and which built-in tools direct chat
//! requests may use. Agents' steps use the tools their profile lists; see `docs/tools.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// Model answers one task may spend asking for tools before the loop gives up
/// (`tool_limit`): enough for a few dependent calculations, few enough that a model stuck
/// calling tools is stopped before it burns much.
const DEFAULT_MAX_ITERATIONS: u32 = 6;
/// Time one tool call may take: a calculation takes microseconds and a web call a few
/// seconds; a tool slower than this is reported to the model as `timeout`.
const DEFAULT_CALL_TIMEOUT_MS: u64 = 10_000;
/// Tokens (prompt and completion, every round together) one task's tool loop may use: each
/// round resends the whole conversation, so a long loop grows quadratically.
const DEFAULT_MAX_LOOP_TOKENS: u64 = 200_000;
/// Time an `ask_agent` call may take: the other agent's whole answer, tool loop included.
const DEFAULT_ASK_TIMEOUT_MS: u64 = 120_000;
/// Asks that may nest (A asks B, B asks C, …): deep enough for a consultation, shallow
/// enough that a chain of agents passing a question along is stopped.
const DEFAULT_ASK_MAX_DEPTH: usize = 3;
/// Highest `ask_max_depth` allowed.
const ASK_MAX_DEPTH_CAP: usize = 16;
/// Highest `max_iterations` allowed.
const MAX_ITERATIONS_CAP: u32 = 32;
/// Longest quota window: the quota bucket forgets counts older than this, so a longer
/// window would reset early.
pub const MAX_QUOTA_WINDOW_SECS: u64 = 7 * 86_400;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Built-in tools a direct chat request may name (`{"type": "builtin", "name": …}`).
    /// Empty (the default): none.
    #[serde(default)]
    pub chat_allowed: Vec<String>,
    #[serde(default = "default_max_iterations")]
    pub max_iterations: u32,
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    #[serde(default = "default_max_loop_tokens")]
    pub max_loop_tokens: u64,
    /// Time one `ask_agent` call may take (instead of `call_timeout_ms`).
    #[serde(default = "default_ask_timeout_ms")]
    pub ask_timeout_ms: u64,
    /// Asks one question may lead to in a chain (the first ask is depth 1).
    #[serde(default = "default_ask_max_depth")]
    pub ask_max_depth: usize,
    /// Quotas per built-in tool (`[tools.quotas.<tool>]`), counted in the `tool_quotas`
    /// bucket so every worker shares them.
    #[serde(default)]
    pub quotas: BTreeMap<String, ToolQuota>,
}

/// How often one tool may be called in a window: by everyone together (`calls`) and by
/// each agent (`per_agent`; direct chat requests count only against `calls`). Windows are
/// fixed (aligned to the Unix epoch), so every replica agrees when one resets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolQuota {
    pub window_secs: u64,
    #[serde(default)]
    pub calls: Option<u64>,
    #[serde(default)]
    pub per_agent: Option<u64>,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            chat_allowed: Vec::new(),
            max_iterations: DEFAULT_MAX_ITERATIONS,
            call_timeout_ms: DEFAULT_CALL_TIMEOUT_MS,
            max_loop_tokens: DEFAULT_MAX_LOOP_TOKENS,
            ask_timeout_ms: DEFAULT_ASK_TIMEOUT_MS,
            ask_max_depth: DEFAULT_ASK_MAX_DEPTH,
            quotas: BTreeMap::new(),
        }
    }
}

fn default_max_iterations() -> u32 {
    DEFAULT_MAX_ITERATIONS
}

fn default_call_timeout_ms() -> u64 {
    DEFAULT_CALL_TIMEOUT_MS
}

fn default_max_loop_tokens() -> u64 {
    DEFAULT_MAX_LOOP_TOKENS
}

fn default_ask_timeout_ms() -> u64 {
    DEFAULT_ASK_TIMEOUT_MS
}

fn default_ask_max_depth() -> usize {
    DEFAULT_ASK_MAX_DEPTH
}

impl ToolsConfig {
    /// Time a call of tool `name` may take.
    pub fn call_timeout(&self, name: &str) -> Duration {
        if name == crate::tools::ASK_AGENT {
            Duration::from_millis(self.ask_timeout_ms)
        } else {
            Duration::from_millis(self.call_timeout_ms)
        }
    }

    /// Whether a direct chat request may use built-in tool `name`.
    pub fn chat_may_use(&self, name: &str) -> bool {
        self.chat_allowed.iter().any(|t| t == name)
    }

    pub(crate) fn validate(&self, p: &mut Problems) {
        for (i, name) in self.chat_allowed.iter().enumerate() {
            if !crate::tools::is_builtin(name) {
                p.add(
                    &format!("tools.chat_allowed[{i}]"),
                    format!("`{name}` is not a built-in tool ({})", known_tools()),
                );
            }
        }
        if !(1..=MAX_ITERATIONS_CAP).contains(&self.max_iterations) {
            p.add(
                "tools.max_iterations",
                format!("must be from 1 to {MAX_ITERATIONS_CAP}"),
            );
        }
        if self.call_timeout_ms == 0 {
            p.add("tools.call_timeout_ms", "must be greater than 0");
        }
        if self.max_loop_tokens == 0 {
            p.add("tools.max_loop_tokens", "must be greater than 0");
        }
        if self.ask_timeout_ms == 0 {
            p.add("tools.ask_timeout_ms", "must be greater than 0");
        }
        if !(1..=ASK_MAX_DEPTH_CAP).contains(&self.ask_max_depth) {
            p.add(
                "tools.ask_max_depth",
                format!("must be from 1 to {ASK_MAX_DEPTH_CAP}"),
            );
        }
        for (name, quota) in &self.quotas {
            let at = format!("tools.quotas.{name}");
            if !crate::tools::is_builtin(name) {
                p.add(
                    &at,
                    format!("`{name}` is not a built-in tool ({})", known_tools()),
                );
            }
            if !(1..=MAX_QUOTA_WINDOW_SECS).contains(&quota.window_secs) {
                p.add(
                    &format!("{at}.window_secs"),
                    format!("must be from 1 to {MAX_QUOTA_WINDOW_SECS}"),
                );
            }
            if quota.calls.is_none() && quota.per_agent.is_none() {
                p.add(&at, "sets neither `calls` nor `per_agent`");
            }
        }
    }
}

/// "known: calculator, …", for messages about an unknown tool.
pub fn known_tools() -> String {
    let names: Vec<&str> = crate::tools::BUILTIN.iter().map(|t| t.name).collect();
    format!("known: {}", names.join(", "))
}
