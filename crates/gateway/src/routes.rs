//! The route table.
//!
//! | method | path                   | handler                    |
//! |--------|------------------------|----------------------------|
//! | POST   | `/v1/chat/completions` | [`chat::chat_completions`] |
//! | GET    | `/v1/models`           | [`info::models`]           |
//! | GET    | `/v1/models/{*id}`     | [`info::model`]            |
//! | GET    | `/v1/tasks/{id}`       | [`info::task`]             |
//! | GET    | `/v1/providers`        | [`operate::providers`]     |
//! | GET    | `/v1/dlq`              | [`operate::list`]          |
//! | POST   | `/v1/dlq/{id}/replay`  | [`operate::replay`]        |
//! | GET    | `/healthz`             | [`info::healthz`]          |
//! | GET    | `/readyz`              | [`info::readyz`]           |
//!
//! Every route answers CORS preflights (`OPTIONS`) for the configured origins
//! ([`cors::layer`]).

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use shared::TaskId;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{chat, cors, headers, info, operate};

pub fn app(state: AppState) -> Router {
    let body_limit = state.config.gateway.max_body_bytes;
    let cors = cors::layer(&state.config.gateway.cors_allowed_origins);
    let router = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(info::models))
        .route("/v1/models/{*id}", get(info::model))
        .route("/v1/tasks/{id}", get(info::task))
        .route("/v1/providers", get(operate::providers))
        .route("/v1/dlq", get(operate::list))
        .route("/v1/dlq/{id}/replay", post(operate::replay))
        .route("/healthz", get(info::healthz))
        .route("/readyz", get(info::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(assign_task_id))
        .with_state(state);
    // Outermost, so a preflight is answered before routing (which would refuse OPTIONS)
    // and every answer, errors included, carries the CORS headers.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Gives every request a task id (in extensions, for the handler) and every response the
/// `x-switchyard-task-id` header, unless the handler set one.
async fn assign_task_id(mut req: Request, next: Next) -> Response {
    let task_id = TaskId::new();
    req.extensions_mut().insert(task_id);
    let mut response = next.run(req).await;
    if !response.headers().contains_key(headers::TASK_ID)
        && let Ok(v) = HeaderValue::from_str(&task_id.to_string())
    {
        response.headers_mut().insert(headers::TASK_ID, v);
    }
    response
}

async fn not_found() -> Response {
    ApiError::NotFound("no such endpoint".to_owned()).into_response()
}

async fn method_not_allowed() -> Response {
    let mut response =
        ApiError::invalid("method", "method not allowed on this endpoint").into_response();
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}
