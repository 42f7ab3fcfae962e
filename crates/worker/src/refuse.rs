//! Answering a task that cannot be run as published: missing or malformed fields, or a
//! capability or priority that is not its subject's. Any NATS client may publish tasks, so
//! such a publisher is answered like any other: a failed result (`bad_request`, naming the
//! field) stored under the task id when one can be read, sent to `reply_to` when it can be
//! read, a lifecycle event, then `Term` so the message is never delivered again.

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use shared::inbound::Rejection;
use shared::task::{TaskError, now_ms};
use shared::{FailureClass, TaskResult, TaskStatus};
use tracing::warn;

use crate::answer::{About, STORE_RETRY_DELAY, ack, deliver, persist, record_event, store};
use crate::deps::Deps;

pub(crate) async fn refuse(
    msg: &jetstream::Message,
    rejection: Rejection,
    delivery: i64,
    deps: &Deps,
) {
    let message = rejection.problem.to_string();
    warn!(
        subject = %msg.subject,
        task_id = ?rejection.id,
        field = rejection.problem.field(),
        problem = %message,
        "refusing a task as published; terminating it"
    );
    let result = TaskResult {
        // Without a readable id the refusal still has the result shape; its id is new and
        // nothing is stored under it (nobody could ask for it).
        id: rejection.id.unwrap_or_default(),
        status: TaskStatus::Failed,
        response: None,
        response_artifact: None,
        error: Some(TaskError {
            class: FailureClass::BadRequest,
            message,
            upstream_status: None,
        }),
        provider: None,
        model: None,
        worker: deps.worker_id.clone(),
        delivery: u64::try_from(delivery).unwrap_or(1),
        finished_ms: now_ms(),
        attempts: Vec::new(),
        fallback_depth: 0,
        upstream_ms: 0,
        reply_digest: rejection.reply_to.as_deref().map(shared::reply::digest),
        tool_calls: Vec::new(),
    };
    let stored = match rejection.id {
        Some(id) => {
            let stored = persist(msg, delivery, deps, || async {
                store(id, &result, deps).await.ok_or(())
            })
            .await;
            let Ok(stored) = stored else {
                // Not durable, so not answered: the next delivery refuses it again.
                ack(msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
                return;
            };
            stored
        }
        None => match serde_json::to_vec(&result) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                warn!(error = %e, "could not encode the refusal");
                ack(msg, AckKind::Term).await;
                return;
            }
        },
    };
    // A result stored earlier under this id (the task ran before) is the one answer; it
    // goes to `reply_to` only if that task named the same subject (see `deliver`).
    let answered = serde_json::from_slice::<TaskResult>(&stored).unwrap_or(result);
    deliver(rejection.reply_to.as_deref(), stored, delivery, deps).await;
    let about = About {
        id: rejection.id,
        capability: rejection.capability.as_ref(),
        priority: rejection.priority,
        route: rejection.route.as_deref(),
        created_ms: rejection.created_ms,
    };
    if record_event(msg, about, &answered, delivery, deps).await {
        ack(msg, AckKind::Term).await;
    }
}
