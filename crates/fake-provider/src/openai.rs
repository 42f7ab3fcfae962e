//! The OpenAI wire format: `POST /v1/chat/completions`, JSON or SSE chunks ending in
//! `[DONE]`, errors as `{"error":{"message","type","code"}}`, the key as a bearer token.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::{
    Fault, Recorded, SseEvent, State, answer_text, error_response, malformed_json, pieces, sse,
};

pub(crate) fn router() -> Router<Arc<State>> {
    Router::new().route("/v1/chat/completions", post(chat))
}

/// The key from `Authorization: Bearer …`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("Bearer ").to_owned())
}

fn error(message: &str, kind: &str, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

async fn chat(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error_response(
            400,
            &[],
            &error("malformed JSON", "invalid_request_error", Value::Null),
        );
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let stream = body["stream"] == json!(true);
    let key = bearer(&headers);
    let fault = state.arrive(Recorded {
        model: model.clone(),
        key: key.clone(),
        stream,
        body: body.clone(),
    });
    state.before_answer(fault.as_ref()).await;
    match &fault {
        Some(Fault::Status { status, headers }) => {
            let (kind, code, message) = match status {
                // OpenAI echoes the key it refused; the gateway must scrub it.
                401 => (
                    "invalid_request_error",
                    json!("invalid_api_key"),
                    format!(
                        "Incorrect API key provided: {}",
                        key.as_deref().unwrap_or("")
                    ),
                ),
                429 => (
                    "requests",
                    json!("rate_limit_exceeded"),
                    "Rate limit reached".to_owned(),
                ),
                _ => ("server_error", Value::Null, "injected fault".to_owned()),
            };
            return error_response(*status, headers, &error(&message, kind, code));
        }
        Some(Fault::ContextLength) => {
            let body = error(
                "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                "invalid_request_error",
                json!("context_length_exceeded"),
            );
            return error_response(400, &[], &body);
        }
        Some(Fault::ContentFilter) => {
            let body = error(
                "The response was filtered due to the prompt triggering content management policy.",
                "invalid_request_error",
                json!("content_filter"),
            );
            return error_response(400, &[], &body);
        }
        Some(Fault::Malformed) if !stream => return malformed_json(),
        _ => {}
    }
    let text = answer_text(&model, &last_user_text(&body));
    if stream {
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
            })
            .to_string()
        };
        let mut events = vec![SseEvent::data(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ))];
        events.extend(
            pieces(&text)
                .into_iter()
                .map(|p| SseEvent::data(chunk(json!({"content": p}), Value::Null))),
        );
        events.push(SseEvent::data(chunk(json!({}), json!("stop"))));
        events.push(SseEvent::data("[DONE]"));
        return sse(events, state.chunk_delay(), fault.as_ref());
    }
    axum::Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    }))
    .into_response()
}

/// The text of the last message in an OpenAI request.
fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}
