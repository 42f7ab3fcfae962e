//! Calling one tool over NATS request/reply on `tools.<name>` (built-in or MCP): the request
//! is the call's arguments, the answer its result or a service error carrying the class. No
//! responders (nothing serves the tool) is `unavailable`; no answer within the timeout is
//! `timeout`. Used by the worker's tool loop and by `switchyard mcp`.

use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;

use crate::tools::{
    ERROR_CLASS_HEADER, MAX_ARGUMENT_BYTES, MAX_RESULT_BYTES, ToolError, ToolErrorClass, subject,
};

/// Calls tool `name` with `arguments` (JSON), `headers` saying who calls
/// ([`crate::tools::caller`]), and waits at most `timeout` for its answer.
pub async fn call(
    client: &async_nats::Client,
    name: &str,
    arguments: &[u8],
    timeout: Duration,
    headers: Option<HeaderMap>,
) -> Result<Bytes, ToolError> {
    if arguments.len() > MAX_ARGUMENT_BYTES {
        return Err(ToolError::new(
            ToolErrorClass::InvalidArguments,
            format!("arguments are larger than {MAX_ARGUMENT_BYTES} bytes"),
        ));
    }
    let mut request = async_nats::Request::new()
        .payload(Bytes::copy_from_slice(arguments))
        .timeout(Some(timeout));
    if let Some(headers) = headers {
        request = request.headers(headers);
    }
    let answer = match client.send_request(subject(name), request).await {
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
