//! Any OpenAI-compatible `/chat/completions` endpoint (OpenAI, Groq, OpenRouter, Cerebras,
//! Novita, Hugging Face router, Together, Ollama, vLLM, llama.cpp server, …).

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::{Map, Value};
use shared::FailureClass;
use shared::config::{ProviderConfig, Secret};

use super::{ChunkStream, ProviderError, classify_status, error_text, parse_retry_after};

/// A client for one OpenAI-compatible base URL.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    http: reqwest::Client,
    url: String,
    api_key: Option<Secret>,
}

impl OpenAiCompatible {
    pub fn new(http: reqwest::Client, config: &ProviderConfig) -> Self {
        let base = config.base_url.as_deref().unwrap_or_default();
        Self {
            http,
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            api_key: config.api_key.clone(),
        }
    }

    pub async fn complete(
        &self,
        model: &str,
        request: &Map<String, Value>,
    ) -> Result<Value, ProviderError> {
        let response = self.send(model, request, false).await?;
        let body = response.bytes().await.map_err(network_error)?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                FailureClass::InvalidResponse,
                format!("provider answered with malformed JSON: {e}"),
            )
        })?;
        if value.get("choices").and_then(Value::as_array).is_none() {
            return Err(ProviderError::new(
                FailureClass::InvalidResponse,
                "provider answer has no choices array",
            ));
        }
        Ok(value)
    }

    pub async fn stream(
        &self,
        model: &str,
        request: &Map<String, Value>,
    ) -> Result<ChunkStream, ProviderError> {
        let response = self.send(model, request, true).await?;
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Err(ProviderError::new(
                FailureClass::InvalidResponse,
                "provider answered a streaming request without an event stream",
            ));
        }
        let secret = self.api_key.as_ref().map(|s| s.expose().to_owned());
        let events = response.bytes_stream().eventsource();
        let state = StreamState {
            events: Box::pin(events),
            secret,
            finished: false,
            ended: false,
        };
        let chunks = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_chunk().await?;
            Some((item, state))
        });
        Ok(chunks.boxed())
    }

    async fn send(
        &self,
        model: &str,
        request: &Map<String, Value>,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut body = request.clone();
        body.insert("model".to_owned(), Value::String(model.to_owned()));
        if stream {
            body.insert("stream".to_owned(), Value::Bool(true));
        } else {
            body.remove("stream");
        }
        let mut call = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose());
        }
        let response = call.send().await.map_err(network_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        Err(ProviderError {
            class: classify_status(status.as_u16(), &text),
            message: error_text(&text, self.api_key.as_ref().map(Secret::expose)),
            status: Some(status.as_u16()),
            retry_after,
            partial: false,
        })
    }
}

fn retry_after(headers: &HeaderMap) -> Option<std::time::Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

fn network_error(e: reqwest::Error) -> ProviderError {
    let class = if e.is_timeout() {
        FailureClass::Timeout
    } else {
        FailureClass::Network
    };
    // The URL is the configured base URL (no credentials); the error text names the cause.
    ProviderError::new(class, format!("provider unreachable: {}", e.without_url()))
}

type EventStream = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// Reads SSE events into chunks. A stream must end with `[DONE]` (or at least have sent a
/// `finish_reason`); one that just stops is a cut stream, not a complete answer.
struct StreamState {
    events: EventStream,
    secret: Option<String>,
    /// A chunk carried a `finish_reason`.
    finished: bool,
    ended: bool,
}

impl StreamState {
    async fn next_chunk(&mut self) -> Option<Result<Value, ProviderError>> {
        if self.ended {
            return None;
        }
        let result = self.read().await;
        if !matches!(result, Some(Ok(_))) {
            self.ended = true;
        }
        result
    }

    async fn read(&mut self) -> Option<Result<Value, ProviderError>> {
        loop {
            let Some(event) = self.events.next().await else {
                return (!self.finished).then(|| {
                    Err(ProviderError::new(
                        FailureClass::Network,
                        "stream ended before [DONE]",
                    ))
                });
            };
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    return Some(Err(ProviderError::new(
                        FailureClass::Network,
                        format!("stream broke: {e}"),
                    )));
                }
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                return None;
            }
            let value: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => {
                    return Some(Err(ProviderError::new(
                        FailureClass::InvalidResponse,
                        format!("malformed stream chunk: {e}"),
                    )));
                }
            };
            if value.get("error").is_some() {
                return Some(Err(ProviderError::new(
                    classify_status(500, data),
                    error_text(data, self.secret.as_deref()),
                )));
            }
            let choices = value.get("choices").and_then(Value::as_array);
            if choices
                .into_iter()
                .flatten()
                .any(|c| c.get("finish_reason").is_some_and(|r| !r.is_null()))
            {
                self.finished = true;
            }
            return Some(Ok(value));
        }
    }
}
