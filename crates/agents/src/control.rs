//! What travels for a workflow besides its steps: the control messages the gateway publishes
//! on `tasks.workflow.<priority>` (start, approve, reject, cancel), each becoming one
//! [`Event`], and the reading of a step's stored result as a [`StepOutcome`].

use serde::{Deserialize, Serialize};
use shared::{TaskId, TaskResult, TaskStatus};

use crate::workflow::{Event, Spec, StepOutcome, Usage};

/// One control message, published with `Nats-Msg-Id` = [`ControlMessage::msg_id`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlMessage {
    pub workflow: TaskId,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the workflow (if it is not there yet) and start it.
    Start {
        spec: Box<Spec>,
        created_ms: u64,
    },
    Approve,
    Reject {
        reason: String,
    },
    Cancel,
}

impl ControlMessage {
    /// The id JetStream de-duplicates on: one start, one cancel, … per workflow.
    pub fn msg_id(&self) -> String {
        let action = match &self.action {
            Action::Start { .. } => "start",
            Action::Approve => "approve",
            Action::Reject { .. } => "reject",
            Action::Cancel => "cancel",
        };
        format!("{}.{action}", self.workflow)
    }

    /// The event it applies to the workflow.
    pub fn event(&self) -> Event {
        match &self.action {
            Action::Start { .. } => Event::Start,
            Action::Approve => Event::Approve,
            Action::Reject { reason } => Event::Reject {
                reason: reason.clone(),
            },
            Action::Cancel => Event::Cancel,
        }
    }
}

/// How a step's task ended, read from its stored result: the answer's text and token usage,
/// or the failure's class and message.
pub fn outcome(result: &TaskResult) -> StepOutcome {
    match (result.status, &result.response, &result.error) {
        (TaskStatus::Completed, Some(response), _) => {
            let text = response["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let usage = &response["usage"];
            StepOutcome::Completed {
                text,
                usage: Usage {
                    prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
                    completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
                    cost_usd: 0.0,
                },
            }
        }
        (_, _, Some(error)) => StepOutcome::Failed {
            class: error.class.as_str().to_owned(),
            message: error.message.clone(),
        },
        _ => StepOutcome::Failed {
            class: "internal".to_owned(),
            message: "the step's result is neither an answer nor a failure".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_read_back_and_name_their_event() {
        let id = TaskId::new();
        let cancel: ControlMessage = serde_json::from_value(
            serde_json::json!({"workflow": id.to_string(), "action": "cancel"}),
        )
        .unwrap();
        assert_eq!(cancel.event(), Event::Cancel);
        assert_eq!(cancel.msg_id(), format!("{id}.cancel"));
        let reject: ControlMessage = serde_json::from_value(
            serde_json::json!({"workflow": id.to_string(), "action": "reject", "reason": "no"}),
        )
        .unwrap();
        assert_eq!(
            reject.event(),
            Event::Reject {
                reason: "no".into()
            }
        );
    }
}
