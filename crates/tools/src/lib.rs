//! Switchyard's built-in tools. Each is an endpoint of one NATS micro service
//! (`switchyard-tools`, discoverable through `$SRV.PING|INFO|STATS`) on `tools.<name>`, in
//! the queue group `tools`, so any number of `switchyard tools` processes share the calls
//! and a dead one is simply not asked. A request is the tool call's arguments (JSON); the
//! answer is the result (JSON), or an error with a class (`shared::tools::ToolErrorClass`).
//! The tools of configured MCP servers are served the same way, on
//! `tools.mcp.<server>.<tool>` (`mcp`), and the built-in tools are offered to MCP clients by
//! `switchyard mcp` (`mcp_server`). The contract (names, schemas, classes, limits) is
//! `shared::tools` and `shared::mcp`; `docs/tools.md` has the protocol.

mod ask;
pub mod calculator;
mod fit;
pub mod http_fetch;
mod mcp;
pub mod mcp_server;
mod news;
pub mod run_code;
mod service;
pub mod ssrf;
mod stock_quote;
mod upstream;
mod weather;
mod web_search;

pub use ask::Asker;
pub use mcp_server::{BuiltinTools, McpServeError};
pub use service::{Toolbox, ToolsError, serve};
