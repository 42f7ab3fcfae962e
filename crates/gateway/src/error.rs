//! The one API error type at the HTTP edge. Each variant maps to a status and an OpenAI-shaped
//! body (`{"error": {"message", "type", "param", "code"}}`) in one exhaustive match, so a new
//! variant forces a decision. 5xx bodies never carry internals: those go to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::FailureClass;
use shared::task::TaskError;

/// Seconds a client is told to wait before retrying a 429/503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{message}")]
    InvalidRequest { param: String, message: String },
    #[error("{message}")]
    ToolNotAllowed { param: String, message: String },
    #[error("request body is larger than the {limit}-byte limit")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {limit_ms} ms")]
    BodyTimeout { limit_ms: u64 },
    #[error("the model `{0}` does not exist; GET /v1/models lists the configured routes")]
    UnknownModel(String),
    #[error("the capability `{0}` is not configured")]
    UnknownCapability(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    ValueTooLarge(String),
    #[error(
        "this request needs at least {} tokens ({prompt_tokens} for its messages and tools, \
         {answer_tokens} for the answer); the route's largest window is {window} tokens",
        prompt_tokens.saturating_add(*answer_tokens)
    )]
    ContextLengthExceeded {
        prompt_tokens: u64,
        answer_tokens: u64,
        window: u32,
    },
    #[error("the task queue is full; retry later")]
    QueueFull,
    #[error(
        "the queue ahead would not be through before this request's deadline; \
         retry in {retry_after_secs} s or allow more time with x-switchyard-timeout-ms"
    )]
    Overloaded { retry_after_secs: u64 },
    #[error("the context store is unavailable; retry later")]
    StoreUnavailable,
    #[error("the artifacts store is unavailable or full; retry later")]
    ArtifactsUnavailable,
    #[error("the task queue is unavailable; retry later")]
    Unavailable,
    #[error("no memory service answers (`switchyard memory`); retry later")]
    MemoryUnavailable,
    #[error("no answer within the deadline; fetch GET /v1/tasks/{task_id} later")]
    DeadlineExceeded { task_id: String },
    #[error(
        "NATS did not confirm the task before its deadline, so it may or may not run; \
         fetch GET /v1/tasks/{task_id} later, or retry with the same Idempotency-Key"
    )]
    NotConfirmed { task_id: String },
    #[error("{}", .0.message)]
    TaskFailed(TaskError),
    #[error(
        "the stream was interrupted and the retried answer differs from what was sent; \
         the complete answer is at GET /v1/tasks/{task_id}"
    )]
    StreamDiverged { task_id: String },
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            param: param.into(),
            message: message.into(),
        }
    }

    /// Status, OpenAI error `type`, `code` and `param` of this error.
    fn parts(&self) -> (StatusCode, &'static str, &'static str, Option<String>) {
        use StatusCode as S;
        match self {
            ApiError::InvalidJson(_) => (
                S::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                None,
            ),
            ApiError::InvalidRequest { param, .. } => (
                S::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                Some(param.clone()),
            ),
            ApiError::ToolNotAllowed { param, .. } => (
                S::FORBIDDEN,
                "permission_error",
                "tool_not_allowed",
                Some(param.clone()),
            ),
            ApiError::BodyTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                None,
            ),
            ApiError::BodyTimeout { .. } => (
                S::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                None,
            ),
            ApiError::UnknownModel(_) => (
                S::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                Some("model".to_owned()),
            ),
            ApiError::UnknownCapability(_) => (
                S::BAD_REQUEST,
                "invalid_request_error",
                "unknown_capability",
                Some("x-switchyard-capability".to_owned()),
            ),
            ApiError::NotFound(_) => (S::NOT_FOUND, "invalid_request_error", "not_found", None),
            ApiError::Conflict { code, .. } => (S::CONFLICT, "invalid_request_error", code, None),
            ApiError::PreconditionFailed(_) => (
                S::PRECONDITION_FAILED,
                "invalid_request_error",
                "precondition_failed",
                Some("if-match".to_owned()),
            ),
            ApiError::ValueTooLarge(_) => (
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "value_too_large",
                Some("body".to_owned()),
            ),
            ApiError::ContextLengthExceeded { .. } => (
                S::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                Some("messages".to_owned()),
            ),
            ApiError::QueueFull => (S::TOO_MANY_REQUESTS, "rate_limit_error", "queue_full", None),
            ApiError::Overloaded { .. } => {
                (S::TOO_MANY_REQUESTS, "rate_limit_error", "overloaded", None)
            }
            ApiError::StoreUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable_error",
                "store_unavailable",
                None,
            ),
            ApiError::ArtifactsUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable_error",
                "store_unavailable",
                None,
            ),
            ApiError::Unavailable => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable_error",
                "queue_unavailable",
                None,
            ),
            ApiError::MemoryUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable_error",
                "memory_unavailable",
                None,
            ),
            ApiError::DeadlineExceeded { .. } => (
                S::GATEWAY_TIMEOUT,
                "timeout_error",
                "deadline_exceeded",
                None,
            ),
            ApiError::NotConfirmed { .. } => {
                (S::GATEWAY_TIMEOUT, "timeout_error", "not_confirmed", None)
            }
            ApiError::TaskFailed(e) => task_failure_parts(e.class),
            ApiError::StreamDiverged { .. } => {
                (S::BAD_GATEWAY, "upstream_error", "stream_interrupted", None)
            }
            ApiError::Internal => (S::INTERNAL_SERVER_ERROR, "server_error", "internal", None),
        }
    }
}

