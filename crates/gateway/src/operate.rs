//! Operator endpoints: shared provider health (`GET /v1/providers`) and the dead-letter
//! queue (`GET /v1/dlq`, `POST /v1/dlq/{task_id}/replay`).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::TaskId;
use shared::dlq::{self, DlqError};
use shared::health::Snapshot;
use shared::task::now_ms;
use tracing::warn;

use crate::error::ApiError;
use crate::path::PathParam;
use crate::state::AppState;

/// `GET /v1/providers`: every configured target with its breaker state, latency, error
/// ratio, cooldown end and keys, as all workers currently see them.
pub async fn providers(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshot = Snapshot::read(&st.providers).await.map_err(|e| {
        warn!(error = %e, "could not read provider health");
        ApiError::Unavailable
    })?;
    Ok(Json(snapshot.report(&st.config, now_ms())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    capability: Option<String>,
    limit: Option<usize>,
    /// The `last_id` of the previous page.
    after: Option<u64>,
}

/// `GET /v1/dlq?capability=&limit=&after=`: one page of dead letters, oldest first, with
/// their failure history; `has_more` and `last_id` (pass it as `after`) lead to the next.
pub async fn list(
    State(st): State<AppState>,
    query: Result<Query<DlqQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<dlq::Page>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let capability = match &query.capability {
        None => None,
        Some(c) => Some(c.parse::<shared::Capability>().map_err(|_| {
            ApiError::invalid("capability", format!("{c:?} is not a capability name"))
        })?),
    };
    let limit = query.limit.unwrap_or(dlq::DEFAULT_LIST);
    if !(1..=dlq::MAX_LIST).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be from 1 to {}", dlq::MAX_LIST),
        ));
    }
    let page = dlq::list(&st.js, capability.as_ref(), query.after.unwrap_or(0), limit)
        .await
        .map_err(dlq_error)?;
    Ok(Json(page))
}

/// `POST /v1/dlq/{task_id}/replay`: queues the dead-lettered task again as a new task.
pub async fn replay(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let task_id: TaskId = id
        .parse()
        .map_err(|e| ApiError::invalid("task_id", format!("task id {e}")))?;
    let new_id = dlq::replay(&st.js, task_id).await.map_err(dlq_error)?;
    let body = json!({"task_id": new_id, "replay_of": task_id, "status": "queued"});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn dlq_error(e: DlqError) -> ApiError {
    match e {
        DlqError::NotFound(id) => ApiError::NotFound(format!("no dead letter for task {id}")),
        DlqError::Stream(_) | DlqError::Publish(_) => {
            warn!(error = %e, "dead-letter queue unavailable");
            ApiError::Unavailable
        }
    }
}
