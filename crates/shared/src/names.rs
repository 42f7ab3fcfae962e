//! Names of JetStream resources and subjects, and the validated tokens that go into them.
//!
//! Anything that becomes part of a subject passes through [`Capability`], [`Priority`] or
//! [`TaskId`] first, so a request can never inject `.`, `*`, `>` or whitespace into one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Stream holding queued tasks (work-queue retention).
pub const TASKS_STREAM: &str = "TASKS";
/// Stream holding lifecycle events (limits retention).
pub const EVENTS_STREAM: &str = "EVENTS";
/// Key-value bucket holding one result per task id.
pub const RESULTS_BUCKET: &str = "results";
/// Subjects captured by the `EVENTS` stream.
pub const EVENTS_SUBJECTS: &str = "events.>";
/// Stream holding dead letters: tasks that failed for good, with their failure history.
pub const DLQ_STREAM: &str = "DLQ";
/// Subjects captured by the `DLQ` stream.
pub const DLQ_SUBJECTS: &str = "dlq.>";
/// Key-value bucket of provider health shared by all workers (breakers, cooldowns, keys).
pub const PROVIDERS_BUCKET: &str = "providers";
/// Key-value bucket of agent profiles added or replaced at runtime (`PUT /v1/agents/{name}`).
pub const AGENTS_BUCKET: &str = "agents";
/// Key-value bucket of each agent's record (steps, success, latency, review score).
pub const PERFORMANCE_BUCKET: &str = "performance";
/// Key-value bucket counting tool calls per quota window (`[tools.quotas]`), shared by
/// every worker.
pub const TOOL_QUOTAS_BUCKET: &str = "tool_quotas";
/// Key-value bucket holding each workflow's state (updated by compare-and-set).
pub const WORKFLOWS_BUCKET: &str = "workflows";
/// The queue of workflow control messages (start, approve, reject, cancel):
/// `tasks.workflow.<priority>`.
pub const WORKFLOW_CAPABILITY: &str = "workflow";
/// Key-value bucket of shared context: one entry per `<scope>.<key>`, with a bounded
/// history, written by compare-and-set on the revision (`crate::context`).
pub const CONTEXT_BUCKET: &str = "context";
/// Stream holding conversation threads between agents and clients, and chat
/// sessions' histories (limits retention, bounded per thread): `threads.<thread id>`
/// (`crate::threads`).
pub const THREADS_STREAM: &str = "THREADS";
/// Subjects captured by the `THREADS` stream.
pub const THREADS_SUBJECTS: &str = "threads.>";
/// Object store of large inputs and outputs, carried elsewhere by reference
/// (`crate::artifacts`); its stream is `OBJ_artifacts`.
pub const ARTIFACTS_STORE: &str = "artifacts";
/// Key-value bucket holding the attempts of a task that went back to the queue, so the
/// next delivery continues its history.
pub const ATTEMPTS_BUCKET: &str = "attempts";

/// Header carrying the task id on a published task; JetStream de-duplicates on it.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Header naming what a message on a reply or stream subject is: `chunk` or `result`.
pub const HEADER_EVENT: &str = "Switchyard-Event";
/// Header with the 0-based sequence number of a stream chunk within one delivery.
pub const HEADER_SEQ: &str = "Switchyard-Seq";
/// Header with the JetStream delivery count of the worker attempt that produced a message.
pub const HEADER_DELIVERY: &str = "Switchyard-Delivery";

/// Headers on the first chunk of a stream, so the gateway can name who answered before
/// the body starts: provider, model, attempts so far, fallback depth, provider time (ms).
pub const HEADER_PROVIDER: &str = "Switchyard-Provider";
pub const HEADER_MODEL: &str = "Switchyard-Model";
pub const HEADER_ATTEMPTS: &str = "Switchyard-Attempts";
pub const HEADER_FALLBACK_DEPTH: &str = "Switchyard-Fallback-Depth";
pub const HEADER_UPSTREAM_MS: &str = "Switchyard-Upstream-Ms";

/// Longest capability name accepted; keeps subjects and consumer names short.
pub const MAX_TOKEN_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error(
        "may contain only lowercase letters, digits, '-' and '_', and must start with a letter or digit"
    )]
    BadCharacter,
    #[error("must be one of high, normal, low")]
    UnknownPriority,
    #[error("must be a UUID")]
    NotUuid,
}

/// A capability name (`chat`, `coder`, `summarize`): one subject token, also used in
/// consumer names. Lowercase ASCII letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Capability(String);

/// Capability of routes that name none, and of `provider/model` requests.
pub const DEFAULT_CAPABILITY: &str = "chat";

impl Default for Capability {
    fn default() -> Self {
        Capability(DEFAULT_CAPABILITY.to_owned())
    }
}

impl Capability {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is an agent's queue (`agent-<name>`), which carries only its steps.
    pub fn is_agent_queue(&self) -> bool {
        self.0.starts_with(crate::agents::QUEUE_PREFIX)
    }
}

