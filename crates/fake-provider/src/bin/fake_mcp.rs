//! `switchyard-fake-mcp`: the fake MCP server (`fake_provider::mcp`) over stdio, for tests
//! that configure it as `[mcp.<server>] command`. Not part of the shipped CLI.

use fake_provider::mcp::FakeMcp;
use rmcp::ServiceExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let running = FakeMcp::new(true).serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
