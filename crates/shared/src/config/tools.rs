//! `[tools]`: the server-side tool loop's bounds and which built-in tools direct chat
//! requests may use, and `[tools.run_code]`, the code sandbox's programs and limits. Agents'
//! steps use the tools their profile lists; see `docs/tools.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;
use super::web_tools::{
    HttpFetchConfig, NewsApi, SearchApi, SsrfConfig, StockApi, Upstream, WeatherConfig,
    default_news_upstream, default_stock_upstream,
};

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
    /// `[tools.run_code]`: the code sandbox.
    #[serde(default)]
    pub run_code: RunCodeConfig,
    /// `weather`'s upstream (Open-Meteo).
    #[serde(default)]
    pub weather: WeatherConfig,
    /// `stock_quote`'s upstream (Alpha Vantage unless configured).
    #[serde(default = "default_stock_upstream")]
    pub stock_quote: Upstream<StockApi>,
    /// `news`'s upstream (GDELT unless configured).
    #[serde(default = "default_news_upstream")]
    pub news: Upstream<NewsApi>,
    /// `web_search`'s upstream: none unless configured (a search API needs an instance or
    /// a key).
    #[serde(default)]
    pub web_search: Upstream<SearchApi>,
    /// `http_fetch`'s limits.
    #[serde(default)]
    pub http_fetch: HttpFetchConfig,
    /// What URLs a model gives may reach besides the public internet.
    #[serde(default)]
    pub ssrf: SsrfConfig,
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
            run_code: RunCodeConfig::default(),
            weather: WeatherConfig::default(),
            stock_quote: default_stock_upstream(),
            news: default_news_upstream(),
            web_search: Upstream::default(),
            http_fetch: HttpFetchConfig::default(),
            ssrf: SsrfConfig::default(),
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
        self.run_code.validate(self.call_timeout_ms, p);
        self.validate_web_tools(p);
    }
}

/// "known: calculator, …", for messages about an unknown tool.
pub fn known_tools() -> String {
    let names: Vec<&str> = crate::tools::BUILTIN.iter().map(|t| t.name).collect();
    format!("known: {}", names.join(", "))
}

/// Where the sandbox's programs live: the Debian paths (`bubblewrap`, `util-linux`,
/// `python3`). Absolute, so a `PATH` cannot swap them.
const DEFAULT_BWRAP: &str = "/usr/bin/bwrap";
const DEFAULT_PRLIMIT: &str = "/usr/bin/prlimit";
const DEFAULT_SETPRIV: &str = "/usr/bin/setpriv";
/// The system's Python, not whichever one is first on the tools process's `PATH` (a pyenv
/// shim or a virtualenv lives under `/root` or `/home`, which the sandbox does not show).
const DEFAULT_PYTHON: &str = "/usr/bin/python3";
const DEFAULT_SHELL: &str = "/bin/sh";
/// Wall time of one run: a snippet and its tests take well under a second; the margin
/// leaves room for a slow machine while staying below `call_timeout_ms`.
const DEFAULT_WALL_TIME_MS: u64 = 5_000;
/// CPU seconds of one process in the sandbox (RLIMIT_CPU): the wall time bounds the run,
/// this bounds a process that would hog a core for all of it.
const DEFAULT_CPU_SECONDS: u64 = 5;
/// Address space of one process (RLIMIT_AS): Python starts in about 30 MiB and a test's
/// data fits in tens more; a program that wants more is refused the allocation.
const DEFAULT_MEMORY_MB: u64 = 256;
/// Processes (and threads) in one sandbox (RLIMIT_NPROC of its own uid): a program may
/// start a few helpers; a fork bomb stops here.
const DEFAULT_MAX_PROCESSES: u64 = 32;
/// Bytes kept of stdout, and of stderr: enough for test output and a traceback, small
/// enough that both fit one tool result (64 KiB) with room for escaping.
const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 * 1024;
/// Size of the private writable `/tmp` (the working directory), which also bounds any one
/// file (RLIMIT_FSIZE).
const DEFAULT_TMPFS_MB: u64 = 16;
/// Sandboxes running at once in one tools process: each takes a core while it runs.
const DEFAULT_MAX_CONCURRENT: usize = 2;
/// First uid a sandbox runs as when the tools process is root (sandbox `i` runs as
/// `uid_base + i`): a uid no account uses, so the process limit counts that sandbox alone.
const DEFAULT_UID_BASE: u32 = 990_000;
/// Largest `max_output_bytes`: two streams of it, JSON-escaped, must fit 64 KiB.
const MAX_OUTPUT_BYTES_CAP: usize = 24 * 1024;
/// Most sandboxes at once.
const MAX_CONCURRENT_CAP: usize = 64;

