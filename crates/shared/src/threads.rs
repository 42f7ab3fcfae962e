//! Conversation threads on JetStream: every message of thread `<id>` is one message on
//! `threads.<id>` in the `THREADS` stream (limits retention, bounded per thread by
//! `[threads]`), and its id is its stream sequence, so a thread reads in order and a
//! follower resumes after the last id it saw. Agents post their steps' insights to their
//! workflow's thread, clients post and follow over HTTP, and a chat session keeps its turns
//! in thread `session-<id>` ([`session_thread`]). `docs/threads.md` has the picture.
//!
//! Posts carry a `Nats-Msg-Id`, so a poster that is run again (a redelivered step, a retried
//! request) posts once within JetStream's duplicate window.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::TaskId;
use crate::config::ThreadsConfig;
use crate::names::{
    HEADER_MSG_ID, MAX_TOKEN_LEN, NameError, THREADS_STREAM, THREADS_SUBJECTS, check_token,
};
use crate::provision::DUPLICATE_WINDOW;
use crate::task::now_ms;

/// Prefix of a chat session's thread: session `abc` keeps its turns in `session-abc`.
pub const SESSION_PREFIX: &str = "session-";
/// Longest session id: its thread id (with [`SESSION_PREFIX`]) is one subject token.
pub const MAX_SESSION_LEN: usize = MAX_TOKEN_LEN - SESSION_PREFIX.len();
/// Longest author name.
pub const MAX_AUTHOR_LEN: usize = 128;
/// Most messages one read returns.
pub const MAX_READ: usize = 1_000;
/// How long a read waits for the server to hand over messages it said are there; a read
/// that takes longer fails (the caller answers 503) rather than hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    /// A thread id, session id or author name that may not be used; `field` names it.
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    /// Content over `[threads].max_message_bytes`.
    #[error("content is {len} bytes, more than the {limit} a message may hold")]
    TooLarge { len: usize, limit: usize },
    /// JetStream could not be reached or refused.
    #[error("threads store: {0}")]
    Store(String),
}

impl ThreadError {
    fn store(e: &dyn std::fmt::Display) -> Self {
        ThreadError::Store(e.to_string())
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub kind: AuthorKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorKind {
    /// An agent (a workflow's step), or the model answering a chat session.
    Agent,
    /// A caller of the API.
    Client,
    /// Switchyard itself.
    System,
}

/// The chat role a message plays, when it is part of a conversation with a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// What a poster says: everything of a message but its id, thread and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Post {
    pub author: Author,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub content: String,
    /// The workflow (and its step) the message came from, for agents' posts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// A message as stored (the payload on `threads.<id>`).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    post: Post,
    created_ms: u64,
}

/// A message of a thread, as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadMessage {
    /// Its sequence in the `THREADS` stream: increasing within a thread, and the SSE event
    /// id a follower resumes after.
    pub id: u64,
    pub thread: String,
    #[serde(flatten)]
    pub post: Post,
    pub created_ms: u64,
}

/// One page of a thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub messages: Vec<ThreadMessage>,
    /// Whether the thread has messages after the last one returned.
    pub has_more: bool,
}

/// The subject of thread `thread`, checked.
pub fn thread_subject(thread: &str) -> Result<String, ThreadError> {
    check_thread(thread)?;
    Ok(format!("threads.{thread}"))
}

/// Checks that `thread` is a thread id: one subject token (lowercase letters, digits, `-`,
/// `_`, at most 64 characters).
pub fn check_thread(thread: &str) -> Result<(), ThreadError> {
    check_token(thread).map_err(|e| invalid("thread", &e))
}

/// The thread of workflow `workflow`: its task id, so a client that started a task knows
/// its thread.
pub fn workflow_thread(workflow: TaskId) -> String {
    workflow.to_string()
}

/// The thread keeping chat session `session`'s turns, or why `session` is no session id
/// (`field` names where it came from, e.g. the header).
pub fn session_thread(field: &'static str, session: &str) -> Result<String, ThreadError> {
    if session.len() > MAX_SESSION_LEN {
        return Err(ThreadError::Invalid {
            field,
            problem: format!("must be at most {MAX_SESSION_LEN} characters"),
        });
    }
    check_token(session).map_err(|e| invalid(field, &e))?;
    Ok(format!("{SESSION_PREFIX}{session}"))
}

