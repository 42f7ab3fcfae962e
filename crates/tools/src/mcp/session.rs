//! One configured MCP server for the life of the tools process: connect, list its tools,
//! serve them (one endpoint each) and keep their catalogue entries fresh until the connection
//! ends, then connect again after a backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::service::{Group, Request};
use bytes::Bytes;
use futures::StreamExt;
use rmcp::model::{CallToolRequestParams, Tool};
use rmcp::{Peer, RoleClient};
use serde_json::Value;
use shared::config::McpServerConfig;
use shared::mcp::{self, McpTool};
use shared::task::now_ms;
use shared::tools::{ToolError, ToolErrorClass, clip};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::answer;
use super::connect::{Listener, connect};
use crate::service::{arguments, encode, reply};

/// Time to start a server, shake hands and list its tools: `npx` fetching a package on its
/// first start takes seconds; a server silent for longer is not coming up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// First pause before connecting again; it doubles per failed try, with jitter…
const RECONNECT_BASE: Duration = Duration::from_millis(500);
/// …up to this, so a server that comes back is used within half a minute.
const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// Calls to one server in flight at once from this process; more wait in the subscription.
const MAX_IN_FLIGHT: usize = 64;
/// Tools served from one server: a server listing more is a mistake or an attack, and each
/// is an endpoint here and a catalogue entry every worker keeps.
const MAX_TOOLS_PER_SERVER: usize = 128;
/// Largest input schema offered to a model: a tool call is a few fields; a larger schema
/// would fill every prompt it is offered in.
const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Characters of a tool's description kept.
const MAX_DESCRIPTION_CHARS: usize = 1024;

