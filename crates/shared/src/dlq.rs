//! The dead-letter queue: tasks that failed for good land on `dlq.<capability>` in the
//! `DLQ` stream with their last error and every attempt, so an operator can see why and
//! replay them once the cause is fixed. Replaying publishes a new task (new id, fresh
//! deadline, `replay_of` pointing back) and removes the dead letter.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::names::{DLQ_STREAM, HEADER_MSG_ID, dlq_subject, task_subject};
use crate::task::{Attempt, TaskError, now_ms};
use crate::{Task, TaskId};

/// Most dead letters one listing returns.
pub const MAX_LIST: usize = 1000;

/// One dead letter: the task as it was queued, why it failed, and everything tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub task: Task,
    pub error: TaskError,
    pub attempts: Vec<Attempt>,
    pub worker: String,
    pub dead_lettered_ms: u64,
}

/// A dead letter with its position in the stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    pub seq: u64,
    #[serde(flatten)]
    pub letter: DeadLetter,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("the DLQ stream is not available: {0}")]
    Stream(String),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("no dead letter for task {0}")]
    NotFound(TaskId),
}

/// Records `letter` durably (waits for JetStream's ack); de-duplicated on the task id.
pub async fn publish(js: &jetstream::Context, letter: &DeadLetter) -> Result<(), DlqError> {
    publish_with_id(js, letter, Some(&letter.task.id.to_string())).await
}

async fn publish_with_id(
    js: &jetstream::Context,
    letter: &DeadLetter,
    msg_id: Option<&str>,
) -> Result<(), DlqError> {
    publish_acked(js, dlq_subject(&letter.task.capability), msg_id, letter).await
}

/// Publishes `value` as JSON and waits for JetStream to store it.
async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    msg_id: Option<&str>,
    value: &impl Serialize,
) -> Result<(), DlqError> {
    let payload = serde_json::to_vec(value).map_err(|e| DlqError::Publish(e.to_string()))?;
    let mut headers = HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert(HEADER_MSG_ID, id);
    }
    js.publish_with_headers(subject, headers, Bytes::from(payload))
        .await
        .map_err(|e| DlqError::Publish(e.to_string()))?
        .await
        .map_err(|e| DlqError::Publish(e.to_string()))?;
    Ok(())
}

/// Up to `limit` dead letters, oldest first, optionally of one capability. Reads the
/// stream one message at a time: meant for inspection, not for very large queues.
pub async fn list(
    js: &jetstream::Context,
    capability: Option<&str>,
    limit: usize,
) -> Result<Vec<Listed>, DlqError> {
    let mut stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(|e| DlqError::Stream(e.to_string()))?;
    let state = stream
        .info()
        .await
        .map_err(|e| DlqError::Stream(e.to_string()))?
        .state
        .clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        if out.len() >= limit {
            break;
        }
        // Sequences of removed (replayed) letters are gaps.
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let Ok(letter) = serde_json::from_slice::<DeadLetter>(&message.payload) else {
            continue;
        };
        if capability.is_none_or(|c| letter.task.capability.as_str() == c) {
            out.push(Listed { seq, letter });
        }
    }
    Ok(out)
}

/// Queues a dead-lettered task again as a new task and removes the dead letter. Returns
/// the new task id. The letter is removed first, so of two concurrent replays only one
/// queues a task; if queueing then fails, the letter is put back.
pub async fn replay(js: &jetstream::Context, task_id: TaskId) -> Result<TaskId, DlqError> {
    let found = list(js, None, usize::MAX)
        .await?
        .into_iter()
        .find(|l| l.letter.task.id == task_id)
        .ok_or(DlqError::NotFound(task_id))?;
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(|e| DlqError::Stream(e.to_string()))?;
    if stream.delete_message(found.seq).await.is_err() {
        // Another replay removed it first.
        return Err(DlqError::NotFound(task_id));
    }
    let old = found.letter.task.clone();
    let now = now_ms();
    // The original time budget, counted from now.
    let budget = old.deadline_ms.saturating_sub(old.created_ms);
    let task = Task {
        id: TaskId::new(),
        deadline_ms: now + budget,
        created_ms: now,
        // Nobody waits on the old reply subject any more; the result is fetched by id.
        reply_to: None,
        replay_of: Some(old.id),
        ..old
    };
    if let Err(e) = queue(js, &task).await {
        // Not queued: the letter goes back (without a dedupe id, which would drop it).
        publish_with_id(js, &found.letter, None).await?;
        return Err(e);
    }
    Ok(task.id)
}

async fn queue(js: &jetstream::Context, task: &Task) -> Result<(), DlqError> {
    let subject = task_subject(&task.capability, task.priority);
    publish_acked(js, subject, Some(&task.id.to_string()), task).await
}

/// The `DLQ` stream's configuration.
pub(crate) fn stream_config(max_age: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: DLQ_STREAM.to_owned(),
        description: Some("Switchyard dead letters: dlq.<capability>".to_owned()),
        subjects: vec![crate::names::DLQ_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}
