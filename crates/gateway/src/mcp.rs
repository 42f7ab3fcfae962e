//! `/mcp`: the built-in tools for MCP clients over streamable HTTP (`rmcp`'s tower service,
//! nested in the router). Only the tools `[tools] chat_allowed` lists are offered: the
//! gateway's callers get no tool a chat request could not name (deny by default: none). Each
//! call goes over NATS to the tools service, like `switchyard mcp`. Stateless (no MCP
//! sessions, JSON answers), so any gateway replica answers any request. DNS-rebinding
//! protection (the `Host` check) holds while the gateway listens on loopback; a gateway
//! listening elsewhere is reached under names of its operators' choosing, so it accepts any.

use std::net::SocketAddr;
use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use shared::config::Config;
use tools::BuiltinTools;

/// The path the MCP endpoint is served on.
pub const PATH: &str = "/mcp";

/// The MCP endpoint's service.
pub fn service(
    config: &Config,
    client: async_nats::Client,
) -> StreamableHttpService<BuiltinTools, LocalSessionManager> {
    let offered = config
        .tools
        .chat_allowed
        .iter()
        .filter(|name| shared::tools::is_builtin(name))
        .cloned();
    let tools = BuiltinTools::new(client, &config.tools).only(offered);
    let mut settings = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(config.gateway.max_body_bytes);
    let loopback = config
        .gateway
        .listen
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        settings = settings.disable_allowed_hosts();
    }
    StreamableHttpService::new(move || Ok(tools.clone()), Arc::default(), settings)
}
