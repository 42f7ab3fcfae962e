//! `POST /v1/chat/completions`, non-streaming: publish the task, wait for its reply (or, past
//! the deadline, its stored result), answer in the OpenAI shape.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use shared::TaskId;
use tokio::time::Instant;

use crate::answer::{STORED_RESULT_CHECK, decode_result, result_response, stored_result};
use crate::body::ChatBody;
use crate::error::ApiError;
use crate::state::AppState;
use crate::stream;
use crate::submit::{build_task, publish};

pub async fn chat_completions(
    State(st): State<AppState>,
    Extension(task_id): Extension<TaskId>,
    headers: HeaderMap,
    body: ChatBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let streaming = body.stream;
    let mut task = build_task(&st, task_id, &headers, body)?;
    if streaming {
        return stream::respond(st, task, started).await;
    }
    let mut pending = st.replies.register(task.id);
    task.reply_to = Some(pending.subject.clone());
    publish(&st, &task).await?;
    let payload = loop {
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
        if let Some(stored) = stored_result(&st, task.id).await.ok().flatten() {
            break stored;
        }
        if task.remaining().is_zero() {
            return Err(ApiError::DeadlineExceeded {
                task_id: task.id.to_string(),
            });
        }
    };
    result_response(decode_result(&payload)?, Some(started))
}
