//! `/v1/threads/{id}`: conversation threads over HTTP ([`shared::threads`]). A client posts
//! to a thread and lists it a page at a time (`after` = the last id seen), or follows it over
//! SSE (`/events`), where each event's id is the message's id, so a follower that lost its
//! connection resumes with `Last-Event-ID`. A workflow's thread is its task id; a chat
//! session's is `session-<id>`.

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::names::THREADS_STREAM;
use shared::threads::{self, Author, AuthorKind, Post, Role, ThreadError};
use tracing::warn;

use crate::body;
use crate::error::ApiError;
use crate::path::PathParam;
use crate::routes::RequestTask;
use crate::state::AppState;
use crate::tasks::DeleteConsumer;

/// Messages a listing returns unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Author of a client's post that names none.
pub const DEFAULT_AUTHOR: &str = "client";

/// A `POST /v1/threads/{id}/messages` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    content: String,
    /// The poster's name (a client's).
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    role: Option<Role>,
}

/// `POST /v1/threads/{id}/messages`: 201 with the message as stored. The request's task id
/// (its `Idempotency-Key`, if any) names the post, so a retried request posts once.
pub async fn post(
    State(st): State<AppState>,
    axum::Extension(request): axum::Extension<RequestTask>,
    PathParam(thread): PathParam<String>,
    req: Request,
) -> Result<Response, ApiError> {
    threads::check_thread(&thread).map_err(refusal)?;
    let fields = body::json_object(&body::read(req, &st).await?)?;
    let body: PostBody = body::decode(fields)?;
    if body.content.trim().is_empty() {
        return Err(ApiError::invalid("content", "content must not be empty"));
    }
    let post = Post {
        author: Author {
            kind: AuthorKind::Client,
            name: body.author.unwrap_or_else(|| DEFAULT_AUTHOR.to_owned()),
        },
        role: body.role,
        content: body.content,
        workflow: None,
        step: None,
    };
    threads::check_post(&post, &st.config.threads).map_err(refusal)?;
    let stored = threads::post(&st.js, &thread, &post, &request.id.to_string())
        .await
        .map_err(refusal)?;
    Ok((StatusCode::CREATED, Json(view(&stored))).into_response())
}

/// `GET /v1/threads/{id}/messages?after=&limit=`: the thread's messages after id `after`
/// (default: from the start), oldest first, at most `limit` (default 100, at most 1,000).
pub async fn list(
    State(st): State<AppState>,
    PathParam(thread): PathParam<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    threads::check_thread(&thread).map_err(refusal)?;
    let Query(pairs) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let (after, limit) = read_query(&pairs)?;
    let page = threads::read(&st.js, &thread, after, limit)
        .await
        .map_err(refusal)?;
    Ok(Json(json!({
        "object": "list",
        "thread": thread,
        "data": page.messages.iter().map(view).collect::<Vec<_>>(),
        "has_more": page.has_more,
    })))
}

/// `DELETE /v1/threads/{id}/messages`: removes the thread's messages (a session's history,
/// so its next turn starts afresh); 204.
pub async fn clear(
    State(st): State<AppState>,
    PathParam(thread): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    threads::clear(&st.js, &thread).await.map_err(refusal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/threads/{id}/events`: the thread's messages as server-sent events (`message`,
/// id = the message's id, data = the message), the ones there already first, then each as
/// it is posted, until the client leaves. With `Last-Event-ID` (or `?after=`), only those
/// after that id.
pub async fn events(
    State(st): State<AppState>,
    PathParam(thread): PathParam<String>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    threads::check_thread(&thread).map_err(refusal)?;
    let Query(pairs) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let mut after = None;
    for (name, value) in &pairs {
        match name.as_str() {
            "after" => after = Some(parse_after(value)?),
            _ => {
                return Err(ApiError::invalid(
                    name.as_str(),
                    format!("unknown query parameter `{name}`: `after` is known"),
                ));
            }
        }
    }
    if let Some(v) = headers.get("last-event-id") {
        let seq = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    "last-event-id",
                    "Last-Event-ID must be a message id from this thread",
                )
            })?;
        after = Some(seq);
    }
    let subject = threads::thread_subject(&thread).map_err(refusal)?;
    let unavailable = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "could not follow a thread");
        ApiError::Unavailable
    };
    let stream = st
        .js
        .get_stream_no_info(THREADS_STREAM)
        .await
        .map_err(|e| unavailable(&e))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after.unwrap_or(0).saturating_add(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    let cleanup = DeleteConsumer::new(&st, THREADS_STREAM, consumer.cached_info().name.clone());
    let messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
    let state = (messages, thread, cleanup, st.shutdown.clone());
    let events = futures::stream::unfold(
        state,
        |(mut messages, thread, cleanup, shutdown)| async move {
            loop {
                // A broken read, or the gateway shutting down, ends the stream; the client
                // resumes with Last-Event-ID.
                let msg = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    msg = messages.next() => msg?.ok()?,
                };
                let seq = msg.info().map_or(0, |i| i.stream_sequence);
                let Some(message) = threads::decode(&thread, seq, &msg.payload) else {
                    warn!(thread, seq, "undecodable thread message skipped");
                    continue;
                };
                let event = Event::default()
                    .id(seq.to_string())
                    .event("message")
                    .data(view(&message).to_string());
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (messages, thread, cleanup, shutdown),
                ));
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A message as the API shows it.
pub fn view(message: &threads::ThreadMessage) -> Value {
    let mut body = serde_json::to_value(message).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.insert("object".into(), json!("thread.message"));
    }
    body
}

/// `after` and `limit` from the query, each checked; any other parameter is refused.
fn read_query(pairs: &[(String, String)]) -> Result<(u64, usize), ApiError> {
    let (mut after, mut limit) = (0, DEFAULT_LIMIT);
    for (name, value) in pairs {
        match name.as_str() {
            "after" => after = parse_after(value)?,
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=threads::MAX_READ).contains(l))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("limit must be a number from 1 to {}", threads::MAX_READ),
                        )
                    })?;
            }
            _ => {
                return Err(ApiError::invalid(
                    name.as_str(),
                    format!("unknown query parameter `{name}`: `after` and `limit` are known"),
                ));
            }
        }
    }
    Ok((after, limit))
}

fn parse_after(value: &str) -> Result<u64, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::invalid("after", "after must be a message id (a whole number)"))
}

/// The API's answer to a thread error.
pub fn refusal(e: ThreadError) -> ApiError {
    match e {
        ThreadError::Invalid { field, problem } => {
            ApiError::invalid(field, format!("{field} {problem}"))
        }
        ThreadError::TooLarge { len, limit } => ApiError::ValueTooLarge(format!(
            "content is {len} bytes; a thread message holds at most {limit}"
        )),
        ThreadError::Store(e) => {
            warn!(error = e, "threads store unavailable");
            ApiError::Unavailable
        }
    }
}
