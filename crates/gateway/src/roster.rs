//! `GET /v1/agents` and `GET /v1/agents/{name}`: the agents this deployment runs, each with
//! its live load read from JetStream's own books (its queue's consumers: `num_ack_pending`
//! in flight, `num_pending` queued), so every replica shows the same and nothing drifts
//! when a worker dies.

use axum::Json;
use axum::extract::State;
use futures::future::join_all;
use serde_json::{Value, json};
use shared::agents::AgentProfile;
use shared::names::{TASKS_STREAM, queue_consumers};
use tracing::debug;

use crate::error::ApiError;
use crate::path::PathParam;
use crate::state::AppState;

/// `GET /v1/agents`.
pub async fn list(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let agents = st.config.catalog.agents.values();
    let data = join_all(agents.map(|agent| describe(&st, agent))).await;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/agents/{name}`.
pub async fn one(
    State(st): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = st
        .config
        .catalog
        .agents
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no agent is named `{name}`")))?;
    Ok(Json(describe(&st, agent).await))
}

/// An agent's profile, its teams and its load.
async fn describe(st: &AppState, agent: &AgentProfile) -> Value {
    let teams: Vec<&str> = st
        .config
        .catalog
        .teams
        .iter()
        .filter(|(_, team)| team.agents.contains(&agent.name))
        .map(|(name, _)| name.as_str())
        .collect();
    json!({
        "object": "agent",
        "name": agent.name,
        "role": agent.role,
        "description": agent.description,
        "capabilities": agent.capabilities,
        "route": agent.route,
        "tools": agent.tools,
        "max_concurrency": agent.max_concurrency,
        "teams": teams,
        "load": load(st, agent).await,
    })
}

/// In flight and queued across the agent's queue, or `null` when JetStream cannot say.
async fn load(st: &AppState, agent: &AgentProfile) -> Value {
    let Ok(queue) = agent.queue() else {
        return Value::Null;
    };
    let Ok(stream) = st.js.get_stream_no_info(TASKS_STREAM).await else {
        return Value::Null;
    };
    let (mut in_flight, mut queued) = (0u64, 0u64);
    for consumer in queue_consumers(&queue) {
        match stream.consumer_info(&consumer.name).await {
            Ok(info) => {
                in_flight += u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
                queued += info.num_pending;
            }
            Err(e) => {
                debug!(error = %e, agent = %agent.name, "could not read an agent's queue");
                return Value::Null;
            }
        }
    }
    json!({"in_flight": in_flight, "queued": queued, "capacity": agent.max_concurrency})
}