/// One configured MCP server and where its tools are served.
pub(crate) struct Server {
    pub name: String,
    pub config: McpServerConfig,
    /// `tools.mcp.<server>` of the tools service.
    pub group: Group,
    pub catalogue: kv::Store,
    /// `[tools] call_timeout_ms`: the caller gives up then anyway.
    pub call_timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How serving one tool list ended.
#[derive(Debug)]
enum Round {
    Shutdown,
    /// The connection ended by itself (the process exited, the session closed).
    Gone,
    /// The server said its tool list changed.
    ListChanged,
}

/// One endpoint's requests, each with the MCP name of the tool it calls.
type Tagged = std::pin::Pin<Box<dyn futures::Stream<Item = (Arc<str>, Request)> + Send>>;
/// Every endpoint's requests.
type Requests = futures::stream::SelectAll<Tagged>;

/// A tool as served: its catalogue entry and the subject token.
#[derive(Debug, Clone)]
struct Served {
    token: String,
    entry: McpTool,
}

impl Server {
    /// Serves the server's tools until `shutdown`, connecting it again whenever it goes away.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(mcp_server = %self.name, error = %e, failures, "MCP server unavailable");
                }
            }
            let pause = shared::backoff::full_jitter(RECONNECT_BASE, RECONNECT_CAP, failures)
                .max(RECONNECT_BASE);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One connection: `Ok` when it was up and then ended (or shutdown came). When the server
    /// says its tool list changed, the tools are listed and served again on the same
    /// connection.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), String> {
        let listener = Listener::default();
        let changed = listener.changed.clone();
        let client = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            client = tokio::time::timeout(START_TIMEOUT, connect(&self.config, listener)) => client,
        };
        let client =
            client.map_err(|_| format!("not up within {} s", START_TIMEOUT.as_secs()))??;
        let peer = client.peer().clone();
        let stop = client.cancellation_token();
        let ended = client.waiting();
        tokio::pin!(ended);
        let calls = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        // Ok(whether the connection is gone by itself).
        let outcome: Result<bool, String> = loop {
            let listed = tokio::time::timeout(START_TIMEOUT, peer.list_all_tools()).await;
            let served = match listed {
                Ok(Ok(tools)) => served(&self.name, tools),
                Ok(Err(e)) => break Err(format!("listing its tools failed: {e}")),
                Err(_) => break Err("listing its tools took too long".to_owned()),
            };
            let mut requests = match self.endpoints(&served).await {
                Ok(requests) => requests,
                Err(e) => break Err(e),
            };
            self.publish(&served).await;
            self.forget_others(&served).await;
            info!(mcp_server = %self.name, tools = served.len(), "MCP server's tools served");
            let mut refresh = tokio::time::interval(mcp::REFRESH_EVERY);
            refresh.reset();
            let why = loop {
                tokio::select! {
                    () = shutdown.cancelled() => break Round::Shutdown,
                    _ = &mut ended => break Round::Gone,
                    () = changed.notified() => break Round::ListChanged,
                    _ = refresh.tick() => self.publish(&served).await,
                    next = requests.next() => {
                        let Some((tool, request)) = next else { break Round::Shutdown };
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break Round::Shutdown;
                        };
                        let peer = peer.clone();
                        let timeout = self.call_timeout;
                        calls.spawn(async move {
                            let outcome =
                                call(&peer, &tool, &request.message.payload, timeout).await;
                            reply(&request, &tool, outcome).await;
                            drop(permit);
                        });
                    }
                }
            };
            // Unsubscribe: other tools processes take the calls from here on.
            drop(requests);
            match why {
                Round::ListChanged => {
                    info!(mcp_server = %self.name, "MCP server's tool list changed; listing it again");
                }
                Round::Shutdown => break Ok(false),
                Round::Gone => {
                    warn!(mcp_server = %self.name, "MCP server disconnected; connecting again");
                    break Ok(true);
                }
            }
        };
        calls.close();
        calls.wait().await;
        if !matches!(outcome, Ok(true)) {
            stop.cancel();
            if let Err(e) = ended.await {
                debug!(mcp_server = %self.name, error = %e, "closing the MCP connection");
            }
        }
        outcome.map(|_| ())
    }

    /// One endpoint per served tool, as one stream of (MCP tool name, request).
    async fn endpoints(&self, served: &[Served]) -> Result<Requests, String> {
        let mut endpoints = Vec::with_capacity(served.len());
        for tool in served {
            let metadata = HashMap::from([
                ("description".to_owned(), tool.entry.description.clone()),
                ("mcp_server".to_owned(), self.name.clone()),
                ("mcp_tool".to_owned(), tool.entry.mcp_name.clone()),
            ]);
            let endpoint = self
                .group
                .endpoint_builder()
                .name(&tool.entry.function)
                .metadata(metadata)
                .add(&tool.token)
                .await
                .map_err(|e| format!("could not add the endpoint of {}: {e}", tool.entry.name))?;
            let mcp_name: Arc<str> = tool.entry.mcp_name.clone().into();
            let tagged: Tagged = Box::pin(endpoint.map(move |request| (mcp_name.clone(), request)));
            endpoints.push(tagged);
        }
        Ok(futures::stream::select_all(endpoints))
    }

    /// Writes (or refreshes) every served tool's catalogue entry.
    async fn publish(&self, served: &[Served]) {
        let now = now_ms();
        for tool in served {
            let entry = McpTool {
                refreshed_ms: now,
                ..tool.entry.clone()
            };
            let written = match serde_json::to_vec(&entry) {
                Ok(bytes) => self
                    .catalogue
                    .put(&entry.name, bytes.into())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = written {
                warn!(mcp_server = %self.name, tool = %entry.name, error = %e, "could not write an MCP tool's catalogue entry");
            }
        }
    }

    /// Deletes the catalogue entries of this server's tools it no longer lists.
    async fn forget_others(&self, served: &[Served]) {
        let prefix = format!("{}.{}.", mcp::MCP_PREFIX, self.name);
        let keys: Vec<String> = match self.catalogue.keys().await {
            Ok(keys) => keys.filter_map(|k| async move { k.ok() }).collect().await,
            Err(e) => {
                debug!(error = %e, "could not list the MCP catalogue");
                return;
            }
        };
        for key in keys {
            if key.starts_with(&prefix)
                && !served.iter().any(|t| t.entry.name == key)
                && let Err(e) = self.catalogue.delete(&key).await
            {
                debug!(key, error = %e, "could not delete a stale MCP catalogue entry");
            }
        }
    }
}

