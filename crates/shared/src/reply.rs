//! Where a task's result may be sent: which subjects a task may name as `reply_to` (an
//! inbox under a configured prefix, or its own `stream.<task id>`; never a `$` subject,
//! which would write into JetStream's API, key-value buckets or object stores, and never
//! Switchyard's own subjects), and the digest that ties a stored result to the reply
//! subject of the task that stored it, so re-publishing a task id with another `reply_to`
//! does not fetch someone else's result. `docs/protocol.md` states the rules.

use serde::Deserialize;
use uuid::Uuid;

use crate::TaskId;
use crate::inbound::is_publish_subject;

/// Prefixes of Switchyard's own subjects: queues, events, dead letters, stream chunks,
/// cancel notices (a result published on `cancel.<id>` would stop another task), tool calls,
/// stored results (`results.<id>`, where the gateway waits for its answers).
pub const RESERVED_PREFIXES: [&str; 7] = [
    "tasks.", "events.", "dlq.", "stream.", "cancel.", "tools.", "results.",
];
/// Prefix of the gateway's reply subjects (`_INBOX.switchyard.<task id>`), which answer a
/// session's turns once they are posted to the session's thread: the configured prefixes
/// must allow it.
pub const GATEWAY_REPLY_PREFIX: &str = "_INBOX.switchyard.";
/// Namespace of reply digests (a fixed, random UUID).
const DIGEST_NAMESPACE: Uuid = Uuid::from_u128(0x8d3e_51b7_2c0a_4f69_b1d4_7e2a_c05f_3b98);

/// Whether a configured reply prefix is acceptable; the reason when it is not.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty: it would allow every subject".to_owned());
    }
    if prefix.starts_with('$') {
        return Err(format!(
            "{prefix:?}: `$` subjects belong to the server (JetStream API, key-value buckets, \
             object stores); a reply there writes into them"
        ));
    }
    if prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    {
        return Err(format!(
            "{prefix:?} must be literal subject text (no spaces or wildcards)"
        ));
    }
    if let Some(own) = RESERVED_PREFIXES
        .iter()
        .find(|own| own.starts_with(prefix) || prefix.starts_with(**own))
    {
        return Err(format!(
            "{prefix:?} would let replies go to Switchyard's own subjects ({own}…)"
        ));
    }
    Ok(())
}

/// Whether a task with id `task_id` may name `reply_to`: a subject under one of `prefixes`,
/// or exactly its own stream subject `stream.<task id>` (what the gateway uses for
/// streaming requests). `$` subjects never, whatever the prefixes say.
pub fn allowed(reply_to: &str, task_id: Option<TaskId>, prefixes: &[String]) -> bool {
    if !is_publish_subject(reply_to) || reply_to.starts_with('$') {
        return false;
    }
    let own_stream = task_id.is_some_and(|id| reply_to == format!("stream.{id}"));
    own_stream
        || prefixes
            .iter()
            .any(|p| !p.is_empty() && reply_to.starts_with(p.as_str()))
}

/// The rule `allowed` applies, in words, for a refusal.
pub fn rule(prefixes: &[String]) -> String {
    format!(
        "must be a reply subject under one of {prefixes:?} (queue.reply_prefixes), or \
         stream.<this task's id>; never a `$` subject or one of Switchyard's own"
    )
}

/// The digest of a reply subject stored with a result: a name-based UUID (SHA-1), so the
/// stored result does not show the subject itself, yet a later delivery can tell whether
/// its `reply_to` is the one the result was made for.
pub fn digest(reply_to: &str) -> String {
    Uuid::new_v5(&DIGEST_NAMESPACE, reply_to.as_bytes()).to_string()
}

/// Whether the stored result `stored` (its JSON) may be sent to `reply_to`: only if it was
/// stored by a task with that same reply subject. A result that does not say (stored by an
/// older version, or by a task without `reply_to`) goes to nobody; the `results` bucket
/// still has it.
pub fn may_send(stored: &[u8], reply_to: &str) -> bool {
    #[derive(Deserialize)]
    struct Digest {
        #[serde(default)]
        reply_digest: Option<String>,
    }
    serde_json::from_slice::<Digest>(stored)
        .ok()
        .and_then(|d| d.reply_digest)
        .is_some_and(|d| d == digest(reply_to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> Vec<String> {
        vec!["_INBOX.".to_owned()]
    }

    #[test]
    fn only_inboxes_and_the_tasks_own_stream_are_allowed() {
        let id = TaskId::new();
        let other = TaskId::new();
        for ok in ["_INBOX.abc", &format!("stream.{id}")] {
            assert!(allowed(ok, Some(id), &inbox()), "{ok}");
        }
        for bad in [
            format!("$KV.results.{other}"),
            "$JS.API.STREAM.DELETE.TASKS".to_owned(),
            "$O.artifacts.x".to_owned(),
            "tasks.chat.normal".to_owned(),
            "events.task.completed".to_owned(),
            format!("results.{other}"),
            "dlq.chat".to_owned(),
            format!("cancel.{other}"),
            format!("stream.{other}"),
            "stream.".to_owned(),
            "_INBOX.*".to_owned(),
            "_INBOX.a b".to_owned(),
            "elsewhere.x".to_owned(),
            String::new(),
        ] {
            assert!(!allowed(&bad, Some(id), &inbox()), "{bad}");
        }
        assert!(!allowed(&format!("stream.{id}"), None, &inbox()));
        // Even a prefix list that would allow `$` subjects does not.
        assert!(!allowed("$KV.x", Some(id), &["$".to_owned()]));
    }

    #[test]
    fn prefixes_may_not_reach_server_or_switchyard_subjects() {
        assert!(check_prefix("_INBOX.").is_ok());
        assert!(check_prefix("replies.agent-7.").is_ok());
        for bad in [
            "",
            "$KV.",
            "$",
            "tasks.",
            "t",
            "events",
            "dlq.chat.",
            "stream.x",
            "cancel.",
            "_INBOX.*",
            "a b",
        ] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stored_result_goes_only_to_its_own_reply_subject() {
        let stored = format!(r#"{{"id":"x","reply_digest":"{}"}}"#, digest("_INBOX.a"));
        assert!(may_send(stored.as_bytes(), "_INBOX.a"));
        assert!(!may_send(stored.as_bytes(), "_INBOX.b"));
        assert!(!may_send(br#"{"id":"x"}"#, "_INBOX.a"));
        assert!(!may_send(b"not json", "_INBOX.a"));
        assert_ne!(digest("_INBOX.a"), digest("_INBOX.b"));
    }
}