/// `[tools.run_code]`: the `run_code` sandbox (bubblewrap) and its limits. See
/// `docs/tools.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunCodeConfig {
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// util-linux's `prlimit`, which sets the resource limits the sandbox starts with.
    pub prlimit: PathBuf,
    /// util-linux's `setpriv`, which drops root to the sandbox's own uid.
    pub setpriv: PathBuf,
    /// The interpreter of `language: "python"` (inside the sandbox: under `/usr` or `/bin`).
    pub python: PathBuf,
    /// The interpreter of `language: "shell"`.
    pub shell: PathBuf,
    pub wall_time_ms: u64,
    pub cpu_seconds: u64,
    pub memory_mb: u64,
    pub max_processes: u64,
    pub max_output_bytes: usize,
    pub tmpfs_mb: u64,
    pub max_concurrent: usize,
    pub uid_base: u32,
}

impl Default for RunCodeConfig {
    fn default() -> Self {
        Self {
            bwrap: DEFAULT_BWRAP.into(),
            prlimit: DEFAULT_PRLIMIT.into(),
            setpriv: DEFAULT_SETPRIV.into(),
            python: DEFAULT_PYTHON.into(),
            shell: DEFAULT_SHELL.into(),
            wall_time_ms: DEFAULT_WALL_TIME_MS,
            cpu_seconds: DEFAULT_CPU_SECONDS,
            memory_mb: DEFAULT_MEMORY_MB,
            max_processes: DEFAULT_MAX_PROCESSES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            tmpfs_mb: DEFAULT_TMPFS_MB,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            uid_base: DEFAULT_UID_BASE,
        }
    }
}

impl RunCodeConfig {
    pub fn wall_time(&self) -> Duration {
        Duration::from_millis(self.wall_time_ms)
    }

    fn validate(&self, call_timeout_ms: u64, p: &mut Problems) {
        for (field, path) in [
            ("bwrap", &self.bwrap),
            ("prlimit", &self.prlimit),
            ("setpriv", &self.setpriv),
            ("python", &self.python),
            ("shell", &self.shell),
        ] {
            if !path.is_absolute() {
                p.add(
                    &format!("tools.run_code.{field}"),
                    "must be an absolute path",
                );
            }
        }
        for (field, value) in [
            ("cpu_seconds", self.cpu_seconds),
            ("memory_mb", self.memory_mb),
            ("max_processes", self.max_processes),
            ("tmpfs_mb", self.tmpfs_mb),
        ] {
            if value == 0 {
                p.add(&format!("tools.run_code.{field}"), "must be greater than 0");
            }
        }
        if self.wall_time_ms == 0 || self.wall_time_ms >= call_timeout_ms {
            p.add(
                "tools.run_code.wall_time_ms",
                format!(
                    "must be greater than 0 and less than tools.call_timeout_ms ({call_timeout_ms}), so a run is reported before its caller gives up"
                ),
            );
        }
        if !(1..=MAX_OUTPUT_BYTES_CAP).contains(&self.max_output_bytes) {
            p.add(
                "tools.run_code.max_output_bytes",
                format!("must be from 1 to {MAX_OUTPUT_BYTES_CAP}"),
            );
        }
        if !(1..=MAX_CONCURRENT_CAP).contains(&self.max_concurrent) {
            p.add(
                "tools.run_code.max_concurrent",
                format!("must be from 1 to {MAX_CONCURRENT_CAP}"),
            );
        }
        let last = u64::from(self.uid_base) + self.max_concurrent as u64;
        if self.uid_base < 1_000 || last > u64::from(u32::MAX - 1) {
            p.add(
                "tools.run_code.uid_base",
                "must be at least 1000 (not a system account), with room for max_concurrent uids",
            );
        }
    }
}
