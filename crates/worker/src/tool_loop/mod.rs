//! The server-side tool loop, around the failover loop: when the model's answer asks for
//! built-in tools, call them (in parallel, each over NATS with a timeout), append the
//! assistant message and one tool message per call, and ask the model again, until it
//! answers without tools. Bounded by `[tools] max_iterations` (rounds of tool calls), the
//! task's deadline and `[tools] max_loop_tokens`; hitting the rounds or tokens bound fails
//! the task with `tool_limit`. A failing tool (bad arguments, timeout, nothing serving it,
//! not allowed) becomes a tool message with its class, never a failed task. Every call is
//! recorded (`shared::tools::ToolCall`). An answer that calls one of the client's own tools
//! goes back to the client as it is. `offer.rs` says which tools a task may use; `call.rs`
//! makes one call.

mod call;
mod offer;
mod quota;
mod stream;

use std::time::Instant;

use futures::future::join_all;
use serde_json::{Map, Value, json};
use shared::agents::QUEUE_PREFIX;
use shared::config::ToolsConfig;
use shared::task::now_ms;
use shared::tools::{
    ASK_AGENT, RECORDED_ARGUMENT_CHARS, ToolCall, ToolError, ToolErrorClass, ToolOutcome, clip,
};
use shared::{FailureClass, Task};
use tracing::debug;

pub(crate) use call::{CallContext, NatsTools, ToolCaller};
pub(crate) use offer::{Mcp, Offer, offer};
pub(crate) use quota::Quotas;
pub(crate) use stream::{LoopStream, Rounds};

use crate::failover::Outcome;
use crate::provider::ProviderError;

/// Most tool calls one model answer may ask for; more fail the task with `tool_limit`
/// rather than fan out without bound.
const MAX_CALLS_PER_ANSWER: usize = 32;
/// Calls of one answer in flight at once (results keep the answer's order).
const PARALLEL_CALLS: usize = 8;

/// How a task's tool loop ended: the last round's outcome (its answer carrying the usage of
/// every round), the attempts of every round, and the tool calls made.
#[derive(Debug)]
pub(crate) struct LoopOutcome {
    pub outcome: Outcome,
    pub tool_calls: Vec<ToolCall>,
}

impl From<Outcome> for LoopOutcome {
    /// A run without tools.
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            tool_calls: Vec::new(),
        }
    }
}

/// One tool call the model asked for.
#[derive(Debug, Clone, PartialEq)]
struct Requested {
    id: String,
    name: String,
    arguments: String,
}

/// What to do with a model's answer.
#[derive(Debug, PartialEq)]
enum Next {
    /// It is the answer to return.
    Done,
    /// Run these calls and ask again.
    Call(Vec<Requested>),
}

/// What an answer asks for: nothing more (no tool calls, or a call to one of the client's
/// own tools), or the calls to run here.
fn next(answer: &Value, offer: &Offer) -> Next {
    let Some(calls) = answer["choices"][0]["message"]["tool_calls"]
        .as_array()
        .filter(|c| !c.is_empty())
    else {
        return Next::Done;
    };
    let requested: Vec<Requested> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| Requested {
            id: c["id"]
                .as_str()
                .map_or_else(|| format!("call_{i}"), str::to_owned),
            name: c["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            arguments: match &c["function"]["arguments"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            },
        })
        .collect();
    if requested.iter().any(|r| offer.client.contains(&r.name)) {
        return Next::Done;
    }
    Next::Call(requested)
}

/// What the loop needs from its surroundings.
pub(crate) struct Loop<'a, C, R> {
    pub task: &'a Task,
    pub offer: Offer,
    pub config: &'a ToolsConfig,
    pub tools: &'a C,
    /// Where quotas are counted; `None` counts nothing (unit tests).
    pub quotas: Option<Quotas<'a>>,
    /// Told when each round ends, to relay a streamed answer (`()` when not streamed).
    pub rounds: &'a R,
}

