//! The route table.
//!
//! | method | path                   | handler                    |
//! |--------|------------------------|----------------------------|
//! | POST   | `/v1/chat/completions` | [`chat::chat_completions`] |
//! | GET    | `/v1/models`           | [`info::models`]           |
//! | GET    | `/v1/models/{*id}`     | [`info::model`]            |
//! | GET    | `/v1/agents`           | [`roster::list`]           |
//! | GET    | `/v1/agents/{name}`    | [`roster::one`]            |
//! | PUT    | `/v1/agents/{name}`    | [`roster::put`]            |
//! | DELETE | `/v1/agents/{name}`    | [`roster::delete`]         |
//! | POST   | `/v1/tasks`            | [`tasks::create`]          |
//! | GET    | `/v1/tasks`            | [`task_list::list`]        |
//! | GET    | `/v1/tasks/{id}`       | [`info::task`]             |
//! | DELETE | `/v1/tasks/{id}`       | [`tasks::cancel`]          |
//! | GET    | `/v1/tasks/{id}/events`  | [`tasks::events`]        |
//! | POST   | `/v1/tasks/{id}/approve` | [`tasks::approve`]       |
//! | POST   | `/v1/tasks/{id}/reject`  | [`tasks::reject`]        |
//! | GET    | `/v1/context/{scope}`  | [`context::list`]          |
//! | GET    | `/v1/context/{scope}/{key}` | [`context::get`]      |
//! | PUT    | `/v1/context/{scope}/{key}` | [`context::put`]      |
//! | DELETE | `/v1/context/{scope}/{key}` | [`context::delete`]   |
//! | GET    | `/v1/context/{scope}/{key}/history` | [`context::history`] |
//! | GET    | `/v1/memory/search`    | [`memory::search`]         |
//! | GET    | `/v1/threads/{id}/messages` | [`threads::list`]     |
//! | POST   | `/v1/threads/{id}/messages` | [`threads::post`]     |
//! | DELETE | `/v1/threads/{id}/messages` | [`threads::clear`]    |
//! | GET    | `/v1/threads/{id}/events`   | [`threads::events`] (SSE) |
//! | PUT    | `/v1/artifacts/{id}`   | [`artifacts::put`]         |
//! | POST   | `/v1/artifacts`        | [`artifacts::create`]      |
//! | GET    | `/v1/artifacts/{id}`   | [`artifacts::get`]         |
//! | HEAD   | `/v1/artifacts/{id}`   | [`artifacts::head`]        |
//! | GET    | `/v1/artifacts/{id}/meta` | [`artifacts::meta`]     |
//! | GET    | `/v1/providers`        | [`operate::providers`]     |
//! | GET    | `/v1/dlq`              | [`operate::list`]          |
//! | POST   | `/v1/dlq/{id}/replay`  | [`operate::replay`]        |
//! | POST   | `/mcp`                 | [`mcp::service`] (MCP, streamable HTTP) |
//! | GET    | `/healthz`             | [`info::healthz`]          |
//! | GET    | `/readyz`              | [`info::readyz`]           |
//!
//! Artifacts have a body limit of their own (`artifacts.max_bytes`, streamed), every other
//! route `gateway.max_body_bytes`.
//!
//! Every route answers CORS preflights (`OPTIONS`) for the configured origins
//! ([`cors::layer`]).

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use shared::TaskId;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{
    artifacts, chat, context, cors, headers, info, mcp, memory, operate, roster, task_list, tasks,
    threads,
};

pub fn app(state: AppState) -> Router {
    let body_limit = state.config.gateway.max_body_bytes;
    let cors = cors::layer(&state.config.gateway.cors_allowed_origins);
    let router = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(info::models))
        .route("/v1/models/{*id}", get(info::model))
        .route("/v1/agents", get(roster::list))
        .route(
            "/v1/agents/{name}",
            get(roster::one).put(roster::put).delete(roster::delete),
        )
        .route("/v1/tasks", post(tasks::create).get(task_list::list))
        .route("/v1/tasks/{id}", get(info::task).delete(tasks::cancel))
        .route("/v1/tasks/{id}/events", get(tasks::events))
        .route("/v1/tasks/{id}/approve", post(tasks::approve))
        .route("/v1/tasks/{id}/reject", post(tasks::reject))
        .route("/v1/context/{scope}", get(context::list))
        .route(
            "/v1/context/{scope}/{key}",
            get(context::get).put(context::put).delete(context::delete),
        )
        .route("/v1/context/{scope}/{key}/history", get(context::history))
        .route("/v1/memory/search", get(memory::search))
        .route(
            "/v1/threads/{id}/messages",
            get(threads::list)
                .post(threads::post)
                .delete(threads::clear),
        )
        .route("/v1/threads/{id}/events", get(threads::events))
        .route("/v1/providers", get(operate::providers))
        .route("/v1/dlq", get(operate::list))
        .route("/v1/dlq/{id}/replay", post(operate::replay))
        .nest_service(mcp::PATH, mcp::service(&state.config, state.client.clone()))
        .route("/healthz", get(info::healthz))
        .route("/readyz", get(info::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            body_limit,
            refuse_declared_oversize,
        ))
        .merge(artifact_routes(&state))
        .layer(middleware::from_fn(assign_task_id))
        .with_state(state);
    // Outermost, so a preflight is answered before routing (which would refuse OPTIONS)
    // and every answer, errors included, carries the CORS headers.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// `/v1/artifacts`, whose bodies stream into the object store up to `artifacts.max_bytes`
