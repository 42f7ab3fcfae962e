//! LLM providers behind one interface: a non-streaming call that returns an OpenAI
//! `chat.completion`, and a streaming call that yields `chat.completion.chunk`s. Each
//! failure is classified into a [`FailureClass`] by [`classify_status`] at the edge.

mod openai;
mod simulated;

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::BoxStream;
use serde_json::{Map, Value};
use shared::FailureClass;
use shared::config::{Config, ProviderKind};

pub use openai::OpenAiCompatible;
pub use simulated::Simulated;

/// A stream of `chat.completion.chunk` objects; an `Err` item ends it.
pub type ChunkStream = BoxStream<'static, Result<Value, ProviderError>>;

/// Longest `Retry-After` taken literally; anything longer is as good as "much later".
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);
/// Longest provider error text kept in a result; the rest is noise for the caller.
const MAX_ERROR_TEXT: usize = 500;

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

/// One configured provider.
#[derive(Debug, Clone)]
pub enum Provider {
    Simulated(Simulated),
    OpenAi(OpenAiCompatible),
}

impl Provider {
    /// Answers `request` (an OpenAI chat body) with `model`, in one piece.
    pub async fn complete(
        &self,
        model: &str,
        request: &Map<String, Value>,
    ) -> Result<Value, ProviderError> {
        match self {
            Provider::Simulated(p) => p.complete(model, request).await,
            Provider::OpenAi(p) => p.complete(model, request).await,
        }
    }

    /// Answers `request` with `model` as a stream of chunks.
    pub async fn stream(
        &self,
        model: &str,
        request: &Map<String, Value>,
    ) -> Result<ChunkStream, ProviderError> {
        match self {
            Provider::Simulated(p) => Ok(p.stream(model, request)),
            Provider::OpenAi(p) => p.stream(model, request).await,
        }
    }
}

/// Builds every configured provider, sharing one pooled HTTP client.
pub fn build_providers(config: &Config) -> Result<HashMap<String, Provider>, reqwest::Error> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;
    Ok(config
        .providers
        .iter()
        .map(|(name, p)| {
            let provider = match p.kind {
                ProviderKind::Simulated => Provider::Simulated(Simulated::new(p)),
                ProviderKind::Openai => Provider::OpenAi(OpenAiCompatible::new(http.clone(), p)),
            };
            (name.clone(), provider)
        })
        .collect())
}

/// Classifies a non-2xx HTTP answer from a provider by status and body.
pub fn classify_status(status: u16, body: &str) -> FailureClass {
    let lower = body.to_ascii_lowercase();
    if lower.contains("context_length") || lower.contains("maximum context length") {
        return FailureClass::ContextLength;
    }
    if lower.contains("content_filter") || lower.contains("content_policy") {
        return FailureClass::ContentFilter;
    }
    match status {
        429 => FailureClass::RateLimited,
        401 | 403 => FailureClass::Auth,
        408 => FailureClass::Timeout,
        500..=599 => FailureClass::Upstream5xx,
        _ => FailureClass::BadRequest,
    }
}

/// The provider's own error text (OpenAI shape `{"error":{"message":…}}` or raw), shortened
/// and with `secret` blanked out in case the provider echoed the key.
pub fn error_text(body: &str, secret: Option<&str>) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            error
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| error.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.trim().to_owned());
    // Blank the secret before shortening: a key cut in half would no longer match.
    let message = match secret.filter(|s| !s.is_empty()) {
        Some(secret) => message.replace(secret, "*****"),
        None => message,
    };
    message.chars().take(MAX_ERROR_TEXT).collect()
}

/// Parses `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_nan() {
            return None;
        }
        // Clamp before converting: a huge value must not overflow a Duration.
        return Duration::try_from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())).ok();
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_classes() {
        assert_eq!(classify_status(429, ""), FailureClass::RateLimited);
        assert_eq!(classify_status(401, ""), FailureClass::Auth);
        assert_eq!(classify_status(403, ""), FailureClass::Auth);
        assert_eq!(classify_status(500, ""), FailureClass::Upstream5xx);
        assert_eq!(classify_status(529, ""), FailureClass::Upstream5xx);
        assert_eq!(classify_status(400, "{}"), FailureClass::BadRequest);
        assert_eq!(classify_status(404, ""), FailureClass::BadRequest);
        assert_eq!(
            classify_status(400, r#"{"error":{"code":"context_length_exceeded"}}"#),
            FailureClass::ContextLength
        );
        assert_eq!(
            classify_status(400, r#"{"error":{"code":"content_filter"}}"#),
            FailureClass::ContentFilter
        );
    }

    #[test]
    fn error_text_extracts_and_scrubs() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-abc123"}}"#;
        assert_eq!(
            error_text(body, Some("sk-abc123")),
            "Incorrect API key provided: *****"
        );
        assert_eq!(error_text("plain failure\n", None), "plain failure");
        assert_eq!(error_text(&"x".repeat(2000), None).len(), MAX_ERROR_TEXT);
        // A key straddling the cut is still blanked whole.
        let long = format!("{} sk-abc123 tail", "y".repeat(MAX_ERROR_TEXT - 4));
        assert!(!error_text(&long, Some("sk-abc123")).contains("sk-a"));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("1e20"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("NaN"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
    }
}
