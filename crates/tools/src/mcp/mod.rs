//! Tools of configured MCP servers (`[mcp.<server>]`), served as more endpoints of the
//! `switchyard-tools` service: one task per server connects it (a started process over stdio,
//! or a URL over streamable HTTP, with the `rmcp` SDK), lists its tools, adds one endpoint per
//! tool on `tools.mcp.<server>.<tool>` (the name mapped to a subject token, or the tool skipped
//! with a warning), writes each tool's name, description and input schema to the `mcp_tools`
//! bucket (`shared::mcp`) where workers read what they may offer, and forwards every request
//! to the server's `tools/call`. When the server goes away (its process exits, the connection
//! drops) its endpoints are removed (callers get `unavailable` unless another tools process
//! serves them) and it is connected again, with backoff, until shutdown.

mod answer;
mod connect;
mod session;

pub(crate) use session::Server;
