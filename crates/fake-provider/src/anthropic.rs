//! The Anthropic Messages wire format: `POST /v1/messages` with the key in `x-api-key`,
//! JSON answers or the named SSE event sequence ending in `message_stop`, and errors as
//! `{"type":"error","error":{"type","message"}}`.
//!
//! Like the real API it refuses requests without `anthropic-version` or `max_tokens`, and
//! a `system` role inside `messages`. It honours `stop_sequences` and `max_tokens` (one
//! token per streamed word) so finish reasons can be tested. It calls a tool when the
//! request forces one (`tool_choice` `any` or `tool`) or offers tools and the last user
//! text contains "use tool"; the call's input is `{"answer": <the answer text>}`. Asked to
//! "use every tool", it calls each offered tool in one answer (parallel tool use).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::{
    Arrival, Fault, Recorded, SseEvent, State, answer_text, error_response, malformed_json, pieces,
    sse,
};

/// The prompt tokens every answer reports: fresh, and read from the prompt cache.
const INPUT_TOKENS: u64 = 5;
const CACHE_READ_TOKENS: u64 = 3;

pub(crate) fn router() -> Router<Arc<State>> {
    Router::new().route("/v1/messages", post(messages))
}

fn error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The error type Anthropic documents for each status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn invalid(message: &str) -> Response {
    error_response(400, &[], &error("invalid_request_error", message))
}

/// What the request is refused for, checked the way the real API checks it.
fn invalid_reason(headers: &HeaderMap, body: &Value) -> Option<&'static str> {
    if headers.get("anthropic-version").is_none() {
        return Some("anthropic-version: header is required");
    }
    if body["max_tokens"].as_u64().is_none() {
        return Some("max_tokens: Field required");
    }
    let messages = body["messages"].as_array()?;
    if messages
        .iter()
        .any(|m| m["role"] != "user" && m["role"] != "assistant")
    {
        return Some("messages: Unexpected role; use the top-level system parameter");
    }
    None
}

async fn messages(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return invalid("malformed JSON");
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let stream = body["stream"] == json!(true);
    let Arrival { fault, reply, .. } = state.arrive(Recorded {
        model: model.clone(),
        key: headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned()),
        stream,
        body: body.clone(),
    });
    let fault = state.before_answer(fault).await;
    if let Some(message) = invalid_reason(&headers, &body) {
        return invalid(message);
    }
    match &fault {
        Some(Fault::Status { status, headers }) => {
            let body = error(error_type(*status), "injected fault");
            return error_response(*status, headers, &body);
        }
        Some(Fault::ContextLength) => {
            return invalid("prompt is too long: 250000 tokens > 200000 maximum");
        }
        Some(Fault::NoModelAccess) => {
            let body = error("not_found_error", &format!("model: {model}"));
            return error_response(404, &[], &body);
        }
        Some(Fault::Malformed) if !stream => return malformed_json(),
        _ => {}
    }
    let answer = if fault == Some(Fault::ContentFilter) {
        Answer::refused()
    } else {
        Answer::to(&model, &body, reply)
    };
    if stream {
        sse(answer.events(&model), state.chunk_delay(), fault.as_ref())
    } else {
        axum::Json(answer.message(&model)).into_response()
    }
}

/// What the fake answers, before it is put in JSON or events.
#[derive(Debug)]
struct Answer {
    /// Streamed pieces of the text, or of the tool call's input JSON.
    pieces: Vec<String>,
    /// The tools called (each with the same input), if the answer is a call.
    tools: Vec<String>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
}

impl Answer {
    /// How Anthropic refuses: a 200 whose stop reason is `refusal`, with no content.
    fn refused() -> Self {
        Self {
            pieces: Vec::new(),
            tools: Vec::new(),
            stop_reason: "refusal",
            stop_sequence: None,
        }
    }

    /// The answer to `body`: `reply` when the request was scripted, else the usual echo.
    fn to(model: &str, body: &Value, reply: Option<String>) -> Self {
        let last = last_user_text(body);
        let text = reply.unwrap_or_else(|| answer_text(model, &last));
        let tools = tools_to_call(body, &last);
        if !tools.is_empty() {
            let input = json!({"answer": text}).to_string();
            return Self {
                pieces: pieces(&input),
                tools,
                stop_reason: "tool_use",
                stop_sequence: None,
            };
        }
        let stops = body["stop_sequences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let first_stop = stops
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| text.find(s).map(|at| (at, s)))
            .min();
        let (text, stop_reason, stop_sequence) = match first_stop {
            Some((at, s)) => (&text[..at], "stop_sequence", Some(s.to_owned())),
            None => (text.as_str(), "end_turn", None),
        };
        let mut pieces = pieces(text);
        let max_tokens = usize::try_from(body["max_tokens"].as_u64().unwrap_or(0)).unwrap_or(0);
        let stop_reason = if pieces.len() > max_tokens {
            pieces.truncate(max_tokens);
            "max_tokens"
        } else {
            stop_reason
        };
        Self {
            pieces,
            tools: Vec::new(),
            stop_reason,
            stop_sequence,
        }
    }

