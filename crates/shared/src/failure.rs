//! The closed vocabulary of failure classes. Every failed attempt and every failed task
//! carries exactly one; `docs/failover.md` gives the action each class triggers.

use serde::{Deserialize, Serialize};

/// Why an attempt or a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The provider answered 429.
    RateLimited,
    /// The provider did not answer within the per-attempt timeout.
    Timeout,
    /// The provider answered 5xx.
    #[serde(rename = "upstream_5xx")]
    Upstream5xx,
    /// The provider refused the credentials (401/403) or their account (402).
    Auth,
    /// The provider refused the request itself (other 4xx).
    BadRequest,
    /// The provider does not serve this model to this key (403 or 404 about the model:
    /// OpenAI's `model_not_found`, Anthropic's `not_found_error`, Gemini's NOT_FOUND). A
    /// refusal of the model, not of the credentials: the key stays in rotation.
    ModelUnavailable,
    /// The prompt does not fit the model's context window.
    ContextLength,
    /// The provider refused the content.
    ContentFilter,
    /// Connection refused, reset or cut before a complete answer.
    Network,
    /// The provider answered 2xx with a body that is not its documented shape.
    InvalidResponse,
    /// The caller went away or the task was cancelled.
    Cancelled,
    /// The task's deadline passed before an answer.
    DeadlineExceeded,
    /// A fault inside Switchyard; details are in its logs, not in the result.
    Internal,
    /// The tool loop hit a bound (its iterations or its token budget) while the model still
    /// asked for tools: the same request would do it again.
    ToolLimit,
}

impl FailureClass {
    /// Whether a later attempt at the same request may succeed.
    pub fn is_transient(self) -> bool {
        match self {
            FailureClass::RateLimited
            | FailureClass::Timeout
            | FailureClass::Upstream5xx
            | FailureClass::Network
            | FailureClass::InvalidResponse
            | FailureClass::Internal => true,
            FailureClass::Auth
            | FailureClass::BadRequest
            | FailureClass::ModelUnavailable
            | FailureClass::ContextLength
            | FailureClass::ContentFilter
            | FailureClass::Cancelled
            | FailureClass::DeadlineExceeded
            | FailureClass::ToolLimit => false,
        }
    }

    /// Whether a task that failed with this class goes to the dead-letter queue: it failed
    /// for a reason on the provider's or our side, so replaying it later may succeed. A
    /// request the provider judged (bad request, too long, filtered) or the caller dropped
    /// would fail the same way again.
    pub fn dead_letters(self) -> bool {
        match self {
            FailureClass::RateLimited
            | FailureClass::Timeout
            | FailureClass::Upstream5xx
            | FailureClass::Auth
            | FailureClass::Network
            | FailureClass::InvalidResponse
            | FailureClass::DeadlineExceeded
            | FailureClass::Internal => true,
            FailureClass::BadRequest
            | FailureClass::ModelUnavailable
            | FailureClass::ContextLength
            | FailureClass::ContentFilter
            | FailureClass::Cancelled
            | FailureClass::ToolLimit => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Timeout => "timeout",
            FailureClass::Upstream5xx => "upstream_5xx",
            FailureClass::Auth => "auth",
            FailureClass::BadRequest => "bad_request",
            FailureClass::ModelUnavailable => "model_unavailable",
            FailureClass::ContextLength => "context_length",
            FailureClass::ContentFilter => "content_filter",
            FailureClass::Network => "network",
            FailureClass::InvalidResponse => "invalid_response",
            FailureClass::Cancelled => "cancelled",
            FailureClass::DeadlineExceeded => "deadline_exceeded",
            FailureClass::Internal => "internal",
            FailureClass::ToolLimit => "tool_limit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for class in [
            FailureClass::RateLimited,
            FailureClass::Upstream5xx,
            FailureClass::DeadlineExceeded,
            FailureClass::InvalidResponse,
            FailureClass::ModelUnavailable,
            FailureClass::ToolLimit,
        ] {
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(json, format!("\"{}\"", class.as_str()));
        }
    }
}