impl FromStr for Capability {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_token(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for Capability {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate_token(&s)?;
        Ok(Self(s))
    }
}

impl From<Capability> for String {
    fn from(c: Capability) -> Self {
        c.0
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `s` is one subject token of the kind every name here is: 1 to
/// [`MAX_TOKEN_LEN`] lowercase ASCII letters, digits, `-` and `_`, starting with a letter or
/// digit. For names that are not capabilities (context scopes and keys, writers).
pub fn check_token(s: &str) -> Result<(), NameError> {
    validate_token(s)
}

fn validate_token(s: &str) -> Result<(), NameError> {
    let first = s.bytes().next().ok_or(NameError::Empty)?;
    if s.len() > MAX_TOKEN_LEN {
        return Err(NameError::TooLong);
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    if !first.is_ascii_alphanumeric() || !s.bytes().all(allowed) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// Queue priority. Workers drain `high` before `normal` before `low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Every priority, in the order workers pull them.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(NameError::UnknownPriority),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task id: a time-ordered UUIDv7, rendered hyphenated (a valid subject token and KV key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

/// The namespace of task ids named by an idempotency key (a fixed, random UUID).
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x3f1c_6a0e_9d2b_4c8e_a5f7_1b3d_5e7f_9a2c);

impl TaskId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The task id an idempotency key names: a name-based UUID (v5), so every gateway
    /// replica maps a retried request to the same task.
    pub fn for_idempotency_key(key: &str) -> Self {
        Self(Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key.as_bytes()))
    }

    /// The id of the part `name` of this task (a workflow's step): a name-based UUID in
    /// this task's namespace, so whoever dispatches the part gets the same id.
    pub fn child(&self, name: &str) -> Self {
        Self(Uuid::new_v5(&self.0, name.as_bytes()))
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for TaskId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self).map_err(|_| NameError::NotUuid)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// `tasks.<capability>.<priority>`: where a task is published.
pub fn task_subject(capability: &Capability, priority: Priority) -> String {
    format!("tasks.{capability}.{priority}")
}

/// Durable pull consumer name for one (capability, priority) queue.
pub fn consumer_name(capability: &Capability, priority: Priority) -> String {
    format!("tasks-{capability}-{priority}")
}

/// One durable pull consumer of a capability's queue and the priorities it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConsumer {
    pub name: String,
    pub priorities: Vec<Priority>,
}

/// The consumers of `capability`'s queue, highest priority first: one per priority
/// (`tasks-<capability>-<priority>`), except for an agent's queue, which has one over all
/// three (`tasks-agent-<name>`), so that its `max_ack_pending` caps the agent's steps
/// across priorities as well as workers.
pub fn queue_consumers(capability: &Capability) -> Vec<QueueConsumer> {
    if capability.is_agent_queue() {
        vec![QueueConsumer {
            name: format!("tasks-{capability}"),
            priorities: Priority::ALL.to_vec(),
        }]
    } else {
        Priority::ALL
            .into_iter()
            .map(|p| QueueConsumer {
                name: consumer_name(capability, p),
                priorities: vec![p],
            })
            .collect()
    }
}

/// Core-NATS subjects of cancel notices, `cancel.<task id>`: the caller of that task is gone.
pub const CANCEL_SUBJECTS: &str = "cancel.*";

/// `cancel.<task id>`: tells workers that nobody waits for the task any more.
pub fn cancel_subject(task_id: TaskId) -> String {
    format!("cancel.{task_id}")
}

/// Where the server republishes every result stored in the `results` bucket
/// (`$KV.results.<task id>` becomes `results.<task id>`): the gateway waits for a task's
/// answer there, and it is only sent once the result is durable.
pub const RESULTS_REPUBLISH: &str = "results.>";

/// `results.<task id>`: where the server republishes the task's result once it is stored.
pub fn result_subject(task_id: TaskId) -> String {
    format!("results.{task_id}")
}

/// `stream.<task id>`: core-NATS subject carrying a streaming task's chunks.
pub fn stream_subject(task_id: TaskId) -> String {
    format!("stream.{task_id}")
}

/// `dlq.<capability>.<task id>`: where a task's dead letter is kept, so it can be looked up
/// by subject and a capability's letters listed with `dlq.<capability>.*`.
pub fn dlq_subject(capability: &Capability, task_id: TaskId) -> String {
    format!("dlq.{capability}.{task_id}")
}

/// `dlq.<capability>.*`: every dead letter of a capability.
pub fn dlq_capability_subjects(capability: &Capability) -> String {
    format!("dlq.{capability}.*")
}

/// `events.task.<status>`: lifecycle event subject for a finished task.
pub fn task_event_subject(status: &str) -> String {
    format!("events.task.{status}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_accepts_safe_tokens() {
        for ok in ["chat", "coder", "a", "gpt-4o_mini", "0day"] {
            assert!(ok.parse::<Capability>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn capability_rejects_subject_syntax() {
        for (bad, why) in [
            ("", NameError::Empty),
            ("chat.high", NameError::BadCharacter),
            ("*", NameError::BadCharacter),
            (">", NameError::BadCharacter),
            ("a b", NameError::BadCharacter),
            ("Chat", NameError::BadCharacter),
            ("-lead", NameError::BadCharacter),
            ("tab\t", NameError::BadCharacter),
            ("é", NameError::BadCharacter),
        ] {
            assert_eq!(bad.parse::<Capability>(), Err(why), "{bad:?}");
        }
        assert_eq!(
            "a".repeat(65).parse::<Capability>(),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn capability_deserialization_validates() {
        assert!(serde_json::from_str::<Capability>("\"chat\"").is_ok());
        assert!(serde_json::from_str::<Capability>("\"a.b\"").is_err());
    }

    #[test]
    fn subjects_and_consumers() {
        let cap: Capability = "chat".parse().unwrap();
        assert_eq!(task_subject(&cap, Priority::High), "tasks.chat.high");
        assert_eq!(consumer_name(&cap, Priority::Low), "tasks-chat-low");
    }

    #[test]
    fn task_id_round_trips() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>(), Ok(id));
        assert_eq!("x.y".parse::<TaskId>(), Err(NameError::NotUuid));
    }
}
