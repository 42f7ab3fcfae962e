//! The worker's side of workflows (the pure state machine is `agents::workflow`). It applies
//! an event to a workflow's state in the `workflows` bucket by compare-and-set, re-reading on
//! a conflict, then carries out what the state machine asks: publish the steps as tasks on
//! their agents' queues, send cancel notices, record progress. All of it happens before the
//! message that carried the event is acked, so a crash anywhere leaves that message
//! unacked; its redelivery applies the event again, which changes nothing and repeats its
//! dispatches, which JetStream de-duplicates by the steps' task ids.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use agents::control::{Action, ControlMessage, outcome};
use agents::prompt;
use agents::routing::{self, Decision, Load, Weights};
use agents::workflow::{
    DEFAULT_WALL_MS, Effect, Env, Event, Limits, Progress, Step, StepKind, StepOutcome, StepStatus,
    Workflow, WriteOutcome, advance,
};
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::kv;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use serde_json::json;
use shared::agents::Catalog;
use shared::artifacts::{ArtifactError, ArtifactRef, TEXT_CONTENT_TYPE, verify};
use shared::config::{Config, TargetConfig, split_direct};
use shared::context::{self, ContextError, Expect};
use shared::names::{HEADER_MSG_ID, cancel_subject, task_subject};
use shared::task::now_ms;
use shared::tokens::{Encoding, Window};
use shared::{ContextWrite, StepRef, Task, TaskId, TaskResult, TaskStatus};
use tracing::{debug, warn};

use crate::answer::{STORE_RETRY_DELAY, ack};
use crate::deps::Deps;
use crate::performance::Records;
use crate::step_inputs;

/// Compare-and-set attempts before an event is handed back to the queue: a conflict is
/// another step of the same workflow finishing at the same moment, so a few re-reads settle.
const CAS_TRIES: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub(crate) enum OrchestrateError {
    #[error("reading or writing the workflow: {0}")]
    Store(String),
    #[error("publishing for the workflow: {0}")]
    Publish(String),
    #[error("the workflow state does not decode: {0}")]
    Decode(String),
    #[error("the workflow kept changing under us ({CAS_TRIES} tries)")]
    Contended,
}

/// Handles a control message from `tasks.workflow.<priority>`: acked once applied, NAKed
/// for a retry when NATS failed, terminated when it is not a control message at all.
pub(crate) async fn control(msg: &jetstream::Message, deps: &Deps) {
    let message: ControlMessage = match serde_json::from_slice(&msg.payload) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "not a workflow control message; terminating it");
            ack(msg, AckKind::Term).await;
            return;
        }
    };
    let applied = async {
        if let Action::Start { spec, created_ms } = &message.action {
            let wf = Workflow::new(
                message.workflow,
                (**spec).clone(),
                *created_ms,
                DEFAULT_WALL_MS,
            );
            let bytes =
                serde_json::to_vec(&wf).map_err(|e| OrchestrateError::Decode(e.to_string()))?;
            match deps
                .workflows
                .create(message.workflow.to_string(), bytes.into())
                .await
            {
                Ok(_) => {}
                // A redelivered start: the workflow is there already.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(OrchestrateError::Store(e.to_string())),
            }
        }
        apply(deps, message.workflow, &message.event()).await
    };
    let applied = async { applied.await.map(|_| ()) };
    match applied.await {
        Ok(()) => ack(msg, AckKind::Ack).await,
        Err(e) => {
            warn!(error = %e, workflow = %message.workflow, "could not apply a control message; it goes back to the queue");
            ack(msg, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
        }
    }
}

