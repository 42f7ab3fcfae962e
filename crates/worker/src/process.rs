//! Handling one delivered task, from decoding to ack: skip the work if a result already
//! exists, call the provider with in-progress acks, stream chunks, store the one result with
//! `create` (first writer wins), deliver it to the reply subject, emit an event, then ack.
//! A transient failure with deliveries left is NAKed with a delay instead, so JetStream
//! redelivers it later; the result is stored before the ack, so nothing is lost.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use shared::config::RouteConfig;
use shared::names::{
    HEADER_DELIVERY, HEADER_EVENT, HEADER_MSG_ID, HEADER_SEQ, stream_subject, task_event_subject,
};
use shared::task::{TaskError, now_ms};
use shared::{FailureClass, StreamEventKind, Task, TaskResult, TaskStatus};
use tracing::{Instrument, debug, info_span, warn};

use crate::assemble::Assembler;
use crate::backoff::{last_attempt, retry_delay};
use crate::provider::{Provider, ProviderError};

/// How soon a task whose result could not be stored is delivered again.
const STORE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// A provider together with its per-attempt timeout.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub provider: Provider,
    pub timeout: Duration,
}

/// What handling a task needs; shared by every in-flight task of a worker.
#[derive(Debug)]
pub(crate) struct Deps {
    pub client: async_nats::Client,
    pub results: kv::Store,
    pub providers: HashMap<String, Target>,
    pub routes: BTreeMap<String, RouteConfig>,
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
    }
    let route = deps.routes.get(&task.route);
    let outcome = if task.remaining().is_zero() {
        Err(ProviderError::new(
            FailureClass::DeadlineExceeded,
            "the deadline passed before a worker could take the task",
        ))
    } else if delivery > last_attempt(deps.max_deliver) {
        // The reserve delivery: the last attempt ended without a result (its worker died
        // or could not store it). Record the failure rather than risk stranding the task.
        Err(ProviderError::new(
            FailureClass::Internal,
            "every attempt ended without a result (the worker running it stopped)",
        ))
    } else {
        with_progress(&msg, deps.ack_wait, execute(&task, route, delivery, deps)).await
    };
    let (status, response, error) = match outcome {
        Ok(response) => (TaskStatus::Completed, Some(response), None),
        Err(err) => {
            if let Some(delay) = retry_delay(&err, delivery, deps.max_deliver, task.remaining()) {
                warn!(
                    class = err.class.as_str(),
                    ?delay,
                    "transient failure; task goes back to the queue"
                );
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
    let result = TaskResult {
        id: task.id,
        status,
        response,
        error,
        provider: route.map(|r| r.provider.clone()),
        model: route.map(|r| r.model.clone()),
        worker: deps.worker_id.clone(),
        delivery: u64::try_from(delivery).unwrap_or(1),
        finished_ms: now_ms(),
    };
    let Some(stored) = store(&task, &result, deps).await else {
        // Not durable, so not done: hand the task back to be delivered again shortly.
        ack(&msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
        return;
    };
    finish(&msg, &task, stored, delivery, deps).await;
}

/// After the result is durable: deliver it, record the lifecycle event, ack. Every delivery
/// that gets here does all three, so a worker that died after storing loses nothing; the
/// event is de-duplicated by JetStream on the task id.
async fn finish(msg: &jetstream::Message, task: &Task, stored: Bytes, delivery: i64, deps: &Deps) {
    let result = serde_json::from_slice::<TaskResult>(&stored);
    deliver(task, stored, delivery, deps).await;
    match result {
        Ok(result) => emit_event(task, &result, deps).await,
        Err(e) => warn!(error = %e, "stored result does not decode; no event"),
    }
    ack(msg, AckKind::Ack).await;
}

/// Calls the route's provider within the task's deadline and the target's timeout.
async fn execute(
    task: &Task,
    route: Option<&RouteConfig>,
    delivery: i64,
    deps: &Deps,
) -> Result<Value, ProviderError> {
    let route = route.ok_or_else(|| {
        ProviderError::new(
            FailureClass::BadRequest,
            format!("unknown route {:?}", task.route),
        )
    })?;
    let target = deps.providers.get(&route.provider).ok_or_else(|| {
        ProviderError::new(
            FailureClass::Internal,
            "route names an unconfigured provider",
        )
    })?;
    let budget = task.remaining().min(target.timeout);
    let call = async {
        if task.is_streaming() {
            stream_to_caller(task, &target.provider, &route.model, delivery, deps).await
        } else {
            target.provider.complete(&route.model, &task.request).await
        }
    };
    match tokio::time::timeout(budget, call).await {
        Ok(outcome) => outcome,
        Err(_) if task.remaining().is_zero() => Err(ProviderError::new(
            FailureClass::DeadlineExceeded,
            "the task's deadline passed while the provider was answering",
        )),
        Err(_) => Err(ProviderError::new(
            FailureClass::Timeout,
            format!("provider did not answer within {} ms", budget.as_millis()),
        )),
    }
}

/// Forwards each chunk to `stream.<task id>` as it arrives and returns the assembled
/// completion.
async fn stream_to_caller(
    task: &Task,
    provider: &Provider,
    model: &str,
    delivery: i64,
    deps: &Deps,
) -> Result<Value, ProviderError> {
    let mut chunks = provider.stream(model, &task.request).await?;
    let subject = stream_subject(task.id);
    let mut assembler = Assembler::default();
    let mut seq: u64 = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ProviderError {
            partial: seq > 0,
            ..e
        })?;
        assembler.push(&chunk);
        let mut headers = event_headers(StreamEventKind::Chunk, delivery);
        headers.insert(HEADER_SEQ, seq.to_string().as_str());
        let payload = Bytes::from(serde_json::to_vec(&chunk).unwrap_or_default());
        if let Err(e) = deps
            .client
            .publish_with_headers(subject.clone(), headers, payload)
            .await
        {
            // Chunks are the fast path; the stored result is the durable one.
            warn!(error = %e, "could not publish a stream chunk");
        }
        seq += 1;
    }
    Ok(assembler.finish())
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

async fn emit_event(task: &Task, result: &TaskResult, deps: &Deps) {
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
        "duration_ms": result.finished_ms.saturating_sub(task.created_ms),
    });
    let payload = Bytes::from(event.to_string());
    let subject = task_event_subject(result.status.as_str());
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, task.id.to_string().as_str());
    if let Err(e) = deps
        .client
        .publish_with_headers(subject, headers, payload)
        .await
    {
        warn!(error = %e, "could not publish the task event");
    }
}

fn event_headers(kind: StreamEventKind, delivery: i64) -> HeaderMap {
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
    let mut ticker = tokio::time::interval(ack_wait / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
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
