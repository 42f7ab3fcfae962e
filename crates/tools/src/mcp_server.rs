//! Switchyard's built-in tools served to MCP clients (`switchyard mcp`): `tools/list` is the
//! catalogue of `shared::tools::BUILTIN` (name, description, input schema), and each
//! `tools/call` is forwarded over NATS to `tools.<name>`, so the running tools service answers
//! it (with its limits). A result comes back as structured content (and its JSON as text); a
//! failed call as an error result (`isError`) whose text is `{"error": {"class", "message"}}`.
//! An unknown tool is a protocol error (invalid params), as the MCP specification asks.

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;
use shared::tools::{BUILTIN, ToolError, ToolErrorClass, builtin};
use tokio_util::sync::CancellationToken;

/// The built-in tools over MCP, each call made over NATS.
#[derive(Debug, Clone)]
pub struct BuiltinTools {
    client: async_nats::Client,
    /// How long one call may take (`[tools] call_timeout_ms`).
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    #[error("the MCP handshake on standard input failed: {0}")]
    Handshake(String),
    #[error("the MCP session ended abnormally: {0}")]
    Session(String),
}

impl BuiltinTools {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
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
            Ok(bytes) => shared::tool_call::call(&self.client, name, &bytes, self.timeout).await,
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

/// The MCP description of every built-in tool.
pub fn catalogue() -> Vec<Tool> {
    BUILTIN
        .iter()
        .map(|spec| {
            let schema = match spec.parameters() {
                Value::Object(schema) => schema,
                _ => serde_json::Map::new(),
            };
            Tool::new(spec.name, spec.description, std::sync::Arc::new(schema))
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
        Ok(ListToolsResult::with_all_items(catalogue()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if builtin(&request.name).is_none() {
            return Err(ErrorData::invalid_params(
                format!(
                    "no built-in tool `{}` ({})",
                    request.name,
                    shared::config::known_tools()
                ),
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
        let names: Vec<String> = catalogue().iter().map(|t| t.name.to_string()).collect();
        assert!(names.contains(&"calculator".to_owned()));
    }
}
