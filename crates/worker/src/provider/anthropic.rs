//! The Anthropic Messages API (`POST {base_url}/messages`): OpenAI chat requests mapped to
//! Messages requests, and Messages answers and event streams mapped back to OpenAI
//! `chat.completion`s and `chat.completion.chunk`s.
//!
//! JSON output (`response_format`) uses the forced-tool pattern rather than Anthropic's
//! native `output_config.format`: the native form only exists on recent models and a
//! request for it fails on every older one, while a forced tool call works on every model
//! with tool use. The tool's input comes back as the message `content`, as a JSON string.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use shared::FailureClass;

use super::http::{Translate, chunk_stream, cut_stream, event_json, json_body, send, sse_events};
use super::shape::{self, content_text};
use super::{Call, ChunkStream, ProviderError, classify_status, error_text};

/// The API version every request pins; the wire format below is this version's.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` when the caller sets none: Anthropic requires one, and 4096 is an answer
/// length every Claude model accepts.
const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The tool a JSON answer is forced through when the caller asks for `response_format`.
const JSON_TOOL: &str = "json_response";

/// A client for one Anthropic Messages base URL (e.g. `https://api.anthropic.com/v1`).
#[derive(Debug, Clone)]
pub struct Anthropic {
    http: reqwest::Client,
    url: String,
}

impl Anthropic {
    pub fn new(http: reqwest::Client, base_url: String) -> Self {
        Self {
            http,
            url: format!("{base_url}/messages"),
        }
    }

    pub async fn complete(&self, call: Call<'_>) -> Result<Value, ProviderError> {
        let mapped = request_body(call.model, call.request, false)?;
        let answer = json_body(self.send(call, &mapped.body).await?).await?;
        completion(&answer, call.model, mapped.json_tool)
    }

    pub async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let mapped = request_body(call.model, call.request, true)?;
        let events = sse_events(self.send(call, &mapped.body).await?)?;
        let events_in = Events {
            translator: Translator::new(call.model, mapped.json_tool),
            secret: call.key.map(|s| s.expose().to_owned()),
        };
        Ok(chunk_stream(events, events_in))
    }

    async fn send(
        &self,
        call: Call<'_>,
        body: &Map<String, Value>,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut request = self
            .http
            .post(&self.url)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(body);
        if let Some(key) = call.key {
            request = request.header("x-api-key", key.expose());
        }
        send(request, call.key).await
    }
}

/// A Messages request, and whether a JSON answer was asked for through [`JSON_TOOL`].
#[derive(Debug)]
struct Mapped {
    body: Map<String, Value>,
    json_tool: bool,
}

fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(FailureClass::BadRequest, message)
}

