//! Turning a checked request into a [`Task`] and publishing it durably on
//! `tasks.<capability>.<priority>`.

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use axum::http::HeaderMap as HttpHeaders;
use bytes::Bytes;
use shared::config::split_direct;
use shared::names::{HEADER_MSG_ID, task_subject};
use shared::task::now_ms;
use shared::{Capability, Priority, Task, TaskId};
use tracing::{error, warn};

use crate::body::ChatBody;
use crate::error::ApiError;
use crate::headers;
use crate::state::AppState;

/// Builds the task for `body`, applying the caller's priority, capability and timeout headers.
pub fn build_task(
    st: &AppState,
    task_id: TaskId,
    headers: &HttpHeaders,
    body: ChatBody,
) -> Result<Task, ApiError> {
    let route_capability = match st.route_capabilities.get(&body.model) {
        Some(capability) => capability.clone(),
        // `provider/model` addresses one target directly, on the default capability.
        None if split_direct(&body.model, &st.config.providers).is_some() => {
            st.default_capability.clone()
        }
        None => return Err(ApiError::UnknownModel(body.model.clone())),
    };
    let capability = match header(headers, headers::CAPABILITY)? {
        None => route_capability,
        Some(name) => {
            let capability: Capability = name.parse().map_err(|e| {
                ApiError::invalid(headers::CAPABILITY, format!("capability name {e}"))
            })?;
            if !st.capabilities.contains(&capability) {
                return Err(ApiError::UnknownCapability(name.to_owned()));
            }
            capability
        }
    };
    let priority = match header(headers, headers::PRIORITY)? {
        None => Priority::default(),
        Some(p) => p.parse().map_err(|e| {
            ApiError::invalid(headers::PRIORITY, format!("{} {e}", headers::PRIORITY))
        })?,
    };
    let gateway = &st.config.gateway;
    let timeout_ms = match header(headers, headers::TIMEOUT_MS)? {
        None => gateway.default_timeout_ms,
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|t| (1..=gateway.max_timeout_ms).contains(t))
            .ok_or_else(|| {
                ApiError::invalid(
                    headers::TIMEOUT_MS,
                    format!(
                        "{} must be a whole number of milliseconds from 1 to {}",
                        headers::TIMEOUT_MS,
                        gateway.max_timeout_ms
                    ),
                )
            })?,
    };
    let now = now_ms();
    Ok(Task {
        id: task_id,
        capability,
        priority,
        route: body.model,
        request: body.body,
        deadline_ms: now.saturating_add(timeout_ms),
        reply_to: None,
        created_ms: now,
        replay_of: None,
    })
}

fn header<'a>(headers: &'a HttpHeaders, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ApiError::invalid(name, format!("{name} must be visible ASCII")))
        })
        .transpose()
}

/// Publishes `task` and waits for JetStream to confirm it is stored.
pub async fn publish(st: &AppState, task: &Task) -> Result<(), ApiError> {
    let payload = Bytes::from(serde_json::to_vec(task).map_err(|e| {
        error!(error = %e, "could not encode a task");
        ApiError::Internal
    })?);
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, task.id.to_string().as_str());
    let subject = task_subject(&task.capability, task.priority);
    let ack = st
        .js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| publish_error(st, &e))?;
    ack.await.map_err(|e| publish_error(st, &e))?;
    Ok(())
}

fn publish_error(st: &AppState, e: &PublishError) -> ApiError {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => ApiError::BodyTooLarge {
            limit: st.client.server_info().max_payload,
        },
        // A full stream with discard-new answers "maximum messages/bytes exceeded".
        PublishErrorKind::Other if e.to_string().contains("maximum") => ApiError::QueueFull,
        _ => {
            warn!(error = %e, "could not publish a task");
            ApiError::Unavailable
        }
    }
}