/// How a failed task is shown to the caller: its own mistakes as 4xx, upstream trouble as
/// 429/502/504, never the upstream 401 (the caller's credentials were fine).
fn task_failure_parts(
    class: FailureClass,
) -> (StatusCode, &'static str, &'static str, Option<String>) {
    use StatusCode as S;
    let code = class.as_str();
    match class {
        FailureClass::BadRequest => (S::BAD_REQUEST, "invalid_request_error", code, None),
        // As OpenAI answers `model_not_found`: a 404 the SDKs do not retry.
        FailureClass::ModelUnavailable => (S::NOT_FOUND, "invalid_request_error", code, None),
        FailureClass::ContextLength => (
            S::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
            Some("messages".to_owned()),
        ),
        FailureClass::ContentFilter => (S::BAD_REQUEST, "invalid_request_error", code, None),
        FailureClass::RateLimited => (S::TOO_MANY_REQUESTS, "rate_limit_error", code, None),
        FailureClass::Timeout | FailureClass::DeadlineExceeded => {
            (S::GATEWAY_TIMEOUT, "timeout_error", code, None)
        }
        FailureClass::Upstream5xx
        | FailureClass::Auth
        | FailureClass::Network
        | FailureClass::InvalidResponse => (S::BAD_GATEWAY, "upstream_error", code, None),
        FailureClass::Cancelled => (S::CONFLICT, "cancelled_error", code, None),
        FailureClass::Internal => (S::INTERNAL_SERVER_ERROR, "server_error", code, None),
        // The model kept asking for tools past the loop's bounds: the request's doing, as
        // an unprocessable one (the same request would do it again).
        FailureClass::ToolLimit => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            code,
            Some("tools".to_owned()),
        ),
    }
}

/// The OpenAI error object for `error`, also used inside SSE error events.
pub fn error_body(error: &ApiError) -> serde_json::Value {
    let (_, kind, code, param) = error.parts();
    json!({"error": {"message": error.to_string(), "type": kind, "param": param, "code": code}})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, ..) = self.parts();
        let mut response = (status, Json(error_body(&self))).into_response();
        let retry_after = match &self {
            ApiError::Overloaded { retry_after_secs } => HeaderValue::from(*retry_after_secs),
            _ => HeaderValue::from_static(RETRY_AFTER_SECS),
        };
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_full_is_429_with_retry_after() {
        let response = ApiError::QueueFull.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn internal_error_says_nothing_inside() {
        let body = error_body(&ApiError::Internal);
        assert_eq!(body["error"]["message"], "internal error");
        assert_eq!(body["error"]["type"], "server_error");
    }

    /// The table "HTTP status of a failed task" in `docs/failover.md`; keep them together.
    #[test]
    fn each_failure_class_has_the_documented_status() {
        use FailureClass as F;
        let table = [
            (F::BadRequest, 400, "bad_request"),
            (F::ContextLength, 400, "context_length_exceeded"),
            (F::ContentFilter, 400, "content_filter"),
            (F::RateLimited, 429, "rate_limited"),
            (F::Upstream5xx, 502, "upstream_5xx"),
            (F::Auth, 502, "auth"),
            (F::Network, 502, "network"),
            (F::InvalidResponse, 502, "invalid_response"),
            (F::Timeout, 504, "timeout"),
            (F::DeadlineExceeded, 504, "deadline_exceeded"),
            (F::Cancelled, 409, "cancelled"),
            (F::Internal, 500, "internal"),
        ];
        for (class, status, code) in table {
            let (got, _, got_code, _) = task_failure_parts(class);
            assert_eq!((got.as_u16(), got_code), (status, code), "{class:?}");
        }
    }

    #[test]
    fn upstream_auth_failure_is_not_the_callers_401() {
        let e = ApiError::TaskFailed(TaskError {
            class: FailureClass::Auth,
            message: "bad key".into(),
            upstream_status: Some(401),
        });
        assert_eq!(e.into_response().status(), StatusCode::BAD_GATEWAY);
    }
}
