//! `[tools]`: the server-side tool loop's bounds and which built-in tools direct chat
//! requests may use. Agents' steps use the tools their profile lists; see `docs/tools.md`.

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
/// Highest `max_iterations` allowed.
const MAX_ITERATIONS_CAP: u32 = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Built-in tools, and MCP tools (`mcp.<server>.<tool>` of a configured server), a direct
    /// chat request may name (`{"type": "builtin", "name": …}`). Empty (the default): none.
    #[serde(default)]
    pub chat_allowed: Vec<String>,
    #[serde(default = "default_max_iterations")]
    pub max_iterations: u32,
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    #[serde(default = "default_max_loop_tokens")]
    pub max_loop_tokens: u64,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            chat_allowed: Vec::new(),
            max_iterations: DEFAULT_MAX_ITERATIONS,
            call_timeout_ms: DEFAULT_CALL_TIMEOUT_MS,
            max_loop_tokens: DEFAULT_MAX_LOOP_TOKENS,
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

impl ToolsConfig {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// Whether a direct chat request may use built-in tool `name`.
    pub fn chat_may_use(&self, name: &str) -> bool {
        self.chat_allowed.iter().any(|t| t == name)
    }

    pub(crate) fn validate(&self, p: &mut Problems, mcp_servers: &dyn Fn(&str) -> bool) {
        for (i, name) in self.chat_allowed.iter().enumerate() {
            if crate::mcp::is_mcp_name(name) {
                if let Some(problem) = crate::mcp::name_problem(name, mcp_servers) {
                    p.add(&format!("tools.chat_allowed[{i}]"), problem);
                }
            } else if !crate::tools::is_builtin(name) {
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
    }
}

/// "known: calculator, …", for messages about an unknown tool.
pub fn known_tools() -> String {
    let names: Vec<&str> = crate::tools::BUILTIN.iter().map(|t| t.name).collect();
    format!("known: {}", names.join(", "))
}