/// Advances the workflow a finished step belongs to, from its stored `result` (its response
/// read back already when it was stored by reference), costed at
/// the configured price of the model that answered it. An output longer than
/// `artifacts.inline_max_bytes` is stored as an artifact first (its id derived from the
/// step's task id, so a redelivery writes the same one), and the workflow keeps a preview.
pub(crate) async fn step_finished(
    deps: &Deps,
    step: &StepRef,
    result: &TaskResult,
    last_delivery: bool,
) -> Result<(), OrchestrateError> {
    let outcome = outcome(result, |provider, model| deps.config.price(provider, model));
    let outcome = store_large_output(deps, result.id, outcome, last_delivery).await?;
    let write = match (&step.write, &outcome) {
        (Some(write), StepOutcome::Completed { text, artifact, .. }) => {
            let value = context_value(text, artifact.as_ref());
            Some(write_answer(deps, step, write, &value).await?)
        }
        _ => None,
    };
    let event = Event::StepFinished {
        step: step.step.clone(),
        attempt: step.attempt,
        outcome,
        write,
        prompt: step.prompt.clone(),
    };
    if let Some(wf) = apply(deps, step.workflow, &event).await? {
        if let Some(agent) = wf.step(&step.step).and_then(|s| s.agent.as_deref()) {
            deps.queue_load.finished(agent);
        }
        record_performance(deps, &wf, &step.step, result).await;
    }
    Ok(())
}

/// `outcome`, with its text stored as an artifact when it is too long to keep inline; a text
/// over the artifact limit fails the step, saying so.
async fn store_large_output(
    deps: &Deps,
    task: TaskId,
    mut outcome: StepOutcome,
    last_delivery: bool,
) -> Result<StepOutcome, OrchestrateError> {
    let StepOutcome::Completed {
        text,
        artifact,
        tool_calls,
        ..
    } = &mut outcome
    else {
        return Ok(outcome);
    };
    if text.len() <= deps.config.artifacts.inline_max_bytes {
        return Ok(outcome);
    }
    let id = shared::artifacts::step_id(task);
    match deps
        .artifacts
        .put_bytes(&id, TEXT_CONTENT_TYPE, text.as_bytes())
        .await
    {
        Ok(info) => {
            *artifact = Some(info.reference);
            Ok(outcome)
        }
        Err(ArtifactError::TooLarge { limit }) => Ok(StepOutcome::Failed {
            class: "bad_request".to_owned(),
            message: format!(
                "the step's output ({} bytes) is larger than artifacts.max_bytes ({limit})",
                text.len()
            ),
            tool_calls: std::mem::take(tool_calls),
        }),
        // No delivery is left to try again: the step fails, saying why, rather than leave
        // its workflow waiting.
        Err(e) if last_delivery => Ok(StepOutcome::Failed {
            class: "internal".to_owned(),
            message: format!(
                "the step's output ({} bytes) could not be stored as an artifact: {e}",
                text.len()
            ),
            tool_calls: std::mem::take(tool_calls),
        }),
        Err(e) => Err(OrchestrateError::Store(e.to_string())),
    }
}

