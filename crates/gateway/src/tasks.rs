//! The task API for agent work: `POST /v1/tasks` hands a goal to a team, `GET
//! /v1/tasks/{id}` shows its workflow (through `info::task`, which also serves chat results:
//! one id space), `DELETE /v1/tasks/{id}` cancels it, `POST /v1/tasks/{id}/approve` and
//! `/reject` decide an approval (`GET /v1/tasks`, the listing, is `task_list`). The gateway
//! only checks, publishes and reads: every change is a control message on
//! `tasks.workflow.<priority>`, applied by a worker.

use agents::control::{Action, ControlMessage};
use agents::plan::{Plan, PlanLimits};
use agents::workflow::{DEFAULT_WALL_MS, Spec, Status, Workflow};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde_json::{Value, json};
use shared::TaskId;
use shared::agents::FieldError;
use shared::names::{EVENTS_STREAM, HEADER_MSG_ID, WORKFLOW_CAPABILITY, task_subject};
use shared::task::now_ms;
use tracing::{debug, warn};

use crate::body;
use crate::error::ApiError;
use crate::path::PathParam;
use crate::routes::RequestTask;
use crate::state::AppState;

/// The team a task gets when it names neither a team nor agents.
pub const DEFAULT_TEAM: &str = "default";
/// Longest goal: a brief, not a document (documents go in `context`).
pub const MAX_GOAL_LEN: usize = 32 * 1024;

/// A checked `POST /v1/tasks` body.
#[derive(Debug)]
pub struct TaskBody(Spec);

impl FromRequest<AppState> for TaskBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let fields = body::json_object(&body::read(req, state).await?)?;
        Ok(TaskBody(body::decode(fields)?))
    }
}

