//! `[threads]`: the bounds of the `THREADS` stream (conversation threads and chat sessions'
//! histories, `crate::threads`), how much of a step's output goes to its workflow's thread,
//! and how much of a session's history a new turn is given. See `docs/threads.md`.

use serde::Deserialize;

use super::Problems;

/// Threads are conversations of one piece of work; a week covers a workflow and the
/// sessions of a working week.
const DEFAULT_MAX_AGE_SECS: u64 = 7 * 86_400;
/// Messages kept per thread (the newest): a long session or a big workflow's discussion,
/// small enough that reading a whole thread stays one quick fetch.
const DEFAULT_MAX_MSGS_PER_THREAD: i64 = 1_000;
/// Longest message content: a long answer or report; documents belong in artifacts.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// All threads together: a quarter of the events' bound, as threads hold text only.
const DEFAULT_MAX_BYTES: i64 = 256 << 20;
/// Characters of a step's output posted to its workflow's thread: the gist other agents
/// read, not the whole work (that is the step's output).
const DEFAULT_INSIGHT_MAX_CHARS: usize = 2_000;
/// Estimated tokens of earlier turns a session's new turn is given: a good part of a small
/// model's window, leaving room for the new turn and the answer.
const DEFAULT_SESSION_HISTORY_TOKENS: usize = 4_000;
/// What a message's envelope (author, role, ids, JSON quoting) may add to its content in
/// the stream: a message's content is at most `max_message_bytes`, stored at most this much
/// larger (JSON escapes can double odd characters; the stream's limit is set from both).
pub const ENVELOPE_ALLOWANCE: usize = 8 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadsConfig {
    /// Messages older than this are dropped.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// Messages kept per thread; the oldest go first.
    #[serde(default = "default_max_msgs_per_thread")]
    pub max_msgs_per_thread: i64,
    /// Longest content of one message (bytes); longer posts are refused (413).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Bytes all threads may hold together; the oldest messages go first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: i64,
    /// Characters of a finished step's output posted to its workflow's thread.
    #[serde(default = "default_insight_max_chars")]
    pub insight_max_chars: usize,
    /// Estimated tokens of a session's earlier turns prepended to a new turn (the newest
    /// turns that fit); 0 gives none.
    #[serde(default = "default_session_history_tokens")]
    pub session_history_tokens: usize,
}

impl Default for ThreadsConfig {
    fn default() -> Self {
        Self {
            max_age_secs: DEFAULT_MAX_AGE_SECS,
            max_msgs_per_thread: DEFAULT_MAX_MSGS_PER_THREAD,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
            insight_max_chars: DEFAULT_INSIGHT_MAX_CHARS,
            session_history_tokens: DEFAULT_SESSION_HISTORY_TOKENS,
        }
    }
}

impl ThreadsConfig {
    /// The stream's `max_msg_size`: the longest content plus its envelope.
    pub fn max_stored_bytes(&self) -> usize {
        self.max_message_bytes
            .saturating_mul(2)
            .saturating_add(ENVELOPE_ALLOWANCE)
    }

    pub(crate) fn validate(&self, p: &mut Problems) {
        if self.max_age_secs == 0 {
            p.add("threads.max_age_secs", "must be greater than 0");
        }
        p.positive("threads.max_msgs_per_thread", self.max_msgs_per_thread);
        p.positive("threads.max_bytes", self.max_bytes);
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES_CAP {
            p.add(
                "threads.max_message_bytes",
                format!("must be from 1 to {MAX_MESSAGE_BYTES_CAP}"),
            );
        }
        if self.insight_max_chars == 0 {
            p.add("threads.insight_max_chars", "must be greater than 0");
        }
    }
}

/// Highest `max_message_bytes`: stored with its envelope (at most twice the content plus
/// [`ENVELOPE_ALLOWANCE`]), a message stays within NATS's default 1 MiB payload.
const MAX_MESSAGE_BYTES_CAP: usize = 256 * 1024;

fn default_max_age_secs() -> u64 {
    DEFAULT_MAX_AGE_SECS
}
fn default_max_msgs_per_thread() -> i64 {
    DEFAULT_MAX_MSGS_PER_THREAD
}
fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_max_bytes() -> i64 {
    DEFAULT_MAX_BYTES
}
fn default_insight_max_chars() -> usize {
    DEFAULT_INSIGHT_MAX_CHARS
}
fn default_session_history_tokens() -> usize {
    DEFAULT_SESSION_HISTORY_TOKENS
}
