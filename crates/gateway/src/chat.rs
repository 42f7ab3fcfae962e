//! `POST /v1/chat/completions`, non-streaming: publish the task, wait for its reply (or, past
//! the deadline, its stored result), answer in the OpenAI shape.

use axum::Extension;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use shared::{Task, TaskResult, TaskStatus};
use tokio::time::Instant;
use tracing::warn;

use crate::body::ChatBody;
use crate::error::ApiError;
use crate::headers::Answered;
use crate::replies::PendingReply;
use crate::routes::RequestTask;
use crate::state::AppState;
use crate::stream;
use crate::submit::{Published, build_task, decode_result, publish, stored_result};

/// How often a waiting request also looks for its stored result, in case the reply was lost.
pub const STORED_RESULT_CHECK: Duration = Duration::from_secs(5);

pub async fn chat_completions(
    State(st): State<AppState>,
    Extension(request): Extension<RequestTask>,
    headers: HeaderMap,
    body: ChatBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let streaming = body.stream;
    let mut task = build_task(&st, request.id, &headers, body)?;
    if request.named_by_caller
        && !streaming
        && let Some(stored) = stored_result(&st, task.id).await?
    {
        // A retry of a request that has its answer already: that answer, nothing queued.
        return result_response(decode_result(&stored)?, None);
    }
    st.admission
        .admit(&task.capability, task.priority, task.remaining())
        .map_err(|o| ApiError::Overloaded {
            retry_after_secs: o.retry_after_secs,
        })?;
    if streaming {
        return stream::respond(st, task, started).await;
    }
    let mut pending = st.replies.register(task.id);
    task.reply_to = Some(pending.subject.clone());
    let payload = match publish(&st, &task).await? {
        Published::New => wait_reply(&st, &task, &mut pending).await?,
        // Queued before, with the first request's reply subject: wait for the stored result.
        Published::Duplicate => wait_stored(&st, &task).await?,
    };
    result_response(decode_result(&payload)?, Some(started))
}

/// The task's result from its reply, or from the results bucket if the reply was lost.
async fn wait_reply(
    st: &AppState,
    task: &Task,
    pending: &mut PendingReply,
) -> Result<Bytes, ApiError> {
    Ok(loop {
        let wait = task.remaining().min(STORED_RESULT_CHECK);
        match tokio::time::timeout(wait, pending.recv()).await {
            Ok(Some(msg)) => break msg.payload,
            // The reply subscription is gone; the caller can fetch the result later.
            Ok(None) => return Err(ApiError::Unavailable),
            Err(_) => {}
        }
        // The reply is the fast path; a reply lost in a reconnect is still stored.
        // A failed read (NATS reconnecting) is logged and retried at the next check: the
        // task was accepted, so the caller must not be told to send it again.
        if let Some(stored) = stored_result(st, task.id).await.ok().flatten() {
            break stored;
        }
        if task.remaining().is_zero() {
            return Err(ApiError::DeadlineExceeded {
                task_id: task.id.to_string(),
            });
        }
    })
}

/// The task's result once it is stored, watching its key in the results bucket.
async fn wait_stored(st: &AppState, task: &Task) -> Result<Bytes, ApiError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        warn!(error = %e, task_id = %task.id, "could not watch the results bucket");
        ApiError::Unavailable
    };
    let mut watch = st
        .results
        .watch_with_history(task.id.to_string())
        .await
        .map_err(|e| unavailable(&e))?;
    loop {
        match tokio::time::timeout(task.remaining(), watch.next()).await {
            Err(_) => {
                return Err(ApiError::DeadlineExceeded {
                    task_id: task.id.to_string(),
                });
            }
            Ok(Some(Ok(entry))) if entry.operation == Operation::Put => return Ok(entry.value),
            // A delete or purge (expiry) is no result.
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(unavailable(&e)),
            Ok(None) => return Err(unavailable(&"the watch ended")),
        }
    }
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
