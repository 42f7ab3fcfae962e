//! Bad input gets a 4xx with an OpenAI-shaped error naming the problem, and never reaches a
//! subject or a provider.

use serde_json::{Value, json};

use crate::harness::{Stack, chat_body};

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-switchyard-task-id"));
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    body
}

async fn raw(stack: &Stack, body: &'static str) -> reqwest::Response {
    stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn bad_requests_get_clear_openai_errors() {
    let stack = Stack::start(1, &[("SWITCHYARD__GATEWAY__MAX_BODY_BYTES", "4096")]).await;

    expect_error(
        raw(&stack, "{\"model\": \"fake\", ").await,
        400,
        "invalid_json",
    )
    .await;
    expect_error(raw(&stack, "not json at all").await, 400, "invalid_json").await;

    for (body, param) in [
        (json!({"model": "fake"}), "messages"),
        (json!({"model": "fake", "messages": "hi"}), "messages"),
        (json!({"model": "fake", "messages": []}), "messages"),
        (
            json!({"model": 42, "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "fake", "messages": [{"role": "user", "content": 3}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "fake", "messages": [{"content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "fake", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            "stream",
        ),
    ] {
        let err = expect_error(stack.chat(body).await, 400, "invalid_value").await;
        assert_eq!(err["error"]["param"], param);
    }

    let huge = chat_body("fake", &"x".repeat(10_000));
    expect_error(stack.chat(huge).await, 413, "request_too_large").await;

    let err = expect_error(
        stack.chat(chat_body("no-such-route", "x")).await,
        404,
        "model_not_found",
    )
    .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-route")
    );

    for bad in ["chat.high", "chat.>", "*", "Chat", "a b"] {
        let r = stack
            .chat_with(chat_body("fake", "x"), &[("x-switchyard-capability", bad)])
            .await;
        let err = expect_error(r, 400, "invalid_value").await;
        assert_eq!(err["error"]["param"], "x-switchyard-capability");
    }
    // Unknown, and an agent's queue, which only its workflow steps use.
    for capability in ["unknown", "agent-planner"] {
        let r = stack
            .chat_with(
                chat_body("fake", "x"),
                &[("x-switchyard-capability", capability)],
            )
            .await;
        expect_error(r, 400, "unknown_capability").await;
    }
    let r = stack
        .chat_with(
            chat_body("fake", "x"),
            &[("x-switchyard-priority", "urgent")],
        )
        .await;
    expect_error(r, 400, "invalid_value").await;
    for bad in ["0", "-5", "soon", "99999999999"] {
        let r = stack
            .chat_with(chat_body("fake", "x"), &[("x-switchyard-timeout-ms", bad)])
            .await;
        expect_error(r, 400, "invalid_value").await;
    }
    let r = stack.task("not-a-uuid").await;
    expect_error(r, 400, "invalid_value").await;
    let r = stack.task("01935c5e-7b7a-7cc0-9f43-6f7c1a9e1a01").await;
    expect_error(r, 404, "not_found").await;
    let r = stack
        .http
        .get(format!("{}/v1/nothing", stack.base))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    let r = stack
        .http
        .get(format!("{}/v1/chat/completions", stack.base))
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "invalid_value").await;

    // None of it reached the provider.
    assert_eq!(stack.provider.calls(), 0);
    stack.stop().await;
}

#[tokio::test]
async fn full_queue_is_429_with_retry_after() {
    // No workers: tasks stay queued. Two fit; the third is refused.
    // Deadlines below the production minimum, so the queued tasks expire quickly.
    let stack = Stack::start(
        0,
        &[
            ("SWITCHYARD__QUEUE__MAX_MSGS", "2"),
            ("SWITCHYARD__GATEWAY__MIN_TIMEOUT_MS", "1"),
        ],
    )
    .await;
    for _ in 0..2 {
        let r = stack
            .chat_with(chat_body("fake", "x"), &[("x-switchyard-timeout-ms", "50")])
            .await;
        expect_error(r, 504, "deadline_exceeded").await;
    }
    let r = stack
        .chat_with(chat_body("fake", "x"), &[("x-switchyard-timeout-ms", "50")])
        .await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "queue_full").await;
    stack.stop().await;
}