/// Maps the caller's OpenAI chat request to a Messages request. Fields Anthropic has no
/// counterpart for (`n`, penalties, `logprobs`, `seed`, …) are left out.
fn request_body(
    model: &str,
    request: &Map<String, Value>,
    stream: bool,
) -> Result<Mapped, ProviderError> {
    let empty = Vec::new();
    let openai_messages = request
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let (system, messages) = messages(openai_messages)?;
    let mut body = Map::new();
    body.insert("model".to_owned(), json!(model));
    body.insert("messages".to_owned(), Value::Array(messages));
    if let Some(system) = system {
        body.insert("system".to_owned(), json!(system));
    }
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".to_owned(), json!(max_tokens));
    // Anthropic takes temperature in 0–1 where OpenAI takes 0–2; a value above 1 is passed
    // on so Anthropic refuses it, rather than being quietly changed into another request.
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = request.get(key).filter(|v| v.is_number()) {
            body.insert(key.to_owned(), v.clone());
        }
    }
    let stop = stop_sequences(request.get("stop"));
    if !stop.is_empty() {
        body.insert("stop_sequences".to_owned(), json!(stop));
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        body.insert("metadata".to_owned(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".to_owned(), json!(true));
    }

    let mut tools = tools(request.get("tools"))?;
    let mut choice = tool_choice(request.get("tool_choice"))?;
    let json_schema = json_schema(request.get("response_format"));
    let json_tool = json_schema.is_some();
    if let Some((schema, description)) = json_schema {
        let caller_disabled_tools = choice.as_ref().is_some_and(|c| c["type"] == "none");
        if tools.is_empty() || caller_disabled_tools {
            tools.clear();
            choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
        } else if choice.as_ref().is_none_or(|c| c["type"] == "auto") {
            // The model may still call the caller's tools, but must not answer in free text.
            choice = Some(json!({"type": "any"}));
        }
        tools.push(json!({"name": JSON_TOOL, "description": description, "input_schema": schema}));
    }
    // A choice among no tools means nothing, and Anthropic refuses it.
    if let Some(mut choice) = choice.filter(|_| !tools.is_empty()) {
        let parallel = request.get("parallel_tool_calls").and_then(Value::as_bool);
        if parallel == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        body.insert("tool_choice".to_owned(), choice);
    }
    if !tools.is_empty() {
        body.insert("tools".to_owned(), Value::Array(tools));
    }
    Ok(Mapped { body, json_tool })
}

/// Splits OpenAI messages into the top-level `system` text and Messages turns. Tool results
/// become `tool_result` blocks of a user turn; consecutive turns of one role are merged,
/// since Anthropic wants user and assistant to alternate.
fn messages(openai: &[Value]) -> Result<(Option<String>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for message in openai {
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                let text = content_text(content);
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Some("user") => ("user", content_blocks(content)),
            Some("assistant") => ("assistant", assistant_blocks(message)?),
            Some("tool") => ("user", vec![tool_result(message)]),
            other => {
                return Err(bad_request(format!(
                    "message role {other:?} has no Anthropic counterpart"
                )));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, turns))
}

/// Text and image blocks for OpenAI message content. Empty text is dropped (Anthropic
/// refuses empty text blocks); audio and file parts have no mapping and are dropped too.
fn content_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) if !text.is_empty() => vec![json!({"type": "text", "text": text})],
        Value::Array(parts) => parts.iter().filter_map(part_block).collect(),
        _ => Vec::new(),
    }
}

fn part_block(part: &Value) -> Option<Value> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = part
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())?;
            let mut block = json!({"type": "text", "text": text});
            // Prompt caching markers, as OpenAI-shaped clients for Claude send them.
            if let Some(cache) = part.get("cache_control") {
                block["cache_control"] = cache.clone();
            }
            Some(block)
        }
        Some("image_url") => {
            let url = part
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)?;
            image_block(url)
        }
        _ => None,
    }
}

/// A `data:` URL becomes a base64 image; an `http(s)` URL an image Anthropic fetches itself.
fn image_block(url: &str) -> Option<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        let media_type = meta.strip_suffix(";base64")?;
        return Some(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    (url.starts_with("https://") || url.starts_with("http://"))
        .then(|| json!({"type": "image", "source": {"type": "url", "url": url}}))
}

/// An assistant turn: its text, then a `tool_use` block per tool call.
fn assistant_blocks(message: &Value) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = content_blocks(message.get("content").unwrap_or(&Value::Null));
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let function = call.get("function").unwrap_or(&Value::Null);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let arguments = function
            .get("arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let input = shape::call_arguments(name, arguments)?;
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": name,
            "input": input,
        }));
    }
    Ok(blocks)
}

fn tool_result(message: &Value) -> Value {
    let mut block = json!({
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id").cloned().unwrap_or(Value::Null),
    });
    let text = content_text(message.get("content").unwrap_or(&Value::Null));
    // An empty `content` is refused where a missing one is not.
    if !text.is_empty() {
        block["content"] = json!(text);
    }
    block
}

