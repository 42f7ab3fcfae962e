//! The Gemini `generateContent` wire format (Google AI Studio, base URL `…/v1beta`): OpenAI
//! chat requests become `contents`, `systemInstruction`, `tools`, `toolConfig` and
//! `generationConfig`; answers and `streamGenerateContent?alt=sse` fragments become OpenAI
//! completions and chunks. The key travels in `x-goog-api-key`, never in the URL, so it
//! cannot reach an error text or a log line.
//!
//! Choices made where the formats differ:
//! - JSON Schemas (tool parameters, `response_format.json_schema`) go to
//!   `parametersJsonSchema` / `responseJsonSchema`, which take JSON Schema as written;
//!   `parameters` / `responseSchema` take only an OpenAPI subset and reject keywords such as
//!   `additionalProperties` that strict OpenAI schemas carry.
//! - Gemini gives function calls no ids: each answer gets `call_<answer tag>_<index>`, unique
//!   across turns, and a `role: "tool"` message finds its function's name through the
//!   nearest earlier assistant message that made the call.
//! - Gemini 3 signs function calls (`thoughtSignature`) and refuses the next turn without
//!   the signature; it rides in each tool call's `extra_content.google.thought_signature`,
//!   the field Google's own OpenAI-compatible endpoint uses.
//! - A prompt refused outright (`promptFeedback.blockReason`) is an answer with
//!   `finish_reason: "content_filter"`, not an error; a malformed function call from the
//!   model is an `invalid_response`, since a retry usually gets a well-formed one.
//! - Not mapped: `n` > 1 (one candidate is asked for), penalties, `seed`, `logprobs`,
//!   `reasoning_effort`, and remote image URLs (Gemini cannot fetch them; data URLs work).

use std::time::Duration;

use serde_json::{Map, Value, json};
use shared::FailureClass;
use shared::config::Secret;

use super::http::{
    Translate, chunk_stream, cut_stream, event_json, json_body, network_error, retry_after,
    sse_events,
};
use super::shape::{self, content_text};
use super::{Call, ChunkStream, ProviderError, classify_status, error_text, parse_retry_after};

/// Header Gemini reads the API key from.
const KEY_HEADER: &str = "x-goog-api-key";
/// Google's documented stand-in for a function call whose signature is unknown (a history
/// written by another model or a client that dropped it); Gemini 3 refuses the turn without
/// one, older models ignore it.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";
/// Finish reasons that mean the answer was withheld or cut for its content.
const FILTERED: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "LANGUAGE",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
    "MODEL_ARMOR",
];
/// Finish reasons that mean the model fumbled a function call and the answer is unusable.
const BROKEN_CALL: &[&str] = &[
    "MALFORMED_FUNCTION_CALL",
    "UNEXPECTED_TOOL_CALL",
    "TOO_MANY_TOOL_CALLS",
];

/// A client for one Gemini base URL.
#[derive(Debug, Clone)]
pub struct Gemini {
    http: reqwest::Client,
    base_url: String,
}

impl Gemini {
    pub fn new(http: reqwest::Client, base_url: String) -> Self {
        Self { http, base_url }
    }

    pub async fn complete(&self, call: Call<'_>) -> Result<Value, ProviderError> {
        let url = self.url(call.model, "generateContent")?;
        let body = request_body(call.request)?;
        let answer = json_body(self.post(&url, &body, call.key).await?).await?;
        completion(&answer, call.model, &answer_tag())
    }