/// The tools of `server` that can be served: each name mapped to a subject token; a name that
/// cannot be mapped, or maps to the token of another, is skipped with a warning.
fn served(server: &str, tools: Vec<Tool>) -> Vec<Served> {
    let mut by_token: BTreeMap<String, Served> = BTreeMap::new();
    for tool in tools {
        if by_token.len() == MAX_TOOLS_PER_SERVER {
            warn!(mcp_server = server, tool = %tool.name, "MCP tool skipped: the server lists more than {MAX_TOOLS_PER_SERVER} tools");
            continue;
        }
        let schema = Value::Object((*tool.input_schema).clone());
        if schema.to_string().len() > MAX_SCHEMA_BYTES {
            warn!(mcp_server = server, tool = %tool.name, "MCP tool skipped: its input schema is larger than {MAX_SCHEMA_BYTES} bytes");
            continue;
        }
        let Some(token) = mcp::tool_token(server, &tool.name) else {
            warn!(mcp_server = server, tool = %tool.name, "MCP tool skipped: its name cannot be made a subject token (letters, digits, '-', '_', '.', '/', ':' and spaces, at most 64 characters as mcp__<server>__<tool>)");
            continue;
        };
        if let Some(other) = by_token.get(&token) {
            warn!(mcp_server = server, tool = %tool.name, other = %other.entry.mcp_name, "MCP tool skipped: its name maps to the same token as another's");
            continue;
        }
        let entry = McpTool {
            name: mcp::tool_name(server, &token),
            function: mcp::function_name(server, &token),
            server: server.to_owned(),
            mcp_name: tool.name.to_string(),
            description: clip(
                tool.description.as_deref().unwrap_or_default(),
                MAX_DESCRIPTION_CHARS,
            ),
            input_schema: schema,
            refreshed_ms: 0,
        };
        by_token.insert(token.clone(), Served { token, entry });
    }
    by_token.into_values().collect()
}

/// Forwards one call to the server's `tools/call`.
async fn call(
    peer: &Peer<RoleClient>,
    tool: &str,
    payload: &[u8],
    timeout: Duration,
) -> Result<Bytes, ToolError> {
    let Value::Object(args) = arguments(payload)? else {
        return Err(ToolError::new(
            ToolErrorClass::InvalidArguments,
            "the arguments must be a JSON object",
        ));
    };
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args);
    let value = match tokio::time::timeout(timeout, peer.call_tool(params)).await {
        Err(_) => Err(ToolError::new(
            ToolErrorClass::Timeout,
            format!(
                "the MCP tool did not answer within {} ms",
                timeout.as_millis()
            ),
        )),
        Ok(Err(e)) => Err(answer::failure(&e)),
        Ok(Ok(result)) => answer::result(result),
    }?;
    encode(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str) -> Tool {
        Tool::new(
            name.to_owned(),
            "does things",
            Arc::new(json!({"type": "object"}).as_object().unwrap().clone()),
        )
    }

    #[test]
    fn tools_are_mapped_and_unmappable_or_clashing_ones_skipped() {
        let served = served(
            "files",
            vec![
                tool("read_file"),
                tool("git.status"),
                tool("git_status"),
                tool("ünï"),
            ],
        );
        let names: Vec<&str> = served.iter().map(|t| t.entry.name.as_str()).collect();
        assert_eq!(names, ["mcp.files.git_status", "mcp.files.read_file"]);
        assert_eq!(served[0].entry.mcp_name, "git.status");
        assert_eq!(served[0].entry.function, "mcp__files__git_status");
        assert_eq!(served[1].token, "read_file");
        assert_eq!(served[1].entry.input_schema, json!({"type": "object"}));
    }

    #[test]
    fn what_a_server_lists_is_bounded() {
        let huge = Tool::new(
            "huge",
            "big schema",
            Arc::new(
                json!({"type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES)})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        );
        let mut wordy = tool("wordy");
        wordy.description = Some("w".repeat(5000).into());
        let served = served("s", vec![huge, wordy]);
        assert_eq!(served.len(), 1);
        assert_eq!(
            served[0].entry.description.chars().count(),
            MAX_DESCRIPTION_CHARS
        );
        let many: Vec<Tool> = (0..200).map(|i| tool(&format!("t{i}"))).collect();
        assert_eq!(super::served("s", many).len(), MAX_TOOLS_PER_SERVER);
    }
}