fn stop_sequences(stop: Option<&Value>) -> Vec<String> {
    let all = match stop {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    // Anthropic refuses whitespace-only stop sequences.
    all.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// OpenAI function tools as Anthropic tools. The tool named [`JSON_TOOL`] is ours.
fn tools(tools: Option<&Value>) -> Result<Vec<Value>, ProviderError> {
    let mut mapped = Vec::new();
    for tool in tools.and_then(Value::as_array).into_iter().flatten() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad_request(
                "only function tools have an Anthropic counterpart",
            ));
        }
        let function = tool.get("function").unwrap_or(&Value::Null);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name == JSON_TOOL {
            return Err(bad_request(format!(
                "the tool name {JSON_TOOL:?} is reserved for JSON answers on Anthropic"
            )));
        }
        let mut tool = json!({
            "name": name,
            "input_schema": function
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            tool["description"] = json!(description);
        }
        mapped.push(tool);
    }
    Ok(mapped)
}

fn tool_choice(choice: Option<&Value>) -> Result<Option<Value>, ProviderError> {
    let mapped = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(bad_request(format!("unknown tool_choice {other:?}"))),
        },
        Some(object) => {
            let name = object
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request("tool_choice names no function"))?;
            json!({"type": "tool", "name": name})
        }
    };
    Ok(Some(mapped))
}

/// The schema and description of the forced JSON tool, when the caller asks for JSON.
fn json_schema(format: Option<&Value>) -> Option<(Value, String)> {
    let any_object = json!({"type": "object"});
    let default_description = "Give your answer by calling this tool; its input is the answer.";
    match format?.get("type").and_then(Value::as_str)? {
        "json_object" => Some((any_object, default_description.to_owned())),
        "json_schema" => {
            let spec = format?.get("json_schema").unwrap_or(&Value::Null);
            let schema = spec.get("schema").cloned().unwrap_or(any_object);
            let description = spec.get("description").and_then(Value::as_str).map_or_else(
                || default_description.to_owned(),
                |d| format!("{default_description} {d}"),
            );
            Some((schema, description))
        }
        _ => None,
    }
}

/// A Messages answer as a `chat.completion`.
fn completion(answer: &Value, model: &str, json_tool: bool) -> Result<Value, ProviderError> {
    let blocks = answer
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ProviderError::new(
                FailureClass::InvalidResponse,
                "provider answer has no content array",
            )
        })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                if json_tool && block["name"] == JSON_TOOL {
                    text.push_str(&input.to_string());
                } else {
                    tool_calls.push(json!({
                        "id": block.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {"name": block["name"], "arguments": input.to_string()},
                    }));
                }
            }
            // Thinking and server-tool blocks have no place in an OpenAI message.
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !tool_calls.is_empty() {
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = Value::Array(tool_calls.clone());
    }
    let stop_reason = answer.get("stop_reason").and_then(Value::as_str);
    let (prompt, completion) = usage(answer.get("usage").unwrap_or(&Value::Null));
    Ok(shape::completion(
        answer.get("id").and_then(Value::as_str).unwrap_or_default(),
        answer.get("model").and_then(Value::as_str).unwrap_or(model),
        message,
        finish_reason(stop_reason, !tool_calls.is_empty()),
        shape::usage(prompt, completion),
    ))
}

/// OpenAI's `finish_reason` for a `stop_reason`. A `tool_use` stop that only called the
/// JSON tool is a finished answer, not a request to run tools.
fn finish_reason(stop_reason: Option<&str>, called_tools: bool) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") if called_tools => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and a missing reason.
        _ => "stop",
    }
}

/// Prompt and completion tokens; cached prompt tokens are still prompt tokens.
fn usage(usage: &Value) -> (u64, u64) {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    // Saturating: the counts are the provider's numbers, and a bogus one must not panic.
    let prompt = count("input_tokens")
        .saturating_add(count("cache_creation_input_tokens"))
        .saturating_add(count("cache_read_input_tokens"));
    (prompt, count("output_tokens"))
}

/// The class of an `error` event, by the HTTP status Anthropic documents for its type, so
/// an error mid-stream is classified as the same error before the stream would be.
fn stream_error(event: &Value, raw: &str, secret: Option<&str>) -> ProviderError {
    let status = match event["error"]["type"].as_str() {
        Some("invalid_request_error") => 400,
        Some("authentication_error") => 401,
        Some("billing_error") => 402,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        Some("request_too_large") => 413,
        Some("rate_limit_error") => 429,
        Some("timeout_error") => 504,
        Some("overloaded_error") => 529,
        // api_error, and any type added later: the provider failed, not the request.
        _ => 500,
    };
    ProviderError::new(classify_status(status, raw), error_text(raw, secret))
}

