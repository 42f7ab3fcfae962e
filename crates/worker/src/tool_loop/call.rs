//! Calling one tool (built-in or MCP) over NATS request/reply (`shared::tool_call`): the
//! request is the call's arguments, the answer its result or a service error carrying the
//! class. No responders (nothing serves the tool) is `unavailable`; no answer within the
//! timeout is `timeout`.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use shared::Task;
use shared::task::now_ms;
use shared::tools::{ToolError, caller};

/// Who makes a call: sent along as headers (`shared::tools::caller`) for the tools that
/// act on the task path (`ask_agent`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallContext<'a> {
    pub task: &'a Task,
    /// The call's id as the model gave it.
    pub call_id: &'a str,
    /// The agent whose work this is, if any.
    pub agent: Option<&'a str>,
}

impl CallContext<'_> {
    /// The headers for a call that must be answered within `timeout`.
    fn headers(&self, timeout: Duration) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(caller::TASK_ID, self.task.id.to_string().as_str());
        // The model chose the id: only a bounded, header-safe form of it travels.
        let call_id: String = self
            .call_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        headers.insert(caller::CALL_ID, call_id.as_str());
        // Names only: the task decoder refuses anything else in `asked_by`, and a line break
        // in a header value would panic.
        let chain: Vec<&str> = self
            .task
            .asked_by
            .iter()
            .map(String::as_str)
            .chain(self.agent)
            .filter(|a| a.parse::<shared::Capability>().is_ok())
            .collect();
        headers.insert(caller::ASKED_BY, chain.join(",").as_str());
        let deadline = now_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(0));
        headers.insert(caller::DEADLINE_MS, deadline.to_string().as_str());
        headers.insert(caller::PRIORITY, self.task.priority.to_string().as_str());
        headers
    }
}

/// Runs a tool call somewhere: over NATS in the worker, in memory in unit tests.
pub(crate) trait ToolCaller: Sync {
    fn call(
        &self,
        name: &str,
        arguments: &str,
        timeout: Duration,
        context: CallContext<'_>,
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
        context: CallContext<'_>,
    ) -> Result<Bytes, ToolError> {
        shared::tool_call::call(
            self.client,
            name,
            arguments.as_bytes(),
            timeout,
            Some(context.headers(timeout)),
        )
        .await
    }
}