/// A copy of `wf` in which the dependencies of `step` whose outputs are artifacts carry
/// their whole output, so the step's prompt sees all of it (the state keeps previews);
/// `None` when no dependency's output is an artifact.
async fn with_dependency_outputs(
    deps: &Deps,
    wf: &Workflow,
    step: &Step,
) -> Result<Option<Workflow>, OrchestrateError> {
    let stored: Vec<(String, ArtifactRef)> = step
        .depends_on
        .iter()
        .filter_map(|d| wf.step(d))
        .filter_map(|s| Some((s.id.clone(), s.artifact.clone()?)))
        .collect();
    if stored.is_empty() {
        return Ok(None);
    }
    let mut copy = wf.clone();
    for (dep, reference) in stored {
        let fetched = match deps.artifacts.get(&reference.id).await {
            Ok(found) => found.map(|(_, bytes)| bytes),
            Err(ArtifactError::Store(e)) => return Err(OrchestrateError::Store(e)),
            Err(e) => {
                warn!(workflow = %wf.id, step = %dep, artifact = %reference.id, error = %e, "a dependency's artifact does not read back; its preview goes into the prompt");
                None
            }
        };
        let Some(bytes) = fetched.filter(|bytes| verify(&reference, bytes).is_ok()) else {
            // Expired (`artifacts.max_age_secs`) or not what the step stored: the preview
            // is all there is.
            warn!(workflow = %wf.id, step = %dep, artifact = %reference.id, "a dependency's artifact is gone or altered; its preview goes into the prompt");
            continue;
        };
        if let Some(s) = copy.steps.iter_mut().find(|s| s.id == dep) {
            s.output = Some(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    Ok(Some(copy))
}

/// Writes a step's answer to its key of the workflow's shared context, by compare-and-set on
/// the revision the step saw when dispatched. A lost write is a conflict for the state
/// machine to settle, unless the entry found is this same run's (written before a crash).
async fn write_answer(
    deps: &Deps,
    step: &StepRef,
    write: &ContextWrite,
    value: &serde_json::Value,
) -> Result<WriteOutcome, OrchestrateError> {
    let scope = step.workflow.to_string();
    let expect = match write.base {
        0 => Expect::Absent,
        base => Expect::Revision(base),
    };
    let written = deps
        .context
        .put_for_task(
            &scope,
            &write.key,
            value,
            (&write.by, step.task_id()),
            expect,
        )
        .await;
    match written {
        Ok(revision) => Ok(WriteOutcome::Written {
            key: write.key.clone(),
            revision,
        }),
        Err(ContextError::Conflict { current }) => Ok(match current {
            Some(current) if current.envelope.task == Some(step.task_id()) => {
                WriteOutcome::Written {
                    key: write.key.clone(),
                    revision: current.revision,
                }
            }
            current => WriteOutcome::Conflict {
                key: write.key.clone(),
                base: write.base,
                current: current.as_ref().map_or(0, |c| c.revision),
                by: current.map(|c| c.envelope.by),
            },
        }),
        Err(e) => Err(OrchestrateError::Store(e.to_string())),
    }
}

/// A step's answer as a context value: the text; when it is longer than the bucket's value
/// limit allows, a reference to its artifact with a preview (`{"artifact", "preview"}`),
/// or, without an artifact, the text cut with a note saying so.
fn context_value(text: &str, artifact: Option<&ArtifactRef>) -> serde_json::Value {
    // The limit is on the serialized value, which escaping may make up to six times longer.
    let fits = |value: &serde_json::Value| context::check_size(value).is_ok();
    let whole = json!(text);
    if fits(&whole) {
        return whole;
    }
    if let Some(artifact) = artifact {
        // The whole output is an artifact already: the entry refers to it.
        return json!({
            "artifact": artifact,
            "preview": shared::artifacts::preview(text, shared::artifacts::PREVIEW_BYTES),
        });
    }
    let mut room = context::MAX_VALUE_BYTES / 2;
    loop {
        let cut = shared::artifacts::preview(text, room);
        let value = json!(format!(
            "{cut}\n[… cut: {} of {} bytes kept; the step's full output is on its task]",
            cut.len(),
            text.len()
        ));
        // At an eighth of the limit even the worst escaping (six bytes a byte) fits.
        if fits(&value) || room <= context::MAX_VALUE_BYTES / 8 {
            return value;
        }
        room = (room / 2).max(context::MAX_VALUE_BYTES / 8);
    }
}

/// Adds a step that changed its workflow to its agent's record, and a review's score to
/// the records of the agents whose work it judged (the synthesis and its inputs).
async fn record_performance(deps: &Deps, wf: &Workflow, id: &str, result: &TaskResult) {
    let Some(step) = wf.step(id) else {
        return;
    };
    if let Some(agent) = &step.agent {
        let succeeded = result.status == TaskStatus::Completed;
        deps.performance
            .update(agent, |p| p.record_step(succeeded, result.upstream_ms))
            .await;
    }
    if step.kind != StepKind::Review || step.status != StepStatus::Completed {
        return;
    }
    let Some(verdict) = &wf.review else {
        return;
    };
    let score = verdict
        .score
        .unwrap_or(if verdict.approved { 1.0 } else { 0.0 });
    for agent in crate::progress::judged(wf, step) {
        deps.performance
            .update(agent, |p| p.record_review(score))
            .await;
    }
}

/// Applies `event` by compare-and-set, then carries out its effects. Returns the workflow
/// if the event changed it (a replayed event does not).
async fn apply(
    deps: &Deps,
    id: TaskId,
    event: &Event,
) -> Result<Option<Workflow>, OrchestrateError> {
    let key = id.to_string();
    // The state and the agents' load, read together (when the load's sample is stale, two
    // round trips at once, not one after the other); the load once per event, also when a
    // conflict makes us read the state again: it is a hint for routing, and a retry comes
    // within milliseconds.
    let (env, mut entry) = tokio::join!(WorkerEnv::read(deps), read(deps, &key));
    for _ in 0..CAS_TRIES {
        let Some(current) = entry? else {
            // Pruned or never created: nothing waits on it any more.
            debug!(workflow = %id, "event for a workflow that is not stored; ignored");
            return Ok(None);
        };
        let mut wf: Workflow = serde_json::from_slice(&current.value)
            .map_err(|e| OrchestrateError::Decode(e.to_string()))?;
        let before = wf.clone();
        let effects = advance(&mut wf, event, &env);
        let changed = wf != before;
        if changed {
            let bytes =
                serde_json::to_vec(&wf).map_err(|e| OrchestrateError::Decode(e.to_string()))?;
            match deps
                .workflows
                .update(&key, bytes.into(), current.revision)
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    entry = read(deps, &key).await;
                    continue;
                }
                Err(e) => return Err(OrchestrateError::Store(e.to_string())),
            }
        }
        let orphans = carry_out(deps, &wf, effects).await?;
        // A step whose agent was removed after it was chosen, or whose prompt cannot fit
        // its window, fails with the reason, and so does its workflow: waiting would never
        // end.
        for (step, class, message) in orphans {
            let attempt = wf.step(&step).map_or(0, |s| s.attempt);
            let event = Event::StepFinished {
                step,
                attempt,
                write: None,
                outcome: StepOutcome::Failed {
                    class,
                    message,
                    tool_calls: Vec::new(),
                },
                prompt: None,
            };
            Box::pin(apply(deps, id, &event)).await?;
        }
        return Ok(changed.then_some(wf));
    }
    Err(OrchestrateError::Contended)
}

/// The workflow's stored state and its revision, if it is stored.
async fn read(deps: &Deps, key: &str) -> Result<Option<kv::Entry>, OrchestrateError> {
    deps.workflows
        .entry(key)
        .await
        .map_err(|e| OrchestrateError::Store(e.to_string()))
}

/// What publishing one step came to.
enum Dispatched {
    /// Sent; the future resolves when JetStream has stored it.
    Sent(PublishAckFuture),
    /// Not sent, and never will be: the failure's class and message.
    Refused(String, String),
}

/// Carries out `effects` in order; returns the steps it could not dispatch (their agent is
/// gone, their prompt cannot fit), with the failure's class and message. Every message is
/// sent before any acknowledgement is awaited, so they travel together instead of one round
/// trip each (a step's end typically publishes three: its progress, the next step, that
/// step's progress); the caller still acks its own message only once JetStream has stored
/// all of them.
async fn carry_out(
    deps: &Deps,
    wf: &Workflow,
    effects: Vec<Effect>,
) -> Result<Vec<(String, String, String)>, OrchestrateError> {
    let mut orphans = Vec::new();
    let mut stored = Vec::with_capacity(effects.len());
    for effect in effects {
        match effect {
            Effect::Dispatch { step } => match dispatch(deps, wf, &step).await? {
                Dispatched::Sent(ack) => stored.push(ack),
                Dispatched::Refused(class, message) => orphans.push((step, class, message)),
            },
            Effect::Abort { task_id } => {
                // Best effort by design (see cancel.rs): a missed notice means the step runs
                // to its end, and its result is then ignored.
                if let Err(e) = deps
                    .client
                    .publish(cancel_subject(task_id), Bytes::new())
                    .await
                {
                    debug!(error = %e, %task_id, "could not send a cancel notice");
                }
            }
            Effect::Progress(progress) => stored.push(record(deps, wf, &progress).await?),
        }
    }
    for ack in stored {
        ack.await
            .map_err(|e| OrchestrateError::Publish(e.to_string()))?;
    }
    Ok(orphans)
}

/// Publishes `step` as a task on its agent's queue, with the step's own task id.
async fn dispatch(deps: &Deps, wf: &Workflow, id: &str) -> Result<Dispatched, OrchestrateError> {
    let catalog = deps.agents.current();
    let step = wf
        .step(id)
        .ok_or_else(|| OrchestrateError::Decode(format!("no step `{id}`")))?;
    let name = step
        .agent
        .as_deref()
        .ok_or_else(|| OrchestrateError::Decode(format!("step `{id}` has no agent")))?;
    let Some(agent) = catalog.agents.get(name) else {
        warn!(workflow = %wf.id, step = id, agent = name, "the step's agent is gone; the step fails");
        return Ok(Dispatched::Refused(
            "no_agent".to_owned(),
            format!("agent `{name}` was removed before its step could run"),
        ));
    };
    let capability = agent
        .queue()
        .map_err(|e| OrchestrateError::Decode(e.to_string()))?;
    // A planner plans with what the workflow's agents (its team, or all) can do.
    let allowed = wf.spec.agents.as_deref();
    let capabilities: Vec<String> = catalog
        .agents
        .values()
        .filter(|a| allowed.is_none_or(|list| list.contains(&a.name)))
        .flat_map(|a| a.capabilities.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // A work step writes its answer to its key of the workflow's context, on the revision
    // it sees now (its prompt shows that revision's value).
    let (own, inputs) = step_inputs::gather(deps, wf, step).await?;
    let write = step.writes.as_ref().map(|key| ContextWrite {
        key: key.clone(),
        base: own.as_ref().map_or(0, |c| c.revision),
        by: agent.name.clone(),
    });
    let window = route_window(&deps.config, &agent.route);
    // The dependencies' whole outputs where the state holds previews.
    let resolved = with_dependency_outputs(deps, wf, step).await?;
    let (wf, step) = match &resolved {
        Some(copy) => (copy, copy.step(id).unwrap_or(step)),
        None => (wf, step),
    };
    let built = if window.encoding == Encoding::Estimate {
        // Counting is arithmetic on lengths: no need to leave the async thread.
        prompt::request(
            agent,
            wf,
            step,
            &capabilities,
            Limits::default().plan,
            &inputs,
            window,
        )
    } else {
        // Exact counting of a large prompt takes milliseconds.
        let (agent, wf, step) = (agent.clone(), wf.clone(), step.clone());
        deps.blocking
            .spawn_blocking(move || {
                prompt::request(
                    &agent,
                    &wf,
                    &step,
                    &capabilities,
                    Limits::default().plan,
                    &inputs,
                    window,
                )
            })
            .await
            .map_err(|e| OrchestrateError::Decode(format!("building the prompt: {e}")))?
    };
    let (request, record) = match built {
        Ok(built) => built,
        Err(e) => {
            warn!(workflow = %wf.id, step = id, error = %e, "the step's prompt cannot fit its window; the step fails");
            return Ok(Dispatched::Refused(
                "context_length".to_owned(),
                format!("route `{}`: {e}", agent.route),
            ));
        }
    };
    let task = Task {
        id: step.task_id,
        capability: capability.clone(),
        priority: wf.spec.priority,
        route: agent.route.clone(),
        request,
        deadline_ms: wf.deadline_ms,
        reply_to: None,
        created_ms: now_ms(),
        replay_of: None,
        step: Some(StepRef {
            workflow: wf.id,
            step: step.id.clone(),
            attempt: step.attempt,
            write,
            prompt: Some(record),
        }),
        asked_by: Vec::new(),
        session: None,
    };
    let payload = serde_json::to_vec(&task).map_err(|e| OrchestrateError::Decode(e.to_string()))?;
    // A window of a million tokens takes megabytes of prompt: more than a NATS message may
    // carry. Publishing it could never succeed, so the step fails, saying so.
    let max_payload = deps.client.server_info().max_payload;
    if payload.len() > max_payload {
        warn!(workflow = %wf.id, step = id, bytes = payload.len(), max_payload, "the step's task is larger than a NATS message; the step fails");
        return Ok(Dispatched::Refused(
            "context_length".to_owned(),
            format!(
                "the step's prompt makes a task of {} bytes; NATS messages are at most {max_payload} \
                 (a smaller context_window on route `{}`, or a larger max_payload, fits it)",
                payload.len(),
                agent.route
            ),
        ));
    }
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, task.id.to_string().as_str());
    deps.js
        .publish_with_headers(
            task_subject(&capability, task.priority),
            headers,
            payload.into(),
        )
        .await
        .map(|ack| {
            deps.queue_load.sent(name);
            Dispatched::Sent(ack)
        })
        .map_err(|e| OrchestrateError::Publish(e.to_string()))
}

/// The window a prompt for `route` must fit: the smallest of its targets' (failover may use
/// any of them); a `provider/model` addressed directly, its model's; else its family's.
fn route_window(config: &Config, route: &str) -> Window {
    if let Some(window) = config.routes.get(route).and_then(|r| r.smallest_window()) {
        return window;
    }
    match split_direct(route, &config.providers, &config.routes) {
        Some((provider, model)) => config
            .providers
            .get(provider)
            .map(|p| TargetConfig::direct(provider, model, p).budget())
            .unwrap_or_else(|| Window::of_model(model)),
        None => Window::of_model(route),
    }
}

/// Records progress on `events.workflow.<id>` (as [`crate::progress::event`] words it), the
/// source of a workflow's event stream and of the memory index; the returned future resolves when JetStream has stored it. The end is de-duplicated, so a
/// replayed event does not announce it twice.
async fn record(
    deps: &Deps,
    wf: &Workflow,
    progress: &Progress,
) -> Result<PublishAckFuture, OrchestrateError> {
    let event = crate::progress::event(wf, progress);
    let mut headers = HeaderMap::new();
    if progress.kind == agents::workflow::ProgressKind::Done {
        headers.insert(HEADER_MSG_ID, format!("{}.done", wf.id).as_str());
    }
    deps.js
        .publish_with_headers(
            format!("events.workflow.{}", wf.id),
            headers,
            event.to_string().into(),
        )
        .await
        .map_err(|e| OrchestrateError::Publish(e.to_string()))
}

/// What the state machine may ask of the world, read once per event: the catalog, and each
/// agent's load from JetStream's own books (the messages on its queue, waiting or in flight;
/// see [`crate::queue_load`]).
struct WorkerEnv {
    catalog: Arc<Catalog>,
    weights: Weights,
    performance: Arc<Records>,
    /// Messages on each agent's queue, by agent name.
    queued: HashMap<String, u64>,
}

impl WorkerEnv {
    async fn read(deps: &Deps) -> Self {
        Self {
            catalog: deps.agents.current(),
            weights: deps.config.agent_routing,
            performance: deps.performance.clone(),
            queued: deps.queue_load.read(&deps.js).await,
        }
    }
}

impl Env for WorkerEnv {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn route(&self, capability: &str, allowed: Option<&[String]>) -> Option<Decision> {
        let candidates = self
            .catalog
            .agents
            .values()
            .filter(|a| allowed.is_none_or(|list| list.contains(&a.name)))
            .map(|a| {
                let load = Load {
                    in_flight: 0,
                    queued: self.queued.get(&a.name).copied().unwrap_or(0),
                    capacity: a.max_concurrency,
                };
                (a, load, self.performance.get(&a.name))
            });
        routing::choose(candidates, &[capability.to_owned()], self.weights)
    }

    fn known_capability(&self, capability: &str, allowed: Option<&[String]>) -> bool {
        self.catalog
            .agents
            .values()
            .any(|a| a.has(capability) && allowed.is_none_or(|list| list.contains(&a.name)))
    }

    fn known_agent(&self, agent: &str) -> bool {
        self.catalog.agents.contains_key(agent)
    }

    fn limits(&self) -> Limits {
        Limits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_answer_always_fits_the_context_bucket() {
        let reference = ArtifactRef {
            id: "step-x".into(),
            bytes: 1,
            sha256: "0".repeat(64),
            content_type: "text/plain".into(),
        };
        // Plain text, text that escapes to six times its length, and both with an artifact.
        let plain = "word ".repeat(30_000);
        let escaping = "\u{1}".repeat(40_000);
        for text in [plain.as_str(), escaping.as_str(), "short"] {
            for artifact in [None, Some(&reference)] {
                let value = context_value(text, artifact);
                assert!(context::check_size(&value).is_ok(), "{} bytes", text.len());
                if text == "short" {
                    assert_eq!(value, json!("short"));
                } else if artifact.is_some() {
                    assert_eq!(value["artifact"]["id"], "step-x");
                } else {
                    assert!(value.as_str().unwrap().contains("[… cut: "));
                }
            }
        }
    }
}
