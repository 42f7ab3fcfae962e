//! The Replicate predictions API. One OpenAI chat request becomes one prediction of a text
//! model: `owner/name` runs an official model (`POST /models/{owner}/{name}/predictions`),
//! `owner/name:version` a pinned version (`POST /predictions` with `version`). The answer
//! comes back in the create call (`Prefer: wait`) or by polling the prediction, or, when
//! streaming, as the prediction's `output`/`error`/`done` server-sent events. A prediction
//! takes a prompt, not a conversation: see [`prediction_input`] for how messages become
//! `prompt` and `system_prompt`, and what is refused as `bad_request` because a generic
//! prediction cannot express it (tools, JSON modes, images).
//!
//! The key only goes to the configured base URL's origin, or — when the base URL is
//! Replicate's own — to Replicate's domains, which serve the stream URLs. A prediction URL
//! elsewhere is not followed; the prediction's URL under the base URL is used instead.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Url;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use serde_json::{Map, Value, json};
use shared::FailureClass;
use shared::config::Secret;

use super::http::{EventStream, cut_stream, event_json, json_body, send, sse_events};
use super::{Call, ChunkStream, ProviderError, classify_status, error_text, shape};

/// How long Replicate may hold the create call open for the answer (60 s is the most it
/// allows); the per-target timeout cuts the call shorter when it is shorter.
const PREFER_WAIT: &str = "wait=60";
/// Pause between polls of a prediction that outlived the wait: short enough that an answer
/// is not left waiting long, long enough not to spend the account's rate limit on polls.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Domains Replicate serves its prediction and stream URLs from; streams come from another
/// host than the API (`streaming.api.replicate.com`, earlier `*.replicate.net`).
const REPLICATE_DOMAINS: [&str; 2] = ["replicate.com", "replicate.net"];
/// Wording of Replicate's safety checker when it refuses a prompt or an output.
const CONTENT_REFUSALS: [&str; 2] = ["nsfw", "flagged as sensitive"];

/// A client for Replicate's API at one base URL (`https://api.replicate.com/v1`).
#[derive(Debug, Clone)]
pub struct Replicate {
    http: reqwest::Client,
    base_url: String,
    /// `base_url` parsed, to decide which URLs a prediction names may carry the key; if it
    /// does not parse, none do.
    base: Option<Url>,
}

impl Replicate {
    pub fn new(http: reqwest::Client, base_url: String) -> Self {
        let base = Url::parse(&base_url).ok();
        Self {
            http,
            base_url,
            base,
        }
    }

