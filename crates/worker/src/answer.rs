//! Making a task's one result durable and known: store it with `create` (first writer
//! wins), send it to the reply subject, record the lifecycle event, settle the message.
//! Shared by tasks that ran (`process.rs`) and tasks refused as published (`refuse.rs`),
//! so both answer a publisher the same way.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use serde_json::json;
use shared::artifacts::ArtifactError;
use shared::names::{HEADER_MSG_ID, RESULTS_BUCKET, task_event_subject};
use shared::reply;
use shared::task::TaskError;
use shared::{
    Capability, FailureClass, Priority, StreamEventKind, Task, TaskId, TaskResult, TaskStatus,
};
use tracing::{debug, error, warn};

use crate::deps::Deps;
use crate::relay::event_headers;

/// How soon a task whose result could not be stored is delivered again.
pub(crate) const STORE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// On the last delivery, tries to store the result (and dead-letter it) before giving up.
const LAST_DELIVERY_TRIES: u32 = 10;
/// How long any other delivery keeps trying a write (the result, its event) before handing
/// the task back: long enough to ride out a JetStream leader election when a cluster node
/// is lost (a few seconds), so the task is answered now instead of after a redelivery; the
/// caller keeps the message in progress meanwhile.
const WRITE_PATIENCE: Duration = Duration::from_secs(10);
/// First pause between tries of a write, and the most it grows to.
const WRITE_RETRY_BASE: Duration = Duration::from_millis(100);
const WRITE_RETRY_CAP: Duration = Duration::from_secs(1);
/// How long JetStream has to confirm one NAK or TERM before it is sent again.
const SETTLE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// What a lifecycle event says about the task besides its result. A refused task may lack
/// any of it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct About<'a> {
    pub id: Option<TaskId>,
    pub capability: Option<&'a Capability>,
    pub priority: Option<Priority>,
    pub route: Option<&'a str>,
    pub created_ms: Option<u64>,
}

impl<'a> From<&'a Task> for About<'a> {
    fn from(task: &'a Task) -> Self {
        Self {
            id: Some(task.id),
            capability: Some(&task.capability),
            priority: Some(task.priority),
            route: Some(&task.route),
            created_ms: Some(task.created_ms),
        }
    }
}

/// Runs `write` until it succeeds: for up to `WRITE_PATIENCE`, with short growing pauses;
/// on the last delivery, which has no next one to hand the task to, up to
/// `LAST_DELIVERY_TRIES` times, `STORE_RETRY_DELAY` apart. `msg` is kept in progress while
/// it retries; the first try costs no timer.
pub(crate) async fn persist<T, E, F: Future<Output = Result<T, E>>>(
    msg: &jetstream::Message,
    delivery: i64,
    deps: &Deps,
    mut write: impl FnMut() -> F,
) -> Result<T, E> {
    let e = match write().await {
        Ok(done) => return Ok(done),
        Err(e) => e,
    };
    // In progress for as long as the write is retried (a bucket or stream electing a
    // leader), so the wait is not mistaken for a dead worker.
    with_progress(msg, deps.ack_wait, async {
        let last = delivery >= deps.max_deliver;
        let started = tokio::time::Instant::now();
        let mut try_number = 1u32;
        let mut e = e;
        loop {
            let pause = if last {
                STORE_RETRY_DELAY
            } else {
                shared::backoff::full_jitter(WRITE_RETRY_BASE, WRITE_RETRY_CAP, try_number)
            };
            let again = if last {
                try_number < LAST_DELIVERY_TRIES
            } else {
                started.elapsed() + pause < WRITE_PATIENCE
            };
            if !again {
                return Err(e);
            }
            try_number = try_number.saturating_add(1);
            tokio::time::sleep(pause).await;
            e = match write().await {
                Ok(done) => return Ok(done),
                Err(e) => e,
            };
        }
    })
    .await
}