    pub async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let url = format!("{}?alt=sse", self.url(call.model, "streamGenerateContent")?);
        let body = request_body(call.request)?;
        let events = sse_events(self.post(&url, &body, call.key).await?)?;
        let translator = Events {
            fragments: Fragments::new(call.model, answer_tag()),
            secret: call.key.map(|s| s.expose().to_owned()),
        };
        Ok(chunk_stream(events, translator))
    }

    fn url(&self, model: &str, method: &str) -> Result<String, ProviderError> {
        Ok(format!(
            "{}/models/{}:{method}",
            self.base_url,
            model_segment(model)?
        ))
    }

    /// Sends the request. Unlike the shared `send`, a refusal's body is read here: Gemini
    /// puts its retry delay there (`RetryInfo`) rather than in `Retry-After`, and refuses a
    /// bad key with a 400.
    async fn post(
        &self,
        url: &str,
        body: &Value,
        key: Option<&Secret>,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut request = self.http.post(url).json(body);
        if let Some(key) = key {
            request = request.header(KEY_HEADER, key.expose());
        }
        let response = request.send().await.map_err(network_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let header_delay = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let mut error = gemini_error(status.as_u16(), &text, key.map(Secret::expose));
        error.status = Some(status.as_u16());
        error.retry_after = header_delay.or(error.retry_after);
        Err(error)
    }
}

/// A fresh tag naming one answer: its completion id and its tool call ids.
fn answer_tag() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(FailureClass::BadRequest, message)
}

fn invalid_response(message: impl Into<String>) -> ProviderError {
    ProviderError::new(FailureClass::InvalidResponse, message)
}

/// The model as a URL path segment. Model names are configuration, not caller input, but a
/// `/`, `?` or `#` in one would still change which URL is called, so anything beyond
/// Gemini's own alphabet is refused rather than encoded.
fn model_segment(model: &str) -> Result<&str, ProviderError> {
    let name = model.strip_prefix("models/").unwrap_or(model);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(name)
    } else {
        Err(bad_request(format!(
            "Gemini model name {model:?} may only contain letters, digits, '.', '_' and '-'"
        )))
    }
}

/// Classifies a Gemini error body (`{"error":{"code","message","status","details"}}`) under
/// `status`, with the retry delay its `RetryInfo` detail asks for.
fn gemini_error(status: u16, body: &str, secret: Option<&str>) -> ProviderError {
    // Gemini refuses a missing, wrong or expired key with 400 INVALID_ARGUMENT, not 401.
    let class = if status == 400
        && (body.contains("API_KEY_INVALID") || body.contains("API key not valid"))
    {
        FailureClass::Auth
    } else {
        classify_status(status, body)
    };
    let mut error = ProviderError::new(class, error_text(body, secret));
    error.retry_after = retry_delay(body);
    error
}

/// The `retryDelay` of a `google.rpc.RetryInfo` detail, e.g. `"37s"` or `"0.5s"`.
fn retry_delay(body: &str) -> Option<Duration> {
    let value: Value = serde_json::from_str(body).ok()?;
    value["error"]["details"]
        .as_array()?
        .iter()
        .filter(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| d["retryDelay"].as_str()?.strip_suffix('s'))
        .and_then(parse_retry_after)
}

/// The Gemini request for an OpenAI chat-completions request.
fn request_body(request: &Map<String, Value>) -> Result<Value, ProviderError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_request("the request has no messages array"))?;
    let (system, contents) = contents(messages)?;
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if let Some(tools) = tools(request)? {
        body.insert("tools".into(), tools);
    }
    if let Some(config) = tool_config(request)? {
        body.insert("toolConfig".into(), config);
    }
    let generation = generation_config(request)?;
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

/// System text parts and the conversation as Gemini `contents`. Consecutive messages that
/// land on the same Gemini role (tool results, then the user's next words) share one turn,
/// since Gemini expects the roles to alternate.
fn contents(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, parts) = match role {
            "system" | "developer" => {
                let text = content_text(content);
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
                continue;
            }
            "user" => ("user", user_parts(content)?),
            "assistant" => ("model", model_parts(message)?),
            "tool" | "function" => ("user", vec![function_response(message, &messages[..i])?]),
            other => return Err(bad_request(format!("unsupported message role {other:?}"))),
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    Ok((system, contents))
}

