//! The loop against scripted model answers and the real tools' answers (in memory; the
//! end-to-end tests run it over NATS).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use shared::config::ToolsConfig;
use shared::tools::{ToolError, ToolErrorClass, ToolOutcome};
use shared::{FailureClass, Task, TaskId};

use super::{Loop, LoopOutcome, Offer, ToolCaller};
use crate::failover::Outcome;

/// The real tools, called without NATS.
struct InMemory(tools::Toolbox);

impl ToolCaller for InMemory {
    async fn call(
        &self,
        name: &str,
        arguments: &str,
        _: Duration,
        _: super::CallContext<'_>,
    ) -> Result<Bytes, ToolError> {
        self.0.answer(name, arguments.as_bytes(), None).await
    }
}

fn task() -> Task {
    Task {
        id: TaskId::new(),
        capability: "chat".parse().unwrap(),
        priority: shared::Priority::Normal,
        route: "r".into(),
        request: Map::new(),
        deadline_ms: u64::MAX,
        reply_to: None,
        created_ms: 0,
        replay_of: None,
        step: None,
        asked_by: Vec::new(),
        session: None,
    }
}

fn offer(client: &[&str]) -> Offer {
    Offer {
        allowed: BTreeMap::from([("calculator".to_owned(), "calculator".to_owned())]),
        client: client.iter().map(|c| (*c).to_owned()).collect(),
        request: json!({"messages": [{"role": "user", "content": "sums"}]})
            .as_object()
            .cloned()
            .unwrap(),
    }
}

fn calls(calls: &[(&str, &str)]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| {
            json!({"id": format!("call_{i}"), "type": "function",
                   "function": {"name": name, "arguments": args}})
        })
        .collect();
    json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": calls},
                        "finish_reason": "tool_calls"}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

fn text(text: &str) -> Value {
    json!({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}})
}

/// Runs the loop against `answers` in order (the last one repeated); returns the outcome and
/// every request the model got.
async fn run(
    answers: Vec<Value>,
    offer: Offer,
    config: ToolsConfig,
) -> (LoopOutcome, Vec<Map<String, Value>>) {
    let task = task();
    let sent = Mutex::new(Vec::new());
    let tools = InMemory(tools::Toolbox::new(config.clone()));
    let outcome = Loop {
        task: &task,
        offer,
        config: &config,
        tools: &tools,
        quotas: None,
        rounds: &(),
    }
    .run(|request| {
        let mut sent = sent.lock().unwrap();
        sent.push(request);
        let answer = answers[(sent.len() - 1).min(answers.len() - 1)].clone();
        async move {
            Outcome {
                answer: Ok(answer),
                attempts: Vec::new(),
                answered_by: Some(("p".into(), "m".into())),
                fallback_depth: 0,
            }
        }
    })
    .await;
    (outcome, sent.into_inner().unwrap())
}

