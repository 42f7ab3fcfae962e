//! Switchyard's built-in tools served to MCP clients (`switchyard mcp` over stdio, the
//! gateway's `/mcp` over streamable HTTP): `tools/list` is the catalogue of
//! `shared::tools::BUILTIN` (name, description, input schema) — on the gateway only the
//! tools `[tools] chat_allowed` lists, as its callers are not trusted more than a chat
//! request — and each
//! `tools/call` is forwarded over NATS to `tools.<name>`, so the running tools service answers
//! it (with its limits). A result comes back as structured content (and its JSON as text); a
//! failed call as an error result (`isError`) whose text is `{"error": {"class", "message"}}`.
//! An unknown tool is a protocol error (invalid params), as the MCP specification asks.

use std::collections::BTreeSet;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;
use shared::config::ToolsConfig;
use shared::tools::{BUILTIN, ToolError, ToolErrorClass, builtin};
use tokio_util::sync::CancellationToken;

/// The built-in tools over MCP, each call made over NATS.
#[derive(Debug, Clone)]
pub struct BuiltinTools {
    client: async_nats::Client,
    /// How long one call may take (`[tools] call_timeout_ms`, `ask_timeout_ms`).
    timeouts: Arc<ToolsConfig>,
    /// The tools offered, when not every built-in one.
    only: Option<Arc<BTreeSet<String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    #[error("the MCP handshake on standard input failed: {0}")]
    Handshake(String),
    #[error("the MCP session ended abnormally: {0}")]
    Session(String),
}

impl BuiltinTools {
    /// Every built-in tool.
    pub fn new(client: async_nats::Client, config: &ToolsConfig) -> Self {
        Self {
            client,
            timeouts: Arc::new(config.clone()),
            only: None,
        }
    }

    /// Only the built-in tools named in `names` (others are unknown here).
    #[must_use]
    pub fn only(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.only = Some(Arc::new(names.into_iter().collect()));
        self
    }

    fn offers(&self, name: &str) -> bool {
        builtin(name).is_some() && self.only.as_ref().is_none_or(|only| only.contains(name))
    }

    /// Serves MCP on standard input and output until the client closes it or `shutdown`.
    pub async fn serve_stdio(self, shutdown: CancellationToken) -> Result<(), McpServeError> {
        let running = self
            .serve_with_ct(rmcp::transport::stdio(), shutdown.child_token())
            .await
            .map_err(|e| McpServeError::Handshake(e.to_string()))?;
        running
            .waiting()
            .await
            .map_err(|e| McpServeError::Session(e.to_string()))?;
        Ok(())
    }

    /// The answer to one call of built-in tool `name`.
    async fn call(&self, name: &str, arguments: Option<rmcp::model::JsonObject>) -> CallToolResult {
        let arguments = Value::Object(arguments.unwrap_or_default());
        let outcome = match serde_json::to_vec(&arguments) {
            Ok(bytes) => {
                let timeout = self.timeouts.call_timeout(name);
                shared::tool_call::call(&self.client, name, &bytes, timeout, None).await
            }
            Err(e) => Err(ToolError::new(ToolErrorClass::Internal, e.to_string())),
        };
        to_result(outcome)
    }
}

/// An MCP tool result from a tool's answer.
fn to_result(outcome: Result<bytes::Bytes, ToolError>) -> CallToolResult {
    let parsed = outcome.and_then(|bytes| {
        serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            ToolError::new(
                ToolErrorClass::Internal,
                format!("the tool's answer is not JSON: {e}"),
            )
        })
    });
    match parsed {
        Ok(value) => {
            let mut result = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
            result.structured_content = Some(value);
            result
        }
        Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_json().to_string())]),
    }
}

/// The MCP description of every built-in tool `offered`.
fn catalogue(offered: impl Fn(&str) -> bool) -> Vec<Tool> {
    BUILTIN
        .iter()
        .filter(|spec| offered(spec.name))
        .map(|spec| {
            let schema = match spec.parameters() {
                Value::Object(schema) => schema,
                _ => serde_json::Map::new(),
            };
            Tool::new(spec.name, spec.description, Arc::new(schema))
        })
        .collect()
}

impl ServerHandler for BuiltinTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("switchyard", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Switchyard's built-in tools (e.g. calculator), served by the running Switchyard tools service.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(catalogue(|name| {
            self.offers(name)
        })))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self.offers(&request.name) {
            return Err(ErrorData::invalid_params(
                format!("no tool `{}` is offered here", request.name),
                None,
            ));
        }
        Ok(self.call(&request.name, request.arguments).await.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_become_results_and_errors_error_results() {
        let ok = to_result(Ok(bytes::Bytes::from_static(br#"{"result": 4}"#)));
        assert_eq!(ok.is_error, Some(false));
        assert_eq!(ok.structured_content, Some(json!({"result": 4})));
        let failed = to_result(Err(ToolError::new(ToolErrorClass::Timeout, "slow")));
        assert_eq!(failed.is_error, Some(true));
        let text = &failed.content[0].as_text().unwrap().text;
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            json!({"error": {"class": "timeout", "message": "slow"}})
        );
        let names: Vec<String> = catalogue(|_| true)
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        assert!(names.contains(&"calculator".to_owned()));
        assert!(catalogue(|_| false).is_empty());
    }
}