    pub async fn complete(&self, call: Call<'_>) -> Result<Value, ProviderError> {
        let target = target(call.model)?;
        let input = prediction_input(call.request)?;
        let max_tokens = input.get("max_tokens").and_then(Value::as_u64);
        let secret = call.key.map(Secret::expose);
        let mut prediction = self.create(call, &target, input, false).await?;
        loop {
            match status(&prediction)? {
                Status::Running => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    let url = self.prediction_url(&prediction, Link::Get)?;
                    prediction = get_prediction(&self.http, &url, call.key).await?;
                }
                Status::Succeeded => return completion(&prediction, call.model, max_tokens),
                Status::Failed | Status::Canceled => {
                    return Err(prediction_error(&prediction, secret));
                }
            }
        }
    }

    pub async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let target = target(call.model)?;
        let input = prediction_input(call.request)?;
        let max_tokens = input.get("max_tokens").and_then(Value::as_u64);
        let prediction = self.create(call, &target, input, true).await?;
        if matches!(status(&prediction)?, Status::Failed | Status::Canceled) {
            return Err(prediction_error(&prediction, call.key.map(Secret::expose)));
        }
        if prediction
            .pointer("/urls/stream")
            .is_none_or(Value::is_null)
        {
            // The prediction runs on regardless; it is not cancelled, as a model without a
            // stream URL is a configuration mistake to fix, not a path to make cheap.
            return Err(bad_request(
                "this Replicate model does not stream its output",
            ));
        }
        let stream_url = self.prediction_url(&prediction, Link::Stream)?;
        let poll_url = self.prediction_url(&prediction, Link::Get)?;
        let request = self
            .http
            .get(stream_url)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-store");
        let events = sse_events(send(authorised(request, call.key), call.key).await?)?;
        let state = StreamState {
            events,
            http: self.http.clone(),
            poll_url,
            key: call.key.cloned(),
            id: prediction
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            model: call.model.to_owned(),
            max_tokens,
            started: false,
            ended: false,
        };
        let chunks = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_chunk().await?;
            Some((item, state))
        });
        Ok(chunks.boxed())
    }

    /// Creates the prediction; without streaming, Replicate is asked to hold the call open
    /// until the answer is ready so that short predictions need no poll.
    async fn create(
        &self,
        call: Call<'_>,
        target: &Target<'_>,
        input: Map<String, Value>,
        stream: bool,
    ) -> Result<Value, ProviderError> {
        let url = match target {
            Target::Official { owner, name } => {
                format!("{}/models/{owner}/{name}/predictions", self.base_url)
            }
            Target::Version(_) => format!("{}/predictions", self.base_url),
        };
        let mut request = self
            .http
            .post(url)
            .json(&create_body(target, input, stream));
        if !stream {
            request = request.header("prefer", PREFER_WAIT);
        }
        json_body(send(authorised(request, call.key), call.key).await?).await
    }

    /// The prediction's own URL for `link` if the key may go there, else the same
    /// resource under the base URL.
    fn prediction_url(&self, prediction: &Value, link: Link) -> Result<String, ProviderError> {
        let named = prediction
            .get("urls")
            .and_then(|urls| urls.get(link.name()))
            .and_then(Value::as_str);
        if let (Some(url), Some(base)) = (named, &self.base)
            && may_carry_key(base, url)
        {
            return Ok(url.to_owned());
        }
        let id = prediction
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| is_path_segment(id))
            .ok_or_else(|| invalid("prediction has no usable id"))?;
        Ok(match link {
            Link::Get => format!("{}/predictions/{id}", self.base_url),
            Link::Stream => format!("{}/predictions/{id}/stream", self.base_url),
        })
    }
}

/// Which of a prediction's `urls` to follow.
#[derive(Debug, Clone, Copy)]
enum Link {
    Get,
    Stream,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Get => "get",
            Link::Stream => "stream",
        }
    }
}

fn authorised(request: reqwest::RequestBuilder, key: Option<&Secret>) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.bearer_auth(key.expose()),
        None => request,
    }
}

async fn get_prediction(
    http: &reqwest::Client,
    url: &str,
    key: Option<&Secret>,
) -> Result<Value, ProviderError> {
    json_body(send(authorised(http.get(url), key), key).await?).await
}

fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(FailureClass::BadRequest, message)
}

fn invalid(message: impl Into<String>) -> ProviderError {
    ProviderError::new(FailureClass::InvalidResponse, message)
}

/// What the configured model names.
#[derive(Debug, PartialEq)]
enum Target<'a> {
    /// An official model, run by name at its current version.
    Official { owner: &'a str, name: &'a str },
    /// A pinned version of any model; only the version id is sent.
    Version(&'a str),
}

/// Parses `owner/name` or `owner/name:version`. Each part becomes part of a URL path or
/// body, so anything but letters, digits, `.`, `_` and `-` (or a part of dots only, which
/// would climb the path) is refused.
fn target(model: &str) -> Result<Target<'_>, ProviderError> {
    let refuse = || {
        bad_request(format!(
            "Replicate model {model:?} is not owner/name or owner/name:version \
             (letters, digits, '.', '_' and '-')"
        ))
    };
    let (path, version) = match model.split_once(':') {
        Some((path, version)) => (path, Some(version)),
        None => (model, None),
    };
    let (owner, name) = path.split_once('/').ok_or_else(refuse)?;
    if ![owner, name]
        .into_iter()
        .chain(version)
        .all(is_path_segment)
    {
        return Err(refuse());
    }
    Ok(match version {
        Some(version) => Target::Version(version),
        None => Target::Official { owner, name },
    })
}

