//! The OpenAI wire format: `POST /v1/chat/completions`, JSON or SSE chunks ending in
//! `[DONE]`, errors as `{"error":{"message","type","code"}}`, the key as a bearer token.
//! Honours `n` (several choices, streamed interleaved) and `stream_options.include_usage`
//! (a last chunk with only the usage) as OpenAI does, and `response_format` with a JSON schema
//! (structured outputs: the answer follows the schema; see `structured.rs`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::{
    Arrival, Fault, Recorded, SseEvent, State, choice_text, error_response, malformed_json, pieces,
    sse, structured,
};

pub(crate) fn router() -> Router<Arc<State>> {
    Router::new().route("/v1/chat/completions", post(chat))
}

/// The key from `Authorization: Bearer …`, trimmed as real providers read it (and then
/// echo it: a key configured with surrounding whitespace comes back without it).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_start_matches("Bearer").trim().to_owned())
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
    let Arrival {
        fault,
        reply,
        tool_calls,
    } = state.arrive(Recorded {
        model: model.clone(),
        key: key.clone(),
        stream,
        body: body.clone(),
    });
    let fault = state.before_answer(fault).await;
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
        Some(Fault::NoModelAccess) => {
            // What OpenAI answers when a project's key may not use a model.
            let body = error(
                &format!("Project `proj_fake` does not have access to model `{model}`"),
                "invalid_request_error",
                json!("model_not_found"),
            );
            return error_response(403, &[], &body);
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
    let last = last_user_text(&body);
    let texts: Vec<String> = (0..choice_count(&body))
        .map(|i| match (i, &reply, structured::schema(&body)) {
            // A scripted answer wins; then one that follows a requested JSON schema.
            (0, Some(reply), _) => reply.clone(),
            (i, _, Some(schema)) => structured::answer(schema, i),
            (i, _, None) => choice_text(&model, &last, i),
        })
        .collect();
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12});
    if let Some(calls) = tool_calls {
        return tool_call_answer(&model, &calls, stream, usage);
    }
    if stream {
        return sse(
            stream_events(&model, &texts, include_usage(&body).then_some(usage)),
            state.chunk_delay(),
            fault.as_ref(),
        );
    }
    let choices: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        })
        .collect();
    axum::Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": choices,
        "usage": usage,
    }))
    .into_response()
}

/// A scripted answer that calls tools: one choice with `calls` (ids `call_fake_<i>`).
fn tool_call_answer(model: &str, calls: &Value, stream: bool, usage: Value) -> Response {
    let calls: Vec<Value> = calls
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| {
            json!({"index": i, "id": format!("call_fake_{i}"), "type": "function",
                   "function": {"name": c["name"], "arguments": c["arguments"]}})
        })
        .collect();
    if stream {
        let chunk = |delta: Value, finish: Value| {
            SseEvent::data(
                json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                       "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                .to_string(),
            )
        };
        let events = vec![
            chunk(json!({"role": "assistant", "content": null}), Value::Null),
            chunk(json!({"tool_calls": calls}), Value::Null),
            chunk(json!({}), json!("tool_calls")),
            SseEvent::data("[DONE]"),
        ];
        return sse(events, std::time::Duration::ZERO, None);
    }
    let calls: Vec<Value> = calls
        .into_iter()
        .map(|mut c| {
            if let Some(o) = c.as_object_mut() {
                o.remove("index");
            }
            c
        })
        .collect();
    axum::Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": calls},
                     "finish_reason": "tool_calls"}],
        "usage": usage,
    }))
    .into_response()
}

/// Most choices a fake answers with, so a stray `n` cannot make it build huge answers.
const MAX_CHOICES: u64 = 8;

/// `n`, the number of choices asked for: 1 when absent, at most [`MAX_CHOICES`].
fn choice_count(body: &Value) -> usize {
    let n = body["n"].as_u64().unwrap_or(1).clamp(1, MAX_CHOICES);
    usize::try_from(n).unwrap_or(1)
}

/// Whether the request asked for a usage chunk (`stream_options.include_usage`).
fn include_usage(body: &Value) -> bool {
    body["stream_options"]["include_usage"] == json!(true)
}

/// A stream the way OpenAI sends one: a role chunk per choice, the choices' words
/// interleaved (word 1 of every choice, then word 2, …), a finish chunk per choice, then,
/// only when `usage` is given, a last chunk with empty `choices` and the usage, and
/// `[DONE]`. No other chunk carries `usage`.
fn stream_events(model: &str, texts: &[String], usage: Option<Value>) -> Vec<SseEvent> {
    let chunk = |choices: Value| {
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": choices
        })
    };
    let one = |index: usize, delta: Value, finish: Value| {
        SseEvent::data(
            chunk(json!([{"index": index, "delta": delta, "finish_reason": finish}])).to_string(),
        )
    };
    let words: Vec<Vec<String>> = texts.iter().map(|t| pieces(t)).collect();
    let longest = words.iter().map(Vec::len).max().unwrap_or(0);
    let mut events: Vec<SseEvent> = (0..texts.len())
        .map(|i| one(i, json!({"role": "assistant", "content": ""}), Value::Null))
        .collect();
    for position in 0..longest {
        for (i, choice) in words.iter().enumerate() {
            if let Some(word) = choice.get(position) {
                events.push(one(i, json!({"content": word}), Value::Null));
            }
        }
    }
    events.extend((0..texts.len()).map(|i| one(i, json!({}), json!("stop"))));
    if let Some(usage) = usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push(SseEvent::data(last.to_string()));
    }
    events.push(SseEvent::data("[DONE]"));
    events
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