    fn usage(&self) -> Value {
        json!({
            "input_tokens": INPUT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": CACHE_READ_TOKENS,
            "output_tokens": self.pieces.len(),
        })
    }

    fn content(&self) -> Vec<Value> {
        let joined = self.pieces.concat();
        if !self.tools.is_empty() {
            let input = serde_json::from_str::<Value>(&joined).unwrap_or_default();
            return self
                .tools
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    json!({"type": "tool_use", "id": format!("toolu_fake_{i}"), "name": name, "input": input})
                })
                .collect();
        }
        if joined.is_empty() {
            Vec::new()
        } else {
            vec![json!({"type": "text", "text": joined})]
        }
    }

    fn message(&self, model: &str) -> Value {
        json!({
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": self.content(),
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage(),
        })
    }

    /// The real event sequence: `message_start`, a `ping`, each content block's start,
    /// deltas and stop, `message_delta` with the stop reason and final usage, `message_stop`.
    fn events(&self, model: &str) -> Vec<SseEvent> {
        let event = |value: Value| {
            let name = value["type"].as_str().unwrap_or_default().to_owned();
            SseEvent::named(&name, value.to_string())
        };
        let mut start = self.message(model);
        start["content"] = json!([]);
        start["stop_reason"] = Value::Null;
        start["stop_sequence"] = Value::Null;
        start["usage"]["output_tokens"] = json!(1);
        let mut events = vec![
            event(json!({"type": "message_start", "message": start})),
            event(json!({"type": "ping"})),
        ];
        let blocks: Vec<(Value, &str, &str)> = if self.tools.is_empty() {
            if self.pieces.is_empty() {
                Vec::new()
            } else {
                vec![(json!({"type": "text", "text": ""}), "text_delta", "text")]
            }
        } else {
            self.tools
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    (
                        json!({"type": "tool_use", "id": format!("toolu_fake_{i}"), "name": name, "input": {}}),
                        "input_json_delta",
                        "partial_json",
                    )
                })
                .collect()
        };
        for (index, (content_block, delta_type, field)) in blocks.into_iter().enumerate() {
            events.push(event(json!({
                "type": "content_block_start", "index": index, "content_block": content_block,
            })));
            // The real API opens a tool call's input with an empty piece.
            let empty_first = (!self.tools.is_empty()).then(String::new);
            for piece in empty_first.iter().chain(&self.pieces) {
                events.push(event(json!({
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": delta_type, field: piece},
                })));
            }
            events.push(event(json!({"type": "content_block_stop", "index": index})));
        }
        events.push(event(json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
            "usage": {"output_tokens": self.pieces.len()},
        })));
        events.push(event(json!({"type": "message_stop"})));
        events
    }
}

/// The tools the answer calls: the one `tool_choice` names; else every tool when asked to
/// "use every tool" (unless parallel tool use is disabled); else the first tool when a call
/// is forced or asked for.
fn tools_to_call(body: &Value, last_user_text: &str) -> Vec<String> {
    let names: Vec<String> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    let Some(first) = names.first().cloned() else {
        return Vec::new();
    };
    let choice = &body["tool_choice"];
    let parallel = choice["disable_parallel_tool_use"] != true;
    match choice["type"].as_str() {
        Some("tool") => choice["name"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect(),
        Some("none") => Vec::new(),
        _ if parallel && last_user_text.contains("use every tool") => names,
        Some("any") => vec![first],
        _ if last_user_text.contains("use tool") => vec![first],
        _ => Vec::new(),
    }
}

/// The text of the last user turn: its text blocks and the text of its tool results.
fn last_user_text(body: &Value) -> String {
    let Some(turn) = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    let text_of = |content: &Value| -> String {
        match content {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect(),
            _ => String::new(),
        }
    };
    match &turn["content"] {
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b["type"].as_str() {
                Some("text") => b["text"].as_str().unwrap_or_default().to_owned(),
                Some("tool_result") => text_of(&b["content"]),
                _ => String::new(),
            })
            .collect(),
        other => text_of(other),
    }
}
