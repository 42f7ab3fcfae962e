//! What travels on the wire: a [`Task`] published on `tasks.<capability>.<priority>`, the
//! [`TaskResult`] stored in the `results` bucket and sent to the reply subject, and the kind
//! of each message on a reply or stream subject. `docs/protocol.md` documents the JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Capability, FailureClass, Priority, TaskId};

/// A unit of work: one chat completion request bound for a capability's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub capability: Capability,
    #[serde(default)]
    pub priority: Priority,
    /// The route (model alias) the caller asked for; workers resolve it to a provider.
    pub route: String,
    /// The OpenAI-shaped request body, exactly as received (unknown fields included).
    pub request: Map<String, Value>,
    /// Unix time in milliseconds after which the answer is no longer wanted.
    pub deadline_ms: u64,
    /// Core-NATS subject for the result (and, for streaming tasks, the chunks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub created_ms: u64,
    /// The dead-lettered task this one replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<TaskId>,
    /// The workflow step this task is, if it is one: whoever stores its result advances
    /// that workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepRef>,
    /// For a question one agent put to another (`ask_agent`): the agents that asked, the
    /// first asker first, so a further ask can be bounded in depth and refused when it would
    /// close a cycle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub asked_by: Vec<String>,
    /// The chat session this request is a turn of: whoever stores its result records the
    /// turn in the session's thread (`crate::threads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRef>,
}

/// A chat turn's session: its id, and where in `request.messages` the turn's own messages
/// start (those before are the leading system messages and the history the gateway put in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    pub id: String,
    pub new_from: usize,
}

/// Which step of which workflow a task is. Its task id must be the step's own
/// ([`StepRef::task_id`]), so a step cannot be run under another id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRef {
    pub workflow: TaskId,
    pub step: String,
    /// Which run of the step: 0, or the re-run after its write to the shared context
    /// lost a conflict.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The shared-context entry the step's answer is written to, in its workflow's scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<ContextWrite>,
    /// How the step's prompt was fitted to its window: copied onto the step when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<crate::tokens::PromptRecord>,
}

/// Where a step writes its answer: `key` of its workflow's context scope, by compare-and-set
/// on `base`, the revision the step saw when it was dispatched (0: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextWrite {
    pub key: String,
    pub base: u64,
    /// The writer recorded: the step's agent.
    pub by: String,
}

impl StepRef {
    /// The task id of `attempt` of `step` in `workflow`: each run of a step has its own.
    pub fn task_id_of(workflow: TaskId, step: &str, attempt: u32) -> TaskId {
        if attempt == 0 {
            workflow.child(step)
        } else {
            workflow.child(&format!("{step}~{attempt}"))
        }
    }

    /// This step run's own task id.
    pub fn task_id(&self) -> TaskId {
        Self::task_id_of(self.workflow, &self.step, self.attempt)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Task {
    /// Whether the caller asked for a streamed answer (`"stream": true`).
    pub fn is_streaming(&self) -> bool {
        self.request.get("stream").and_then(Value::as_bool) == Some(true)
    }

    /// Time left before the deadline; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.saturating_sub(now_ms()))
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Completed,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }
}

/// Why a task failed, safe to show to the caller (never secrets or internals).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub class: FailureClass,
    pub message: String,
    /// HTTP status the provider answered, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
}

/// The one result of a task, written once to the `results` bucket (first writer wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub id: TaskId,
    pub status: TaskStatus,
    /// The OpenAI `chat.completion` object, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    /// Where `response` is instead, when it would not fit a NATS message: the artifact
    /// `result-<task id>` (JSON). Readers resolve it ([`crate::artifacts::result_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_artifact: Option<Box<crate::artifacts::ArtifactRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// Provider and model that answered (or last failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Worker that wrote the result.
    pub worker: String,
    /// JetStream delivery count of the attempt that wrote the result (1 = first delivery).
    pub delivery: u64,
    pub finished_ms: u64,
    /// Every provider call made for the task, across deliveries, in order.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// Position of the answering target in the order tried (0: the first choice).
    #[serde(default)]
    pub fallback_depth: u32,
    /// Time spent waiting on providers, all attempts together, in milliseconds.
    #[serde(default)]
    pub upstream_ms: u64,
    /// Digest of the reply subject of the task that stored the result
    /// ([`crate::reply::digest`]): a later delivery sends the stored result only to that
    /// same subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_digest: Option<String>,
    /// Every built-in tool call the tool loop made for the delivery that stored the result,
    /// in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::tools::ToolCall>,
}

/// One provider call: who was asked, with which key, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// Name of the key's environment variable (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// JetStream delivery the attempt was made in.
    pub delivery: u64,
    pub started_ms: u64,
    pub duration_ms: u64,
    /// `None` when the attempt answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<FailureClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a message on a reply or `stream.<task id>` subject carries (header
/// `Switchyard-Event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEventKind {
    /// One OpenAI `chat.completion.chunk` object.
    Chunk,
    /// The final [`TaskResult`].
    Result,
}

impl StreamEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEventKind::Chunk => "chunk",
            StreamEventKind::Result => "result",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "chunk" => Some(StreamEventKind::Chunk),
            "result" => Some(StreamEventKind::Result),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_json_round_trips_and_keeps_unknown_request_fields() {
        let json = serde_json::json!({
            "id": "01935c5e-7b7a-7cc0-9f43-6f7c1a9e1a01",
            "capability": "chat",
            "route": "fast",
            "request": {"model": "fast", "messages": [], "stream": true, "x_vendor": {"a": 1}},
            "deadline_ms": 10,
            "created_ms": 1
        });
        let task: Task = serde_json::from_value(json).unwrap();
        assert_eq!(task.priority, Priority::Normal);
        assert!(task.is_streaming());
        assert_eq!(task.request["x_vendor"]["a"], 1);
        assert_eq!(task.remaining(), Duration::ZERO);
        let back: Task = serde_json::from_str(&serde_json::to_string(&task).unwrap()).unwrap();
        assert_eq!(back, task);
    }

    #[test]
    fn task_with_bad_capability_is_refused() {
        let json = serde_json::json!({
            "id": "01935c5e-7b7a-7cc0-9f43-6f7c1a9e1a01",
            "capability": "chat.>",
            "route": "fast",
            "request": {},
            "deadline_ms": 10,
            "created_ms": 1
        });
        assert!(serde_json::from_value::<Task>(json).is_err());
    }
}
