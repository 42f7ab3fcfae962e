//! MCP tools in Switchyard: how a tool of a configured MCP server is named (`mcp.<server>.<tool>`
//! in profiles, `chat_allowed`, records and on its subject `tools.mcp.<server>.<tool>`;
//! `mcp__<server>__<tool>` as the function a model is offered, since model APIs allow no dots
//! in function names), the catalogue entry the tools process writes to the `mcp_tools` bucket
//! for every tool it serves, and a process's live copy of that catalogue (kept current by a
//! watch). The tools process (`crates/tools/src/mcp`) connects the servers; the worker's tool
//! loop offers and calls their tools like built-in ones. `docs/tools.md` ("MCP") documents it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// First token of an MCP tool's Switchyard name (and second of its subject).
pub const MCP_PREFIX: &str = "mcp";
/// Key-value bucket of the MCP tools being served: key = Switchyard name, value = [`McpTool`].
pub const MCP_TOOLS_BUCKET: &str = "mcp_tools";
/// How often a tools process rewrites the entries of the tools it serves.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// An entry not rewritten for this long is no longer offered: nothing has served it for a
/// while (its tools process stopped, or its server is down). Three refreshes missed.
pub const STALE_AFTER: Duration = Duration::from_secs(180);
/// Longest configured server name: it is part of subjects and of function names (64 at most).
pub const MAX_SERVER_NAME_LEN: usize = 24;
/// Longest function name model APIs accept (OpenAI: `^[a-zA-Z0-9_-]{1,64}$`).
pub const MAX_FUNCTION_NAME_LEN: usize = 64;

/// Whether `name` is a valid MCP server name: lowercase letters, digits, `-` and `_`, starting
/// with a letter or digit, no `__` (it separates the parts of a function name), at most
/// [`MAX_SERVER_NAME_LEN`] characters.
pub fn check_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SERVER_NAME_LEN {
        return Err(format!("must be 1 to {MAX_SERVER_NAME_LEN} characters"));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() || !name.bytes().all(allowed) || name.contains("__") {
        return Err(
            "may contain only lowercase letters, digits, '-' and '_' (never two '_' in a row), and must start with a letter or digit".to_owned(),
        );
    }
    Ok(())
}

/// The token an MCP tool is known by in Switchyard, from its MCP name: letters, digits, `-`
/// and `_` kept, `.`, `/`, `:` and spaces become `_`; `None` for a name with any other
/// character, or one whose function name would be too long for model APIs.
pub fn tool_token(server: &str, mcp_name: &str) -> Option<String> {
    let mut token = String::with_capacity(mcp_name.len());
    for c in mcp_name.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => token.push(c),
            '.' | '/' | ':' | ' ' => token.push('_'),
            _ => return None,
        }
    }
    let fits = !token.is_empty() && function_name(server, &token).len() <= MAX_FUNCTION_NAME_LEN;
    fits.then_some(token)
}

/// `mcp.<server>.<tool>`: the name profiles, `chat_allowed` and records use.
pub fn tool_name(server: &str, token: &str) -> String {
    format!("{MCP_PREFIX}.{server}.{token}")
}

/// `mcp__<server>__<tool>`: the function a model is offered and calls.
pub fn function_name(server: &str, token: &str) -> String {
    format!("{MCP_PREFIX}__{server}__{token}")
}

/// The server and tool of a Switchyard name `mcp.<server>.<tool>` (`None` for other names).
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(MCP_PREFIX)?.strip_prefix('.')?;
    let (server, tool) = rest.split_once('.')?;
    (check_server_name(server).is_ok() && tool_token(server, tool).as_deref() == Some(tool))
        .then_some((server, tool))
}

/// Whether `name` looks like an MCP tool's name (starts with `mcp.`), valid or not.
pub fn is_mcp_name(name: &str) -> bool {
    name.starts_with("mcp.")
}

/// Why `name` (an entry of a profile's `tools` or of `chat_allowed`) is not an MCP tool a
/// deployment with MCP servers `servers` may list; `None` when it is. The tools themselves
/// are only known at run time, so any tool of a configured server is accepted.
pub fn name_problem(name: &str, servers: &dyn Fn(&str) -> bool) -> Option<String> {
    let Some((server, _)) = split_name(name) else {
        return Some(format!(
            "`{name}` is not a valid MCP tool name (mcp.<server>.<tool>, the tool in letters, digits, '-' and '_')"
        ));
    };
    (!servers(server))
        .then(|| format!("`{name}`: no MCP server `{server}` is configured ([mcp.{server}])"))
}

/// One MCP tool being served, as the tools process writes it to [`MCP_TOOLS_BUCKET`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpTool {
    /// `mcp.<server>.<tool>` (also the key, and `tools.<name>` is its subject).
    pub name: String,
    /// The function name a model is offered.
    pub function: String,
    pub server: String,
    /// The tool's name on its MCP server.
    pub mcp_name: String,
    #[serde(default)]
    pub description: String,
    /// The JSON schema of its arguments, as the server gave it.
    pub input_schema: Value,
    /// When a tools process last wrote it (ms since the epoch).
    pub refreshed_ms: u64,
}

