//! The happy paths: a completion, a streamed completion, results, models, health.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::harness::{FAKE_KEY, Stack, chat_body, content, done_chunks, sse_data, task_id};

#[tokio::test]
async fn chat_completion_round_trip() {
    let stack = Stack::start(1, &[]).await;
    let mut body = chat_body("fake", "hello gateway");
    body["x_vendor_option"] = json!({"keep": true});
    body["temperature"] = json!(0.25);
    let response = stack.chat(body).await;
    assert_eq!(response.status(), 200);
    let task_id = task_id(&response);
    assert_eq!(response.headers()["x-switchyard-provider"], "fake");
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "fake answer from fake-model to: hello gateway"
    );

    // The provider got the target model, the caller's unknown fields untouched, and the key.
    let sent = &stack.provider.requests()[0].body;
    assert_eq!(sent["model"], "fake-model");
    assert_eq!(sent["x_vendor_option"], json!({"keep": true}));
    assert_eq!(sent["temperature"], json!(0.25));
    assert!(sent.get("stream").is_none());
    assert_eq!(stack.provider.requests()[0].key.as_deref(), Some(FAKE_KEY));

    // The result is stored under the task id.
    let stored: Value = stack.task(&task_id).await.json().await.unwrap();
    assert_eq!(stored["id"], task_id);
    assert_eq!(stored["status"], "completed");
    assert_eq!(stored["delivery"], 1);
    assert_eq!(stored["response"], completion);
    stack.stop().await;
}

#[tokio::test]
async fn streamed_completion_arrives_in_order_and_ends_with_done() {
    let stack = Stack::start(1, &[]).await;
    let mut body = chat_body("fake", "stream me please");
    body["stream"] = json!(true);
    let response = stack.chat(body.clone()).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(response.headers().contains_key("x-switchyard-task-id"));
    let chunks = done_chunks(&response.text().await.unwrap());
    assert!(
        chunks.len() > 3,
        "expected several chunks, got {}",
        chunks.len()
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        fake_provider::answer_text("fake-model", "stream me please")
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(stack.provider.requests()[0].body["stream"], json!(true));
    stack.stop().await;
}

#[tokio::test]
async fn simulated_provider_answers_offline_and_says_so() {
    let stack = Stack::start(1, &[]).await;
    let response = stack.chat(chat_body("simulated", "anyone there?")).await;
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    let text = content(&completion);
    assert!(text.contains("simulated"), "{text}");
    assert!(text.contains("anyone there?"), "{text}");
    assert_eq!(stack.provider.calls(), 0);

    let mut body = chat_body("simulated", "stream it");
    body["stream"] = json!(true);
    let data = sse_data(&stack.chat(body).await.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    stack.stop().await;
}

#[tokio::test]
async fn models_health_and_readiness() {
    let stack = Stack::start(0, &[]).await;
    let models: Value = stack.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fake", "simulated", "slow-stream"]);
    for path in ["/healthz", "/readyz"] {
        let r = stack
            .http
            .get(format!("{}{path}", stack.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers().contains_key("x-switchyard-task-id"), "{path}");
    }
    stack.stop().await;
}

/// The text each choice index got across a stream's chunks.
fn texts_by_choice(chunks: &[Value]) -> BTreeMap<u64, String> {
    let mut texts: BTreeMap<u64, String> = BTreeMap::new();
    for choice in chunks
        .iter()
        .filter_map(|c| c["choices"].as_array())
        .flatten()
    {
        let index = choice["index"].as_u64().unwrap();
        let text = choice["delta"]["content"].as_str().unwrap_or_default();
        texts.entry(index).or_default().push_str(text);
    }
    texts
}

#[tokio::test]
async fn streamed_completion_with_several_choices_ends_with_done() {
    let stack = Stack::start(1, &[]).await;
    let mut body = chat_body("fake", "two ways");
    body["stream"] = json!(true);
    body["n"] = json!(2);
    let response = stack.chat(body).await;
    assert_eq!(response.status(), 200);
    let task_id = task_id(&response);
    let chunks = done_chunks(&response.text().await.unwrap());

    // The provider interleaves the choices' chunks; each index keeps its own text.
    let expected: BTreeMap<u64, String> = (0..2)
        .map(|i| {
            let text = fake_provider::choice_text("fake-model", "two ways", i);
            (u64::try_from(i).unwrap(), text)
        })
        .collect();
    assert_ne!(expected[&0], expected[&1]);
    assert_eq!(texts_by_choice(&chunks), expected);
    let stored = stack.wait_result(&task_id).await;
    for (i, text) in &expected {
        let i = usize::try_from(*i).unwrap();
        assert_eq!(
            stored["response"]["choices"][i]["message"]["content"],
            *text
        );
    }
    stack.stop().await;
}

#[tokio::test]
async fn streamed_usage_arrives_only_when_asked_for() {
    let stack = Stack::start(1, &[]).await;
    for include_usage in [Some(true), Some(false), None] {
        let mut body = chat_body("fake", "count my tokens");
        body["stream"] = json!(true);
        if let Some(include) = include_usage {
            body["stream_options"] = json!({"include_usage": include});
        }
        let response = stack.chat(body).await;
        assert_eq!(response.status(), 200);
        let task_id = task_id(&response);
        let chunks = done_chunks(&response.text().await.unwrap());
        let with_usage: Vec<&Value> = chunks
            .iter()
            .filter(|c| c.get("usage").is_some_and(|u| !u.is_null()))
            .collect();
        let stored = stack.wait_result(&task_id).await;
        if include_usage == Some(true) {
            // As OpenAI: one last chunk, with no choices, carries the usage.
            assert_eq!(with_usage.len(), 1, "{chunks:?}");
            let last = chunks.last().unwrap();
            assert_eq!(last["choices"], json!([]));
            assert_eq!(last["usage"]["total_tokens"], 12);
            assert_eq!(stored["response"]["usage"]["total_tokens"], 12);
        } else {
            assert!(with_usage.is_empty(), "{include_usage:?}: {chunks:?}");
            assert!(chunks.iter().all(|c| c["choices"] != json!([])));
        }
        // The text is complete either way.
        assert_eq!(
            texts_by_choice(&chunks)[&0],
            fake_provider::answer_text("fake-model", "count my tokens")
        );
    }
    stack.stop().await;
}