fn is_path_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.bytes().all(|b| b == b'.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether a URL a prediction names may be sent the key: it is on the base URL's origin
/// (scheme, host and port), or both it and the base URL are HTTPS on Replicate's domains.
fn may_carry_key(base: &Url, url: &str) -> bool {
    let Ok(url) = Url::parse(url) else {
        return false;
    };
    if url.origin() == base.origin() {
        return true;
    }
    let on_replicate = |u: &Url| {
        u.scheme() == "https"
            && u.host_str().is_some_and(|host| {
                REPLICATE_DOMAINS.iter().any(|domain| {
                    host.strip_suffix(domain)
                        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
                })
            })
    };
    on_replicate(base) && on_replicate(&url)
}

/// The prediction `input` for an OpenAI chat request, in the names Replicate's official
/// language models (the Llama 3 family: `meta/meta-llama-3-8b-instruct` and its kin) take:
///
/// - `prompt`: a lone user message is sent as its text; a conversation as a transcript of
///   `User: …` and `Assistant: …` turns separated by blank lines, ending with `Assistant:`
///   for the model to continue, since a prediction has no message list.
/// - `system_prompt`: the system (and `developer`) messages, joined by blank lines.
/// - `max_tokens` (from `max_completion_tokens` or `max_tokens`), `temperature`, `top_p`,
///   `presence_penalty`, `frequency_penalty`: as given. Older models that call the limit
///   `max_new_tokens` are not written for: Replicate's current official models take
///   `max_tokens`, and an input a model does not know is not one to guess at.
/// - `stop` → `stop_sequences`, one comma-separated string as those models take it; a stop
///   sequence containing a comma cannot be expressed and is refused.
///
/// Tools, tool messages, non-text content, JSON response formats and `n > 1` have no
/// generic prediction equivalent and are refused as `bad_request`, so that failover moves
/// on to a target that can answer them. Other OpenAI fields (`seed`, `user`, …) are dropped.
fn prediction_input(request: &Map<String, Value>) -> Result<Map<String, Value>, ProviderError> {
    refuse_unsupported(request)?;
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_request("the request has no messages array"))?;
    let mut system = Vec::new();
    let mut turns = Vec::new();
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let text = message_text(message)?;
        match role {
            "system" | "developer" => system.push(text),
            "user" => turns.push((Speaker::User, text)),
            "assistant" => {
                if message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .is_some_and(|calls| !calls.is_empty())
                {
                    return Err(bad_request(
                        "Replicate predictions cannot carry assistant tool calls",
                    ));
                }
                turns.push((Speaker::Assistant, text));
            }
            other => {
                return Err(bad_request(format!(
                    "Replicate predictions cannot carry {other:?} messages"
                )));
            }
        }
    }
    if turns.is_empty() {
        return Err(bad_request("the request has no user or assistant message"));
    }
    let mut input = Map::new();
    input.insert("prompt".into(), Value::String(render_prompt(&turns)));
    if !system.is_empty() {
        input.insert("system_prompt".into(), Value::String(system.join("\n\n")));
    }
    let present = |key: &str| request.get(key).filter(|v| !v.is_null());
    if let Some(limit) = present("max_completion_tokens").or_else(|| present("max_tokens")) {
        input.insert("max_tokens".into(), limit.clone());
    }
    for key in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    ] {
        if let Some(value) = present(key) {
            input.insert(key.into(), value.clone());
        }
    }
    if let Some(stop) = stop_sequences(request.get("stop"))? {
        input.insert("stop_sequences".into(), Value::String(stop));
    }
    Ok(input)
}

fn refuse_unsupported(request: &Map<String, Value>) -> Result<(), ProviderError> {
    for key in ["tools", "functions"] {
        if request
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(|list| !list.is_empty())
        {
            return Err(bad_request(format!(
                "Replicate predictions take a plain prompt and cannot offer `{key}`"
            )));
        }
    }
    if let Some(format) = request.get("response_format").filter(|f| !f.is_null())
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(bad_request(
            "Replicate predictions cannot be held to a JSON response_format",
        ));
    }
    if request
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(bad_request("Replicate predictions give one answer, not n"));
    }
    Ok(())
}

