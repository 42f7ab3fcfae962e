//! Calling one tool (built-in or MCP) over NATS request/reply (`shared::tool_call`): the
//! request is the call's arguments, the answer its result or a service error carrying the
//! class. No responders (nothing serves the tool) is `unavailable`; no answer within the
//! timeout is `timeout`.

use std::time::Duration;

use bytes::Bytes;
use shared::tools::ToolError;

/// Runs a tool call somewhere: over NATS in the worker, in memory in unit tests.
pub(crate) trait ToolCaller: Sync {
    fn call(
        &self,
        name: &str,
        arguments: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Bytes, ToolError>> + Send;
}

/// Tools served on `tools.<name>` (by `switchyard tools`, or `switchyard up`).
#[derive(Debug)]
pub(crate) struct NatsTools<'a> {
    pub client: &'a async_nats::Client,
}

impl ToolCaller for NatsTools<'_> {
    async fn call(
        &self,
        name: &str,
        arguments: &str,
        timeout: Duration,
    ) -> Result<Bytes, ToolError> {
        shared::tool_call::call(self.client, name, arguments.as_bytes(), timeout).await
    }
}