/// Checks an author's name: 1 to [`MAX_AUTHOR_LEN`] characters, no control characters.
pub fn check_author_name(name: &str) -> Result<(), ThreadError> {
    let problem = if name.trim().is_empty() {
        "must not be empty".to_owned()
    } else if name.chars().count() > MAX_AUTHOR_LEN {
        format!("must be at most {MAX_AUTHOR_LEN} characters")
    } else if name.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(ThreadError::Invalid {
        field: "author.name",
        problem,
    })
}

/// Checks a post against `config`: its author's name and the size of its content.
pub fn check_post(post: &Post, config: &ThreadsConfig) -> Result<(), ThreadError> {
    check_author_name(&post.author.name)?;
    if post.content.len() > config.max_message_bytes {
        return Err(ThreadError::TooLarge {
            len: post.content.len(),
            limit: config.max_message_bytes,
        });
    }
    Ok(())
}

/// The estimated tokens of one message of a session's history with content `text`: the
/// model-independent estimate of [`crate::tokens::estimate`] (⌈bytes / 3.5⌉, the budget
/// documented in `docs/token-budgets.md`), plus OpenAI's per-message overhead. The history is
/// kept in every route's budget, whatever model answers the turn, so it is not counted in one
/// model's encoding.
pub fn estimate_tokens(text: &str) -> usize {
    usize::try_from(crate::tokens::estimate(text))
        .unwrap_or(usize::MAX)
        .saturating_add(crate::tokens::TOKENS_PER_MESSAGE as usize)
}

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a character
/// boundary.
pub fn clip_bytes(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Posts `post` to `thread` under `msg_id` (JetStream keeps one message per id within its
/// duplicate window, so posting again is harmless) and answers the message as stored: a
/// repeated post answers the first one's id.
pub async fn post(
    js: &jetstream::Context,
    thread: &str,
    post: &Post,
    msg_id: &str,
) -> Result<ThreadMessage, ThreadError> {
    let subject = thread_subject(thread)?;
    check_author_name(&post.author.name)?;
    let stored = Stored {
        post: post.clone(),
        created_ms: now_ms(),
    };
    let payload = serde_json::to_vec(&stored).map_err(|e| ThreadError::store(&e))?;
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, msg_id);
    let ack = js
        .publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(|e| ThreadError::store(&e))?
        .await
        .map_err(|e| ThreadError::store(&e))?;
    Ok(ThreadMessage {
        id: ack.sequence,
        thread: thread.to_owned(),
        post: stored.post,
        created_ms: stored.created_ms,
    })
}

/// Up to `limit` (at most [`MAX_READ`]) messages of `thread` with ids above `after_seq`
/// (0: from the start), oldest first, and whether more follow.
pub async fn read(
    js: &jetstream::Context,
    thread: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Page, ThreadError> {
    let subject = thread_subject(thread)?;
    let limit = limit.clamp(1, MAX_READ);
    let stream = js
        .get_stream_no_info(THREADS_STREAM)
        .await
        .map_err(|e| ThreadError::store(&e))?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            description: Some("thread read".to_owned()),
            filter_subject: subject,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after_seq.saturating_add(1),
            },
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| ThreadError::store(&e))?;
    let name = consumer.cached_info().name.clone();
    let page = if consumer.cached_info().num_pending == 0 {
        Ok(Page {
            messages: Vec::new(),
            has_more: false,
        })
    } else {
        tokio::time::timeout(READ_TIMEOUT, collect(consumer, thread, limit))
            .await
            .unwrap_or_else(|_| Err(ThreadError::Store("reading the thread timed out".into())))
    };
    // Best effort: an ordered consumer left behind goes once idle for a while.
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(error = %e, consumer = name, "could not delete a thread read's consumer");
    }
    page
}

/// Removes every message of `thread`, answering how many there were.
pub async fn clear(js: &jetstream::Context, thread: &str) -> Result<u64, ThreadError> {
    let subject = thread_subject(thread)?;
    let stream = js
        .get_stream_no_info(THREADS_STREAM)
        .await
        .map_err(|e| ThreadError::store(&e))?;
    let purged = stream
        .purge()
        .filter(subject)
        .await
        .map_err(|e| ThreadError::store(&e))?;
    Ok(purged.purged)
}

