//! What travels for a workflow besides its steps: the control messages the gateway publishes
//! on `tasks.workflow.<priority>` (start, approve, reject, cancel), each becoming one
//! [`Event`], and the reading of a step's stored result as a [`StepOutcome`], costed at the
//! answering model's price (passed in, so this stays pure).

use serde::{Deserialize, Serialize};
use shared::config::Price;
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
/// or the failure's class and message. The usage is costed at `price_of(provider, model)`
/// for the model that answered (as the result names it); without a price it costs 0 and says
/// `cost_known: false`.
pub fn outcome(result: &TaskResult, price_of: impl Fn(&str, &str) -> Option<Price>) -> StepOutcome {
    match (result.status, &result.response, &result.error) {
        (TaskStatus::Completed, Some(response), _) => {
            let text = response["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let usage = &response["usage"];
            let price = result
                .provider
                .as_deref()
                .zip(result.model.as_deref())
                .and_then(|(provider, model)| price_of(provider, model));
            StepOutcome::Completed {
                text,
                usage: Usage::priced(
                    usage["prompt_tokens"].as_u64().unwrap_or(0),
                    usage["completion_tokens"].as_u64().unwrap_or(0),
                    price,
                ),
                tool_calls: result.tool_calls.clone(),
                // Stored by the edge when the text is too large (see `worker::orchestrate`).
                artifact: None,
            }
        }
        (_, _, Some(error)) => StepOutcome::Failed {
            class: error.class.as_str().to_owned(),
            message: error.message.clone(),
            tool_calls: result.tool_calls.clone(),
        },
        _ => StepOutcome::Failed {
            class: "internal".to_owned(),
            message: "the step's result is neither an answer nor a failure".to_owned(),
            tool_calls: result.tool_calls.clone(),
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

    fn result(provider: Option<&str>, model: Option<&str>) -> TaskResult {
        serde_json::from_value(serde_json::json!({
            "id": TaskId::new(),
            "status": "completed",
            "response": {
                "choices": [{"message": {"role": "assistant", "content": "the answer"}}],
                "usage": {"prompt_tokens": 4_000, "completion_tokens": 1_000}
            },
            "provider": provider,
            "model": model,
            "worker": "w",
            "delivery": 1,
            "finished_ms": 0
        }))
        .unwrap()
    }

    fn prices(provider: &str, model: &str) -> Option<Price> {
        (provider == "openai" && model == "gpt-x").then_some(Price {
            input_per_mtok: 0.5,
            output_per_mtok: 2.0,
        })
    }

    #[test]
    fn a_step_costs_its_tokens_at_the_answering_models_price() {
        let StepOutcome::Completed { text, usage, .. } =
            outcome(&result(Some("openai"), Some("gpt-x")), prices)
        else {
            panic!("not completed");
        };
        assert_eq!(text, "the answer");
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (4_000, 1_000)
        );
        // 4,000 × $0.5/M + 1,000 × $2/M
        assert!((usage.cost_usd - 0.004).abs() < 1e-12, "{usage:?}");
        assert!(usage.cost_known);
    }

    #[test]
    fn a_model_without_a_price_costs_nothing_and_says_so() {
        for (provider, model) in [
            (Some("openai"), Some("other")),
            (Some("elsewhere"), Some("gpt-x")),
            (None, None),
        ] {
            let StepOutcome::Completed { usage, .. } = outcome(&result(provider, model), prices)
            else {
                panic!("not completed");
            };
            assert_eq!(usage.cost_usd, 0.0);
            assert!(!usage.cost_known, "{provider:?}/{model:?}");
            assert_eq!(usage.tokens(), 5_000);
        }
    }
}