/// Runs `work`, telling JetStream every third of `ack_wait` that the task is in progress,
/// so a long provider call or a retried write is not mistaken for a dead worker.
pub(crate) async fn with_progress<T>(
    msg: &jetstream::Message,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let period = ack_wait / 3;
    // The first tick one period from now: awaiting an immediate first tick would wait for
    // the timer driver's next turn (up to a millisecond) on every task.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => ack(msg, AckKind::Progress).await,
        }
    }
}

/// Room left in a NATS message for what wraps a stored result (KV subject, headers).
const RESULT_HEADROOM: usize = 8 * 1024;

/// Stores `result` under `id` unless another delivery already stored one; returns what is
/// stored.
pub(crate) async fn store(id: TaskId, result: &TaskResult, deps: &Deps) -> Option<Bytes> {
    let key = id.to_string();
    let mut bytes = Bytes::from(serde_json::to_vec(result).ok()?);
    // A result that would not fit a NATS message (the KV entry, the reply) keeps its
    // response in the artifacts store and a reference here.
    let fits = deps
        .client
        .server_info()
        .max_payload
        .saturating_sub(RESULT_HEADROOM);
    if bytes.len() > fits {
        let small = match deps.artifacts.offload_response(result).await {
            Ok(small) => small,
            // No delivery would fare better: the answer fails, saying why.
            Err(e @ ArtifactError::TooLarge { .. }) => TaskResult {
                status: TaskStatus::Failed,
                response: None,
                error: Some(TaskError {
                    class: FailureClass::InvalidResponse,
                    message: format!(
                        "the answer ({} bytes) is too large to keep: {e}",
                        bytes.len()
                    ),
                    upstream_status: None,
                }),
                ..result.clone()
            },
            Err(e) => {
                // The task goes back to the queue; after the last attempt, the reserve
                // delivery records it failed (`process::handle`), so it is not lost.
                warn!(error = %e, bytes = bytes.len(), "could not store a large response as an artifact; the task goes back to the queue");
                return None;
            }
        };
        bytes = Bytes::from(serde_json::to_vec(&small).ok()?);
    }
    match deps.results.create(&key, bytes.clone()).await {
        Ok(_) => Some(bytes),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            debug!("another delivery stored the result first; using it");
            match deps.results.get(key.as_str()).await {
                Ok(Some(existing)) => Some(existing),
                // A direct get may be answered by a replica that has not applied the entry
                // yet; the bucket's leader has it.
                Ok(None) => stored_by_leader(&key, deps).await,
                Err(e) => {
                    warn!(error = %e, "could not read the stored result");
                    None
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "could not store the result; the task goes back to the queue");
            None
        }
    }
}

/// The result stored under `key`, read from the `results` bucket's leader.
async fn stored_by_leader(key: &str, deps: &Deps) -> Option<Bytes> {
    let read = async {
        let stream = deps
            .js
            .get_stream_no_info(format!("KV_{RESULTS_BUCKET}"))
            .await?;
        let message = stream
            .get_last_raw_message_by_subject(&format!("$KV.{RESULTS_BUCKET}.{key}"))
            .await?;
        Ok::<_, async_nats::Error>(message.payload)
    };
    match read.await {
        Ok(stored) => Some(stored),
        Err(e) => {
            warn!(error = %e, "could not read the stored result from the bucket's leader");
            None
        }
    }
}

/// Sends the stored result to the task's reply subject, if it has one and the result was
/// stored for that same subject: a task id published again with another `reply_to` (by
/// anyone who learned the id) gets nothing; its publisher can read the `results` bucket.
pub(crate) async fn deliver(reply_to: Option<&str>, stored: Bytes, delivery: i64, deps: &Deps) {
    let Some(reply_to) = reply_to else {
        return;
    };
    if !reply::may_send(&stored, reply_to) {
        warn!("the stored result was made for another reply subject; not sending it");
        return;
    }
    let headers = event_headers(StreamEventKind::Result, delivery);
    if let Err(e) = deps
        .client
        .publish_with_headers(reply_to.to_owned(), headers, stored)
        .await
    {
        warn!(error = %e, "could not publish the result to the reply subject");
    }
}