/// The parts of a user message: text, and images, audio or files given as data.
fn user_parts(content: &Value) -> Result<Vec<Value>, ProviderError> {
    let parts = match content {
        Value::Null => return Ok(Vec::new()),
        Value::String(text) => return Ok(text_part(text).into_iter().collect()),
        Value::Array(parts) => parts,
        _ => return Err(bad_request("message content must be a string or an array")),
    };
    let mut out = Vec::new();
    for part in parts {
        match part.get("type").and_then(Value::as_str).unwrap_or_default() {
            "text" => out.extend(text_part(part["text"].as_str().unwrap_or_default())),
            "image_url" => out.push(inline_data(
                part["image_url"]["url"].as_str().unwrap_or_default(),
            )?),
            "file" => out.push(inline_data(
                part["file"]["file_data"].as_str().unwrap_or_default(),
            )?),
            "input_audio" => {
                let format = part["input_audio"]["format"].as_str().unwrap_or("wav");
                out.push(json!({"inlineData": {
                    "mimeType": format!("audio/{format}"),
                    "data": part["input_audio"]["data"],
                }}));
            }
            other => {
                return Err(bad_request(format!(
                    "content part type {other:?} is not supported for Gemini"
                )));
            }
        }
    }
    Ok(out)
}

/// A text part, or none for empty text: Gemini refuses empty parts.
fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"text": text}))
}

/// A `data:<mime>;base64,<data>` URL as an `inlineData` part.
fn inline_data(url: &str) -> Result<Value, ProviderError> {
    let (mime, data) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .ok_or_else(|| {
            bad_request("Gemini takes images and files only as base64 data URLs, not links")
        })?;
    Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
}

/// The parts of an assistant message: its text, then a `functionCall` per tool call.
fn model_parts(message: &Value) -> Result<Vec<Value>, ProviderError> {
    let mut parts: Vec<Value> = text_part(&content_text(
        message.get("content").unwrap_or(&Value::Null),
    ))
    .into_iter()
    .collect();
    let calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (n, call) in calls.iter().enumerate() {
        let function = &call["function"];
        let name = function["name"]
            .as_str()
            .ok_or_else(|| bad_request("a tool call has no function name"))?;
        let arguments = function["arguments"].as_str().unwrap_or_default();
        let args = shape::call_arguments(name, arguments)?;
        let mut part = json!({"functionCall": {"name": name, "args": args}});
        let signature = call["extra_content"]["google"]["thought_signature"].as_str();
        // Gemini signs only the first call of a parallel batch and checks only that one.
        match signature {
            Some(signature) => part["thoughtSignature"] = json!(signature),
            None if n == 0 => part["thoughtSignature"] = json!(SKIP_SIGNATURE),
            None => {}
        }
        parts.push(part);
    }
    Ok(parts)
}

/// A `functionResponse` part for a tool result. Gemini matches results to calls by function
/// name, which the OpenAI message only names through `tool_call_id`.
fn function_response(message: &Value, earlier: &[Value]) -> Result<Value, ProviderError> {
    let id = message.get("tool_call_id").and_then(Value::as_str);
    let called = id.and_then(|id| {
        earlier
            .iter()
            .rev()
            .filter_map(|m| m.get("tool_calls").and_then(Value::as_array))
            .flatten()
            .find(|c| c["id"].as_str() == Some(id))
            .and_then(|c| c["function"]["name"].as_str())
    });
    let name = called
        .or_else(|| message.get("name").and_then(Value::as_str))
        .ok_or_else(|| {
            bad_request(format!(
                "tool message answers tool_call_id {id:?}, which no earlier assistant message made"
            ))
        })?;
    let text = content_text(message.get("content").unwrap_or(&Value::Null));
    // Gemini wants an object; a result that is not one goes under "output", as its docs ask.
    let response = serde_json::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"output": text}));
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// `tools` as one Gemini tool holding every function declaration.
fn tools(request: &Map<String, Value>) -> Result<Option<Value>, ProviderError> {
    let Some(tools) = request
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    let mut declarations = Vec::with_capacity(tools.len());
    for tool in tools {
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        if kind != "function" {
            return Err(bad_request(format!(
                "tool type {kind:?} is not supported for Gemini"
            )));
        }
        let function = &tool["function"];
        let name = function["name"]
            .as_str()
            .ok_or_else(|| bad_request("a tool has no function name"))?;
        let mut declaration = json!({"name": name});
        if let Some(description) = function["description"].as_str() {
            declaration["description"] = json!(description);
        }
        // A function without arguments is declared without a schema: Gemini refuses an
        // object schema with no properties.
        let parameters = &function["parameters"];
        let no_arguments = parameters["properties"]
            .as_object()
            .is_none_or(Map::is_empty)
            && parameters["type"].as_str().is_none_or(|t| t == "object");
        if parameters.is_object() && !no_arguments {
            declaration["parametersJsonSchema"] = parameters.clone();
        }
        declarations.push(declaration);
    }
    Ok(Some(json!([{"functionDeclarations": declarations}])))
}

