//! What an MCP tool call answers, in Switchyard's terms: a result's structured content (or its
//! text) as the JSON result, an error result (`isError`) as `upstream`, and each way the call
//! itself can fail as its class (`invalid_arguments` for bad parameters, `denied` for a tool
//! the server does not know, `unavailable` when the connection is gone, `timeout`). Pure.

use rmcp::ServiceError;
use rmcp::model::{CallToolResult, ContentBlock, ErrorCode};
use serde_json::{Value, json};
use shared::tools::{ToolError, ToolErrorClass};

/// The result of a completed call: its structured content when it has some, else
/// `{"text": …}` with its text blocks joined (and `omitted` listing any other content).
pub(crate) fn result(call: CallToolResult) -> Result<Value, ToolError> {
    let text = joined_text(&call.content);
    if call.is_error == Some(true) {
        let message = if text.trim().is_empty() {
            "the MCP tool reported an error".to_owned()
        } else {
            text
        };
        return Err(ToolError::new(ToolErrorClass::Upstream, message));
    }
    if let Some(structured) = call.structured_content {
        return Ok(structured);
    }
    let omitted: Vec<Value> = call
        .content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text(_) => None,
            ContentBlock::Image(i) => Some(json!({"type": "image", "mime_type": i.mime_type})),
            ContentBlock::Audio(a) => Some(json!({"type": "audio", "mime_type": a.mime_type})),
            ContentBlock::Resource(_) => Some(json!({"type": "resource"})),
            ContentBlock::ResourceLink(_) => Some(json!({"type": "resource_link"})),
            // Kinds newer than this code.
            _ => Some(json!({"type": "other"})),
        })
        .collect();
    let mut out = json!({"text": text});
    if !omitted.is_empty() {
        out["omitted"] = Value::Array(omitted);
    }
    Ok(out)
}

fn joined_text(content: &[ContentBlock]) -> String {
    content
        .iter()
        .filter_map(|b| b.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The class of a call that did not complete.
pub(crate) fn failure(e: &ServiceError) -> ToolError {
    match e {
        ServiceError::McpError(data) => {
            let class = if data.code == ErrorCode::INVALID_PARAMS {
                ToolErrorClass::InvalidArguments
            } else if data.code == ErrorCode::METHOD_NOT_FOUND {
                ToolErrorClass::Denied
            } else {
                ToolErrorClass::Upstream
            };
            ToolError::new(
                class,
                format!("the MCP server refused the call: {}", data.message),
            )
        }
        ServiceError::TransportSend(_) | ServiceError::TransportClosed => ToolError::new(
            ToolErrorClass::Unavailable,
            "the MCP server is not connected",
        ),
        ServiceError::Timeout { .. } => ToolError::new(
            ToolErrorClass::Timeout,
            "the MCP server did not answer in time",
        ),
        other => ToolError::new(
            ToolErrorClass::Upstream,
            format!("the MCP call failed: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ErrorData;

    #[test]
    fn results_become_json_and_errors_classes() {
        let ok = CallToolResult::success(vec![ContentBlock::text("a"), ContentBlock::text("b")]);
        assert_eq!(result(ok).unwrap(), json!({"text": "a\nb"}));
        let mut structured = CallToolResult::success(vec![ContentBlock::text("{\"x\":1}")]);
        structured.structured_content = Some(json!({"x": 1}));
        assert_eq!(result(structured).unwrap(), json!({"x": 1}));
        let image = CallToolResult::success(vec![ContentBlock::image("AAAA", "image/png")]);
        assert_eq!(
            result(image).unwrap(),
            json!({"text": "", "omitted": [{"type": "image", "mime_type": "image/png"}]})
        );
        let e = result(CallToolResult::error(vec![ContentBlock::text(
            "no such city",
        )]))
        .unwrap_err();
        assert_eq!(
            (e.class, e.message.as_str()),
            (ToolErrorClass::Upstream, "no such city")
        );
        let e = result(CallToolResult::error(vec![])).unwrap_err();
        assert_eq!(e.class, ToolErrorClass::Upstream);
    }

    #[test]
    fn failed_calls_are_classed() {
        let cases = [
            (
                ServiceError::McpError(ErrorData::invalid_params("x", None)),
                ToolErrorClass::InvalidArguments,
            ),
            (
                ServiceError::McpError(ErrorData::new(ErrorCode::METHOD_NOT_FOUND, "x", None)),
                ToolErrorClass::Denied,
            ),
            (
                ServiceError::McpError(ErrorData::internal_error("x", None)),
                ToolErrorClass::Upstream,
            ),
            (ServiceError::TransportClosed, ToolErrorClass::Unavailable),
            (
                ServiceError::Timeout {
                    timeout: std::time::Duration::from_secs(1),
                },
                ToolErrorClass::Timeout,
            ),
        ];
        for (error, class) in cases {
            assert_eq!(failure(&error).class, class, "{error}");
        }
    }
}