/// Records the task's lifecycle event. Readers of `EVENTS` (memory, usage, dashboards) need
/// one event per finished task, so when it cannot be stored and a later delivery remains,
/// the message goes back to the queue (that delivery finds the stored result and records
/// the event, de-duplicated). Returns whether the caller may go on to settle the message.
pub(crate) async fn record_event(
    msg: &jetstream::Message,
    about: About<'_>,
    result: &TaskResult,
    delivery: i64,
    deps: &Deps,
) -> bool {
    match persist(msg, delivery, deps, || emit_event(about, result, deps)).await {
        Ok(()) => true,
        Err(e) if delivery < deps.max_deliver => {
            warn!(error = %e, "could not record the task event; it goes back to the queue");
            ack(msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
            false
        }
        Err(e) => {
            error!(error = %e, "could not record the task event; its result is stored");
            true
        }
    }
}

/// Publishes `events.task.<status>` through JetStream and waits for it to be stored,
/// de-duplicated on the task id (so every delivery that finishes the task may send it).
async fn emit_event(
    about: About<'_>,
    result: &TaskResult,
    deps: &Deps,
) -> Result<(), jetstream::context::PublishError> {
    let event = json!({
        "task_id": about.id,
        "capability": about.capability,
        "priority": about.priority,
        "route": about.route,
        "status": result.status,
        "class": result.error.as_ref().map(|e| e.class),
        "provider": result.provider,
        "model": result.model,
        "worker": result.worker,
        "delivery": result.delivery,
        "attempts": result.attempts.len(),
        "fallback_depth": result.fallback_depth,
        "duration_ms": about.created_ms.map(|c| result.finished_ms.saturating_sub(c)),
    });
    let payload = Bytes::from(event.to_string());
    let subject = task_event_subject(result.status.as_str());
    let mut headers = HeaderMap::new();
    if let Some(id) = about.id {
        headers.insert(HEADER_MSG_ID, id.to_string().as_str());
    }
    deps.js
        .publish_with_headers(subject, headers, payload)
        .await?
        .await?;
    Ok(())
}

/// Settles `msg`. An ack or an in-progress ack is sent and forgotten: if it is lost, the
/// task is only delivered again after `ack_wait` and finds its result stored. A NAK or TERM
/// decides what happens to a task that has no result yet, so JetStream must confirm it: it
/// is sent as a request and sent again (for up to `WRITE_PATIENCE`) while the consumer's
/// leader does not answer, as happens while a cluster elects a new one. A NAK lost there
/// would leave the task waiting for the whole `ack_wait`.
pub(crate) async fn ack(msg: &jetstream::Message, kind: AckKind) {
    match kind {
        AckKind::Ack | AckKind::Progress | AckKind::Next => {
            if let Err(e) = msg.ack_with(kind).await {
                warn!(error = %e, "could not acknowledge the task");
            }
        }
        AckKind::Nak(_) | AckKind::Term => settle_confirmed(msg, kind).await,
    }
}

async fn settle_confirmed(msg: &jetstream::Message, kind: AckKind) {
    let Some(subject) = msg.reply.clone() else {
        warn!("a task message without a reply subject cannot be settled");
        return;
    };
    let client = msg.context.client();
    let started = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        let request = async_nats::Request::new()
            .payload(Bytes::from(kind))
            .timeout(Some(SETTLE_CONFIRM_TIMEOUT));
        let e = match client.send_request(subject.clone(), request).await {
            Ok(_) => return,
            Err(e) => e,
        };
        let pause = shared::backoff::full_jitter(WRITE_RETRY_BASE, WRITE_RETRY_CAP, attempt);
        if started.elapsed() + pause >= WRITE_PATIENCE {
            warn!(error = %e, "JetStream did not confirm settling the task; it is delivered again after ack_wait");
            return;
        }
        debug!(error = %e, "settling the task not confirmed; sending it again");
        tokio::time::sleep(pause).await;
        attempt = attempt.saturating_add(1);
    }
}
