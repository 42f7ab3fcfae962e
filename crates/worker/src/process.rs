//! Handling one delivered task, from decoding to ack: skip the work if a result already
//! exists, run the failover loop with in-progress acks, store the one result with `create`
//! (first writer wins) carrying every attempt, dead-letter it if it failed for good, deliver
//! it to the reply subject, emit an event, then ack. When no target could answer for a
//! reason that may pass, the task is NAKed with a delay instead and its attempts are kept
//! for the next delivery; the result is stored before the ack, so nothing is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use serde_json::json;
use shared::config::{ProviderConfig, RouteConfig};
use shared::dlq::{self, DeadLetter};
use shared::names::{HEADER_DELIVERY, HEADER_EVENT, HEADER_MSG_ID, task_event_subject};
use shared::task::{TaskError, now_ms};
use shared::{Attempt, FailureClass, StreamEventKind, Task, TaskResult, TaskStatus};
use tracing::{Instrument, debug, error, info_span, warn};

use crate::backoff::{last_attempt, retry_delay};
use crate::failover::{self, Outcome};
use crate::health::Health;
use crate::provider::{Provider, ProviderError};

/// How soon a task whose result could not be stored is delivered again.
const STORE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// On the last delivery, tries to store the result (and dead-letter it) before giving up.
const LAST_DELIVERY_TRIES: u32 = 10;

/// One configured provider's adapter and timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    pub provider: Provider,
    pub timeout: Duration,
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What handling a task needs; shared by every in-flight task of a worker.
#[derive(Debug)]
pub(crate) struct Deps {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub results: kv::Store,
    pub attempts: kv::Store,
    pub health: Arc<Health>,
    pub runtimes: HashMap<String, Runtime>,
    pub provider_configs: BTreeMap<String, ProviderConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    /// Where the next key rotation starts, so load spreads over a pool.
    pub rotation: AtomicUsize,
    pub worker_id: String,
    pub ack_wait: Duration,
    pub max_deliver: i64,
}

/// Handles one delivered message to the end: it is acked, NAKed for a later retry, or
/// terminated (undecodable), and never left without a decision unless NATS itself fails.
pub(crate) async fn process(msg: jetstream::Message, deps: &Deps) {
    let delivery = msg.info().map_or(1, |i| i.delivered);
    let task: Task = match serde_json::from_slice(&msg.payload) {
        Ok(task) => task,
        Err(e) => {
            warn!(subject = %msg.subject, error = %e, "undecodable task; terminating it");
            ack(&msg, AckKind::Term).await;
            return;
        }
    };
    let span = info_span!("task", task_id = %task.id, capability = %task.capability, delivery);
    handle(msg, task, delivery, deps).instrument(span).await;
}

