//! The Gemini wire format: `POST /v1beta/models/{model}:generateContent` answered with one
//! `GenerateContentResponse`, `:streamGenerateContent?alt=sse` answered with SSE fragments
//! of it (no end marker: the last fragment carries `finishReason` and the usage), the key
//! in `x-goog-api-key` (or `?key=`), errors as `{"error":{"code","message","status"}}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::{
    Arrival, Fault, Recorded, SseEvent, State, answer_text, error_response, malformed_json, pieces,
    sse,
};

/// Token counts every answer reports, so tests can check the usage mapping.
const PROMPT_TOKENS: u64 = 5;
const CANDIDATE_TOKENS: u64 = 7;
/// Stands in for the opaque signature Gemini 3 attaches to a function call and wants back.
const FAKE_THOUGHT_SIGNATURE: &str = "fake-thought-signature";

pub(crate) fn router() -> Router<Arc<State>> {
    // The model and the method share one path segment: `gemini-x:generateContent`.
    Router::new().route("/v1beta/models/{call}", post(generate))
}

/// Gemini's canonical status name for an HTTP status, as its error bodies carry it.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

fn error(status: u16, message: &str) -> Value {
    json!({"error": {"code": status, "message": message, "status": status_name(status)}})
}

/// The error body for an injected status; a 429 with `Retry-After` also carries the delay
/// as Gemini does, in a `RetryInfo` detail.
fn status_error(status: u16, headers: &[(String, String)]) -> Value {
    let mut body = error(status, "injected fault");
    let retry = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"));
    if let (429, Some((_, seconds))) = (status, retry) {
        body["error"]["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{seconds}s"),
        }]);
    }
    body
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

async fn generate(
    Extract(state): Extract<Arc<State>>,
    Path(call): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, method)) = call.rsplit_once(':') else {
        return error_response(404, &[], &error(404, "expected {model}:{method}"));
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return error_response(404, &[], &error(404, "unknown method")),
    };
    let query = query.unwrap_or_default();
    // Without `alt=sse` Gemini streams one JSON array; the fake only speaks SSE, so a client
    // that forgets the parameter finds out here rather than against the real API.
    if stream && query_param(&query, "alt").as_deref() != Some("sse") {
        return error_response(400, &[], &error(400, "this fake streams only with alt=sse"));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error_response(400, &[], &error(400, "Invalid JSON payload received."));
    };
    let key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .or_else(|| query_param(&query, "key"));
    let Arrival { fault, reply, .. } = state.arrive(Recorded {
        model: model.to_owned(),
        key,
        stream,
        body: body.clone(),
    });
    let fault = state.before_answer(fault).await;
    match &fault {
        Some(Fault::Status { status, headers }) => {
            return error_response(*status, headers, &status_error(*status, headers));
        }
        Some(Fault::ContextLength) => {
            let body = error(
                400,
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            );
            return error_response(400, &[], &body);
        }
        Some(Fault::NoModelAccess) => {
            let body = error(
                404,
                &format!(
                    "models/{model} is not found for API version v1beta, or is not supported for generateContent."
                ),
            );
            return error_response(404, &[], &body);
        }
        Some(Fault::Malformed) if !stream => return malformed_json(),
        _ => {}
    }
    let fragments = if fault == Some(Fault::ContentFilter) {
        vec![blocked_prompt()]
    } else {
        let answer = Answer::to(model, &body, reply);
        if stream {
            answer.fragments(model)
        } else {
            vec![answer.whole(model)]
        }
    };
    if stream {
        let events = fragments
            .iter()
            .map(|f| SseEvent::data(f.to_string()))
            .collect();
        return sse(events, state.chunk_delay(), fault.as_ref());
    }
    match fragments.into_iter().next() {
        Some(answer) => axum::Json(answer).into_response(),
        None => error_response(500, &[], &error(500, "no answer")),
    }
}

/// A prompt refused before generation: no candidates, only the reason.
fn blocked_prompt() -> Value {
    json!({
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]
        },
        "usageMetadata": {"promptTokenCount": PROMPT_TOKENS, "totalTokenCount": PROMPT_TOKENS},
    })
}

