//! LLM providers behind one interface: a non-streaming call that returns an OpenAI
//! `chat.completion`, and a streaming call that yields `chat.completion.chunk`s. Each adapter
//! speaks one wire format (OpenAI-compatible, Anthropic Messages, Gemini generateContent,
//! Replicate predictions) and normalises to and from the OpenAI shape; each failure is
//! classified into a [`FailureClass`] at the edge (see `docs/failover.md`).

mod anthropic;
mod gemini;
mod http;
mod openai;
#[cfg(test)]
mod props;
mod replicate;
mod scrub;
pub mod shape;
mod simulated;

use std::time::Duration;

use futures::stream::BoxStream;
use serde_json::{Map, Value};
use shared::FailureClass;
use shared::config::{Adapter, ProviderConfig, Secret};

pub use anthropic::Anthropic;
pub use gemini::Gemini;
pub use http::{classify_status, error_text, parse_retry_after};
pub use openai::OpenAiCompatible;
pub use replicate::Replicate;
pub use simulated::Simulated;

/// A stream of `chat.completion.chunk` objects; an `Err` item ends it.
pub type ChunkStream = BoxStream<'static, Result<Value, ProviderError>>;

/// A failed provider call, already classified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class:?}: {message}")]
pub struct ProviderError {
    pub class: FailureClass,
    pub message: String,
    pub status: Option<u16>,
    /// What the provider asked for with `Retry-After`, if anything.
    pub retry_after: Option<Duration>,
    /// Part of the answer already reached the caller (a stream was cut): retrying would
    /// send a second, different beginning, so the task fails instead.
    pub partial: bool,
}

impl ProviderError {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            status: None,
            retry_after: None,
            partial: false,
        }
    }
}

/// One attempt: which model, the caller's OpenAI-shaped request, and the key to use.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub model: &'a str,
    pub request: &'a Map<String, Value>,
    pub key: Option<&'a Secret>,
}

/// One configured provider.
#[derive(Debug, Clone)]
pub enum Provider {
    Simulated(Simulated),
    OpenAi(OpenAiCompatible),
    Anthropic(Anthropic),
    Gemini(Gemini),
    Replicate(Replicate),
}

impl Provider {
    /// Builds the adapter for `config`, sharing the pooled `http` client.
    pub fn new(http: &reqwest::Client, config: &ProviderConfig) -> Self {
        let base_url = config
            .base_url()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        match config.kind.adapter() {
            Adapter::Simulated => Provider::Simulated(Simulated::new(config)),
            Adapter::OpenAi => Provider::OpenAi(OpenAiCompatible::new(http.clone(), base_url)),
            Adapter::Anthropic => Provider::Anthropic(Anthropic::new(http.clone(), base_url)),
            Adapter::Gemini => Provider::Gemini(Gemini::new(http.clone(), base_url)),
            Adapter::Replicate => Provider::Replicate(Replicate::new(http.clone(), base_url)),
        }
    }

    /// Answers the call in one piece, as an OpenAI `chat.completion`.
    pub async fn complete(&self, call: Call<'_>) -> Result<Value, ProviderError> {
        match self {
            Provider::Simulated(p) => p.complete(call).await,
            Provider::OpenAi(p) => p.complete(call).await,
            Provider::Anthropic(p) => p.complete(call).await,
            Provider::Gemini(p) => p.complete(call).await,
            Provider::Replicate(p) => p.complete(call).await,
        }
    }

    /// Answers the call as a stream of OpenAI `chat.completion.chunk`s.
    pub async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        match self {
            Provider::Simulated(p) => p.stream(call),
            Provider::OpenAi(p) => p.stream(call).await,
            Provider::Anthropic(p) => p.stream(call).await,
            Provider::Gemini(p) => p.stream(call).await,
            Provider::Replicate(p) => p.stream(call).await,
        }
    }
}

/// The one pooled HTTP client every adapter shares.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
}
