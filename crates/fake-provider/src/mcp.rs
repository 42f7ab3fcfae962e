//! A small MCP server for tests, built with the official SDK (`rmcp`): `echo` (text back),
//! `add` (structured content), `fail` (an error result), `env` (a variable of its own
//! environment, to show what a started server is given) and, in its own process, `crash`
//! (exits, to show that a dead stdio server is started again). `switchyard-fake-mcp` serves
//! it over stdio; tests may also serve it in-process over streamable HTTP.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The fake server; `may_exit` lets `crash` end the process (never in-process).
#[derive(Debug, Clone)]
pub struct FakeMcp {
    may_exit: bool,
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
pub struct EnvArgs {
    /// A variable name.
    pub name: String,
}

#[tool_router]
impl FakeMcp {
    pub fn new(may_exit: bool) -> Self {
        Self { may_exit }
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

#[tool_handler]
impl ServerHandler for FakeMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("A fake MCP server for Switchyard's tests")
    }
}
