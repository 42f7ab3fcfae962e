//! What every HTTP adapter shares: sending a request and classifying a non-2xx answer,
//! reading a JSON body, opening a server-sent event stream, and `Retry-After` in its
//! seconds, HTTP-date and `retry-after-ms` forms. Provider error text is scrubbed of the
//! key and shortened before it can reach a result or a log.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::Value;
use shared::FailureClass;
use shared::config::Secret;

use super::scrub::scrub;
use super::{ChunkStream, ProviderError};

/// Longest `Retry-After` taken literally; anything longer is as good as "much later".
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);
/// Longest provider error text kept in a result; the rest is noise for the caller.
const MAX_ERROR_TEXT: usize = 500;
/// Milliseconds form of `Retry-After` (OpenAI, Azure OpenAI).
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Server-sent events from a provider, each already decoded from the wire.
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<Event, ProviderError>> + Send>>;

/// Sends `request`; a 2xx answer is returned, anything else becomes a classified error
/// carrying the provider's status, its `Retry-After`, and its error text without `key`.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    key: Option<&Secret>,
) -> Result<reqwest::Response, ProviderError> {
    let response = request.send().await.map_err(network_error)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    Err(ProviderError {
        class: classify_status(status.as_u16(), &text),
        message: error_text(&text, key.map(Secret::expose)),
        status: Some(status.as_u16()),
        retry_after,
        partial: false,
    })
}

/// Reads a 2xx body as JSON; anything else is an `invalid_response`.
pub(crate) async fn json_body(response: reqwest::Response) -> Result<Value, ProviderError> {
    let body = response.bytes().await.map_err(network_error)?;
    serde_json::from_slice(&body).map_err(|e| {
        ProviderError::new(
            FailureClass::InvalidResponse,
            format!("provider answered with malformed JSON: {e}"),
        )
    })
}

/// Opens the body of a 2xx answer as server-sent events; an answer that is not
/// `text/event-stream` is an `invalid_response`.
pub(crate) fn sse_events(response: reqwest::Response) -> Result<EventStream, ProviderError> {
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        return Err(ProviderError::new(
            FailureClass::InvalidResponse,
            "provider answered a streaming request without an event stream",
        ));
    }
    Ok(response
        .bytes_stream()
        .eventsource()
        .map(|event| {
            event.map_err(|e| {
                ProviderError::new(FailureClass::Network, format!("stream broke: {e}"))
            })
        })
        .boxed())
}

/// One wire format's reading of its server-sent events into OpenAI chunks.
pub(crate) trait Translate: Send + 'static {
    /// The chunks one event's (non-empty) data becomes, often none, or the error it reports.
    fn event(&mut self, data: &str) -> Result<Vec<Value>, ProviderError>;
    /// Whether the format's end-of-stream marker has been read.
    fn done(&self) -> bool;
    /// The events ran out before `done`: the last chunks, or the error for a cut stream.
    fn end(&mut self) -> Result<Vec<Value>, ProviderError>;
}

/// Drives `translator` over `events`: chunks in order, keep-alives skipped, and nothing
/// after the first error, the end-of-stream marker or the end of the events.
pub(crate) fn chunk_stream(events: EventStream, translator: impl Translate) -> ChunkStream {
    struct Driver<T> {
        events: EventStream,
        translator: T,
        pending: VecDeque<Value>,
        ended: bool,
    }
    let driver = Driver {
        events,
        translator,
        pending: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(driver, |mut d| async move {
        loop {
            if let Some(chunk) = d.pending.pop_front() {
                return Some((Ok(chunk), d));
            }
            if d.ended || d.translator.done() {
                return None;
            }
            let step = match d.events.next().await {
                Some(Ok(event)) => match event.data.trim() {
                    "" => continue,
                    data => d.translator.event(data),
                },
                Some(Err(e)) => Err(e),
                None => {
                    d.ended = true;
                    d.translator.end()
                }
            };
            match step {
                Ok(chunks) => d.pending.extend(chunks),
                Err(e) => {
                    d.ended = true;
                    return Some((Err(e), d));
                }
            }
        }
    })
    .boxed()
}

/// Parses an event's data as JSON; malformed data is an `invalid_response`.
pub(crate) fn event_json(data: &str) -> Result<Value, ProviderError> {
    serde_json::from_str(data).map_err(|e| {
        ProviderError::new(
            FailureClass::InvalidResponse,
            format!("malformed stream event: {e}"),
        )
    })
}

/// The error for a stream that stopped before the provider's end-of-stream marker.
pub(crate) fn cut_stream(marker: &str) -> ProviderError {
    ProviderError::new(
        FailureClass::Network,
        format!("stream ended before {marker}"),
    )
}

/// A transport failure: refused, reset, timed out, or a body that broke off.
pub(crate) fn network_error(e: reqwest::Error) -> ProviderError {
    let class = if e.is_timeout() {
        FailureClass::Timeout
    } else {
        FailureClass::Network
    };
    // The URL would name the base URL (and for some providers a model); the cause is enough.
    ProviderError::new(class, format!("provider unreachable: {}", e.without_url()))
}

/// Classifies a non-2xx HTTP answer from a provider by status and body. The body checks
/// cover each wire format's wording for context-length and content-filter refusals.
pub fn classify_status(status: u16, body: &str) -> FailureClass {
    let lower = body.to_ascii_lowercase();
    let context_length = [
        "context_length",
        "maximum context length",
        "context window",
        "prompt is too long",
        "input token count",
        "too many tokens",
    ];
    if (400..500).contains(&status) && context_length.iter().any(|s| lower.contains(s)) {
        return FailureClass::ContextLength;
    }
    let content_filter = ["content_filter", "content_policy"];
    if (400..500).contains(&status) && content_filter.iter().any(|s| lower.contains(s)) {
        return FailureClass::ContentFilter;
    }
    // A 403 or 404 about the model ("does not have access to model", `model_not_found`,
    // Anthropic's "model: …", Gemini's "models/… is not found") refuses the model, not
    // the key: the caller chose the model, so the key must stay in rotation for everyone.
    if matches!(status, 403 | 404) && lower.contains("model") {
        return FailureClass::ModelUnavailable;
    }
    match status {
        429 => FailureClass::RateLimited,
        // 402: the key's account cannot pay (Anthropic `billing_error`, OpenRouter credits);
        // like a refused key, another key may work and this one should rest.
        401..=403 => FailureClass::Auth,
        408 => FailureClass::Timeout,
        500..=599 => FailureClass::Upstream5xx,
        _ => FailureClass::BadRequest,
    }
}

/// The provider's own error text (`{"error":{"message":…}}` as OpenAI, Anthropic and Gemini
/// send it, `{"detail":…}` as Replicate does, or raw), shortened and with every form of
/// `secret` (as configured, trimmed, masked echoes) blanked out in case the provider echoed
/// the key.
pub fn error_text(body: &str, secret: Option<&str>) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            if let Some(error) = v.get("error") {
                return error
                    .get("message")
                    .and_then(Value::as_str)
                    .or_else(|| error.as_str())
                    .map(str::to_owned);
            }
            v.get("detail").and_then(Value::as_str).map(str::to_owned)
        })
        .unwrap_or_else(|| body.trim().to_owned());
    // Blank the secret before shortening: a key cut in half would no longer match.
    let message = match secret {
        Some(secret) => scrub(&message, secret),
        None => message,
    };
    message.chars().take(MAX_ERROR_TEXT).collect()
}