/// `POST /v1/tasks`: checks the request, resolves its team, publishes the start, and
/// answers 202 with the task id (its `Idempotency-Key`, if any, names it). A retry of a task
/// that has started answers with the task as it is and publishes nothing.
pub async fn create(
    State(st): State<AppState>,
    Extension(request): Extension<RequestTask>,
    TaskBody(spec): TaskBody,
) -> Result<Response, ApiError> {
    let spec = check(&st, spec)?;
    // Stored before the start is published, so the task can be read as soon as it is
    // accepted; a retry (same Idempotency-Key) finds it and, while it is still queued (its
    // first gateway may have died before publishing), publishes the start again, which
    // JetStream de-duplicates.
    let new = Workflow::new(request.id, spec, now_ms(), DEFAULT_WALL_MS);
    let bytes = serde_json::to_vec(&new).map_err(|_| ApiError::Internal)?;
    let wf = match st
        .workflows
        .create(request.id.to_string(), bytes.into())
        .await
    {
        Ok(_) => new,
        // The task as first stored is the one that runs.
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
            workflow(&st, request.id).await?.unwrap_or(new)
        }
        Err(e) => {
            warn!(error = %e, "could not store a workflow");
            return Err(ApiError::Unavailable);
        }
    };
    // Once a worker has applied the start, a start published again would only be replayed,
    // and outside JetStream's duplicate window a replay dispatches again the steps the start
    // dispatched that are still under way.
    if wf.status == Status::Queued {
        let message = ControlMessage {
            workflow: wf.id,
            action: Action::Start {
                spec: Box::new(wf.spec.clone()),
                created_ms: wf.created_ms,
            },
        };
        publish(&st, &message, wf.spec.priority).await?;
    }
    let body = json!({
        "id": wf.id,
        "object": "task",
        "status": wf.status,
        "goal": wf.spec.goal,
        "team": wf.spec.team,
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The spec as it will run: its team resolved to its agents, everything checked.
fn check(st: &AppState, mut spec: Spec) -> Result<Spec, ApiError> {
    let catalog = st.agents.current();
    let mut errors = Vec::new();
    if spec.goal.trim().is_empty() {
        errors.push(FieldError::new("goal", "must not be empty"));
    } else if spec.goal.len() > MAX_GOAL_LEN {
        errors.push(FieldError::new(
            "goal",
            format!("must be at most {MAX_GOAL_LEN} bytes"),
        ));
    }
    // Without a team or agents, the default team does the work.
    if spec.team.is_none() && spec.agents.is_none() && catalog.teams.contains_key(DEFAULT_TEAM) {
        spec.team = Some(DEFAULT_TEAM.to_owned());
    }
    if let Some(team) = &spec.team {
        match catalog.teams.get(team) {
            Some(t) if spec.agents.is_none() => spec.agents = Some(t.agents.clone()),
            Some(_) => {}
            None => errors.push(FieldError::new(
                "team",
                format!("no team is named `{team}`"),
            )),
        }
    }
    for (i, agent) in spec.agents.iter().flatten().enumerate() {
        if !catalog.agents.contains_key(agent) {
            errors.push(FieldError::new(
                format!("agents[{i}]"),
                format!("no agent is named `{agent}`"),
            ));
        }
    }
    // Steps may only need what the task's agents (its team, or all) can do.
    let allowed = spec.agents.clone();
    let can = |capability: &str| {
        catalog.agents.values().any(|a| {
            a.has(capability) && allowed.as_ref().is_none_or(|list| list.contains(&a.name))
        })
    };
    for (i, capability) in spec.capabilities.iter().flatten().enumerate() {
        if !can(capability) {
            errors.push(FieldError::new(
                format!("capabilities[{i}]"),
                format!("no agent has the capability `{capability}`"),
            ));
        }
    }
    if let Some(steps) = &spec.steps {
        let plan = Plan {
            steps: steps.clone(),
        };
        if let Err(problems) = plan.check(
            |c| can(c),
            |a| catalog.agents.contains_key(a),
            PlanLimits::default(),
        ) {
            errors.extend(problems);
        }
    }
    errors.extend(spec.budget.problems());
    match errors.first() {
        None => Ok(spec),
        Some(first) => Err(ApiError::invalid(
            first.field.clone(),
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

/// `DELETE /v1/tasks/{id}`: cancels the workflow; its running steps' provider calls are
/// stopped and nothing more is dispatched.
pub async fn cancel(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    control(&st, &id, Action::Cancel).await
}

/// `POST /v1/tasks/{id}/approve`.
pub async fn approve(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    control(&st, &id, Action::Approve).await
}

/// `POST /v1/tasks/{id}/reject` with an optional `{"reason": "…"}`.
pub async fn reject(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let bytes = body::read(req, &st).await?;
    let reason = if bytes.is_empty() {
        String::new()
    } else {
        let fields = body::json_object(&bytes)?;
        match fields.get("reason") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(r)) if r.len() <= MAX_GOAL_LEN => r.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "reason",
                    format!("`reason` must be a string of at most {MAX_GOAL_LEN} bytes"),
                ));
            }
        }
    };
    control(&st, &id, Action::Reject { reason }).await
}

/// Publishes `action` for workflow `id` (which must exist) and answers 202 with its state.
async fn control(st: &AppState, id: &str, action: Action) -> Result<Response, ApiError> {
    let workflow_id: TaskId = id
        .parse()
        .map_err(|e| ApiError::invalid("id", format!("task id {e}")))?;
    let wf = workflow(st, workflow_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow {workflow_id}")))?;
    if matches!(action, Action::Approve | Action::Reject { .. })
        && wf.status != Status::AwaitingApproval
    {
        return Err(ApiError::invalid(
            "id",
            format!("task {workflow_id} is not awaiting approval"),
        ));
    }
    let message = ControlMessage {
        workflow: workflow_id,
        action,
    };
    publish(st, &message, wf.spec.priority).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&wf))).into_response())
}