impl McpTool {
    /// The OpenAI `tools` entry that offers it to a model.
    pub fn function(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.function,
            "description": self.description,
            "parameters": self.input_schema,
        }})
    }

    /// Whether it is still served: written within [`STALE_AFTER`] of `now_ms`.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.refreshed_ms) <= duration_ms(STALE_AFTER)
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The catalogue of MCP tools by Switchyard name.
pub type McpCatalog = BTreeMap<String, McpTool>;

/// A process's copy of the `mcp_tools` bucket, kept current by [`LiveMcpTools::follow`];
/// clones share one copy.
#[derive(Debug, Clone)]
pub struct LiveMcpTools {
    current: Arc<watch::Sender<Arc<McpCatalog>>>,
}

impl Default for LiveMcpTools {
    fn default() -> Self {
        Self {
            current: Arc::new(watch::Sender::new(Arc::default())),
        }
    }
}

impl LiveMcpTools {
    /// The bucket's entries as they are now; [`LiveMcpTools::follow`] keeps them current.
    pub async fn load(store: &kv::Store) -> Result<Self, async_nats::Error> {
        let live = Self::default();
        let keys: Vec<String> = store.keys().await?.try_collect().await?;
        for key in keys {
            if let Some(entry) = store.entry(&key).await? {
                live.apply(&entry);
            }
        }
        Ok(live)
    }

    /// The tools as last written (fresh or not: see [`McpTool::is_fresh`]).
    pub fn current(&self) -> Arc<McpCatalog> {
        self.current.borrow().clone()
    }

    /// Takes in one entry of the bucket (a put or a delete).
    pub fn apply(&self, entry: &kv::Entry) {
        let tool = match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<McpTool>(&entry.value) {
                Ok(tool) if tool.name == entry.key => Some(tool),
                Ok(_) => {
                    warn!(key = %entry.key, "an MCP catalogue entry names another tool; ignored");
                    None
                }
                Err(e) => {
                    warn!(key = %entry.key, error = %e, "an MCP catalogue entry does not decode; ignored");
                    None
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        self.current.send_modify(|catalog| {
            let catalog = Arc::make_mut(catalog);
            match tool {
                Some(tool) => catalog.insert(entry.key.clone(), tool),
                None => catalog.remove(&entry.key),
            };
        });
    }

    /// Keeps the copy current until `shutdown`.
    pub async fn follow(self, store: kv::Store, shutdown: CancellationToken) {
        crate::nats::follow_bucket(&store, MCP_TOOLS_BUCKET, &shutdown, |entry| {
            self.apply(&entry);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_tokens_functions_and_back() {
        assert_eq!(
            tool_token("files", "read_file").as_deref(),
            Some("read_file")
        );
        assert_eq!(
            tool_token("files", "git.status").as_deref(),
            Some("git_status")
        );
        assert_eq!(
            tool_token("files", "Get-Thing").as_deref(),
            Some("Get-Thing")
        );
        assert_eq!(tool_token("files", "naïve"), None);
        assert_eq!(tool_token("files", "a*b"), None);
        assert_eq!(tool_token("files", ""), None);
        assert_eq!(tool_token("files", &"x".repeat(60)), None);
        assert_eq!(tool_name("files", "read_file"), "mcp.files.read_file");
        assert_eq!(function_name("files", "read_file"), "mcp__files__read_file");
        assert_eq!(
            split_name("mcp.files.read_file"),
            Some(("files", "read_file"))
        );
        for bad in [
            "calculator",
            "mcp.files",
            "mcp.Files.x",
            "mcp.files.a.b",
            "mcp.a__b.x",
            "mcp..x",
        ] {
            assert_eq!(split_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn server_names_are_tokens_without_double_underscores() {
        assert!(check_server_name("github").is_ok());
        assert!(check_server_name("my-files_2").is_ok());
        for bad in ["", "GitHub", "a.b", "a__b", "_a", &"a".repeat(25)] {
            assert!(check_server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listed_names_need_a_configured_server() {
        let servers = |s: &str| s == "files";
        assert_eq!(name_problem("mcp.files.read_file", &servers), None);
        assert!(
            name_problem("mcp.other.x", &servers)
                .unwrap()
                .contains("[mcp.other]")
        );
        assert!(
            name_problem("mcp.files", &servers)
                .unwrap()
                .contains("not a valid")
        );
    }

    #[test]
    fn stale_entries_are_not_fresh() {
        let tool = McpTool {
            name: "mcp.s.t".into(),
            function: "mcp__s__t".into(),
            server: "s".into(),
            mcp_name: "t".into(),
            description: "d".into(),
            input_schema: json!({"type": "object"}),
            refreshed_ms: 1_000_000,
        };
        assert!(tool.is_fresh(1_000_000 + duration_ms(STALE_AFTER)));
        assert!(!tool.is_fresh(1_000_001 + duration_ms(STALE_AFTER)));
        assert_eq!(tool.function()["function"]["name"], "mcp__s__t");
    }
}
