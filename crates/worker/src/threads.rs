//! What a stored answer leaves in threads ([`shared::threads`]): a chat session's turn (its
//! new messages and the answer) in the session's thread, and a workflow step's insight (its
//! output, clipped, by its agent) in the workflow's thread. Posted after the result is
//! durable and before it is delivered or the workflow advances, under message ids made from
//! the task id, so every delivery that gets there posts and JetStream keeps one of each.

use serde_json::Value;
use shared::agents::QUEUE_PREFIX;
use shared::threads::{self, Author, AuthorKind, Post, Role, ThreadError};
use shared::tools::clip;
use shared::{Task, TaskResult, TaskStatus};
use tracing::warn;

use crate::deps::Deps;
use crate::provider::shape::content_text;

/// The author name of a session's model: its route, cut to what an author name may be (a
/// route may be longer).
fn model_name(task: &Task) -> String {
    task.route.chars().take(threads::MAX_AUTHOR_LEN).collect()
}

/// Author name of a session's own messages.
const SESSION_CLIENT: &str = "client";

/// Posts what `task`'s completed `result` leaves in threads. An error is the store's: the
/// caller hands the task back, and its redelivery posts again (once, by the ids).
pub(crate) async fn record(
    task: &Task,
    result: &TaskResult,
    deps: &Deps,
) -> Result<(), ThreadError> {
    if result.status != TaskStatus::Completed {
        return Ok(());
    }
    let answer = result
        .response
        .as_ref()
        .map(|r| content_text(&r["choices"][0]["message"]["content"]))
        .unwrap_or_default();
    let outcome = async {
        if task.session.is_some() {
            record_turn(task, &answer, deps).await?;
        }
        if task.step.is_some() && !answer.trim().is_empty() {
            record_insight(task, &answer, deps).await?;
        }
        Ok(())
    };
    match outcome.await {
        // Checked where it was made; not worth a retry if it is not a thread after all.
        Err(ThreadError::Invalid { field, problem }) => {
            warn!(task_id = %task.id, field, problem, "not posted to a thread");
            Ok(())
        }
        other => other,
    }
}

/// The session's new messages (user and assistant turns; system and tool messages are the
/// client's to resend) and the answer.
async fn record_turn(task: &Task, answer: &str, deps: &Deps) -> Result<(), ThreadError> {
    let Some(session) = &task.session else {
        return Ok(());
    };
    let thread = threads::session_thread("session", &session.id)?;
    let limit = deps.config.threads.max_message_bytes;
    let new = task
        .request
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| m.iter().skip(session.new_from))
        .into_iter()
        .flatten();
    for (i, message) in new.enumerate() {
        let role = match message["role"].as_str() {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            _ => continue,
        };
        let content = message.get("content").map(content_text).unwrap_or_default();
        if content.is_empty() {
            continue;
        }
        let post = Post {
            author: Author {
                kind: if role == Role::User {
                    AuthorKind::Client
                } else {
                    AuthorKind::Agent
                },
                name: if role == Role::User {
                    SESSION_CLIENT.to_owned()
                } else {
                    model_name(task)
                },
            },
            role: Some(role),
            content: threads::clip_bytes(&content, limit).to_owned(),
            workflow: None,
            step: None,
        };
        threads::post(&deps.js, &thread, &post, &format!("{}.turn.{i}", task.id)).await?;
    }
    // An answer that is only tool calls (the client runs them) has no text to keep.
    if answer.trim().is_empty() {
        return Ok(());
    }
    let post = Post {
        author: Author {
            kind: AuthorKind::Agent,
            name: model_name(task),
        },
        role: Some(Role::Assistant),
        content: threads::clip_bytes(answer, limit).to_owned(),
        workflow: None,
        step: None,
    };
    threads::post(&deps.js, &thread, &post, &format!("{}.answer", task.id)).await?;
    Ok(())
}

/// A step's output, clipped to `[threads].insight_max_chars`, by its agent, in its
/// workflow's thread.
async fn record_insight(task: &Task, answer: &str, deps: &Deps) -> Result<(), ThreadError> {
    let Some(step) = &task.step else {
        return Ok(());
    };
    let capability = task.capability.as_str();
    let agent = capability.strip_prefix(QUEUE_PREFIX).unwrap_or(capability);
    let config = &deps.config.threads;
    let insight = clip(answer, config.insight_max_chars);
    let post = Post {
        author: Author {
            kind: AuthorKind::Agent,
            name: agent.to_owned(),
        },
        role: Some(Role::Assistant),
        content: threads::clip_bytes(&insight, config.max_message_bytes).to_owned(),
        workflow: Some(step.workflow),
        step: Some(step.step.clone()),
    };
    let thread = threads::workflow_thread(step.workflow);
    threads::post(&deps.js, &thread, &post, &format!("{}.insight", task.id)).await?;
    Ok(())
}
