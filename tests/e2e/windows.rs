//! Context windows end to end: a chat request that cannot fit its route's window is refused
//! with 400 `context_length_exceeded` before any provider is called, or answered by the
//! route's `context_length_fallback` when that one fits; a workflow step whose dependencies'
//! outputs exceed a small window is trimmed to fit, and its task shows what was dropped.

use serde_json::{Value, json};
use shared::tokens::{Encoding, count_request};

use crate::harness::{Stack, chat_body, content, requests_with};
use crate::workflows::run_task;

/// Routes on the fake provider: one with a tiny window and no fallback, one with a tiny
/// window that falls back to a roomy one.
const ROUTES: &str = r#"
[routes.tiny]
provider = "fake"
model = "fake-model"
context_window = 300
output_reserve = 50

[routes.tiny-fb]
provider = "fake"
model = "fake-model"
context_window = 300
output_reserve = 50
context_length_fallback = "roomy"

[routes.roomy]
provider = "fake"
model = "fake-roomy"
context_window = 100000
"#;

#[tokio::test]
async fn a_chat_request_over_the_window_is_refused_before_any_provider_is_called() {
    let stack = Stack::start_with(1, &[], ROUTES).await;
    let long = "word ".repeat(2_000);
    for body in [
        chat_body("tiny", &long),
        json!({"model": "tiny", "stream": true, "messages": [{"role": "user", "content": long}]}),
        // A short prompt, but an answer the window cannot hold.
        json!({"model": "tiny", "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]}),
        // The largest number a client can send: no overflow, the same refusal.
        json!({"model": "tiny", "max_tokens": u64::MAX, "messages": [{"role": "user", "content": "hi"}]}),
    ] {
        let response = stack.chat(body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        let error = &error["error"];
        assert_eq!(error["type"], "invalid_request_error", "{error}");
        assert_eq!(error["code"], "context_length_exceeded", "{error}");
        assert_eq!(error["param"], "messages", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("largest window is 300 tokens"),
            "{message}"
        );
    }
    // Within the window, the same route answers.
    let response = stack.chat(chat_body("tiny", "a short question")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        stack.provider.calls(),
        1,
        "only the request that fits was sent"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_chat_request_over_the_window_goes_to_the_context_length_fallback() {
    let stack = Stack::start_with(1, &[], ROUTES).await;
    let long = format!("fallback please {}", "word ".repeat(2_000));
    let response = stack.chat(chat_body("tiny-fb", &long)).await;
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    assert!(
        content(&completion).starts_with("fake answer from fake-roomy"),
        "{completion}"
    );
    let sent = requests_with(&stack, "fallback please");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "fake-roomy");
    stack.stop().await;
}

#[tokio::test]
async fn a_step_whose_inputs_exceed_the_window_is_trimmed_with_a_record() {
    // The agents' route: a small window, so two long research outputs cannot both fit the
    // step that compares them; an OpenAI model, so the prompt is counted exactly (o200k).
    let agents = "\n[routes.agents]\nprovider = \"fake\"\nmodel = \"gpt-4o-mini\"\ncontext_window = 2000\noutput_reserve = 200\n";
    let stack = Stack::start_with(1, &[], agents).await;
    let long = |city: &str| format!("Fact about city {city}. ").repeat(600);
    stack.provider.set_reply("Your step (city-a)", &long("A"));
    stack.provider.set_reply("Your step (city-b)", &long("B"));
    stack.provider.set_reply(
        "Your step (@review",
        r#"{"verdict": "approve", "score": 0.9, "feedback": "Ready."}"#,
    );
    let task = run_task(
        &stack,
        json!({
            "goal": "Compare two cities for a bike-share launch",
            "steps": [
                {"id": "city-a", "capability": "research", "instruction": "Research city A"},
                {"id": "city-b", "capability": "research", "instruction": "Research city B"},
                {"id": "compare", "capability": "analysis", "instruction": "Compare them", "depends_on": ["city-a", "city-b"]}
            ]
        }),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let compare = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "compare")
        .unwrap();
    let record = &compare["prompt"];
    assert_eq!(record["window"], 2000, "{record:#}");
    assert_eq!(record["output_reserve"], 200);
    assert_eq!(record["encoding"], "o200k");
    let prompt_tokens = record["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens <= 1800, "{record:#}");
    let status = |label: &str| {
        record["sections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["label"] == label)
            .unwrap()
            .clone()
    };
    assert_eq!(status("system prompt")["status"], "included");
    assert_eq!(status("goal and instruction")["status"], "included");
    let a = status("output of step `city-a`");
    assert_eq!(a["status"], "trimmed", "{record:#}");
    assert!(a["kept_tokens"].as_u64() < a["tokens"].as_u64());
    let b = status("output of step `city-b`");
    assert_eq!(b["status"], "dropped", "{record:#}");
    assert_eq!(b["kept_tokens"], 0);
    // The request the provider got fits the window, and holds what the record says. (Its
    // prompt names its own step first; later mentions are inputs.)
    let sent: Vec<Value> = requests_with(&stack, "Your step (compare)");
    let sent = sent
        .iter()
        .find(|b| {
            b["messages"][1]["content"]
                .as_str()
                .and_then(|u| u.split_once("# Your step ("))
                .is_some_and(|(_, rest)| rest.starts_with("compare)"))
        })
        .unwrap();
    let body = sent.as_object().unwrap();
    assert!(count_request(Encoding::O200k, body) <= 1800);
    let user = sent["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("trimmed to fit the context window"));
    assert!(!user.contains("# Output of step `city-b`"));
    stack.stop().await;
}

#[tokio::test]
async fn a_step_whose_own_instruction_cannot_fit_fails_without_calling_a_provider() {
    // A window smaller than the planner's system prompt and instruction.
    let agents = "\n[routes.agents]\nprovider = \"fake\"\nmodel = \"fake-model\"\ncontext_window = 256\noutput_reserve = 64\n";
    let stack = Stack::start_with(1, &[], agents).await;
    let task = run_task(&stack, json!({"goal": "Plan a bike-share launch"})).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    let plan = &task["steps"][0];
    assert_eq!(plan["id"], "@plan");
    let error = plan["error"].as_str().unwrap();
    assert!(error.starts_with("context_length:"), "{error}");
    assert!(
        error.contains("the window leaves 192 for the prompt"),
        "{error}"
    );
    assert_eq!(stack.provider.calls(), 0);
    stack.stop().await;
}
