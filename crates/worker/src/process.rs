//! Handling one delivered task, from decoding to ack: skip the work if a result already
//! exists, run the failover loop (inside the tool loop when the task may use built-in
//! tools) with in-progress acks, store the one result with `create` (first writer wins)
//! carrying every attempt and tool call, dead-letter it if it failed for good, deliver
//! it to the reply subject, emit an event, then ack. When no target could answer for a
//! reason that may pass, the task is NAKed with a delay instead and its attempts are kept
//! for the next delivery; the result is stored before the ack, so nothing is lost.

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use shared::dlq::{self, DeadLetter};
use shared::inbound::read_task;
use shared::names::{HEADER_MSG_ID, WORKFLOW_CAPABILITY};
use shared::reply;
use shared::task::{TaskError, now_ms};
use shared::{Attempt, FailureClass, Task, TaskResult, TaskStatus};
use tracing::{Instrument, debug, error, info_span, warn};

use crate::answer::{STORE_RETRY_DELAY, ack, deliver, persist, record_event, store, with_progress};
use crate::backoff::{last_attempt, retry_delay};
use crate::deps::Deps;
use crate::failover::{Failover, Outcome};
use crate::orchestrate;
use crate::refuse::refuse;
use crate::relay::NatsChunks;
use crate::threads;
use crate::tool_loop::{self, Loop, LoopOutcome, NatsTools};

