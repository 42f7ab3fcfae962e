//! Turning a checked request into a [`Task`] and publishing it durably on
//! `tasks.<capability>.<priority>`.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use axum::http::HeaderMap as HttpHeaders;
use bytes::Bytes;
use shared::config::split_direct;
use shared::names::{HEADER_MSG_ID, task_subject};
use shared::provision::DUPLICATE_WINDOW;
use shared::task::now_ms;
use shared::{Capability, Priority, Task, TaskId};
use tokio::time::Instant;
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
    crate::builtin_tools::check(&body, &st.config.tools, &|s| st.config.mcp.contains_key(s))?;
    let route_capability = match st.route_capabilities.get(&body.model) {
        Some(capability) => capability.clone(),
        // `provider/model` addresses one target directly, on the default capability.
        None if split_direct(&body.model, &st.config.providers, &st.config.routes).is_some() => {
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
            // A deadline shorter than the minimum cannot be met; accepting it would only
            // queue a task to expire (and dead-letter).
            .filter(|t| (gateway.min_timeout_ms..=gateway.max_timeout_ms).contains(t))
            .ok_or_else(|| {
                ApiError::invalid(
                    headers::TIMEOUT_MS,
                    format!(
                        "{} must be a whole number of milliseconds from {} to {}",
                        headers::TIMEOUT_MS,
                        gateway.min_timeout_ms,
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
        step: None,
        asked_by: Vec::new(),
        session: None,
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

/// First pause before a publish whose ack did not arrive is sent again; doubles each time.
const REPUBLISH_BASE: Duration = Duration::from_millis(50);
/// Longest pause between publishes of one task: NATS reconnects within about half a
/// second of coming back (see `shared::nats`), so waiting longer only adds latency.
const REPUBLISH_CAP: Duration = Duration::from_secs(1);
/// Margin kept inside JetStream's duplicate window: a publish sent later than this after the
/// first might no longer be recognised as the same task.
const WINDOW_MARGIN: Duration = Duration::from_secs(10);

/// What JetStream said of a published task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored now.
    New,
    /// Its id was stored before (a retried request, or our own republish after a lost ack).
    Duplicate,
}

/// Publishes `task` and waits for JetStream to confirm it is stored. A publish whose ack did
/// not arrive (NATS restarting, the ack lost in a reconnect) may have been stored all the
/// same, so it is sent again with the same `Nats-Msg-Id` until JetStream answers or the
/// deadline passes; de-duplication keeps it one task. Only a definite refusal is reported as
/// "not accepted"; not knowing is [`ApiError::NotConfirmed`].
pub async fn publish(st: &AppState, task: &Task) -> Result<Published, ApiError> {
    let payload = Bytes::from(serde_json::to_vec(task).map_err(|e| {
        error!(error = %e, "could not encode a task");
        ApiError::Internal
    })?);
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, task.id.to_string().as_str());
    let subject = task_subject(&task.capability, task.priority);
    let give_up = Instant::now() + task.remaining().min(DUPLICATE_WINDOW - WINDOW_MARGIN);
    let mut attempt = 0u32;
    loop {
        let acked = match st
            .js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let e = match acked {
            Ok(ack) if ack.duplicate => return Ok(Published::Duplicate),
            Ok(_) => return Ok(Published::New),
            Err(e) => e,
        };
        if let Some(refused) = refusal(&e, st.client.server_info().max_payload) {
            return Err(refused);
        }
        let pause = shared::backoff::full_jitter(REPUBLISH_BASE, REPUBLISH_CAP, attempt);
        if Instant::now() + pause >= give_up {
            warn!(error = %e, task_id = %task.id, attempts = attempt + 1, "JetStream never confirmed a task; giving up at its deadline");
            return Err(ApiError::NotConfirmed {
                task_id: task.id.to_string(),
            });
        }
        warn!(error = %e, task_id = %task.id, attempt = attempt + 1, "no confirmation for a published task; publishing it again");
        tokio::time::sleep(pause).await;
        attempt = attempt.saturating_add(1);
    }
}

/// The answer for a publish JetStream definitely did not store, or `None` when it may
/// have been stored (no ack: time-out, connection lost) or was refused for a passing
/// reason, so sending it again is right: no responders while JetStream restarts or a
/// cluster elects the stream's leader, an API error answered 503 (unavailable for now), or
/// "duplicate message id is in process" — our own earlier publish of this task, sent
/// before a leader change and not yet stored or dropped.
fn refusal(e: &PublishError, max_payload: usize) -> Option<ApiError> {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Some(ApiError::BodyTooLarge { limit: max_payload }),
        PublishErrorKind::Other => {
            let api = std::error::Error::source(e)
                .and_then(|source| source.downcast_ref::<jetstream::Error>())?;
            if api.error_code() == ErrorCode::STREAM_STORE_FAILED {
                // With discard-new, a full queue answers "maximum messages/bytes exceeded"
                // under this code: nothing was stored.
                Some(ApiError::QueueFull)
            } else if api.error_code() == ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
                || api.code() == UNAVAILABLE_FOR_NOW
            {
                None
            } else {
                warn!(error = %e, "JetStream refused a task");
                Some(ApiError::Unavailable)
            }
        }
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => None,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            warn!(error = %e, "JetStream refused a task");
            Some(ApiError::Unavailable)
        }
    }
}

/// The status JetStream's API gives errors that pass: no leader yet, a cluster forming.
const UNAVAILABLE_FOR_NOW: usize = 503;

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: usize, err_code: u64, description: &str) -> PublishError {
        let error: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": code, "err_code": err_code, "description": description
        }))
        .unwrap();
        PublishError::with_source(PublishErrorKind::Other, error)
    }

    /// What each publish outcome becomes: sent again (`None`) or answered at once.
    #[test]
    fn publish_errors_are_retried_unless_definite() {
        let retried = |e: &PublishError| refusal(e, 1024).is_none();
        assert!(retried(&PublishError::new(PublishErrorKind::TimedOut)));
        assert!(retried(&PublishError::new(
            PublishErrorKind::StreamNotFound
        )));
        assert!(retried(&PublishError::new(PublishErrorKind::BrokenPipe)));
        // Our own earlier publish of the task, still being stored across a leader change.
        assert!(retried(&api_error(
            409,
            10158,
            "duplicate message id is in process"
        )));
        assert!(retried(&api_error(
            503,
            10008,
            "JetStream system temporarily unavailable"
        )));
        assert!(matches!(
            refusal(&api_error(503, 10077, "maximum messages exceeded"), 1024),
            Some(ApiError::QueueFull)
        ));
        assert!(matches!(
            refusal(&api_error(400, 10071, "wrong last sequence: 5"), 1024),
            Some(ApiError::Unavailable)
        ));
        assert!(matches!(
            refusal(
                &PublishError::new(PublishErrorKind::MaxPayloadExceeded),
                1024
            ),
            Some(ApiError::BodyTooLarge { limit: 1024 })
        ));
    }
}