/// What a content block of the stream turns into.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Text,
    /// A tool call: its position among the answer's tool calls, and whether any argument
    /// text has been sent for it yet.
    ToolCall {
        index: u64,
        has_arguments: bool,
    },
    /// The forced JSON tool: its input is the answer's content.
    Json,
    /// Thinking and server-tool blocks, which OpenAI chunks have no place for.
    Ignored,
}

/// Turns Messages stream events into `chat.completion.chunk`s, one event at a time.
#[derive(Debug)]
struct Translator {
    id: String,
    model: String,
    json_tool: bool,
    blocks: HashMap<u64, Block>,
    tool_calls: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    stop_reason: Option<String>,
    /// `message_stop` arrived: the answer is complete.
    done: bool,
}

impl Translator {
    fn new(model: &str, json_tool: bool) -> Self {
        Self {
            id: String::new(),
            model: model.to_owned(),
            json_tool,
            blocks: HashMap::new(),
            tool_calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            stop_reason: None,
            done: false,
        }
    }

    fn chunk(&self, delta: Value) -> Value {
        shape::chunk(&self.id, &self.model, delta, Value::Null, Value::Null)
    }

    fn tool_delta(&self, index: u64, call: Value) -> Value {
        let mut call = call;
        call["index"] = json!(index);
        self.chunk(json!({"tool_calls": [call]}))
    }

    /// The chunks one event becomes (often none); an `error` event is an error.
    fn event(
        &mut self,
        event: &Value,
        raw: &str,
        secret: Option<&str>,
    ) -> Result<Vec<Value>, ProviderError> {
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => {
                let message = &event["message"];
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    id.clone_into(&mut self.id);
                }
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    model.clone_into(&mut self.model);
                }
                (self.prompt_tokens, self.completion_tokens) =
                    usage(message.get("usage").unwrap_or(&Value::Null));
                Ok(vec![
                    self.chunk(json!({"role": "assistant", "content": ""})),
                ])
            }
            "content_block_start" => {
                let block = &event["content_block"];
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        self.blocks.insert(index, Block::Text);
                        let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                        Ok(self.text(text))
                    }
                    Some("tool_use") if self.json_tool && block["name"] == JSON_TOOL => {
                        self.blocks.insert(index, Block::Json);
                        Ok(Vec::new())
                    }
                    Some("tool_use") => {
                        let position = self.tool_calls;
                        self.tool_calls += 1;
                        self.blocks.insert(
                            index,
                            Block::ToolCall {
                                index: position,
                                has_arguments: false,
                            },
                        );
                        let call = json!({
                            "id": block["id"],
                            "type": "function",
                            "function": {"name": block["name"], "arguments": ""},
                        });
                        Ok(vec![self.tool_delta(position, call)])
                    }
                    _ => {
                        self.blocks.insert(index, Block::Ignored);
                        Ok(Vec::new())
                    }
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                let block = self.blocks.get(&index).copied().unwrap_or(Block::Ignored);
                match (delta.get("type").and_then(Value::as_str), block) {
                    (Some("text_delta"), Block::Text) => {
                        Ok(self.text(delta["text"].as_str().unwrap_or("")))
                    }
                    (Some("input_json_delta"), Block::Json) => {
                        Ok(self.text(delta["partial_json"].as_str().unwrap_or("")))
                    }
                    (
                        Some("input_json_delta"),
                        Block::ToolCall {
                            index: position, ..
                        },
                    ) => {
                        let piece = delta["partial_json"].as_str().unwrap_or("");
                        if piece.is_empty() {
                            return Ok(Vec::new());
                        }
                        self.blocks.insert(
                            index,
                            Block::ToolCall {
                                index: position,
                                has_arguments: true,
                            },
                        );
                        let call = json!({"function": {"arguments": piece}});
                        Ok(vec![self.tool_delta(position, call)])
                    }
                    _ => Ok(Vec::new()),
                }
            }
            "content_block_stop" => match self.blocks.get(&index) {
                // A call without input streams no argument text; `{}` keeps the assembled
                // arguments parseable.
                Some(Block::ToolCall {
                    index: position,
                    has_arguments: false,
                }) => {
                    let call = json!({"function": {"arguments": "{}"}});
                    Ok(vec![self.tool_delta(*position, call)])
                }
                _ => Ok(Vec::new()),
            },
            "message_delta" => {
                if let Some(reason) = event["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_owned());
                }
                // These counts are cumulative: they replace, not add to, the earlier ones.
                let usage_update = &event["usage"];
                if let Some(output) = usage_update.get("output_tokens").and_then(Value::as_u64) {
                    self.completion_tokens = output;
                }
                if usage_update.get("input_tokens").is_some() {
                    self.prompt_tokens = usage(usage_update).0;
                }
                Ok(Vec::new())
            }
            "message_stop" => {
                self.done = true;
                let finish = finish_reason(self.stop_reason.as_deref(), self.tool_calls > 0);
                Ok(vec![shape::chunk(
                    &self.id,
                    &self.model,
                    json!({}),
                    json!(finish),
                    shape::usage(self.prompt_tokens, self.completion_tokens),
                )])
            }
            "error" => Err(stream_error(event, raw, secret)),
            // ping, and event types added after this version.
            _ => Ok(Vec::new()),
        }
    }

    fn text(&self, text: &str) -> Vec<Value> {
        if text.is_empty() {
            return Vec::new();
        }
        vec![self.chunk(json!({"content": text}))]
    }
}