/// `tool_choice` as `toolConfig.functionCallingConfig`.
fn tool_config(request: &Map<String, Value>) -> Result<Option<Value>, ProviderError> {
    let Some(choice) = request.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let config = match choice.as_str() {
        Some("auto") => json!({"mode": "AUTO"}),
        Some("none") => json!({"mode": "NONE"}),
        Some("required") => json!({"mode": "ANY"}),
        _ => match choice["function"]["name"].as_str() {
            Some(name) if choice["type"] == "function" => {
                json!({"mode": "ANY", "allowedFunctionNames": [name]})
            }
            _ => return Err(bad_request(format!("unsupported tool_choice {choice}"))),
        },
    };
    Ok(Some(json!({"functionCallingConfig": config})))
}

/// Sampling limits and the output format as `generationConfig`.
fn generation_config(request: &Map<String, Value>) -> Result<Map<String, Value>, ProviderError> {
    let mut config = Map::new();
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k).filter(|v| v.is_u64()));
    if let Some(max) = max_tokens {
        config.insert("maxOutputTokens".into(), max.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = request.get(from).filter(|v| v.is_number()) {
            config.insert(to.into(), v.clone());
        }
    }
    match request.get("stop") {
        Some(Value::String(stop)) => {
            config.insert("stopSequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            config.insert("stopSequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(format) = request.get("response_format").filter(|f| !f.is_null()) {
        match format["type"].as_str() {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = format["json_schema"].get("schema") {
                    config.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            _ => {
                return Err(bad_request(format!("unsupported response_format {format}")));
            }
        }
    }
    Ok(config)
}

/// The first candidate's text (thought summaries left out) and its function calls as OpenAI
/// tool calls, numbered from `first_index`.
fn read_parts(candidate: &Value, first_index: usize, tag: &str) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let parts = candidate["content"]["parts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for part in parts {
        if part["thought"] == json!(true) {
            continue;
        }
        if let Some(t) = part["text"].as_str() {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            let index = first_index + calls.len();
            let args = call
                .get("args")
                .filter(|a| !a.is_null())
                .cloned()
                .unwrap_or_else(|| json!({}));
            let mut tool_call = json!({
                "id": format!("call_{tag}_{index}"),
                "type": "function",
                "function": {
                    "name": call["name"].as_str().unwrap_or_default(),
                    "arguments": args.to_string(),
                },
            });
            if let Some(signature) = part["thoughtSignature"].as_str() {
                tool_call["extra_content"] = json!({"google": {"thought_signature": signature}});
            }
            calls.push(tool_call);
        }
    }
    (text, calls)
}

/// The OpenAI `finish_reason` for a Gemini `finishReason`; `None` while unfinished.
fn finish_reason(
    reason: Option<&str>,
    has_tool_calls: bool,
) -> Result<Option<&'static str>, ProviderError> {
    let Some(reason) = reason else {
        return Ok(None);
    };
    if BROKEN_CALL.contains(&reason) {
        return Err(invalid_response(format!(
            "the model produced an unusable function call ({reason})"
        )));
    }
    Ok(Some(if has_tool_calls {
        "tool_calls"
    } else if reason == "MAX_TOKENS" {
        "length"
    } else if FILTERED.contains(&reason) {
        "content_filter"
    } else {
        "stop"
    }))
}

/// OpenAI `usage` for `usageMetadata`: thinking counts as completion tokens, as OpenAI
/// counts reasoning.
fn usage(metadata: &Value) -> Value {
    let count = |key: &str| metadata[key].as_u64().unwrap_or(0);
    let thoughts = count("thoughtsTokenCount");
    let cached = count("cachedContentTokenCount");
    // Saturating: the counts are the provider's numbers, and a bogus one must not panic.
    let mut usage = shape::usage(
        count("promptTokenCount").saturating_add(count("toolUsePromptTokenCount")),
        count("candidatesTokenCount").saturating_add(thoughts),
    );
    if thoughts > 0 {
        usage["completion_tokens_details"] = json!({"reasoning_tokens": thoughts});
    }
    if cached > 0 {
        usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    usage
}

fn blocked(answer: &Value) -> bool {
    answer["promptFeedback"]["blockReason"].is_string()
}

/// The OpenAI `chat.completion` for a `generateContent` answer.
fn completion(answer: &Value, model: &str, tag: &str) -> Result<Value, ProviderError> {
    let id = format!("chatcmpl-{tag}");
    let model = answer["modelVersion"].as_str().unwrap_or(model);
    let usage = answer
        .get("usageMetadata")
        .map(usage)
        .unwrap_or(Value::Null);
    let Some(candidate) = answer["candidates"].as_array().and_then(|c| c.first()) else {
        if blocked(answer) {
            let message = json!({"role": "assistant", "content": ""});
            return Ok(shape::completion(
                &id,
                model,
                message,
                "content_filter",
                usage,
            ));
        }
        return Err(invalid_response(
            "Gemini answer has neither candidates nor a block reason",
        ));
    };
    let (text, calls) = read_parts(candidate, 0, tag);
    let reason = finish_reason(candidate["finishReason"].as_str(), !calls.is_empty())?.unwrap_or(
        if calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        },
    );
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Ok(shape::completion(&id, model, message, reason, usage))
}

/// Turns stream fragments into chunks. Gemini has no end-of-stream marker, so the answer is
/// complete only if some fragment carried a `finishReason` (or a block reason); the final
/// chunk goes out when the stream closes, carrying the last usage seen.
#[derive(Debug)]
struct Fragments {
    id: String,
    tag: String,
    model: String,
    started: bool,
    tool_calls: usize,
    finish: Option<String>,
    blocked: bool,
    usage: Value,
}

impl Fragments {
    fn new(model: &str, tag: String) -> Self {
        Self {
            id: format!("chatcmpl-{tag}"),
            tag,
            model: model.to_owned(),
            started: false,
            tool_calls: 0,
            finish: None,
            blocked: false,
            usage: Value::Null,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Value, usage: Value) -> Value {
        shape::chunk(&self.id, &self.model, delta, finish_reason, usage)
    }

    /// The chunks for one fragment: the role first, then its text, then its tool calls.
    fn push(&mut self, fragment: &Value) -> Vec<Value> {
        if let Some(model) = fragment["modelVersion"].as_str() {
            model.clone_into(&mut self.model);
        }
        if let Some(metadata) = fragment.get("usageMetadata") {
            self.usage = usage(metadata);
        }
        let mut chunks = Vec::new();
        if !self.started {
            self.started = true;
            chunks.push(self.chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                Value::Null,
            ));
        }
        let Some(candidate) = fragment["candidates"].as_array().and_then(|c| c.first()) else {
            self.blocked |= blocked(fragment);
            return chunks;
        };
        let (text, calls) = read_parts(candidate, self.tool_calls, &self.tag);
        if !text.is_empty() {
            chunks.push(self.chunk(json!({"content": text}), Value::Null, Value::Null));
        }
        if !calls.is_empty() {
            let deltas: Vec<Value> = calls
                .into_iter()
                .enumerate()
                .map(|(k, mut call)| {
                    call["index"] = json!(self.tool_calls + k);
                    call
                })
                .collect();
            self.tool_calls += deltas.len();
            chunks.push(self.chunk(json!({"tool_calls": deltas}), Value::Null, Value::Null));
        }
        if let Some(reason) = candidate["finishReason"].as_str() {
            self.finish = Some(reason.to_owned());
        }
        chunks
    }

    /// The final chunk once the stream has closed, or why the answer is incomplete.
    fn end(&self) -> Result<Value, ProviderError> {
        let reason = if self.blocked {
            "content_filter"
        } else {
            finish_reason(self.finish.as_deref(), self.tool_calls > 0)?
                .ok_or_else(|| cut_stream("a finishReason"))?
        };
        Ok(self.chunk(json!({}), json!(reason), self.usage.clone()))
    }
}

/// Reads SSE events (each a response fragment) into chunks. Gemini streams have no end
/// marker: the stream ends when the events do, and must have carried a finish reason.
struct Events {
    fragments: Fragments,
    secret: Option<String>,
}

impl Translate for Events {
    fn event(&mut self, data: &str) -> Result<Vec<Value>, ProviderError> {
        let fragment = event_json(data)?;
        if let Some(error) = fragment.get("error") {
            let code = error["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500);
            return Err(gemini_error(code, data, self.secret.as_deref()));
        }
        Ok(self.fragments.push(&fragment))
    }

    fn done(&self) -> bool {
        false
    }

    fn end(&mut self) -> Result<Vec<Value>, ProviderError> {
        self.fragments.end().map(|chunk| vec![chunk])
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn model_names_are_checked_and_unprefixed() {
        assert_eq!(
            model_segment("gemini-2.5-flash").unwrap(),
            "gemini-2.5-flash"
        );
        assert_eq!(
            model_segment("models/gemini-2.0-flash-001").unwrap(),
            "gemini-2.0-flash-001"
        );
        for bad in [
            "",
            "models/",
            "a/b",
            "m?key=x",
            "m#x",
            "m:generateContent",
            "m n",
        ] {
            assert_eq!(
                model_segment(bad).unwrap_err().class,
                FailureClass::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn messages_become_contents_and_system_instruction() {
        let body = request_body(&map(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "thanks"}
        ]})))
        .unwrap();
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "be brief"}, {"text": "and kind"}]})
        );
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "look"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
                {"role": "model", "parts": [{"text": "ok"}]},
                {"role": "user", "parts": [{"text": "thanks"}]}
            ])
        );
        assert!(body.get("generationConfig").is_none());
    }

    #[test]
    fn unsupported_inputs_are_bad_requests() {
        for request in [
            json!({}),
            json!({"messages": [{"role": "critic", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
            json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            json!({"messages": [], "tools": [{"type": "web_search"}]}),
            json!({"messages": [], "tool_choice": "sometimes"}),
            json!({"messages": [], "response_format": {"type": "yaml"}}),
        ] {
            let err = request_body(&map(request.clone())).unwrap_err();
            assert_eq!(err.class, FailureClass::BadRequest, "{request}");
        }
    }

    #[test]
    fn tool_calls_and_results_round_trip() {
        let body = request_body(&map(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
                 "extra_content": {"google": {"thought_signature": "sig1"}}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 3}"},
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
            {"role": "user", "content": "and tomorrow?"}
        ]})))
        .unwrap();
        assert_eq!(
            body["contents"][1],
            json!({"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "sig1"},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]})
        );
        assert_eq!(
            body["contents"][2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
                {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}},
                {"text": "and tomorrow?"}
            ]})
        );
    }

    #[test]
    fn unsigned_calls_get_the_documented_stand_in() {
        let body = request_body(&map(json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
            ]}
        ]})))
        .unwrap();
        let parts = &body["contents"][1]["parts"];
        assert_eq!(parts[0]["thoughtSignature"], SKIP_SIGNATURE);
        assert!(parts[1].get("thoughtSignature").is_none());
    }

    #[test]
    fn repeated_call_ids_resolve_to_the_nearest_call() {
        let body = request_body(&map(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "old", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "1"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "new", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "2"}
        ]})))
        .unwrap();
        assert_eq!(
            body["contents"][1]["parts"][0]["functionResponse"]["name"],
            "old"
        );
        assert_eq!(
            body["contents"][3]["parts"][0]["functionResponse"]["name"],
            "new"
        );
    }

    #[test]
    fn tools_choice_and_generation_config() {
        let body = request_body(&map(json!({
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {"type": "function", "function": {"name": "f", "description": "does f",
                  "parameters": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}}},
                {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "max_tokens": 100,
            "max_completion_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END",
            "n": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
        })))
        .unwrap();
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [
                {"name": "f", "description": "does f",
                 "parametersJsonSchema": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}},
                {"name": "g"}
            ]}])
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}})
        );
        assert_eq!(
            body["generationConfig"],
            json!({
                "maxOutputTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"],
                "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}
            })
        );
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let config = tool_config(&map(json!({"tool_choice": choice})))
                .unwrap()
                .unwrap();
            assert_eq!(config["functionCallingConfig"]["mode"], mode);
        }
        let config = generation_config(&map(
            json!({"response_format": {"type": "json_object"}, "stop": ["a", "b"]}),
        ))
        .unwrap();
        assert_eq!(config["responseMimeType"], "application/json");
        assert_eq!(config["stopSequences"], json!(["a", "b"]));
        assert!(config.get("responseJsonSchema").is_none());
    }

    #[test]
    fn answers_become_completions() {
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true},
                {"text": "Hel"}, {"text": "lo"}
            ]}, "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6, "thoughtsTokenCount": 2, "totalTokenCount": 12},
            "modelVersion": "gemini-2.5-flash"
        });
        let done = completion(&answer, "alias", "t").unwrap();
        assert_eq!(done["id"], "chatcmpl-t");
        assert_eq!(done["model"], "gemini-2.5-flash");
        assert_eq!(done["choices"][0]["message"]["content"], "Hello");
        assert_eq!(done["choices"][0]["finish_reason"], "length");
        assert_eq!(done["usage"]["prompt_tokens"], 4);
        assert_eq!(done["usage"]["completion_tokens"], 8);
        assert_eq!(done["usage"]["total_tokens"], 12);
        assert_eq!(
            done["usage"]["completion_tokens_details"]["reasoning_tokens"],
            2
        );
    }

    #[test]
    fn function_calls_become_tool_calls() {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "sig"},
            {"functionCall": {"name": "g"}}
        ]}, "finishReason": "STOP"}]});
        let done = completion(&answer, "m", "t").unwrap();
        let message = &done["choices"][0]["message"];
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        assert!(message["content"].is_null());
        assert_eq!(
            message["tool_calls"],
            json!([
                {"id": "call_t_0", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"},
                 "extra_content": {"google": {"thought_signature": "sig"}}},
                {"id": "call_t_1", "type": "function", "function": {"name": "g", "arguments": "{}"}}
            ])
        );
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(finish_reason(None, false).unwrap(), None);
        assert_eq!(finish_reason(Some("STOP"), false).unwrap(), Some("stop"));
        assert_eq!(
            finish_reason(Some("STOP"), true).unwrap(),
            Some("tool_calls")
        );
        assert_eq!(
            finish_reason(Some("MAX_TOKENS"), false).unwrap(),
            Some("length")
        );
        assert_eq!(finish_reason(Some("OTHER"), false).unwrap(), Some("stop"));
        for reason in [
            "SAFETY",
            "RECITATION",
            "PROHIBITED_CONTENT",
            "BLOCKLIST",
            "SPII",
        ] {
            assert_eq!(
                finish_reason(Some(reason), false).unwrap(),
                Some("content_filter")
            );
        }
        let err = finish_reason(Some("MALFORMED_FUNCTION_CALL"), false).unwrap_err();
        assert_eq!(err.class, FailureClass::InvalidResponse);
    }

    #[test]
    fn blocked_prompts_are_content_filter_answers() {
        let answer = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}});
        let done = completion(&answer, "m", "t").unwrap();
        assert_eq!(done["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(done["choices"][0]["message"]["content"], "");
        assert_eq!(done["usage"]["prompt_tokens"], 3);
        let err = completion(&json!({}), "m", "t").unwrap_err();
        assert_eq!(err.class, FailureClass::InvalidResponse);
    }

    #[test]
    fn fragments_become_chunks() {
        let mut fragments = Fragments::new("m", "t".into());
        let first =
            fragments.push(&json!({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}));
        assert_eq!(first.len(), 2);
        assert_eq!(first[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first[1]["choices"][0]["delta"]["content"], "Hi");
        let calls = fragments.push(&json!({"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "f", "args": {}}}, {"functionCall": {"name": "g", "args": {}}}
        ]}}]}));
        let deltas = &calls[0]["choices"][0]["delta"]["tool_calls"];
        assert_eq!(deltas[1]["index"], 1);
        assert_eq!(deltas[1]["id"], "call_t_1");
        assert_eq!(deltas[1]["function"]["name"], "g");
        assert!(fragments.end().is_err(), "no finishReason yet");
        fragments.push(&json!({
            "candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2}
        }));
        let last = fragments.end().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(last["usage"]["total_tokens"], 3);
    }

    #[test]
    fn an_unfinished_stream_is_cut() {
        let mut fragments = Fragments::new("m", "t".into());
        fragments.push(&json!({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}));
        assert_eq!(fragments.end().unwrap_err().class, FailureClass::Network);
        let mut fragments = Fragments::new("m", "t".into());
        fragments.push(&json!({"promptFeedback": {"blockReason": "OTHER"}}));
        assert_eq!(
            fragments.end().unwrap()["choices"][0]["finish_reason"],
            "content_filter"
        );
    }

    #[test]
    fn an_error_inside_the_stream_is_classified() {
        let mut events = Events {
            fragments: Fragments::new("m", "t".into()),
            secret: Some("gm-key".into()),
        };
        let data =
            r#"{"error":{"code":503,"message":"overloaded (key gm-key)","status":"UNAVAILABLE"}}"#;
        let err = events.event(data).unwrap_err();
        assert_eq!(err.class, FailureClass::Upstream5xx);
        assert_eq!(err.message, "overloaded (key *****)");
        let err = events.event("{\"candidates\": [").unwrap_err();
        assert_eq!(err.class, FailureClass::InvalidResponse);
    }

    #[test]
    fn errors_are_classified_with_their_retry_delay() {
        let quota = r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
        let err = gemini_error(429, quota, None);
        assert_eq!(err.class, FailureClass::RateLimited);
        assert_eq!(err.retry_after, Some(Duration::from_secs(37)));
        assert_eq!(err.message, "Quota exceeded");
        let bad_key = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
        assert_eq!(gemini_error(400, bad_key, None).class, FailureClass::Auth);
        let too_long = r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(
            gemini_error(400, too_long, None).class,
            FailureClass::ContextLength
        );
        let other = r#"{"error":{"code":400,"message":"Invalid value at 'contents'","status":"INVALID_ARGUMENT"}}"#;
        let err = gemini_error(400, other, None);
        assert_eq!(err.class, FailureClass::BadRequest);
        assert_eq!(err.retry_after, None);
    }
}
