//! A small MCP server for tests, built with the official SDK (`rmcp`): `echo` (text back),
//! `add` (structured content), `fail` (an error result), `slow` (answers late), `env` (a variable of its own
//! environment, to show what a started server is given) and, in its own process, `crash`
//! (exits, to show that a dead stdio server is started again) and `grow` (adds `late` to its
//! list and sends `notifications/tools/list_changed`). `switchyard-fake-mcp` serves
//! it over stdio; [`FakeMcpHttp`] serves it in-process over streamable HTTP on loopback,
//! optionally refusing requests without the right bearer key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The fake server; `may_exit` lets `crash` end the process (never in-process). After
/// `grow` it also lists `late` and tells the client its tool list changed.
#[derive(Debug, Clone)]
pub struct FakeMcp {
    may_exit: bool,
    grown: Arc<AtomicBool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EchoArgs {
    /// The text to send back.
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AddArgs {
    pub a: f64,
    pub b: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Sum {
    pub sum: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FailArgs {
    /// What the error result says.
    pub message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SlowArgs {
    /// How long to take.
    pub ms: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EnvArgs {
    /// A variable name.
    pub name: String,
}

#[tool_router]
impl FakeMcp {
    pub fn new(may_exit: bool) -> Self {
        Self {
            may_exit,
            grown: Arc::default(),
        }
    }

    #[tool(description = "Echoes the text back.")]
    async fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Adds two numbers.")]
    async fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> Json<Sum> {
        Json(Sum { sum: a + b })
    }

    #[tool(description = "Always fails, with the given message.")]
    async fn fail(
        &self,
        Parameters(FailArgs { message }): Parameters<FailArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
    }

    #[tool(description = "The value of a variable of the server's environment, or `unset`.")]
    async fn env(&self, Parameters(EnvArgs { name }): Parameters<EnvArgs>) -> String {
        #[expect(
            clippy::disallowed_methods,
            reason = "the fake server reports its own environment: that is what the tests check"
        )]
        let value = std::env::var(name);
        value.unwrap_or_else(|_| "unset".to_owned())
    }

    #[tool(description = "Answers after the given number of milliseconds.")]
    async fn slow(&self, Parameters(SlowArgs { ms }): Parameters<SlowArgs>) -> String {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        format!("slept {ms} ms")
    }

    #[tool(description = "Adds the tool `late` and tells the client its tool list changed.")]
    async fn grow(&self, peer: Peer<RoleServer>) -> String {
        self.grown.store(true, Ordering::SeqCst);
        match peer.notify_tool_list_changed().await {
            Ok(()) => "grown".to_owned(),
            Err(e) => format!("grown, but the client was not told: {e}"),
        }
    }

    #[tool(description = "Ends the server's process (when it runs as its own process).")]
    async fn crash(&self) -> Result<CallToolResult, ErrorData> {
        if self.may_exit {
            std::process::exit(3);
        }
        Ok(CallToolResult::error(vec![ContentBlock::text(
            "not in its own process",
        )]))
    }
}

/// The tool `grow` adds.
fn late_tool() -> Tool {
    Tool::new(
        "late",
        "Listed only after `grow`.",
        Arc::new(serde_json::Map::from_iter([(
            "type".to_owned(),
            serde_json::Value::String("object".to_owned()),
        )])),
    )
}

#[tool_handler]
impl ServerHandler for FakeMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_instructions("A fake MCP server for Switchyard's tests")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = Self::tool_router().list_all();
        if self.grown.load(Ordering::SeqCst) {
            tools.push(late_tool());
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name == "late" && self.grown.load(Ordering::SeqCst) {
            return Ok(CallToolResult::success(vec![ContentBlock::text("late but here")]).into());
        }
        Self::tool_router()
            .call(ToolCallContext::new(self, request, context))
            .await
    }
}

/// The fake MCP server over streamable HTTP on a loopback port, until dropped.
#[derive(Debug)]
pub struct FakeMcpHttp {
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl FakeMcpHttp {
    /// Serves on `127.0.0.1:<free port>/mcp`; with `bearer`, a request without
    /// `Authorization: Bearer <bearer>` gets 401.
    pub async fn start(bearer: Option<&str>) -> std::io::Result<Self> {
        let service: StreamableHttpService<FakeMcp, LocalSessionManager> =
            StreamableHttpService::new(
                || Ok(FakeMcp::new(false)),
                Arc::default(),
                StreamableHttpServerConfig::default(),
            );
        let expected = Arc::new(bearer.map(|key| format!("Bearer {key}")));
        let router = axum::Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn_with_state(expected, check_bearer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/mcp", listener.local_addr()?);
        #[expect(
            clippy::disallowed_methods,
            reason = "a test server: it lives until dropped, which aborts it"
        )]
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { url, server })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for FakeMcpHttp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn check_bearer(
    State(expected): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = expected.as_ref() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    next.run(request).await
}
