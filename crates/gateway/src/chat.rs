//! `POST /v1/chat/completions`, non-streaming: publish the task, wait for its result (the
//! server republishes it on `results.<task id>` once it is stored), answer in the OpenAI
//! shape.

use async_nats::Subscriber;
use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use shared::Task;
use shared::names::result_subject;
use shared::reply::GATEWAY_REPLY_PREFIX;
use tokio::time::Instant;
use tracing::warn;

use crate::abandon::CallerGone;
use crate::answer::{STORED_RESULT_CHECK, decode_result, resolve, result_response, stored_result};
use crate::body::ChatBody;
use crate::error::ApiError;
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
    // Where the answer comes: the result the server republishes once it is stored. A
    // session's turn is answered by the worker instead, on a reply subject, after it has
    // posted the turn to the session's thread, so the caller's next turn always finds it.
    // Subscribed before the task is published (one connection keeps the order), so the
    // answer cannot pass by unseen. The server ends the subscription after that one
    // message: no unsubscribe follows the answer.
    let answer_subject = if task.session.is_some() {
        let reply_to = format!("{GATEWAY_REPLY_PREFIX}{}", task.id);
        task.reply_to = Some(reply_to.clone());
        reply_to
    } else {
        result_subject(task.id)
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "could not subscribe to a result subject");
        ApiError::Unavailable
    };
    let mut answers = st
        .client
        .subscribe(answer_subject)
        .await
        .map_err(|e| unavailable(&e))?;
    answers
        .unsubscribe_after(1)
        .await
        .map_err(|e| unavailable(&e))?;
    let waiting = CallerGone::new(&st, task.id, !request.named_by_caller);
    let published = publish(&st, &task).await?;
    // Queued before (a retry with the same id): it may have finished already. A failed read
    // (NATS reconnecting) is no answer yet: the task was accepted, so it is waited for.
    let earlier = match published {
        Published::New => None,
        Published::Duplicate => stored_result(&st, task.id).await.ok().flatten(),
    };
    let payload = match earlier {
        Some(stored) => stored,
        None => wait_result(&st, &task, &mut answers).await?,
    };
    waiting.answered();
    result_response(resolve(&st, decode_result(&payload)?).await?, Some(started))
}

/// The task's result as the server republishes it once stored, or read from the results
/// bucket if that message was lost (a reconnect).
async fn wait_result(
    st: &AppState,
    task: &Task,
    answers: &mut Subscriber,
) -> Result<Bytes, ApiError> {
    Ok(loop {
        let wait = task.remaining().min(STORED_RESULT_CHECK);
        match tokio::time::timeout(wait, answers.next()).await {
            Ok(Some(msg)) => break msg.payload,
            // The client is closing (the gateway is shutting down); the caller can fetch the
            // result later.
            Ok(None) => return Err(ApiError::Unavailable),
            Err(_) => {}
        }
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
