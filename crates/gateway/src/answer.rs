//! Reading a task's result and answering with it: the stored result in the `results`
//! bucket, its decoding, and the HTTP answer (completion or error, with the headers saying
//! who answered). Both the plain and the streaming chat paths use this; it calls neither.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use shared::{TaskId, TaskResult, TaskStatus};
use tokio::time::Instant;
use tracing::{error, warn};

use crate::error::ApiError;
use crate::headers::Answered;
use crate::state::AppState;

/// How often a waiting request also looks for its stored result, in case the reply was lost.
pub const STORED_RESULT_CHECK: Duration = Duration::from_secs(5);

/// The stored result of `task_id`, if any.
pub async fn stored_result(st: &AppState, task_id: TaskId) -> Result<Option<Bytes>, ApiError> {
    st.results.get(task_id.to_string()).await.map_err(|e| {
        warn!(error = %e, %task_id, "could not read the results bucket");
        ApiError::Unavailable
    })
}

/// `result` whole: a response stored by reference (too large for a NATS message) is read
/// back from the artifacts store.
pub async fn resolve(st: &AppState, mut result: TaskResult) -> Result<TaskResult, ApiError> {
    if let Err(e) = st.artifacts.resolve_response(&mut result).await {
        warn!(error = %e, task_id = %result.id, "could not read a stored response back");
        return Err(ApiError::ArtifactsUnavailable);
    }
    Ok(result)
}

pub fn decode_result(payload: &[u8]) -> Result<TaskResult, ApiError> {
    serde_json::from_slice(payload).map_err(|e| {
        error!(error = %e, "undecodable task result");
        ApiError::Internal
    })
}

/// Who answered `result`, with the overhead when the request started at `started`.
pub fn answered(result: &TaskResult, started: Option<Instant>) -> Answered {
    Answered {
        provider: result.provider.clone(),
        model: result.model.clone(),
        attempts: Some(result.attempts.len()),
        fallback_depth: Some(result.fallback_depth),
        overhead_ms: started.map(|s| overhead_ms(s, result.upstream_ms)),
    }
}

/// Milliseconds since `started` not spent with providers.
pub fn overhead_ms(started: Instant, upstream_ms: u64) -> u64 {
    u64::try_from(started.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_sub(upstream_ms)
}

/// A finished task as an HTTP answer: the completion, or its failure as an error.
pub fn result_response(result: TaskResult, started: Option<Instant>) -> Result<Response, ApiError> {
    let answered = answered(&result, started);
    match (result.status, result.response, result.error) {
        (TaskStatus::Completed, Some(response), _) => {
            let mut out = Json(response).into_response();
            answered.apply(&mut out);
            Ok(out)
        }
        (TaskStatus::Failed, _, Some(error)) => Err(ApiError::TaskFailed(error)),
        _ => {
            tracing::error!(task_id = %result.id, "stored result is neither a completion nor a failure");
            Err(ApiError::Internal)
        }
    }
}
