//! Builders for the OpenAI shapes every adapter normalises to: `chat.completion`,
//! `chat.completion.chunk` and `usage`, so each adapter only decides the contents.

use serde_json::{Value, json};
use shared::FailureClass;
use shared::task::now_ms;

use super::ProviderError;

/// A `chat.completion` with one choice.
pub fn completion(
    id: &str,
    model: &str,
    message: Value,
    finish_reason: &str,
    usage: Value,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": now_ms() / 1000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    })
}

/// A `chat.completion.chunk` with one choice; `finish_reason` and `usage` may be null.
pub fn chunk(id: &str, model: &str, delta: Value, finish_reason: Value, usage: Value) -> Value {
    let mut chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": now_ms() / 1000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    if !usage.is_null() {
        chunk["usage"] = usage;
    }
    chunk
}

/// An OpenAI `usage` object. The counts come from providers, so the total saturates rather
/// than overflowing on absurd ones.
pub fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens.saturating_add(completion_tokens),
    })
}

/// A tool call's `arguments` (a JSON string, possibly empty) as the object the native
/// formats want; anything but an object is the caller's mistake.
pub fn call_arguments(name: &str, arguments: &str) -> Result<Value, ProviderError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            ProviderError::new(
                FailureClass::BadRequest,
                format!("the arguments of tool call {name:?} are not a JSON object"),
            )
        })
}

/// The text of an OpenAI message `content`: a string, or the text parts of an array.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_omits_null_usage() {
        let c = chunk("id", "m", json!({"content": "x"}), Value::Null, Value::Null);
        assert!(c.get("usage").is_none());
        let c = chunk("id", "m", json!({}), json!("stop"), usage(1, 2));
        assert_eq!(c["usage"]["total_tokens"], 3);
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn content_text_joins_text_parts() {
        assert_eq!(content_text(&json!("hi")), "hi");
        assert_eq!(
            content_text(
                &json!([{"type":"text","text":"a"},{"type":"image_url"},{"type":"text","text":"b"}])
            ),
            "ab"
        );
        assert_eq!(content_text(&Value::Null), "");
    }
}
