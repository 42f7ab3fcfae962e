//! Connecting one configured MCP server: starting its process (stdio) with only the
//! environment configured for it, and running the MCP handshake.

use std::process::Stdio;

use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use shared::config::McpServerConfig;

/// A connected MCP server.
pub(crate) type Client = RunningService<RoleClient, ()>;

/// Starts and initializes the server. Errors are worded for the log: they never carry the
/// environment's values.
pub(crate) async fn connect(config: &McpServerConfig) -> Result<Client, String> {
    let Some(command) = &config.command else {
        return connect_http(config).await;
    };
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(&config.args)
        .env_clear()
        .envs(config.resolved_env.iter().map(|(k, v)| (k, v.expose())))
        .kill_on_drop(true);
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("could not start `{command}`: {e}"))?;
    ().serve(transport)
        .await
        .map_err(|e| format!("the MCP handshake failed: {e}"))
}

async fn connect_http(_config: &McpServerConfig) -> Result<Client, String> {
    Err("streamable HTTP MCP servers are not supported by this build".to_owned())
}
