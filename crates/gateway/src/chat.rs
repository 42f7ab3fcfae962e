//! `POST /v1/chat/completions`, non-streaming: publish the task, wait for its reply (or, past
//! the deadline, its stored result), answer in the OpenAI shape.

use async_nats::jetstream::kv::Operation;
use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use shared::Task;
use tokio::time::Instant;
use tracing::warn;

use crate::abandon::CallerGone;
use crate::answer::{STORED_RESULT_CHECK, decode_result, resolve, result_response, stored_result};
use crate::body::ChatBody;
use crate::error::ApiError;
use crate::replies::PendingReply;
use crate::routes::RequestTask;
use crate::state::AppState;
use crate::stream;
use crate::submit::{Published, build_task, publish};
use crate::window;

pub async fn chat_completions(
    State(st): State<AppState>,
    Extension(request): Extension<RequestTask>,
    headers: HeaderMap,
    body: ChatBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let streaming = body.stream;
    let mut task = build_task(&st, request.id, &headers, body)?;
    crate::session::attach(&st, &headers, &mut task).await?;
    if !window::fits_by_bound(&st.config, &task) {
        let config = st.config.clone();
        task = st
            .background
            .spawn_blocking(move || window::fit(&config, task))
            .await
            .map_err(|_| ApiError::Internal)??;
    }
    // A task the caller named may be finished already (a retry): its answer, nothing queued.
    let stored = if request.named_by_caller {
        stored_result(&st, task.id).await?
    } else {
        None
    };
    if stored.is_none() {
        st.admission
            .admit(&task.capability, task.priority, task.remaining())
            .map_err(|o| ApiError::Overloaded {
                retry_after_secs: o.retry_after_secs,
            })?;
    }
    if streaming {
        return stream::respond(st, task, started, stored).await;
    }
    if let Some(stored) = stored {
        return result_response(resolve(&st, decode_result(&stored)?).await?, None);
    }
    let mut pending = st.replies.register(task.id);
    task.reply_to = Some(pending.subject.clone());
    let waiting = CallerGone::new(&st, task.id, !request.named_by_caller);
    let payload = match publish(&st, &task).await? {
        Published::New => wait_reply(&st, &task, &mut pending).await?,
        // Queued before, with the first request's reply subject: wait for the stored result.
        Published::Duplicate => wait_stored(&st, &task).await?,
    };
    waiting.answered();
    result_response(resolve(&st, decode_result(&payload)?).await?, Some(started))
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