/// (checked as they arrive), instead of being read whole within `gateway.max_body_bytes`.
fn artifact_routes(state: &AppState) -> Router<AppState> {
    let limit = usize::try_from(state.config.artifacts.max_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/artifacts", post(artifacts::create))
        .route(
            "/v1/artifacts/{id}",
            get(artifacts::get)
                .head(artifacts::head)
                .put(artifacts::put),
        )
        .route("/v1/artifacts/{id}/meta", get(artifacts::meta))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            limit,
            refuse_declared_oversize,
        ))
}

/// Gives every request a task id (in extensions, for the handler) and every response the
/// `x-switchyard-task-id` header, unless the handler set one.
async fn assign_task_id(mut req: Request, next: Next) -> Response {
    let task = match RequestTask::from_headers(req.headers()) {
        Ok(task) => task,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(task);
    let mut response = next.run(req).await;
    if !response.headers().contains_key(headers::TASK_ID)
        && let Ok(v) = HeaderValue::from_str(&task.id.to_string())
    {
        response.headers_mut().insert(headers::TASK_ID, v);
    }
    response
}

/// Refuses a request whose declared `Content-Length` is over the body limit before any of
/// the body is read: the limit on reading alone would wait for bytes that may never come
/// (a client declaring a terabyte and sending little).
async fn refuse_declared_oversize(
    State(limit): State<usize>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if usize::try_from(length).map_or(true, |length| length > limit) => {
            ApiError::BodyTooLarge { limit }.into_response()
        }
        _ => next.run(req).await,
    }
}

/// The task a request becomes.
#[derive(Debug, Clone, Copy)]
pub struct RequestTask {
    pub id: TaskId,
    /// The caller named it (an idempotency key or its own id): it may exist already, so
    /// its stored result is looked up before anything is published.
    pub named_by_caller: bool,
}

impl RequestTask {
    /// From `Idempotency-Key` (a name-based id, the same on every replica), else from
    /// `x-switchyard-task-id` (the caller's UUID), else a fresh id.
    fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| {
            headers
                .get(name)
                .map(|v| {
                    v.to_str().map_err(|_| {
                        ApiError::invalid(name, format!("{name} must be visible ASCII"))
                    })
                })
                .transpose()
        };
        let named = |id| {
            Ok(Self {
                id,
                named_by_caller: true,
            })
        };
        match (text(headers::IDEMPOTENCY_KEY)?, text(headers::TASK_ID)?) {
            (Some(_), Some(_)) => Err(ApiError::invalid(
                headers::IDEMPOTENCY_KEY,
                format!(
                    "send {} or {}, not both",
                    headers::IDEMPOTENCY_KEY,
                    headers::TASK_ID
                ),
            )),
            (Some(key), None) => {
                if key.is_empty() || key.len() > headers::IDEMPOTENCY_KEY_MAX {
                    return Err(ApiError::invalid(
                        headers::IDEMPOTENCY_KEY,
                        format!(
                            "{} must be 1 to {} characters",
                            headers::IDEMPOTENCY_KEY,
                            headers::IDEMPOTENCY_KEY_MAX
                        ),
                    ));
                }
                named(TaskId::for_idempotency_key(key))
            }
            (None, Some(id)) => named(id.trim().parse().map_err(|_| {
                ApiError::invalid(
                    headers::TASK_ID,
                    format!("{} must be a UUID", headers::TASK_ID),
                )
            })?),
            (None, None) => Ok(Self {
                id: TaskId::new(),
                named_by_caller: false,
            }),
        }
    }
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