#[tokio::test]
async fn rounds_of_parallel_calls_then_the_answer() {
    let answers = vec![
        calls(&[
            ("calculator", r#"{"expression": "6 * 7"}"#),
            ("calculator", r#"{"expression": "2 ^ 10"}"#),
        ]),
        calls(&[("calculator", r#"{"expression": "42 + 1024"}"#)]),
        text("The total is 1066."),
    ];
    let (out, sent) = run(answers, offer(&[]), ToolsConfig::default()).await;
    let answer = out.outcome.answer.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "The total is 1066."
    );
    // Every round's tokens: two rounds of 15 and the final 25.
    assert_eq!(answer["usage"]["total_tokens"], 55);
    assert_eq!(answer["usage"]["prompt_tokens"], 40);
    assert_eq!(sent.len(), 3);
    let second = sent[1]["messages"].as_array().unwrap();
    assert_eq!(second.len(), 4, "user, assistant, two tool messages");
    assert_eq!(second[1]["tool_calls"][1]["id"], "call_1");
    assert_eq!(second[2]["role"], "tool");
    assert_eq!(second[2]["tool_call_id"], "call_0");
    let first: Value = serde_json::from_str(second[2]["content"].as_str().unwrap()).unwrap();
    assert_eq!(first["result"], 42);
    let second_result: Value =
        serde_json::from_str(second[3]["content"].as_str().unwrap()).unwrap();
    assert_eq!(second_result["result"], 1024);
    assert_eq!(sent[2]["messages"].as_array().unwrap().len(), 6);
    let rounds: Vec<u32> = out.tool_calls.iter().map(|c| c.round).collect();
    assert_eq!(rounds, [1, 1, 2]);
    assert!(out.tool_calls.iter().all(|c| c.outcome == ToolOutcome::Ok));
    assert_eq!(out.tool_calls[0].arguments, r#"{"expression": "6 * 7"}"#);
    assert!(out.tool_calls[0].result_bytes > 0);
}

#[tokio::test]
async fn a_failing_or_refused_tool_is_a_tool_message_with_its_class() {
    let answers = vec![
        calls(&[
            ("calculator", r#"{"expression": "1 / 0"}"#),
            ("shell", r#"{"cmd": "ls"}"#),
            ("calculator", "not json"),
        ]),
        text("Could not compute that."),
    ];
    let (out, sent) = run(answers, offer(&[]), ToolsConfig::default()).await;
    assert!(out.outcome.answer.is_ok());
    let classes: Vec<_> = out.tool_calls.iter().map(|c| c.class).collect();
    assert_eq!(
        classes,
        [
            Some(ToolErrorClass::InvalidArguments),
            Some(ToolErrorClass::Denied),
            Some(ToolErrorClass::InvalidArguments)
        ]
    );
    let tool_messages = &sent[1]["messages"].as_array().unwrap()[2..];
    let first: Value = serde_json::from_str(tool_messages[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(first["error"]["class"], "invalid_arguments");
    assert!(
        first["error"]["message"]
            .as_str()
            .unwrap()
            .contains("division by zero")
    );
    let denied: Value =
        serde_json::from_str(tool_messages[1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(denied["error"]["class"], "denied");
}

#[tokio::test]
async fn the_iteration_bound_stops_the_loop_with_tool_limit() {
    let config = ToolsConfig {
        max_iterations: 3,
        ..ToolsConfig::default()
    };
    let answers = vec![calls(&[("calculator", r#"{"expression": "1 + 1"}"#)])];
    let (out, sent) = run(answers, offer(&[]), config).await;
    let err = out.outcome.answer.unwrap_err();
    assert_eq!(err.class, FailureClass::ToolLimit);
    assert!(err.message.contains("max_iterations"), "{}", err.message);
    assert_eq!(
        sent.len(),
        4,
        "three rounds served, the fourth answer refused"
    );
    assert_eq!(out.tool_calls.len(), 3);
}

#[tokio::test]
async fn the_token_budget_stops_the_loop_with_tool_limit() {
    let config = ToolsConfig {
        max_loop_tokens: 40,
        ..ToolsConfig::default()
    };
    let answers = vec![calls(&[("calculator", r#"{"expression": "1 + 1"}"#)])];
    let (out, sent) = run(answers, offer(&[]), config).await;
    let err = out.outcome.answer.unwrap_err();
    assert_eq!(err.class, FailureClass::ToolLimit);
    assert!(err.message.contains("max_loop_tokens"), "{}", err.message);
    assert_eq!(sent.len(), 3, "15 + 15 tokens served, 45 is over 40");
}

#[tokio::test]
async fn an_answer_asking_for_too_many_calls_stops_the_loop() {
    let many: Vec<(&str, &str)> = (0..=super::MAX_CALLS_PER_ANSWER)
        .map(|_| ("calculator", r#"{"expression": "1"}"#))
        .collect();
    let (out, sent) = run(vec![calls(&many)], offer(&[]), ToolsConfig::default()).await;
    assert_eq!(
        out.outcome.answer.unwrap_err().class,
        FailureClass::ToolLimit
    );
    assert!(out.tool_calls.is_empty());
    assert_eq!(sent.len(), 1);
}

#[tokio::test]
async fn a_call_to_a_client_tool_goes_back_to_the_client() {
    let answer = calls(&[("lookup", "{}"), ("calculator", r#"{"expression": "1"}"#)]);
    let (out, sent) = run(
        vec![answer.clone()],
        offer(&["lookup"]),
        ToolsConfig::default(),
    )
    .await;
    assert_eq!(out.outcome.answer.unwrap()["choices"], answer["choices"]);
    assert!(out.tool_calls.is_empty());
    assert_eq!(sent.len(), 1);
}