async fn handle(msg: jetstream::Message, task: Task, delivery: i64, deps: &Deps) {
    let mut history = Vec::new();
    if delivery > 1 {
        match deps.results.get(task.id.to_string()).await {
            Ok(Some(stored)) => {
                debug!("result already stored by an earlier delivery; re-sending it");
                finish(&msg, &task, stored, delivery, deps).await;
                return;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "could not look up an earlier result"),
        }
        history = earlier_attempts(&task, deps).await;
    }
    let outcome = if task.remaining().is_zero() {
        Outcome::failed(
            FailureClass::DeadlineExceeded,
            "the deadline passed before a worker could take the task",
        )
    } else if delivery > last_attempt(deps.max_deliver) {
        // The reserve delivery: the last attempt ended without a result (its worker died
        // or could not store it). Record the failure rather than risk stranding the task.
        Outcome::failed(
            FailureClass::Internal,
            "every attempt ended without a result (the worker running it stopped)",
        )
    } else {
        with_progress(
            &msg,
            deps.ack_wait,
            failover::run(&task, delivery, &history, deps),
        )
        .await
    };
    let Outcome {
        answer,
        attempts,
        answered_by,
        fallback_depth,
    } = outcome;
    history.extend(attempts);
    let (status, response, error) = match answer {
        Ok(response) => (TaskStatus::Completed, Some(response), None),
        Err(err) => {
            if let Some(delay) = retry_delay(&err, delivery, deps.max_deliver, task.remaining()) {
                warn!(
                    class = err.class.as_str(),
                    ?delay,
                    "no target answered; task goes back to the queue"
                );
                keep_attempts(&task, &history, deps).await;
                ack(&msg, AckKind::Nak(Some(delay))).await;
                return;
            }
            warn!(class = err.class.as_str(), message = %err.message, "task failed");
            let error = TaskError {
                class: err.class,
                message: err.message,
                upstream_status: err.status,
            };
            (TaskStatus::Failed, None, Some(error))
        }
    };
    let last = history.last();
    let (provider, model) = match answered_by {
        Some((provider, model)) => (Some(provider), Some(model)),
        None => (
            last.map(|a| a.provider.clone()),
            last.map(|a| a.model.clone()),
        ),
    };
    let result = TaskResult {
        id: task.id,
        status,
        response,
        error,
        provider,
        model,
        worker: deps.worker_id.clone(),
        delivery: u64::try_from(delivery).unwrap_or(1),
        finished_ms: now_ms(),
        upstream_ms: history.iter().map(|a| a.duration_ms).sum(),
        attempts: history,
        fallback_depth,
    };
    let stored = persist(delivery, deps, || async {
        with_progress(&msg, deps.ack_wait, store(&task, &result, deps))
            .await
            .ok_or(())
    })
    .await;
    let Ok(stored) = stored else {
        // Not durable, so not done: hand the task back to be delivered again shortly.
        ack(&msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
        return;
    };
    finish(&msg, &task, stored, delivery, deps).await;
}

/// After the result is durable: dead-letter it if it failed for good, deliver it, record
/// the lifecycle event, ack. Every delivery that gets here does all of it, so a worker that
/// died after storing loses nothing; the dead letter and the event are de-duplicated by
/// JetStream on the task id.
async fn finish(msg: &jetstream::Message, task: &Task, stored: Bytes, delivery: i64, deps: &Deps) {
    let result = serde_json::from_slice::<TaskResult>(&stored);
    if let Ok(result) = &result
        && let Some(error) = &result.error
        && error.class.dead_letters()
    {
        let letter = DeadLetter {
            task: task.clone(),
            error: error.clone(),
            attempts: result.attempts.clone(),
            worker: result.worker.clone(),
            dead_lettered_ms: now_ms(),
        };
        match persist(delivery, deps, || dlq::publish(&deps.js, &letter)).await {
            Ok(()) => warn!(class = error.class.as_str(), "task dead-lettered"),
            // The result is stored; the next delivery finds it and dead-letters again.
            Err(e) if delivery < deps.max_deliver => {
                warn!(error = %e, "could not dead-letter the task; it goes back to the queue");
                ack(msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
                return;
            }
            // No delivery is left: the failed result is durable, so the task is not lost.
            Err(e) => {
                error!(error = %e, "could not dead-letter the task; its failed result is stored")
            }
        }
    }
    deliver(task, stored, delivery, deps).await;
    match result {
        Ok(result) => match persist(delivery, deps, || emit_event(task, &result, deps)).await {
            Ok(()) => {}
            // Readers of EVENTS (memory, usage, dashboards) need one event per finished task:
            // the next delivery finds the stored result and records it (de-duplicated).
            Err(e) if delivery < deps.max_deliver => {
                warn!(error = %e, "could not record the task event; it goes back to the queue");
                ack(msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
                return;
            }
            Err(e) => error!(error = %e, "could not record the task event; its result is stored"),
        },
        Err(e) => warn!(error = %e, "stored result does not decode; no event"),
    }
    ack(msg, AckKind::Ack).await;
    if delivery > 1
        && let Err(e) = deps.attempts.delete(task.id.to_string()).await
    {
        debug!(error = %e, "could not remove the kept attempts (they expire anyway)");
    }
}

/// Runs `write` once; on the last delivery, which has no next one to hand the task to, up
/// to `LAST_DELIVERY_TRIES` times, `STORE_RETRY_DELAY` apart, until it succeeds.
async fn persist<T, E, F: Future<Output = Result<T, E>>>(
    delivery: i64,
    deps: &Deps,
    mut write: impl FnMut() -> F,
) -> Result<T, E> {
    let tries = if delivery >= deps.max_deliver {
        LAST_DELIVERY_TRIES
    } else {
        1
    };
    let mut try_number = 1;
    loop {
        match write().await {
            Err(_) if try_number < tries => {
                try_number += 1;
                tokio::time::sleep(STORE_RETRY_DELAY).await;
            }
            done => return done,
        }
    }
}

/// Attempts that earlier deliveries kept for this task.
async fn earlier_attempts(task: &Task, deps: &Deps) -> Vec<Attempt> {
    match deps.attempts.get(task.id.to_string()).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Ok(None) => Vec::new(),
        Err(e) => {
            warn!(error = %e, "could not read earlier attempts");
            Vec::new()
        }
    }
}

/// Keeps the attempts so far for the next delivery. Losing them loses history, not work.
async fn keep_attempts(task: &Task, attempts: &[Attempt], deps: &Deps) {
    let Ok(bytes) = serde_json::to_vec(attempts) else {
        return;
    };
    if let Err(e) = deps.attempts.put(task.id.to_string(), bytes.into()).await {
        warn!(error = %e, "could not keep the attempts for the next delivery");
    }
}

impl Outcome {
    fn failed(class: FailureClass, message: &str) -> Self {
        Self {
            answer: Err(ProviderError::new(class, message)),
            attempts: Vec::new(),
            answered_by: None,
            fallback_depth: 0,
        }
    }
}

/// Stores `result` unless another delivery already stored one; returns what is stored.
async fn store(task: &Task, result: &TaskResult, deps: &Deps) -> Option<Bytes> {
    let key = task.id.to_string();
    let bytes = Bytes::from(serde_json::to_vec(result).ok()?);
    match deps.results.create(&key, bytes.clone()).await {
        Ok(_) => Some(bytes),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            debug!("another delivery stored the result first; using it");
            match deps.results.get(key).await {
                Ok(Some(existing)) => Some(existing),
                Ok(None) => Some(bytes),
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

/// Sends the stored result to the task's reply subject, if it has one.
async fn deliver(task: &Task, stored: Bytes, delivery: i64, deps: &Deps) {
    let Some(reply_to) = &task.reply_to else {
        return;
    };
    let headers = event_headers(StreamEventKind::Result, delivery);
    if let Err(e) = deps
        .client
        .publish_with_headers(reply_to.clone(), headers, stored)
        .await
    {
        warn!(error = %e, "could not publish the result to the reply subject");
    }
}

/// Records the task's lifecycle event in `EVENTS`, confirmed by JetStream (de-duplicated on
/// the task id, so every delivery that finishes the task may send it).
async fn emit_event(
    task: &Task,
    result: &TaskResult,
    deps: &Deps,
) -> Result<(), jetstream::context::PublishError> {
    let event = json!({
        "task_id": task.id,
        "capability": task.capability,
        "priority": task.priority,
        "route": task.route,
        "status": result.status,
        "class": result.error.as_ref().map(|e| e.class),
        "provider": result.provider,
        "model": result.model,
        "worker": result.worker,
        "delivery": result.delivery,
        "attempts": result.attempts.len(),
        "fallback_depth": result.fallback_depth,
        "duration_ms": result.finished_ms.saturating_sub(task.created_ms),
    });
    let payload = Bytes::from(event.to_string());
    let subject = task_event_subject(result.status.as_str());
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, task.id.to_string().as_str());
    deps.js
        .publish_with_headers(subject, headers, payload)
        .await?
        .await?;
    Ok(())
}

pub(crate) fn event_headers(kind: StreamEventKind, delivery: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_EVENT, kind.as_str());
    headers.insert(HEADER_DELIVERY, delivery.to_string().as_str());
    headers
}

/// Runs `work`, telling JetStream every third of `ack_wait` that the task is in progress,
/// so a long provider call is not mistaken for a dead worker.
async fn with_progress<T>(
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

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        warn!(error = %e, "could not acknowledge the task");
    }
}