impl<C: ToolCaller, R: Rounds> Loop<'_, C, R> {
    /// Runs the loop; `round` asks the model (the failover loop) with a request.
    pub(crate) async fn run<F, Fut>(self, round: F) -> LoopOutcome
    where
        F: Fn(Map<String, Value>) -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let mut request = self.offer.request.clone();
        let mut attempts = Vec::new();
        let mut tool_calls = Vec::new();
        let mut usage = Usage::default();
        let mut served: u32 = 0;
        loop {
            let outcome = round(request.clone()).await;
            attempts.extend(outcome.attempts);
            let stop = |answer: Result<Value, ProviderError>, attempts, tool_calls| LoopOutcome {
                outcome: Outcome {
                    answer,
                    attempts,
                    answered_by: outcome.answered_by.clone(),
                    fallback_depth: outcome.fallback_depth,
                },
                tool_calls,
            };
            let mut answer = match outcome.answer {
                Ok(answer) => answer,
                Err(mut e) => {
                    // Text of an earlier round reached a streaming caller: running the task
                    // again would stream a second answer after it.
                    e.partial |= self.rounds.relayed();
                    return stop(Err(e), attempts, tool_calls);
                }
            };
            usage.add(&answer["usage"]);
            let calls = match next(&answer, &self.offer) {
                Next::Done => {
                    usage.write(&mut answer);
                    let earlier = self.rounds.end_round(true, &answer["usage"]).await;
                    if !earlier.is_empty() {
                        prepend(&mut answer, &earlier);
                    }
                    return stop(Ok(answer), attempts, tool_calls);
                }
                Next::Call(calls) => {
                    self.rounds.end_round(false, &Value::Null).await;
                    calls
                }
            };
            let limit = if calls.len() > MAX_CALLS_PER_ANSWER {
                Some(format!(
                    "the model asked for {} tool calls in one answer (at most {MAX_CALLS_PER_ANSWER})",
                    calls.len()
                ))
            } else if served >= self.config.max_iterations {
                Some(format!(
                    "the model still asked for tools after {served} rounds of tool calls ([tools] max_iterations)"
                ))
            } else if usage.total() >= self.config.max_loop_tokens {
                Some(format!(
                    "the tool loop used {} tokens, reaching its budget of {} ([tools] max_loop_tokens)",
                    usage.total(),
                    self.config.max_loop_tokens
                ))
            } else {
                None
            };
            if let Some(message) = limit {
                return stop(
                    Err(ProviderError::new(FailureClass::ToolLimit, message)),
                    attempts,
                    tool_calls,
                );
            }
            if self.task.remaining().is_zero() {
                return stop(
                    Err(ProviderError::new(
                        FailureClass::DeadlineExceeded,
                        "the task's deadline passed during its tool loop",
                    )),
                    attempts,
                    tool_calls,
                );
            }
            served += 1;
            let slots = tokio::sync::Semaphore::new(PARALLEL_CALLS);
            let results = join_all(calls.iter().map(|c| async {
                // Never closed, so a permit always comes.
                let _slot = slots.acquire().await.ok();
                self.call(c, served).await
            }))
            .await;
            let mut messages = match request.remove("messages") {
                Some(Value::Array(messages)) => messages,
                _ => Vec::new(),
            };
            let mut assistant = answer["choices"][0]["message"].clone();
            if assistant.get("role").is_none() {
                assistant["role"] = json!("assistant");
            }
            messages.push(assistant);
            for (requested, (content, record)) in calls.iter().zip(results) {
                // An asked agent's tokens are this task's too (its budget, the loop's bound).
                if record.name == ASK_AGENT && record.outcome == ToolOutcome::Ok {
                    let answer: Value = serde_json::from_str(&content).unwrap_or_default();
                    usage.add(&answer["usage"]);
                }
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": requested.id,
                    "content": content,
                }));
                tool_calls.push(record);
            }
            request.insert("messages".into(), Value::Array(messages));
        }
    }

    /// The agent whose work the task is (a step, or a question put to it), if any.
    fn agent(&self) -> Option<&str> {
        self.task.capability.as_str().strip_prefix(QUEUE_PREFIX)
    }

    /// Takes the call from the tool's quotas: its agent's and everyone's.
    async fn take_quota(&self, tool: &str) -> Result<(), ToolError> {
        let Some(quotas) = &self.quotas else {
            return Ok(());
        };
        quotas.take(tool, self.agent()).await
    }

    /// Runs one call (or refuses it): the tool message's content and the call's record.
    async fn call(&self, requested: &Requested, round: u32) -> (String, ToolCall) {
        let started_ms = now_ms();
        let clock = Instant::now();
        // The tool called: an MCP tool's function `mcp__<server>__<tool>` is `mcp.<server>.<tool>`.
        let target = self.offer.allowed.get(&requested.name);
        let result = if let Some(target) = target {
            let timeout = self.config.call_timeout(target).min(self.task.remaining());
            if timeout.is_zero() {
                Err(ToolError::new(
                    ToolErrorClass::Timeout,
                    "no time was left before the task's deadline",
                ))
            } else {
                match self.take_quota(target).await {
                    Ok(()) => {
                        let context = CallContext {
                            task: self.task,
                            call_id: &requested.id,
                            agent: self.agent(),
                        };
                        self.tools
                            .call(target, &requested.arguments, timeout, context)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        } else {
            Err(ToolError::new(
                ToolErrorClass::Denied,
                format!("tool `{}` is not allowed here", requested.name),
            ))
        };
        let duration_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (content, outcome, error) = match result {
            Ok(bytes) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => (text, ToolOutcome::Ok, None),
                Err(_) => {
                    let e =
                        ToolError::new(ToolErrorClass::Internal, "the tool's answer is not text");
                    (e.to_json().to_string(), ToolOutcome::Error, Some(e))
                }
            },
            Err(e) => (e.to_json().to_string(), ToolOutcome::Error, Some(e)),
        };
        debug!(tool = %requested.name, round, ?outcome, duration_ms, "tool call");
        let record = ToolCall {
            id: clip(&requested.id, 64),
            name: clip(target.unwrap_or(&requested.name), 128),
            arguments: clip(&requested.arguments, RECORDED_ARGUMENT_CHARS),
            round,
            started_ms,
            duration_ms,
            outcome,
            class: error.as_ref().map(|e| e.class),
            message: error.map(|e| e.message),
            result_bytes: content.len(),
        };
        (content, record)
    }
}

/// Puts the text a streamed loop relayed in earlier rounds before the answer's own, so the
/// stored answer is what the caller read.
fn prepend(answer: &mut Value, earlier: &str) {
    let Some(message) = answer
        .pointer_mut("/choices/0/message")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let own = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let joined = format!("{earlier}{own}");
    message.insert("content".into(), Value::String(joined));
}

/// Token usage over every round.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    prompt: u64,
    completion: u64,
}

impl Usage {
    fn add(&mut self, usage: &Value) {
        self.prompt = self
            .prompt
            .saturating_add(usage["prompt_tokens"].as_u64().unwrap_or(0));
        self.completion = self
            .completion
            .saturating_add(usage["completion_tokens"].as_u64().unwrap_or(0));
    }

    fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// Puts the sums in the final answer, so what the caller (and a workflow's budget)
    /// sees is what the whole loop cost.
    fn write(&self, answer: &mut Value) {
        if let Some(object) = answer.as_object_mut() {
            let usage = object.entry("usage").or_insert_with(|| json!({}));
            if !usage.is_object() {
                *usage = json!({});
            }
            usage["prompt_tokens"] = json!(self.prompt);
            usage["completion_tokens"] = json!(self.completion);
            usage["total_tokens"] = json!(self.total());
        }
    }
}

#[cfg(test)]
mod tests;
