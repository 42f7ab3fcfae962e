//! Calling one built-in tool over NATS request/reply: the request is the call's arguments,
//! the answer its result or a service error carrying the class. No responders (nothing
//! serves the tool) is `unavailable`; no answer within the timeout is `timeout`.

use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use shared::Task;
use shared::task::now_ms;
use shared::tools::{
    ERROR_CLASS_HEADER, MAX_ARGUMENT_BYTES, MAX_RESULT_BYTES, ToolError, ToolErrorClass, context,
    subject,
};

/// Who makes a call: sent along as headers (`shared::tools::context`) for the tools that
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
        headers.insert(context::TASK_ID, self.task.id.to_string().as_str());
        // The model chose the id: only a bounded, header-safe form of it travels.
        let call_id: String = self
            .call_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        headers.insert(context::CALL_ID, call_id.as_str());
        let chain: Vec<&str> = self
            .task
            .asked_by
            .iter()
            .map(String::as_str)
            .chain(self.agent)
            .collect();
        headers.insert(context::ASKED_BY, chain.join(",").as_str());
        let deadline = now_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(0));
        headers.insert(context::DEADLINE_MS, deadline.to_string().as_str());
        headers.insert(context::PRIORITY, self.task.priority.to_string().as_str());
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
        if arguments.len() > MAX_ARGUMENT_BYTES {
            return Err(ToolError::new(
                ToolErrorClass::InvalidArguments,
                format!("arguments are larger than {MAX_ARGUMENT_BYTES} bytes"),
            ));
        }
        let request = async_nats::Request::new()
            .payload(Bytes::copy_from_slice(arguments.as_bytes()))
            .headers(context.headers(timeout))
            .timeout(Some(timeout));
        let answer = match self.client.send_request(subject(name), request).await {
            Ok(answer) => answer,
            Err(e) => {
                let (class, message) = match e.kind() {
                    RequestErrorKind::TimedOut => (
                        ToolErrorClass::Timeout,
                        format!("the tool did not answer within {} ms", timeout.as_millis()),
                    ),
                    RequestErrorKind::NoResponders => (
                        ToolErrorClass::Unavailable,
                        "no process serves this tool right now".to_owned(),
                    ),
                    _ => (
                        ToolErrorClass::Internal,
                        "the tool could not be called".to_owned(),
                    ),
                };
                return Err(ToolError::new(class, message));
            }
        };
        if let Some(headers) = &answer.headers
            && let Some(code) = headers.get(NATS_SERVICE_ERROR_CODE)
        {
            let class = headers
                .get(ERROR_CLASS_HEADER)
                .and_then(|c| ToolErrorClass::parse(c.as_str()))
                .unwrap_or_else(|| ToolErrorClass::from_code(code.as_str().parse().unwrap_or(500)));
            let message = headers
                .get(NATS_SERVICE_ERROR)
                .map_or_else(|| "the tool failed".to_owned(), |m| m.as_str().to_owned());
            return Err(ToolError::new(class, message));
        }
        if answer.payload.len() > MAX_RESULT_BYTES {
            return Err(ToolError::new(
                ToolErrorClass::TooLarge,
                format!("the result is larger than {MAX_RESULT_BYTES} bytes"),
            ));
        }
        Ok(answer.payload)
    }
}