/// `GET /v1/tasks/{id}/events`: the workflow's progress as server-sent events, from its
/// start or after `Last-Event-ID` (an event's id is its sequence in `EVENTS`), until it ends.
/// Read from JetStream, so any replica serves it and a reconnect loses nothing.
pub async fn events(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let workflow_id: TaskId = id
        .parse()
        .map_err(|e| ApiError::invalid("id", format!("task id {e}")))?;
    if workflow(&st, workflow_id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no workflow {workflow_id}")));
    }
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "last-event-id",
                        "Last-Event-ID must be an event id from this stream",
                    )
                })?,
        ),
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "could not read workflow events");
        ApiError::Unavailable
    };
    let stream = st
        .js
        .get_stream_no_info(EVENTS_STREAM)
        .await
        .map_err(|e| unavailable(&e))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("events.workflow.{workflow_id}"),
            deliver_policy: match after {
                Some(seq) => DeliverPolicy::ByStartSequence {
                    start_sequence: seq.saturating_add(1),
                },
                None => DeliverPolicy::All,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    let cleanup = DeleteConsumer::new(&st, EVENTS_STREAM, consumer.cached_info().name.clone());
    let messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
    // Until the `done` event: the stream ends with it, without waiting for another message.
    let state = (messages, false, cleanup);
    let events = futures::stream::unfold(state, |(mut messages, ended, cleanup)| async move {
        if ended {
            return None;
        }
        // A broken read ends the stream; the client resumes with Last-Event-ID.
        let msg = messages.next().await?.ok()?;
        let payload: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
        let kind = payload["kind"].as_str().unwrap_or("progress").to_owned();
        let done = kind == "done";
        let seq = msg.info().map_or(0, |i| i.stream_sequence);
        let event = Event::default()
            .id(seq.to_string())
            .event(kind)
            .data(payload.to_string());
        Some((
            Ok::<_, std::convert::Infallible>(event),
            (messages, done, cleanup),
        ))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Deletes an event stream's (or a followed thread's) consumer once the stream is dropped (it ended with `done`, broke,
/// or its client left). Left alone, an ordered consumer stays on the server until it has been
/// idle for 30 s, so a gateway serving more than about 33 event streams a second piles them
/// up until JetStream refuses new ones (nats-server 2.15.1 refused the 1,001st with "maximum
/// consumers limit reached", and every new event stream answered 503): scenario 6 of the
/// benchmark ran into it.
#[derive(Debug)]
pub(crate) struct DeleteConsumer {
    st: AppState,
    stream: &'static str,
    name: String,
}

impl DeleteConsumer {
    /// Deletes consumer `name` of `stream` when dropped.
    pub(crate) fn new(st: &AppState, stream: &'static str, name: String) -> Self {
        Self {
            st: st.clone(),
            stream,
            name,
        }
    }
}

impl Drop for DeleteConsumer {
    fn drop(&mut self) {
        let js = self.st.js.clone();
        let name = std::mem::take(&mut self.name);
        let stream = self.stream;
        // Drop cannot wait; the tracker lets shutdown wait for the delete instead. Best
        // effort: a consumer not deleted expires on its own.
        self.st.background.spawn(async move {
            if let Err(e) = js.delete_consumer_from_stream(&name, stream).await {
                debug!(error = %e, consumer = name, "could not delete an event stream's consumer");
            }
        });
    }
}

/// The workflow `id`, if one is stored.
pub async fn workflow(st: &AppState, id: TaskId) -> Result<Option<Workflow>, ApiError> {
    let Some(bytes) = st.workflows.get(id.to_string()).await.map_err(|e| {
        warn!(error = %e, "could not read the workflows bucket");
        ApiError::Unavailable
    })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        warn!(error = %e, workflow = %id, "undecodable workflow state");
        ApiError::Internal
    })
}

/// A workflow as the API shows it: the stored state, with the request's goal and team on top.
pub fn view(wf: &Workflow) -> Value {
    let mut body = serde_json::to_value(wf).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.insert("object".into(), json!("task"));
        map.insert("goal".into(), json!(wf.spec.goal));
        map.insert("team".into(), json!(wf.spec.team));
        map.insert(
            "thread".into(),
            json!(shared::threads::workflow_thread(wf.id)),
        );
        map.remove("spec");
    }
    body
}

async fn publish(
    st: &AppState,
    message: &ControlMessage,
    priority: shared::Priority,
) -> Result<(), ApiError> {
    let payload = serde_json::to_vec(message).map_err(|_| ApiError::Internal)?;
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, message.msg_id().as_str());
    let capability = WORKFLOW_CAPABILITY
        .parse()
        .map_err(|_| ApiError::Internal)?;
    let unavailable = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "could not publish a workflow control message");
        ApiError::Unavailable
    };
    st.js
        .publish_with_headers(task_subject(&capability, priority), headers, payload.into())
        .await
        .map_err(|e| unavailable(&e))?
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(())
}
