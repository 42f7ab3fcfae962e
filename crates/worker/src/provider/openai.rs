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
        let secret = self.api_key.as_ref().map(|s| s.expose().to_owned());
        let events = response.bytes_stream().eventsource();
        let chunks = events
            .map(move |event| {
                let event = event.map_err(|e| {
                    ProviderError::new(FailureClass::Network, format!("stream broke: {e}"))
                })?;
                if event.data.trim() == "[DONE]" {
                    return Ok(None);
                }
                let value: Value = serde_json::from_str(&event.data).map_err(|e| {
                    ProviderError::new(
                        FailureClass::InvalidResponse,
                        format!("malformed stream chunk: {e}"),
                    )
                })?;
                if value.get("error").is_some() {
                    return Err(ProviderError::new(
                        classify_status(500, &event.data),
                        error_text(&event.data, secret.as_deref()),
                    ));
                }
                Ok(Some(value))
            })
            // `[DONE]` ends the stream; anything after it is ignored.
            .take_while(|item| std::future::ready(!matches!(item, Ok(None))))
            .filter_map(|item| std::future::ready(item.transpose()));
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
