//! `GET /v1/agents` and `GET /v1/agents/{name}`: the agents this deployment runs, each with
//! its live load read from JetStream's own books (its queue's consumer: `num_ack_pending`
//! in flight, `num_pending` queued), so every replica shows the same and nothing drifts
//! when a worker dies. `PUT` and `DELETE /v1/agents/{name}` add, replace and remove agents
//! at runtime, in the `agents` bucket, which every replica watches.

use agents::routing::Performance;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use serde_json::{Value, json};
use shared::agents::AgentProfile;
use shared::names::{TASKS_STREAM, queue_consumers};
use tracing::{debug, warn};

use crate::body;
use crate::error::ApiError;
use crate::path::PathParam;
use crate::state::AppState;

/// `GET /v1/agents`.
pub async fn list(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let catalog = st.agents.current();
    let data = join_all(catalog.agents.values().map(|agent| describe(&st, agent))).await;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/agents/{name}`.
pub async fn one(
    State(st): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.agents.current();
    let agent = catalog
        .agents
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no agent is named `{name}`")))?;
    Ok(Json(describe(&st, agent).await))
}

/// `PUT /v1/agents/{name}`: adds the agent, or replaces it (a configured one included),
/// for every replica. Its queue is made (or its cap changed) before the profile is stored,
/// so a step can be sent to it as soon as the answer arrives. 201 when new, else 200.
pub async fn put(
    State(st): State<AppState>,
    PathParam(name): PathParam<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let fields = body::json_object(&body::read(req, &st).await?)?;
    if let Some(given) = fields.get("name")
        && given.as_str() != Some(name.as_str())
    {
        return Err(ApiError::invalid(
            "name",
            "`name` must be left out or equal the name in the path",
        ));
    }
    let mut profile: AgentProfile = body::decode(fields)?;
    profile.name.clone_from(&name);
    if let Some(problem) = profile
        .problems(|route| st.config.routes.contains_key(route), &|server| {
            st.config.mcp.contains_key(server)
        })
        .into_iter()
        .next()
    {
        return Err(ApiError::invalid(problem.field, problem.problem));
    }
    let _writing = st.agent_writes.lock().await;
    let existed = st.agents.current().agents.contains_key(&name);
    shared::provision::agent_queue(&st.js, &st.config, &profile)
        .await
        .map_err(|e| {
            warn!(error = %e, agent = %name, "could not make an agent's queue");
            ApiError::Unavailable
        })?;
    let bytes = serde_json::to_vec(&profile).map_err(|_| ApiError::Internal)?;
    st.agents_bucket
        .put(&name, bytes.into())
        .await
        .map_err(|e| {
            warn!(error = %e, agent = %name, "could not store an agent");
            ApiError::Unavailable
        })?;
    take_in(&st, &name).await;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(describe(&st, &profile).await)).into_response())
}

/// `DELETE /v1/agents/{name}`: removes an agent added at runtime (refused while it has
/// steps queued or running), or undoes the runtime replacement of a configured one. An
/// agent defined only in configuration is removed there.
pub async fn delete(
    State(st): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Response, ApiError> {
    let catalog = st.agents.current();
    let agent = catalog
        .agents
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no agent is named `{name}`")))?;
    let _writing = st.agent_writes.lock().await;
    let configured = st.agents.configured_profile(&name).cloned();
    if !st.agents.stored(&name) {
        return Err(ApiError::Conflict {
            code: "agent_configured",
            message: format!(
                "agent `{name}` is defined in the configuration file; remove it there"
            ),
        });
    }
    if configured.is_none() {
        match counts(&st, agent).await {
            Ok(None | Some((0, 0))) => {}
            Ok(Some((in_flight, queued))) => {
                return Err(ApiError::Conflict {
                    code: "agent_busy",
                    message: format!(
                        "agent `{name}` has {} steps queued or running; delete it once they are done",
                        in_flight + queued
                    ),
                });
            }
            Err(()) => return Err(ApiError::Unavailable),
        }
    }
    st.agents_bucket.delete(&name).await.map_err(|e| {
        warn!(error = %e, agent = %name, "could not delete an agent");
        ApiError::Unavailable
    })?;
    // The configured agent is back: so is its cap on the queue.
    if let Some(profile) = &configured
        && let Err(e) = shared::provision::agent_queue(&st.js, &st.config, profile).await
    {
        warn!(error = %e, agent = %name, "could not restore an agent's queue cap");
    }
    take_in(&st, &name).await;
    let body = json!({
        "object": "agent.deleted",
        "name": name,
        "deleted": true,
        // A configured agent is back as configured.
        "restored": configured.is_some(),
    });
    Ok(Json(body).into_response())
}

/// Takes the stored change of `name` into this replica's copy at once, so the caller's
/// next request here sees it; the watch brings it to the others (and here too, if this
/// read fails).
async fn take_in(st: &AppState, name: &str) {
    match st.agents_bucket.entry(name).await {
        Ok(Some(entry)) => st.agents.apply(&entry),
        Ok(None) => {}
        Err(e) => debug!(error = %e, agent = %name, "could not read back an agent"),
    }
}

/// An agent's profile, its teams and its load.
async fn describe(st: &AppState, agent: &AgentProfile) -> Value {
    let catalog = st.agents.current();
    let teams: Vec<&str> = catalog
        .teams
        .iter()
        .filter(|(_, team)| team.agents.contains(&agent.name))
        .map(|(name, _)| name.as_str())
        .collect();
    let source = if st.agents.stored(&agent.name) {
        "runtime"
    } else {
        "configuration"
    };
    json!({
        "object": "agent",
        "name": agent.name,
        "source": source,
        "role": agent.role,
        "description": agent.description,
        "capabilities": agent.capabilities,
        "route": agent.route,
        "system_prompt": agent.system_prompt,
        "tools": agent.tools,
        "max_concurrency": agent.max_concurrency,
        "teams": teams,
        "load": load(st, agent).await,
        "performance": performance(st, &agent.name).await,
    })
}

/// The agent's record as workers keep it: steps that succeeded and failed, success rate,
/// mean model time per step and mean review score (running means, recent steps weighing
/// more); `null` figures before it has any.
async fn performance(st: &AppState, name: &str) -> Value {
    let record: Performance = match st.performance.get(name).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Ok(None) => Performance::default(),
        Err(e) => {
            debug!(error = %e, agent = %name, "could not read an agent's record");
            return Value::Null;
        }
    };
    json!({
        "succeeded": record.succeeded,
        "failed": record.failed,
        "success_rate": record.success_rate(),
        "mean_latency_ms": record.mean_latency_ms,
        "review_score": record.review_score,
    })
}

/// In flight and queued on the agent's queue, or `null` when JetStream cannot say.
async fn load(st: &AppState, agent: &AgentProfile) -> Value {
    match counts(st, agent).await {
        Ok(counts) => {
            let (in_flight, queued) = counts.unwrap_or_default();
            json!({"in_flight": in_flight, "queued": queued, "capacity": agent.max_concurrency})
        }
        Err(()) => Value::Null,
    }
}

/// The agent's steps in flight and queued, from its queue's consumer; `None` when it has
/// no consumer (nothing can be on it); `Err` when JetStream cannot say.
async fn counts(st: &AppState, agent: &AgentProfile) -> Result<Option<(u64, u64)>, ()> {
    let queue = agent.queue().map_err(|_| ())?;
    let stream = st.js.get_stream_no_info(TASKS_STREAM).await.map_err(|e| {
        debug!(error = %e, "could not open the task stream");
    })?;
    let (mut in_flight, mut queued) = (0u64, 0u64);
    for consumer in queue_consumers(&queue) {
        match stream.consumer_info(&consumer.name).await {
            Ok(info) => {
                in_flight += u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
                queued += info.num_pending;
            }
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(None),
            Err(e) => {
                debug!(error = %e, agent = %agent.name, "could not read an agent's queue");
                return Err(());
            }
        }
    }
    Ok(Some((in_flight, queued)))
}