/// Reads SSE events into chunks. A stream must end with `message_stop`; one that just stops
/// is a cut stream, not a complete answer.
struct Events {
    translator: Translator,
    secret: Option<String>,
}

impl Translate for Events {
    fn event(&mut self, data: &str) -> Result<Vec<Value>, ProviderError> {
        let value = event_json(data)?;
        self.translator.event(&value, data, self.secret.as_deref())
    }

    fn done(&self) -> bool {
        self.translator.done
    }

    fn end(&mut self) -> Result<Vec<Value>, ProviderError> {
        Err(cut_stream("message_stop"))
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn map(request: Value) -> Mapped {
        request_body("claude-x", request.as_object().unwrap(), false).unwrap()
    }

    fn map_err(request: Value) -> ProviderError {
        request_body("claude-x", request.as_object().unwrap(), false).unwrap_err()
    }

    #[test]
    fn system_goes_top_level_and_max_tokens_defaults() {
        let body = map(json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "be kind"}]},
                {"role": "user", "content": "hi"},
            ],
            "temperature": 0.5, "top_p": 0.9, "stop": "END", "seed": 3, "n": 1,
        }))
        .body;
        assert_eq!(body["system"], "be brief\n\nbe kind");
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );
        for absent in ["seed", "n", "stream", "tools", "tool_choice"] {
            assert!(body.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let body = map(json!({"messages": [], "max_tokens": 10, "max_completion_tokens": 20})).body;
        assert_eq!(body["max_tokens"], 20);
        let body = map(json!({"messages": [], "max_tokens": 10})).body;
        assert_eq!(body["max_tokens"], 10);
    }

    #[test]
    fn stop_list_drops_whitespace_only_sequences() {
        let body = map(json!({"messages": [], "stop": ["a", " ", "b"]})).body;
        assert_eq!(body["stop_sequences"], json!(["a", "b"]));
        let body = map(json!({"messages": [], "stop": ["\n"]})).body;
        assert!(body.get("stop_sequences").is_none());
    }

    #[test]
    fn tool_history_maps_to_tool_use_and_results_and_turns_alternate() {
        let body = map(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "user", "content": [{"type": "text", "text": "in Oslo"}]},
            {"role": "assistant", "content": "checking", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "so?"},
        ]}))
        .body;
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "weather?"},
                    {"type": "text", "text": "in Oslo"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "rain"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                    {"type": "text", "text": "so?"},
                ]},
            ])
        );
    }

    #[test]
    fn assistant_without_text_has_only_tool_use() {
        let body = map(json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ]},
        ]}))
        .body;
        assert_eq!(
            body["messages"][0]["content"],
            json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}])
        );
    }

    #[test]
    fn unusable_history_is_a_bad_request() {
        let err = map_err(json!({"messages": [
            {"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1"}},
            ]},
        ]}));
        assert_eq!(err.class, FailureClass::BadRequest);
        let err = map_err(json!({"messages": [{"role": "function", "content": "x"}]}));
        assert_eq!(err.class, FailureClass::BadRequest);
    }

    #[test]
    fn images_map_from_data_and_http_urls() {
        let body = map(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.jpg"}},
            {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}},
            {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
        ]}]}))
        .body;
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
            ])
        );
    }

    #[test]
    fn tools_and_tool_choice_map() {
        let tools = json!([{"type": "function", "function": {
            "name": "weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }}, {"type": "function", "function": {"name": "noargs"}}]);
        let body = map(json!({"messages": [], "tools": tools, "tool_choice": "required", "parallel_tool_calls": false})).body;
        assert_eq!(
            body["tools"],
            json!([
                {"name": "weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        let cases = [
            (json!("auto"), json!({"type": "auto"})),
            (json!("none"), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "weather"}}),
                json!({"type": "tool", "name": "weather"}),
            ),
        ];
        for (choice, expected) in cases {
            let body = map(json!({"messages": [], "tools": tools, "tool_choice": choice})).body;
            assert_eq!(body["tool_choice"], expected);
        }
        let err = map_err(
            json!({"messages": [], "tools": [{"type": "function", "function": {"name": JSON_TOOL}}]}),
        );
        assert_eq!(err.class, FailureClass::BadRequest);
        let body = map(json!({"messages": [], "tool_choice": "none"})).body;
        assert!(body.get("tool_choice").is_none());
    }

    #[test]
    fn json_formats_force_the_json_tool() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let mapped = map(json!({"messages": [], "response_format": {
            "type": "json_schema", "json_schema": {"name": "count", "schema": schema},
        }}));
        assert!(mapped.json_tool);
        assert_eq!(mapped.body["tools"][0]["name"], JSON_TOOL);
        assert_eq!(mapped.body["tools"][0]["input_schema"], schema);
        assert_eq!(
            mapped.body["tool_choice"],
            json!({"type": "tool", "name": JSON_TOOL})
        );

        let mapped = map(json!({"messages": [], "response_format": {"type": "json_object"}}));
        assert_eq!(
            mapped.body["tools"][0]["input_schema"],
            json!({"type": "object"})
        );

        let mapped = map(json!({"messages": [], "response_format": {"type": "text"}}));
        assert!(!mapped.json_tool);
        assert!(mapped.body.get("tools").is_none());

        // With the caller's tools on offer, the model must call one of them or answer in JSON.
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let mapped = map(
            json!({"messages": [], "tools": tools, "response_format": {"type": "json_object"}}),
        );
        assert_eq!(mapped.body["tools"].as_array().unwrap().len(), 2);
        assert_eq!(mapped.body["tool_choice"], json!({"type": "any"}));
        let mapped = map(
            json!({"messages": [], "tools": tools, "tool_choice": "none", "response_format": {"type": "json_object"}}),
        );
        assert_eq!(mapped.body["tools"].as_array().unwrap().len(), 1);
        assert_eq!(mapped.body["tool_choice"]["name"], JSON_TOOL);
    }

    #[test]
    fn answer_maps_text_tool_calls_and_usage() {
        let answer = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x-1",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 3, "output_tokens": 7},
        });
        let c = completion(&answer, "claude-x", false).unwrap();
        assert_eq!(c["id"], "msg_1");
        assert_eq!(c["model"], "claude-x-1");
        let choice = &c["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Let me check.");
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}])
        );
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 15, "completion_tokens": 7, "total_tokens": 22})
        );
    }

    #[test]
    fn json_tool_answer_becomes_content() {
        let answer = json!({
            "id": "msg_1", "content": [{"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {"n": 3}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1},
        });
        let c = completion(&answer, "m", true).unwrap();
        assert_eq!(c["choices"][0]["message"]["content"], "{\"n\":3}");
        assert!(c["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        // Without JSON mode, a tool of that name would be the caller's own call.
        let c = completion(&answer, "m", false).unwrap();
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        assert_eq!(finish_reason(Some("end_turn"), false), "stop");
        assert_eq!(finish_reason(Some("stop_sequence"), false), "stop");
        assert_eq!(finish_reason(Some("max_tokens"), false), "length");
        assert_eq!(finish_reason(Some("tool_use"), true), "tool_calls");
        assert_eq!(finish_reason(Some("tool_use"), false), "stop");
        assert_eq!(finish_reason(Some("refusal"), false), "content_filter");
        assert_eq!(finish_reason(None, false), "stop");
    }

    #[test]
    fn answer_without_content_is_invalid() {
        let err = completion(&json!({"id": "x"}), "m", false).unwrap_err();
        assert_eq!(err.class, FailureClass::InvalidResponse);
    }

    fn translate(translator: &mut Translator, events: &[Value]) -> Vec<Value> {
        events
            .iter()
            .flat_map(|e| translator.event(e, &e.to_string(), None).unwrap())
            .collect()
    }

    #[test]
    fn stream_events_become_chunks() {
        let mut t = Translator::new("claude-x", false);
        let chunks = translate(
            &mut t,
            &[
                json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x-1", "usage": {"input_tokens": 9, "cache_read_input_tokens": 1, "output_tokens": 1}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "ping"}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Oslo\"}"}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
                json!({"type": "message_stop"}),
            ],
        );
        assert!(t.done);
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(*deltas[0], json!({"role": "assistant", "content": ""}));
        assert_eq!(*deltas[1], json!({"content": "Hi"}));
        assert_eq!(
            *deltas[2],
            json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]})
        );
        assert_eq!(
            *deltas[3],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})
        );
        assert_eq!(
            *deltas[4],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]})
        );
        assert_eq!(deltas[5]["tool_calls"][0]["index"], 1);
        assert_eq!(deltas[5]["tool_calls"][0]["id"], "toolu_2");
        assert_eq!(
            *deltas[6],
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]})
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            last["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22})
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == "msg_1" && c["model"] == "claude-x-1")
        );
        assert_eq!(chunks.len(), 8);
    }

    #[test]
    fn stream_json_tool_becomes_content() {
        let mut t = Translator::new("m", true);
        let chunks = translate(
            &mut t,
            &[
                json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 1}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {}}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"n\":"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "3}"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
                json!({"type": "message_stop"}),
            ],
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "{\"n\":3}");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
    }

    #[test]
    fn stream_error_events_are_classified() {
        let cases = [
            ("overloaded_error", "Overloaded", FailureClass::Upstream5xx),
            (
                "api_error",
                "Internal server error",
                FailureClass::Upstream5xx,
            ),
            ("rate_limit_error", "slow down", FailureClass::RateLimited),
            (
                "authentication_error",
                "invalid x-api-key",
                FailureClass::Auth,
            ),
            (
                "invalid_request_error",
                "prompt is too long: 250000 tokens > 200000 maximum",
                FailureClass::ContextLength,
            ),
            (
                "invalid_request_error",
                "bad field",
                FailureClass::BadRequest,
            ),
            ("something_new", "?", FailureClass::Upstream5xx),
        ];
        for (kind, message, class) in cases {
            let event = json!({"type": "error", "error": {"type": kind, "message": message}});
            let mut t = Translator::new("m", false);
            let err = t.event(&event, &event.to_string(), None).unwrap_err();
            assert_eq!(err.class, class, "{kind}");
            assert_eq!(err.message, message);
        }
    }
}