async fn collect(
    consumer: consumer::Consumer<consumer::push::OrderedConfig>,
    thread: &str,
    limit: usize,
) -> Result<Page, ThreadError> {
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| ThreadError::store(&e))?;
    let mut page = Page {
        messages: Vec::new(),
        has_more: false,
    };
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| ThreadError::store(&e))?;
        let info = message.info().map_err(|e| ThreadError::store(&e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        match decode(thread, seq, &message.payload) {
            Some(decoded) => page.messages.push(decoded),
            None => tracing::warn!(thread, seq, "undecodable thread message skipped"),
        }
        if pending == 0 {
            break;
        }
        if page.messages.len() == limit {
            page.has_more = true;
            break;
        }
    }
    Ok(page)
}

/// The message stored at `seq` on `thread`, from its payload.
pub fn decode(thread: &str, seq: u64, payload: &[u8]) -> Option<ThreadMessage> {
    let stored: Stored = serde_json::from_slice(payload).ok()?;
    Some(ThreadMessage {
        id: seq,
        thread: thread.to_owned(),
        post: stored.post,
        created_ms: stored.created_ms,
    })
}

/// The `THREADS` stream's configuration.
pub fn stream_config(config: &ThreadsConfig, replicas: usize) -> stream::Config {
    stream::Config {
        name: THREADS_STREAM.to_owned(),
        description: Some("Switchyard conversation threads and chat sessions".to_owned()),
        subjects: vec![THREADS_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(config.max_age_secs),
        max_bytes: config.max_bytes,
        max_messages_per_subject: config.max_msgs_per_thread,
        max_message_size: i32::try_from(config.max_stored_bytes()).unwrap_or(i32::MAX),
        duplicate_window: DUPLICATE_WINDOW,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

fn invalid(field: &'static str, e: &NameError) -> ThreadError {
    ThreadError::Invalid {
        field,
        problem: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_and_session_ids_are_tokens() {
        assert!(check_thread("design-review_2").is_ok());
        for bad in ["", "a.b", "a*", ">", "Upper", "has space", &"x".repeat(65)] {
            assert!(check_thread(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            session_thread("h", "abc").ok().as_deref(),
            Some("session-abc")
        );
        assert!(session_thread("h", &"x".repeat(MAX_SESSION_LEN)).is_ok());
        assert!(session_thread("h", &"x".repeat(MAX_SESSION_LEN + 1)).is_err());
        assert!(session_thread("h", "a.b").is_err());
        let id = TaskId::new();
        assert!(check_thread(&workflow_thread(id)).is_ok());
    }

    #[test]
    fn authors_are_named_plainly() {
        assert!(check_author_name("researcher").is_ok());
        assert!(check_author_name("openai/gpt-4o").is_ok());
        assert!(check_author_name(" ").is_err());
        assert!(check_author_name("a\nb").is_err());
        assert!(check_author_name(&"a".repeat(MAX_AUTHOR_LEN + 1)).is_err());
    }

    #[test]
    fn clipping_keeps_whole_characters() {
        assert_eq!(clip_bytes("héllo", 2), "h");
        assert_eq!(clip_bytes("héllo", 3), "hé");
        assert_eq!(clip_bytes("abc", 10), "abc");
    }

    #[test]
    fn the_estimate_grows_with_the_text() {
        assert!(estimate_tokens("") >= 1);
        assert!(estimate_tokens(&"a".repeat(400)) > estimate_tokens(&"a".repeat(40)));
    }

    #[test]
    fn messages_round_trip() {
        let post = Post {
            author: Author {
                kind: AuthorKind::Agent,
                name: "writer".into(),
            },
            role: Some(Role::Assistant),
            content: "draft".into(),
            workflow: None,
            step: Some("write".into()),
        };
        let payload = serde_json::to_vec(&Stored {
            post: post.clone(),
            created_ms: 7,
        })
        .unwrap_or_default();
        let read = decode("t", 3, &payload);
        assert_eq!(
            read,
            Some(ThreadMessage {
                id: 3,
                thread: "t".into(),
                post,
                created_ms: 7
            })
        );
    }
}