/// Handles one delivered message to the end: it is acked, NAKed for a later retry, or
/// refused and terminated (undecodable, or not the task its subject says), and never left
/// without a decision unless NATS itself fails.
pub(crate) async fn process(msg: jetstream::Message, deps: &Deps) {
    if msg
        .subject
        .as_str()
        .strip_prefix("tasks.")
        .and_then(|rest| rest.split('.').next())
        == Some(WORKFLOW_CAPABILITY)
    {
        orchestrate::control(&msg, deps).await;
        return;
    }
    let delivery = msg.info().map_or(1, |i| i.delivered);
    let msg_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_MSG_ID))
        .map(|v| v.as_str());
    let task = match read_task(
        msg.subject.as_str(),
        &msg.payload,
        msg_id,
        &deps.reply_prefixes,
    ) {
        Ok(task) => task,
        Err(rejection) => {
            refuse(&msg, *rejection, delivery, deps).await;
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
    let outcome: LoopOutcome = if task.remaining().is_zero() {
        Outcome::failed(
            FailureClass::DeadlineExceeded,
            "the deadline passed before a worker could take the task",
        )
        .into()
    } else if delivery > last_attempt(deps.max_deliver) {
        // The reserve delivery: the last attempt ended without a result (its worker died
        // or could not store it). Record the failure rather than risk stranding the task.
        Outcome::failed(
            FailureClass::Internal,
            "every attempt ended without a result (the worker running it stopped)",
        )
        .into()
    } else if let Some(running) = deps.cancellations.start(task.id) {
        tokio::select! {
            outcome = with_progress(&msg, deps.ack_wait, run(&task, delivery, &history, deps)) => outcome,
            () = running.token.cancelled() => Outcome::failed(
                FailureClass::Cancelled,
                "the caller went away; the provider call was stopped",
            ).into(),
        }
    } else {
        Outcome::failed(
            FailureClass::Cancelled,
            "the caller went away before a worker took the task",
        )
        .into()
    };
    let LoopOutcome {
        outcome:
            Outcome {
                answer,
                attempts,
                answered_by,
                fallback_depth,
            },
        tool_calls,
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
        response_artifact: None,
        error,
        provider,
        model,
        worker: deps.worker_id.clone(),
        delivery: u64::try_from(delivery).unwrap_or(1),
        finished_ms: now_ms(),
        upstream_ms: history.iter().map(|a| a.duration_ms).sum(),
        attempts: history,
        fallback_depth,
        reply_digest: task.reply_to.as_deref().map(reply::digest),
        tool_calls,
    };
    // In progress while a large response is stored as an artifact, and for as long as the
    // store is retried (a results bucket electing a leader).
    let stored = persist(&msg, delivery, deps, || async {
        with_progress(&msg, deps.ack_wait, store(task.id, &result, deps))
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

/// Runs the task: down its route's failover chain, and around that the tool loop when it
/// may use built-in tools (each round of the loop is one run down the chain).
async fn run(task: &Task, delivery: i64, history: &[Attempt], deps: &Deps) -> LoopOutcome {
    let chunks = NatsChunks::new(&deps.client, task.id, delivery);
    let mcp_tools = deps.mcp_tools.current();
    let mcp = tool_loop::Mcp {
        catalog: &mcp_tools,
        now_ms: now_ms(),
    };
    let offer = match tool_loop::offer(task, &deps.agents.current(), &deps.config.tools, &mcp) {
        Ok(offer) => offer,
        Err(refused) => {
            return Outcome {
                answer: Err(refused),
                attempts: Vec::new(),
                answered_by: None,
                fallback_depth: 0,
            }
            .into();
        }
    };
    let Some(offer) = offer else {
        let failover = Failover {
            task,
            delivery,
            prior: history,
            routing: &deps.routing,
            health: &*deps.health,
            chunks: &chunks,
        };
        return failover.run().await.into();
    };
    let tools = NatsTools {
        client: &deps.client,
    };
    // A streamed answer's rounds reach the caller as one stream.
    let chunks = &tool_loop::LoopStream::new(&chunks);
    let tool_loop = Loop {
        task,
        offer,
        config: &deps.config.tools,
        tools: &tools,
        rounds: chunks,
        quotas: Some(tool_loop::Quotas {
            store: &deps.tool_quotas,
            config: &deps.config.tools.quotas,
        }),
    };
    tool_loop
        .run(|request| {
            let round = Task {
                request,
                ..task.clone()
            };
            async move {
                Failover {
                    task: &round,
                    delivery,
                    prior: history,
                    routing: &deps.routing,
                    health: &*deps.health,
                    chunks,
                }
                .run()
                .await
            }
        })
        .await
}

/// After the result is durable: dead-letter it if it failed for good, deliver it, record
/// the lifecycle event, ack. Every delivery that gets here does all of it, so a worker that
/// died after storing loses nothing; the dead letter and the event are de-duplicated by
/// JetStream on the task id.
async fn finish(msg: &jetstream::Message, task: &Task, stored: Bytes, delivery: i64, deps: &Deps) {
    let mut result = serde_json::from_slice::<TaskResult>(&stored);
    // A response stored by reference is read back once, for the thread posts and the
    // workflow step below (the reply and the stored result keep the reference).
    if let Ok(result) = &mut result
        && let Err(e) = deps.artifacts.resolve_response(result).await
    {
        if delivery < deps.max_deliver {
            warn!(error = %e, "could not read a stored response back; the task goes back to the queue");
            ack(msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
            return;
        }
        error!(error = %e, "could not read a stored response back; its thread posts and workflow step see none");
    }
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
        match persist(msg, delivery, deps, || dlq::publish(&deps.js, &letter)).await {
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
    // Before the answer is delivered, so a session's next turn (sent once this one is
    // answered) finds it, and before the workflow advances, so later steps see the insight.
    if let Ok(result) = &result
        && let Err(e) = threads::record(task, result, deps).await
    {
        if delivery < deps.max_deliver {
            warn!(error = %e, "could not post to a thread; the task goes back to the queue");
            ack(msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
            return;
        }
        // No delivery is left: the answer is stored and goes out without its thread post.
        error!(error = %e, "could not post to a thread; the answer goes out without it");
    }
    deliver(task.reply_to.as_deref(), stored, delivery, deps).await;
    match result {
        Ok(result) => {
            if !record_event(msg, task.into(), &result, delivery, deps).await {
                return;
            }
            // A workflow's step: whoever stores its result advances the workflow, before
            // the ack, so a crash here is repaired by the redelivery.
            if let Some(step) = &task.step
                && let Err(e) =
                    orchestrate::step_finished(deps, step, &result, delivery >= deps.max_deliver)
                        .await
            {
                warn!(error = %e, workflow = %step.workflow, "could not advance the workflow; the step goes back to the queue");
                ack(msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
                return;
            }
        }
        Err(e) => warn!(error = %e, "stored result does not decode; no event"),
    }
    ack(msg, AckKind::Ack).await;
    if delivery > 1
        && let Err(e) = deps.attempts.delete(task.id.to_string()).await
    {
        debug!(error = %e, "could not remove the kept attempts (they expire anyway)");
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
