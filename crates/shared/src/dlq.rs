//! The dead-letter queue: tasks that failed for good land on `dlq.<capability>.<task id>` in
//! the `DLQ` stream with their last error and every attempt, so an operator can see why and
//! replay them once the cause is fixed. The stream is bounded (count, bytes, age; the oldest
//! letters go first); listing reads one page at a time after a cursor (the stream sequence);
//! a letter is found by its subject, never by scanning. Replaying publishes a new task (new
//! id, fresh deadline, `replay_of` pointing back) and removes the dead letter.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self, message::StreamMessage};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::names::{DLQ_STREAM, HEADER_MSG_ID, dlq_capability_subjects, dlq_subject, task_subject};
use crate::task::{Attempt, TaskError, now_ms};
use crate::{Capability, Task, TaskId};

/// Most dead letters one page holds: a letter carries its request (up to the gateway's body
/// limit), so a page is kept small.
pub const MAX_LIST: usize = 100;
/// Dead letters in a page when the caller gives no `limit`.
pub const DEFAULT_LIST: usize = 20;
/// Most payload bytes one page holds; a page always has at least one letter, and stops
/// early (with `has_more`) rather than hold more than this in memory.
const MAX_PAGE_BYTES: usize = 16 << 20;

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

/// One page of dead letters, oldest first, in the OpenAI list shape: `first_id` and
/// `last_id` are the `seq` of the first and last letter, and `last_id` is the cursor to pass
/// as `after` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub object: &'static str,
    pub data: Vec<Listed>,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    pub has_more: bool,
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
    let subject = dlq_subject(&letter.task.capability, letter.task.id);
    publish_acked(js, subject, msg_id, letter).await
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

/// One page of at most `limit` (capped at [`MAX_LIST`]) dead letters with a stream sequence
/// above `after`, oldest first, optionally of one capability. Each letter is one
/// "next message on these subjects from this sequence" request: removed letters leave no
/// gaps to step over, and nothing beyond the page is read.
pub async fn list(
    js: &jetstream::Context,
    capability: Option<&Capability>,
    after: u64,
    limit: usize,
) -> Result<Page, DlqError> {
    let stream = dlq_stream(js).await?;
    let subjects = capability.map_or_else(
        || crate::names::DLQ_SUBJECTS.to_owned(),
        dlq_capability_subjects,
    );
    let limit = limit.clamp(1, MAX_LIST);
    let mut data = Vec::new();
    let mut bytes = 0;
    let mut next = after.saturating_add(1);
    let has_more = loop {
        let Some(message) = next_letter(&stream, &subjects, next).await? else {
            break false;
        };
        if data.len() >= limit
            || (!data.is_empty() && bytes + message.payload.len() > MAX_PAGE_BYTES)
        {
            break true;
        }
        next = message.sequence.saturating_add(1);
        bytes += message.payload.len();
        // A letter that does not decode (a newer writer's format) is left out of the page.
        if let Ok(letter) = serde_json::from_slice::<DeadLetter>(&message.payload) {
            data.push(Listed {
                seq: message.sequence,
                letter,
            });
        }
    };
    Ok(Page {
        object: "list",
        first_id: data.first().map(|l| l.seq),
        last_id: data.last().map(|l| l.seq),
        data,
        has_more,
    })
}

/// The first message on `subjects` at or after sequence `from`, if any.
async fn next_letter(
    stream: &stream::Stream<()>,
    subjects: &str,
    from: u64,
) -> Result<Option<StreamMessage>, DlqError> {
    match stream
        .get_first_raw_message_by_subject(subjects, from)
        .await
    {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(DlqError::Stream(e.to_string())),
    }
}

/// The dead letter of `task_id`, looked up by its subject `dlq.*.<task id>`.
async fn find(stream: &stream::Stream<()>, task_id: TaskId) -> Result<Listed, DlqError> {
    let subject = format!("dlq.*.{task_id}");
    let message = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => message,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Err(DlqError::NotFound(task_id));
        }
        Err(e) => return Err(DlqError::Stream(e.to_string())),
    };
    let letter = serde_json::from_slice::<DeadLetter>(&message.payload)
        .map_err(|_| DlqError::NotFound(task_id))?;
    Ok(Listed {
        seq: message.sequence,
        letter,
    })
}

async fn dlq_stream(js: &jetstream::Context) -> Result<stream::Stream<()>, DlqError> {
    js.get_stream_no_info(DLQ_STREAM)
        .await
        .map_err(|e| DlqError::Stream(e.to_string()))
}

/// Queues a dead-lettered task again as a new task and removes the dead letter. Returns
/// the new task id. The letter is removed first, so of two concurrent replays only one
/// queues a task; if queueing then fails, the letter is put back.
pub async fn replay(js: &jetstream::Context, task_id: TaskId) -> Result<TaskId, DlqError> {
    let stream = dlq_stream(js).await?;
    let found = find(&stream, task_id).await?;
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
        deadline_ms: now.saturating_add(budget),
        created_ms: now,
        // Nobody waits on the old reply subject any more; the result is fetched by id.
        reply_to: None,
        replay_of: Some(old.id),
        step: None,
        asked_by: Vec::new(),
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

/// How much the `DLQ` stream keeps: the oldest letters make room for new ones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_age: Duration,
    pub max_msgs: i64,
    pub max_bytes: i64,
}

/// The `DLQ` stream's configuration.
pub(crate) fn stream_config(bounds: Bounds, replicas: usize) -> stream::Config {
    stream::Config {
        name: DLQ_STREAM.to_owned(),
        description: Some("Switchyard dead letters: dlq.<capability>.<task id>".to_owned()),
        subjects: vec![crate::names::DLQ_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        // Keep the newest: a burst of failures must not stop new ones being recorded.
        discard: stream::DiscardPolicy::Old,
        max_age: bounds.max_age,
        max_messages: bounds.max_msgs,
        max_bytes: bounds.max_bytes,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}