/// What the provider asked for: `retry-after-ms`, else `Retry-After` (seconds or date).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let millis = headers
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64((ms / 1000.0).min(MAX_RETRY_AFTER.as_secs_f64())));
    millis.or_else(|| {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
    })
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
    use reqwest::header::HeaderValue;

    #[test]
    fn statuses_map_to_classes() {
        assert_eq!(classify_status(429, ""), FailureClass::RateLimited);
        assert_eq!(classify_status(401, ""), FailureClass::Auth);
        assert_eq!(classify_status(403, ""), FailureClass::Auth);
        assert_eq!(classify_status(402, ""), FailureClass::Auth);
        assert_eq!(classify_status(500, ""), FailureClass::Upstream5xx);
        assert_eq!(classify_status(529, ""), FailureClass::Upstream5xx);
        assert_eq!(classify_status(400, "{}"), FailureClass::BadRequest);
        assert_eq!(classify_status(404, ""), FailureClass::BadRequest);
        // Refusals of the model, in each provider's words, are not credential failures.
        for (status, body) in [
            (
                403,
                r#"{"error":{"message":"Project `proj_x` does not have access to model `gpt-4o`","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
            ),
            (
                404,
                r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","code":"model_not_found"}}"#,
            ),
            (
                404,
                r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}"#,
            ),
            (
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"This model isn't available right now."}}"#,
            ),
            (
                404,
                r#"{"error":{"code":404,"message":"models/gemini-9 is not found for API version v1beta","status":"NOT_FOUND"}}"#,
            ),
            (
                403,
                r#"{"error":{"code":403,"message":"You do not have permission to access tuned model tunedModels/x","status":"PERMISSION_DENIED"}}"#,
            ),
        ] {
            assert_eq!(
                classify_status(status, body),
                FailureClass::ModelUnavailable,
                "{body}"
            );
        }
        // A refusal of the key itself still is one.
        for (status, body) in [
            (
                403,
                r#"{"error":{"code":403,"message":"The caller does not have permission","status":"PERMISSION_DENIED"}}"#,
            ),
            (
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#,
            ),
            (
                401,
                r#"{"error":{"message":"Incorrect API key provided for model gpt-4o","code":"invalid_api_key"}}"#,
            ),
        ] {
            assert_eq!(classify_status(status, body), FailureClass::Auth, "{body}");
        }
        assert_eq!(
            classify_status(400, r#"{"error":{"code":"context_length_exceeded"}}"#),
            FailureClass::ContextLength
        );
        assert_eq!(
            classify_status(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#
            ),
            FailureClass::ContextLength
        );
        assert_eq!(
            classify_status(400, r#"{"error":{"code":"content_filter"}}"#),
            FailureClass::ContentFilter
        );
        // A 5xx that mentions a context window is still an outage, not the caller's prompt.
        assert_eq!(
            classify_status(503, "context window service unavailable"),
            FailureClass::Upstream5xx
        );
    }

    #[test]
    fn error_text_extracts_and_scrubs() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-abc123"}}"#;
        assert_eq!(
            error_text(body, Some("sk-abc123")),
            "Incorrect API key provided: *****"
        );
        assert_eq!(
            error_text(r#"{"detail":"Invalid token."}"#, None),
            "Invalid token."
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

    #[test]
    fn retry_after_ms_wins_over_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER_MS, HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        headers.insert(RETRY_AFTER_MS, HeaderValue::from_static("-5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }
}
