//! Chat sessions: a request to `/v1/chat/completions` with `x-switchyard-session: <id>` is a
//! turn of session `<id>`. Its earlier turns, kept in thread `session-<id>`
//! ([`shared::threads`]), go into the request after its leading system messages, the newest
//! that fit `[threads].session_history_tokens`, so a client sends only the new turn. The task
//! carries the session ([`SessionRef`]); the worker that stores the answer records the turn
//! (the new messages and the answer), so the turn is kept exactly when it was answered.

use axum::http::HeaderMap;
use serde_json::{Value, json};
use shared::threads::{self, MAX_READ};
use shared::{SessionRef, Task};

use crate::error::ApiError;
use crate::headers;
use crate::state::AppState;
use crate::threads::refusal;

/// Makes `task` a turn of the session its request's headers name, if any: checks the id,
/// puts the session's history into the request's messages and marks the task.
pub async fn attach(st: &AppState, request: &HeaderMap, task: &mut Task) -> Result<(), ApiError> {
    let Some(value) = request.get(headers::SESSION) else {
        return Ok(());
    };
    let id = value
        .to_str()
        .map_err(|_| {
            ApiError::invalid(
                headers::SESSION,
                format!("{} must be visible ASCII", headers::SESSION),
            )
        })?
        .trim()
        .to_owned();
    let thread = threads::session_thread(headers::SESSION, &id).map_err(refusal)?;
    let earlier = history(st, &thread).await?;
    let Some(Value::Array(messages)) = task.request.get_mut("messages") else {
        // The body's check requires an array of messages.
        return Err(ApiError::Internal);
    };
    let budget = st.config.threads.session_history_tokens;
    let (new_from, merged) = merge(std::mem::take(messages), &earlier, budget);
    *messages = merged;
    task.session = Some(SessionRef { id, new_from });
    Ok(())
}

/// Every user and assistant turn kept for the session, oldest first, as chat messages.
async fn history(st: &AppState, thread: &str) -> Result<Vec<Value>, ApiError> {
    let mut kept = Vec::new();
    let mut after = 0;
    loop {
        let page = threads::read(&st.js, thread, after, MAX_READ)
            .await
            .map_err(refusal)?;
        after = page.messages.last().map_or(after, |m| m.id);
        kept.extend(page.messages.into_iter().filter_map(|m| {
            let role = m.post.role?;
            matches!(role, threads::Role::User | threads::Role::Assistant)
                .then(|| json!({"role": role.as_str(), "content": m.post.content}))
        }));
        if !page.has_more {
            return Ok(kept);
        }
    }
}

/// `messages` with the newest of `earlier` that fit `budget` (estimated tokens) after its
/// leading system messages, starting at a user turn; and where the new messages start.
fn merge(messages: Vec<Value>, earlier: &[Value], budget: usize) -> (usize, Vec<Value>) {
    let mut spent = 0;
    let mut fitting = earlier
        .iter()
        .rev()
        .take_while(|m| {
            spent += threads::estimate_tokens(m["content"].as_str().unwrap_or_default());
            spent <= budget
        })
        .count();
    // A history opening with an answer to a question it no longer holds reads oddly.
    while fitting > 0 && earlier[earlier.len() - fitting]["role"] == "assistant" {
        fitting -= 1;
    }
    let kept = &earlier[earlier.len() - fitting..];
    let system = messages
        .iter()
        .take_while(|m| m["role"] == "system" || m["role"] == "developer")
        .count();
    let mut merged = Vec::with_capacity(messages.len() + kept.len());
    let mut messages = messages.into_iter();
    merged.extend(messages.by_ref().take(system));
    merged.extend(kept.iter().cloned());
    let new_from = merged.len();
    merged.extend(messages);
    (new_from, merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: &str, content: &str) -> Value {
        json!({"role": role, "content": content})
    }

    #[test]
    fn history_goes_after_the_system_prompt() {
        let earlier = [turn("user", "hi"), turn("assistant", "hello")];
        let (from, merged) = merge(
            vec![turn("system", "be brief"), turn("user", "again")],
            &earlier,
            1_000,
        );
        assert_eq!(from, 3);
        assert_eq!(
            merged,
            vec![
                turn("system", "be brief"),
                turn("user", "hi"),
                turn("assistant", "hello"),
                turn("user", "again"),
            ]
        );
    }

    #[test]
    fn the_newest_turns_that_fit_are_kept_from_a_user_turn() {
        let long = "x".repeat(400);
        let earlier = [
            turn("user", &long),
            turn("assistant", "a1"),
            turn("user", "q2"),
            turn("assistant", "a2"),
        ];
        // Room for the last three, but the third from last is an answer: two are kept.
        let budget = 3 * threads::estimate_tokens("a1");
        let (from, merged) = merge(vec![turn("user", "q3")], &earlier, budget);
        assert_eq!(from, 2);
        assert_eq!(merged[0], turn("user", "q2"));
        let (from, merged) = merge(vec![turn("user", "q3")], &earlier, 0);
        assert_eq!((from, merged.len()), (0, 1));
    }
}
