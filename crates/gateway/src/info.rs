//! Read-only endpoints: health, readiness, the models and stored task results.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shared::TaskId;
use shared::config::{RouteConfig, split_direct};

use crate::answer::stored_result;
use crate::error::ApiError;
use crate::headers;
use crate::path::PathParam;
use crate::state::AppState;
use crate::tasks;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: NATS is connected and JetStream can take tasks (the `TASKS` stream has a
/// leader, as last probed in the background: see `readiness`).
pub async fn readyz(State(st): State<AppState>) -> Response {
    let (ready, body) =
        shared::nats::readiness(&st.client, "queue_available", st.readiness.ready());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /v1/models`: the configured routes, in the OpenAI list shape.
pub async fn models(State(st): State<AppState>) -> Json<Value> {
    let data: Vec<_> = st
        .config
        .routes
        .iter()
        .map(|(name, route)| route_model(name, route))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{*id}` (the SDKs' `models.retrieve`): a route, as in the list, or a
/// direct `provider/model` address, which is why the id is the rest of the path, slashes
/// included (`%2F` works too: path parameters are percent-decoded).
pub async fn model(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(route) = st.config.routes.get(&id) {
        return Ok(Json(route_model(&id, route)));
    }
    match split_direct(&id, &st.config.providers, &st.config.routes) {
        Some((provider, _)) => Ok(Json(model_object(
            &id,
            Some(provider),
            st.default_capability.as_str(),
        ))),
        None => Err(ApiError::UnknownModel(id)),
    }
}

/// The OpenAI model object of a route: owned by its first target's provider.
fn route_model(name: &str, route: &RouteConfig) -> Value {
    let provider = route.targets.first().map(|t| t.provider.as_str());
    model_object(name, provider, &route.capability)
}

/// An OpenAI model object plus the capability whose queue its tasks go to. `created` is 0:
/// a route has no creation date, and the SDKs require the field.
fn model_object(id: &str, owned_by: Option<&str>, capability: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": 0,
        "owned_by": owned_by,
        "capability": capability,
    })
}

/// `GET /v1/tasks/{id}`: the stored result of a task.
pub async fn task(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let task_id: TaskId = id
        .parse()
        .map_err(|e| ApiError::invalid("id", format!("task id {e}")))?;
    let Some(stored) = stored_result(&st, task_id).await? else {
        // One id space: a task without a chat result may be a workflow.
        return match tasks::workflow(&st, task_id).await? {
            Some(wf) => Ok(Json(tasks::view(&wf)).into_response()),
            None => Err(ApiError::NotFound(format!(
                "no result for task {task_id}: unknown, still running, or expired"
            ))),
        };
    };
    let mut response = (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        stored,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&task_id.to_string()) {
        response.headers_mut().insert(headers::TASK_ID, v);
    }
    Ok(response)
}