/// What the fake says: text echoing the last user turn, or a call of the first declared
/// function when that turn asks to "use tool" (of every declared function, in one answer,
/// when it asks to "use every tool").
enum Answer {
    Text(String),
    Calls { names: Vec<String>, args: Value },
}

impl Answer {
    /// The answer to `body`: `reply` when the request was scripted, else the usual echo (or
    /// a call, when asked to use a tool).
    fn to(model: &str, body: &Value, reply: Option<String>) -> Self {
        if let Some(text) = reply {
            return Answer::Text(text);
        }
        let last = last_user_text(body);
        let functions = functions(body);
        let names = if last.contains("use every tool") {
            functions
        } else if last.contains("use tool") {
            functions.into_iter().take(1).collect()
        } else {
            Vec::new()
        };
        if !names.is_empty() {
            return Answer::Calls {
                names,
                args: json!({"text": last}),
            };
        }
        Answer::Text(answer_text(model, &last))
    }

    /// The parts calling `names`; as Gemini does, only the first of a parallel batch
    /// carries the thought signature.
    fn call_parts(names: &[String], args: &Value) -> Vec<Value> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut part = json!({"functionCall": {"name": name, "args": args}});
                if i == 0 {
                    part["thoughtSignature"] = json!(FAKE_THOUGHT_SIGNATURE);
                }
                part
            })
            .collect()
    }

    /// The whole answer, as `generateContent` returns it.
    fn whole(&self, model: &str) -> Value {
        let parts = match self {
            Answer::Text(text) => vec![json!({"text": text})],
            Answer::Calls { names, args } => Self::call_parts(names, args),
        };
        fragment(model, parts, Some("STOP"))
    }

    /// The answer as `streamGenerateContent` sends it, at least three fragments long so a
    /// cut after two always lands before the `finishReason`.
    fn fragments(&self, model: &str) -> Vec<Value> {
        match self {
            Answer::Text(text) => {
                let pieces = pieces(text);
                let last = pieces.len().saturating_sub(1);
                pieces
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| {
                        fragment(
                            model,
                            vec![json!({"text": p})],
                            (i == last).then_some("STOP"),
                        )
                    })
                    .collect()
            }
            // Gemini sends a function call whole, then (as observed) empty text fragments.
            Answer::Calls { names, args } => vec![
                fragment(model, Self::call_parts(names, args), None),
                fragment(model, vec![json!({"text": ""})], None),
                fragment(model, vec![json!({"text": ""})], Some("STOP")),
            ],
        }
    }
}

/// One `GenerateContentResponse`; the finishing one carries the full usage.
fn fragment(model: &str, parts: Vec<Value>, finish: Option<&str>) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    let usage = match finish {
        Some(reason) => {
            candidate["finishReason"] = json!(reason);
            json!({
                "promptTokenCount": PROMPT_TOKENS,
                "candidatesTokenCount": CANDIDATE_TOKENS,
                "totalTokenCount": PROMPT_TOKENS + CANDIDATE_TOKENS,
            })
        }
        None => json!({"promptTokenCount": PROMPT_TOKENS, "totalTokenCount": PROMPT_TOKENS}),
    };
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "fake-response",
    })
}

/// The names of the declared functions, in order.
fn functions(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tool| tool["functionDeclarations"].as_array())
        .flatten()
        .filter_map(|declaration| declaration["name"].as_str())
        .map(str::to_owned)
        .collect()
}

/// The text of the last user turn (a turn without a role is a user turn); for a turn that
/// only returns function results, those results as JSON, so a tool round trip is visible
/// in the answer.
fn last_user_text(body: &Value) -> String {
    let Some(content) = body["contents"].as_array().and_then(|contents| {
        contents
            .iter()
            .rev()
            .find(|c| c.get("role").is_none_or(|r| r == "user"))
    }) else {
        return String::new();
    };
    let parts = content["parts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
    if !text.is_empty() {
        return text;
    }
    parts
        .iter()
        .filter_map(|p| p.get("functionResponse"))
        .map(|r| r["response"].to_string())
        .collect::<Vec<_>>()
        .join(" ")
}
