//! Connecting one configured MCP server: starting its process (stdio) with only the
//! environment configured for it, or reaching its URL (streamable HTTP, with its bearer key),
//! and running the MCP handshake.

use std::process::Stdio;
use std::sync::Arc;

use rmcp::ClientHandler;
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use shared::config::McpServerConfig;
use tokio::sync::Notify;

/// A connected MCP server.
pub(crate) type Client = RunningService<RoleClient, Listener>;

/// Our side of the connection: it only hears that the server's tool list changed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listener {
    pub changed: Arc<Notify>,
}

impl ClientHandler for Listener {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }
}

/// Starts and initializes the server. Errors are worded for the log: they never carry the
/// environment's values.
pub(crate) async fn connect(
    config: &McpServerConfig,
    listener: Listener,
) -> Result<Client, String> {
    let Some(command) = &config.command else {
        return connect_http(config, listener).await;
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
    listener
        .serve(transport)
        .await
        .map_err(|e| format!("the MCP handshake failed: {e}"))
}

async fn connect_http(config: &McpServerConfig, listener: Listener) -> Result<Client, String> {
    let Some(url) = &config.url else {
        return Err("neither `command` nor `url` is configured".to_owned());
    };
    // rmcp's HTTP client is built without a TLS crypto provider: use ring, as reqwest does
    // elsewhere here. Installing twice fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut transport = StreamableHttpClientTransportConfig::with_uri(url.as_str());
    if let Some(key) = &config.bearer {
        transport = transport.auth_header(key.expose());
    }
    listener
        .serve(StreamableHttpClientTransport::from_config(transport))
        .await
        .map_err(|e| format!("the MCP handshake with {} failed: {e}", redacted(url)))
}

/// `url` for a log: without user information, query or fragment, which may carry keys.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = match rest.split_once('/') {
        Some((authority, path)) => format!("{}/{path}", host(authority)),
        None => host(rest).to_owned(),
    };
    format!("{scheme}://{rest}")
}

fn host(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_lose_what_may_be_a_key() {
        assert_eq!(
            redacted("https://user:pw@mcp.example.com/mcp?key=s3cret#x"),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(redacted("http://127.0.0.1:9/mcp"), "http://127.0.0.1:9/mcp");
        assert_eq!(redacted("http://k@host"), "http://host");
    }
}