/// A message's text; parts other than text (images, audio) would be silently lost, so
/// they are refused.
fn message_text(message: &Value) -> Result<String, ProviderError> {
    let content = message.get("content").unwrap_or(&Value::Null);
    if let Some(parts) = content.as_array()
        && parts
            .iter()
            .any(|part| part.get("type").and_then(Value::as_str) != Some("text"))
    {
        return Err(bad_request(
            "Replicate predictions take text only, not other content parts",
        ));
    }
    Ok(shape::content_text(content))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Speaker {
    User,
    Assistant,
}

fn render_prompt(turns: &[(Speaker, String)]) -> String {
    if let [(Speaker::User, text)] = turns {
        return text.clone();
    }
    let mut prompt = turns
        .iter()
        .map(|(speaker, text)| match speaker {
            Speaker::User => format!("User: {text}"),
            Speaker::Assistant => format!("Assistant: {text}"),
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    // A conversation ending with an assistant turn asks the model to continue that turn.
    if turns.last().is_some_and(|(s, _)| *s == Speaker::User) {
        prompt.push_str("\n\nAssistant:");
    }
    prompt
}

/// `stop` (a string or a list) as one comma-separated string.
fn stop_sequences(stop: Option<&Value>) -> Result<Option<String>, ProviderError> {
    let sequences: Vec<&str> = match stop {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|s| {
                s.as_str()
                    .ok_or_else(|| bad_request("stop must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad_request("stop must be a string or a list of strings")),
    };
    if sequences.iter().any(|s| s.contains(',')) {
        return Err(bad_request(
            "Replicate takes stop sequences as one comma-separated string, so none may contain a comma",
        ));
    }
    Ok((!sequences.is_empty()).then(|| sequences.join(",")))
}

/// The create body; `stream: true` asks Replicate for a stream URL.
fn create_body(target: &Target<'_>, input: Map<String, Value>, stream: bool) -> Value {
    let mut body = json!({"input": input});
    if let Target::Version(version) = target {
        body["version"] = json!(version);
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

/// Where a prediction is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Status {
    /// `starting` or `processing`.
    Running,
    Succeeded,
    Failed,
    /// `canceled`, or `aborted` (ended before it started, e.g. past its deadline).
    Canceled,
}

fn status(prediction: &Value) -> Result<Status, ProviderError> {
    match prediction.get("status").and_then(Value::as_str) {
        Some("starting" | "processing") => Ok(Status::Running),
        Some("succeeded") => Ok(Status::Succeeded),
        Some("failed") => Ok(Status::Failed),
        Some("canceled" | "aborted") => Ok(Status::Canceled),
        Some(other) => Err(invalid(format!("prediction has unknown status {other:?}"))),
        None => Err(invalid("provider answer is not a prediction (no status)")),
    }
}

/// A succeeded prediction as a `chat.completion`.
fn completion(
    prediction: &Value,
    model: &str,
    max_tokens: Option<u64>,
) -> Result<Value, ProviderError> {
    let text = output_text(prediction)?;
    let id = prediction
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(shape::completion(
        id,
        model,
        json!({"role": "assistant", "content": text}),
        finish_reason(prediction, max_tokens),
        usage(prediction),
    ))
}

/// A language model's `output` is a list of text pieces to join, or one string.
fn output_text(prediction: &Value) -> Result<String, ProviderError> {
    match prediction.get("output").unwrap_or(&Value::Null) {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(pieces) => pieces
            .iter()
            .map(|piece| {
                piece
                    .as_str()
                    .ok_or_else(|| invalid("prediction output has a piece that is not text"))
            })
            .collect(),
        _ => Err(invalid(
            "prediction output is neither text nor a list of text pieces",
        )),
    }
}

/// Token counts from `metrics`; null when the model does not report them.
fn usage(prediction: &Value) -> Value {
    match (
        token_count(prediction, "input_token_count"),
        token_count(prediction, "output_token_count"),
    ) {
        (Some(input), Some(output)) => shape::usage(input, output),
        _ => Value::Null,
    }
}

fn token_count(prediction: &Value, key: &str) -> Option<u64> {
    prediction
        .get("metrics")
        .and_then(|m| m.get(key))
        .and_then(Value::as_u64)
}

/// Replicate does not say why generation stopped: an answer exactly as long as the limit
/// asked for is taken to have been cut by it.
fn finish_reason(prediction: &Value, max_tokens: Option<u64>) -> &'static str {
    match (token_count(prediction, "output_token_count"), max_tokens) {
        (Some(produced), Some(limit)) if produced >= limit => "length",
        _ => "stop",
    }
}

/// The error for a prediction that ended without an answer. A canceled or aborted one was
/// stopped by someone else or by Replicate, not refused for its request, so it counts as
/// an upstream failure that another attempt may get past.
fn prediction_error(prediction: &Value, secret: Option<&str>) -> ProviderError {
    let status = prediction
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if status != "failed" {
        return ProviderError::new(
            FailureClass::Upstream5xx,
            format!("prediction was {status} before it finished"),
        );
    }
    let text = match prediction.get("error") {
        Some(Value::String(text)) => text.clone(),
        Some(error) if !error.is_null() => error.to_string(),
        _ => "prediction failed without saying why".to_owned(),
    };
    ProviderError::new(failure_class(&text), error_text(&text, secret))
}

/// Classifies the error text of a failed prediction (or a stream's `error` event): the
/// context-length and content-filter wordings every format shares, Replicate's safety
/// checker, and otherwise a failure of the model's run (out of memory, a crash, a timeout
/// inside the run), which another attempt may get past.
fn failure_class(text: &str) -> FailureClass {
    let lower = text.to_ascii_lowercase();
    if CONTENT_REFUSALS.iter().any(|w| lower.contains(w)) {
        return FailureClass::ContentFilter;
    }
    match classify_status(400, text) {
        class @ (FailureClass::ContextLength | FailureClass::ContentFilter) => class,
        _ => FailureClass::Upstream5xx,
    }
}

/// What one stream event means, read without any I/O.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Nothing for the caller: empty output, logs.
    Skip,
    /// A piece of the answer.
    Output(String),
    /// The prediction finished well (`done` without a `reason`).
    Done,
}

/// Reads one event of a prediction's stream: `output` pieces, `logs`, an `error` (scrubbed
/// of `secret`), or `done`, which carries `{}` or a `reason` when the prediction did not
/// succeed. Any other event is not the documented format.
fn step(event: &str, data: &str, secret: Option<&str>) -> Result<Step, ProviderError> {
    match event {
        "output" if data.is_empty() => Ok(Step::Skip),
        "output" => Ok(Step::Output(data.to_owned())),
        "logs" => Ok(Step::Skip),
        "error" => {
            let text = error_text(data, secret);
            Err(ProviderError::new(failure_class(&text), text))
        }
        "done" => {
            let done = if data.trim().is_empty() {
                json!({})
            } else {
                event_json(data)?
            };
            match done
                .get("reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                Some(reason) => Err(ProviderError::new(
                    FailureClass::Upstream5xx,
                    format!("prediction stream ended: {reason}"),
                )),
                None => Ok(Step::Done),
            }
        }
        other => Err(invalid(format!("unexpected stream event {other:?}"))),
    }
}

/// Reads a prediction's events into chunks: one per `output` piece (the first also naming
/// the role), and on `done` a last one with the finish reason and, fetched from the
/// prediction, its token counts. A stream must end with `done`; one that just stops was cut.
struct StreamState {
    events: EventStream,
    http: reqwest::Client,
    poll_url: String,
    key: Option<Secret>,
    id: String,
    model: String,
    max_tokens: Option<u64>,
    /// A chunk has gone out (the first one names the role).
    started: bool,
    ended: bool,
}

impl StreamState {
    async fn next_chunk(&mut self) -> Option<Result<Value, ProviderError>> {
        if self.ended {
            return None;
        }
        let result = self.read().await;
        if result.is_err() {
            self.ended = true;
        }
        Some(result)
    }

    async fn read(&mut self) -> Result<Value, ProviderError> {
        loop {
            let event = match self.events.next().await {
                Some(event) => event?,
                None => return Err(cut_stream("the done event")),
            };
            let secret = self.key.as_ref().map(Secret::expose);
            match step(&event.event, &event.data, secret)? {
                Step::Skip => continue,
                Step::Output(text) => {
                    return Ok(self.chunk(json!({"content": text}), Value::Null, Value::Null));
                }
                Step::Done => {
                    self.ended = true;
                    return self.done().await;
                }
            }
        }
    }

    /// The last chunk of a prediction that finished well.
    async fn done(&mut self) -> Result<Value, ProviderError> {
        // The events carry no token counts; the finished prediction does. The answer is
        // already complete, so a failed look-up only costs the usage, not the answer.
        let prediction = get_prediction(&self.http, &self.poll_url, self.key.as_ref())
            .await
            .unwrap_or(Value::Null);
        Ok(self.chunk(
            json!({}),
            json!(finish_reason(&prediction, self.max_tokens)),
            usage(&prediction),
        ))
    }

    /// A chunk; the first one also names the role. It waits for the first event rather
    /// than going out at once, so that the first-token timeout measures the model and an
    /// error before any output is not taken for a half-sent answer.
    fn chunk(&mut self, mut delta: Value, finish_reason: Value, usage: Value) -> Value {
        if !self.started {
            self.started = true;
            delta["role"] = json!("assistant");
        }
        shape::chunk(&self.id, &self.model, delta, finish_reason, usage)
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn class(result: Result<impl std::fmt::Debug, ProviderError>) -> FailureClass {
        result.unwrap_err().class
    }

    #[test]
    fn a_lone_user_message_is_the_prompt() {
        let input = prediction_input(&request(json!({
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END", "###"]
        })))
        .unwrap();
        assert_eq!(
            Value::Object(input),
            json!({
                "prompt": "hi", "system_prompt": "Be brief.", "max_tokens": 64,
                "temperature": 0.2, "top_p": 0.9, "stop_sequences": "END,###"
            })
        );
    }

    #[test]
    fn a_conversation_becomes_a_transcript() {
        let input = prediction_input(&request(json!({
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hello"}]},
                {"role": "assistant", "content": "hi there"},
                {"role": "user", "content": "how are you?"}
            ],
            "max_completion_tokens": 10, "max_tokens": 99, "stop": "\n"
        })))
        .unwrap();
        assert_eq!(
            input["prompt"],
            "User: hello\n\nAssistant: hi there\n\nUser: how are you?\n\nAssistant:"
        );
        assert!(input.get("system_prompt").is_none());
        assert_eq!(input["max_tokens"], 10);
        assert_eq!(input["stop_sequences"], "\n");
    }

    #[test]
    fn what_a_prediction_cannot_express_is_refused() {
        let user = json!({"role": "user", "content": "hi"});
        let cases = [
            json!({"messages": [user], "tools": [{"type": "function", "function": {"name": "f"}}]}),
            json!({"messages": [user], "response_format": {"type": "json_object"}}),
            json!({"messages": [user], "n": 2}),
            json!({"messages": [user], "stop": ["a,b"]}),
            json!({"messages": [user, {"role": "tool", "tool_call_id": "c1", "content": "42"}]}),
            json!({"messages": [{"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            json!({"messages": [{"role": "system", "content": "only a system prompt"}]}),
            json!({"prompt": "not chat"}),
        ];
        for case in cases {
            assert_eq!(
                class(prediction_input(&request(case.clone()))),
                FailureClass::BadRequest,
                "{case}"
            );
        }
        let allowed = prediction_input(&request(
            json!({"messages": [user], "tools": [], "response_format": {"type": "text"}, "n": 1}),
        ));
        assert!(allowed.is_ok());
    }

    #[test]
    fn model_names_are_checked_before_they_become_paths() {
        assert_eq!(
            target("meta/meta-llama-3-8b-instruct").unwrap(),
            Target::Official {
                owner: "meta",
                name: "meta-llama-3-8b-instruct"
            }
        );
        assert_eq!(
            target("replicate/hello-world:5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa")
                .unwrap(),
            Target::Version("5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa")
        );
        for bad in [
            "llama",
            "meta/",
            "/llama",
            "meta/../predictions",
            "meta/..",
            "meta/llama/extra",
            "meta/llama?x=1",
            "meta/llama:",
            "meta/llama:v1:v2",
            "meta/lla ma",
        ] {
            assert_eq!(class(target(bad)), FailureClass::BadRequest, "{bad}");
        }
    }

    #[test]
    fn the_key_only_goes_to_the_base_origin_or_replicate() {
        let local = Url::parse("http://127.0.0.1:8080/v1").unwrap();
        assert!(may_carry_key(
            &local,
            "http://127.0.0.1:8080/v1/predictions/p1"
        ));
        assert!(!may_carry_key(
            &local,
            "http://127.0.0.1:9090/v1/predictions/p1"
        ));
        assert!(!may_carry_key(
            &local,
            "http://localhost:8080/v1/predictions/p1"
        ));
        assert!(!may_carry_key(
            &local,
            "https://127.0.0.1:8080/v1/predictions/p1"
        ));
        assert!(!may_carry_key(&local, "not a url"));
        assert!(!may_carry_key(
            &local,
            "https://api.replicate.com/v1/predictions/p1"
        ));

        let replicate = Url::parse("https://api.replicate.com/v1").unwrap();
        for ok in [
            "https://api.replicate.com/v1/predictions/p1",
            "https://streaming.api.replicate.com/v1/predictions/p1",
            "https://stream-b.svc.rno2.c.replicate.net/v1/streams/abc",
        ] {
            assert!(may_carry_key(&replicate, ok), "{ok}");
        }
        for foreign in [
            "http://streaming.api.replicate.com/v1/predictions/p1",
            "https://evilreplicate.com/v1/predictions/p1",
            "https://replicate.com.evil.example/v1/predictions/p1",
            "https://example.com/v1/predictions/p1",
        ] {
            assert!(!may_carry_key(&replicate, foreign), "{foreign}");
        }
    }

    #[test]
    fn untrusted_prediction_urls_are_replaced_by_the_base_url() {
        let adapter = Replicate::new(reqwest::Client::new(), "http://127.0.0.1:8080/v1".into());
        let prediction = json!({"id": "p1", "urls": {
            "get": "http://127.0.0.1:8080/v1/predictions/p1",
            "stream": "http://elsewhere.example/streams/p1"
        }});
        assert_eq!(
            adapter.prediction_url(&prediction, Link::Get).unwrap(),
            "http://127.0.0.1:8080/v1/predictions/p1"
        );
        assert_eq!(
            adapter.prediction_url(&prediction, Link::Stream).unwrap(),
            "http://127.0.0.1:8080/v1/predictions/p1/stream"
        );
        let climbing = json!({"id": "..", "urls": {"get": "http://elsewhere.example/p"}});
        assert_eq!(
            class(adapter.prediction_url(&climbing, Link::Get)),
            FailureClass::InvalidResponse
        );
    }

    #[test]
    fn a_succeeded_prediction_becomes_a_completion() {
        let prediction = json!({
            "id": "p1", "status": "succeeded", "output": ["Hello", ", ", "world"],
            "metrics": {"input_token_count": 12, "output_token_count": 3, "predict_time": 0.4}
        });
        let answer = completion(&prediction, "meta/llama", None).unwrap();
        assert_eq!(answer["id"], "p1");
        assert_eq!(answer["model"], "meta/llama");
        assert_eq!(answer["choices"][0]["message"]["content"], "Hello, world");
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert_eq!(answer["usage"]["total_tokens"], 15);
        let capped = completion(&prediction, "meta/llama", Some(3)).unwrap();
        assert_eq!(capped["choices"][0]["finish_reason"], "length");

        let one_string = json!({"id": "p2", "status": "succeeded", "output": "whole"});
        let answer = completion(&one_string, "m", None).unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "whole");
        assert!(answer["usage"].is_null());

        for output in [json!([1, 2]), json!({"text": "x"})] {
            let odd = json!({"id": "p3", "status": "succeeded", "output": output});
            assert_eq!(
                class(completion(&odd, "m", None)),
                FailureClass::InvalidResponse
            );
        }
    }

    #[test]
    fn statuses_are_read_strictly() {
        assert_eq!(
            status(&json!({"status": "starting"})).unwrap(),
            Status::Running
        );
        assert_eq!(
            status(&json!({"status": "processing"})).unwrap(),
            Status::Running
        );
        assert_eq!(
            status(&json!({"status": "aborted"})).unwrap(),
            Status::Canceled
        );
        assert_eq!(
            class(status(&json!({"status": "queued?"}))),
            FailureClass::InvalidResponse
        );
        assert_eq!(
            class(status(&json!({"detail": "x"}))),
            FailureClass::InvalidResponse
        );
    }

    #[test]
    fn failed_predictions_are_classified_by_their_error() {
        let failed = |error: &str| json!({"status": "failed", "error": error});
        let cases = [
            (
                "prompt is too long: maximum context length is 8192 tokens",
                FailureClass::ContextLength,
            ),
            (
                "NSFW content detected. Try running it again, or try a different prompt.",
                FailureClass::ContentFilter,
            ),
            ("CUDA out of memory", FailureClass::Upstream5xx),
            ("Prediction timed out", FailureClass::Upstream5xx),
        ];
        for (error, class) in cases {
            assert_eq!(
                prediction_error(&failed(error), None).class,
                class,
                "{error}"
            );
        }
        let canceled = prediction_error(&json!({"status": "canceled"}), None);
        assert_eq!(canceled.class, FailureClass::Upstream5xx);
        let echoed = prediction_error(&failed("bad token r8_secret"), Some("r8_secret"));
        assert!(!echoed.message.contains("r8_secret"));
    }

    /// The chunks a stream of `events` gives; no event here reaches the usage look-up.
    async fn read_events(events: &[(&str, &str)]) -> Vec<Result<Value, ProviderError>> {
        let events: Vec<_> = events
            .iter()
            .map(|(event, data)| {
                Ok(eventsource_stream::Event {
                    event: (*event).to_owned(),
                    data: (*data).to_owned(),
                    ..Default::default()
                })
            })
            .collect();
        let state = StreamState {
            events: futures::stream::iter(events).boxed(),
            http: reqwest::Client::new(),
            poll_url: "http://127.0.0.1:1/v1/predictions/p1".into(),
            key: None,
            id: "p1".into(),
            model: "m".into(),
            max_tokens: None,
            started: false,
            ended: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next_chunk().await?;
            Some((item, state))
        })
        .collect()
        .await
    }

    #[tokio::test]
    async fn stream_events_map_to_chunks_or_classified_errors() {
        let items = read_events(&[("logs", "loading"), ("output", "a"), ("output", "")]).await;
        assert_eq!(items.len(), 2);
        let first = items[0].as_ref().unwrap();
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": "a"})
        );
        assert_eq!(
            items[1].as_ref().unwrap_err().class,
            FailureClass::Network,
            "a stream without done was cut"
        );

        let cases = [
            (
                vec![("output", "a"), ("done", r#"{"reason":"canceled"}"#)],
                FailureClass::Upstream5xx,
            ),
            (vec![("done", "{broken")], FailureClass::InvalidResponse),
            (vec![("message", "{}")], FailureClass::InvalidResponse),
            (
                vec![("error", r#"{"detail":"CUDA out of memory"}"#)],
                FailureClass::Upstream5xx,
            ),
            (
                vec![(
                    "error",
                    "prompt is too long: maximum context length is 4096",
                )],
                FailureClass::ContextLength,
            ),
        ];
        for (events, class) in cases {
            let items = read_events(&events).await;
            let last = items.last().unwrap();
            assert_eq!(last.as_ref().unwrap_err().class, class, "{events:?}");
            assert_eq!(items.iter().filter(|i| i.is_err()).count(), 1);
        }
    }

    #[test]
    fn create_body_names_the_version_and_the_stream() {
        let input = request(json!({"prompt": "hi"}));
        assert_eq!(
            create_body(
                &Target::Official {
                    owner: "meta",
                    name: "llama"
                },
                input.clone(),
                false
            ),
            json!({"input": {"prompt": "hi"}})
        );
        assert_eq!(
            create_body(&Target::Version("abc"), input, true),
            json!({"input": {"prompt": "hi"}, "version": "abc", "stream": true})
        );
    }
}
