//! Hostile values that would reach a NATS subject or header, or nest deeper than a decoder
//! goes: each is refused at the gateway with a 400 naming the field, and a task carrying one
//! that is published straight to NATS is answered (failed, `bad_request`, naming the field)
//! instead of panicking the worker, dropping its connection or leaving the caller waiting.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use shared::TaskId;
use shared::task::now_ms;

use crate::harness::{Stack, assert_refused, chat_body};

/// A streaming task for `route`, published straight to `tasks.chat.normal`.
fn direct_task(id: TaskId, route: &str, reply_to: &str, request: Value) -> Value {
    json!({
        "id": id,
        "capability": "chat",
        "priority": "normal",
        "route": route,
        "request": request,
        "deadline_ms": now_ms() + 30_000,
        "reply_to": reply_to,
        "created_ms": now_ms(),
    })
}

fn streaming_request(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

async fn publish(stack: &Stack, id: TaskId, payload: Vec<u8>) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    jetstream::new(stack.client.clone())
        .publish_with_headers("tasks.chat.normal", headers, Bytes::from(payload))
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Publishes `payload` as task `id` and returns the result sent to `inbox`.
async fn publish_and_wait(stack: &Stack, id: TaskId, inbox: &str, payload: Vec<u8>) -> Value {
    let mut replies = stack.client.subscribe(inbox.to_owned()).await.unwrap();
    publish(stack, id, payload).await;
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(20), replies.next())
            .await
            .expect("the task is answered on its reply_to")
            .unwrap();
        let event = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Switchyard-Event"));
        if event.map(|e| e.as_str()) == Some("result") {
            return serde_json::from_slice(&reply.payload).unwrap();
        }
    }
}

async fn expect_400(response: reqwest::Response, param: &str) {
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], param, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

/// The worker still answers an ordinary request: nothing above killed it.
async fn still_serving(stack: &Stack) {
    let r = stack.chat(chat_body("simulated", "still there?")).await;
    assert_eq!(r.status(), 200);
}

/// `{"x": [[[…]]]}` with `levels` nested arrays under `x`.
fn nested(levels: usize) -> Value {
    let text = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// JSON text of a chat body whose unknown field `x` holds `levels` nested arrays (built as
/// text: `serde_json` itself refuses to parse past its own limit).
fn deep_chat_body(levels: usize) -> String {
    format!(
        r#"{{"model":"simulated","messages":[{{"role":"user","content":"hi"}}],"x":{}{}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

#[tokio::test]
async fn model_names_that_cannot_be_headers_or_subjects_are_refused_at_the_gateway() {
    let stack = Stack::start(1, &[]).await;
    let long = format!("simulated/{}", "x".repeat(5000));
    for model in [
        "simulated/a\nb",
        "simulated/a\rb",
        "simulated/a\u{0}b",
        long.as_str(),
    ] {
        for stream in [false, true] {
            let mut body = chat_body(model, "hi");
            body["stream"] = json!(stream);
            let r = stack
                .chat_with(body, &[("x-switchyard-timeout-ms", "10000")])
                .await;
            expect_400(r, "model").await;
        }
    }
    still_serving(&stack).await;
    stack.stop().await;
}

#[tokio::test]
async fn direct_task_whose_route_has_a_newline_is_answered_not_a_panic() {
    let stack = Stack::start(1, &[]).await;
    let id = TaskId::new();
    let inbox = stack.client.new_inbox();
    let task = direct_task(
        id,
        "simulated/a\nb",
        &inbox,
        streaming_request("simulated/a\nb"),
    );
    let result = publish_and_wait(&stack, id, &inbox, task.to_string().into_bytes()).await;
    assert_refused(&result, id, "route");
    still_serving(&stack).await;
    stack.stop().await;
}

#[tokio::test]
async fn replaying_a_dead_letter_with_a_newline_route_is_answered_not_a_panic() {
    let stack = Stack::start(1, &[]).await;
    let old = TaskId::new();
    let letter = json!({
        "task": direct_task(old, "simulated/a\nb", "_INBOX.gone", streaming_request("x")),
        "error": {"class": "internal", "message": "before the fix"},
        "attempts": [],
        "worker": "worker-old",
        "dead_lettered_ms": now_ms(),
    });
    jetstream::new(stack.client.clone())
        .publish(format!("dlq.chat.{old}"), letter.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let r = stack
        .http
        .post(format!("{}/v1/dlq/{old}/replay", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let replay: Value = r.json().await.unwrap();
    let new: TaskId = replay["task_id"].as_str().unwrap().parse().unwrap();
    assert_refused(&stack.stored(new).await, new, "route");
    still_serving(&stack).await;
    stack.stop().await;
}

#[tokio::test]
async fn direct_task_with_a_5000_character_route_is_refused() {
    let stack = Stack::start(1, &[]).await;
    let id = TaskId::new();
    let inbox = stack.client.new_inbox();
    let route = format!("simulated/{}", "x".repeat(5000));
    let task = direct_task(id, &route, &inbox, streaming_request(&route));
    let result = publish_and_wait(&stack, id, &inbox, task.to_string().into_bytes()).await;
    assert_refused(&result, id, "route");
    still_serving(&stack).await;
    stack.stop().await;
}

#[tokio::test]
async fn direct_task_with_a_5000_character_reply_to_is_refused() {
    let stack = Stack::start(1, &[]).await;
    let id = TaskId::new();
    let reply_to = format!("_INBOX.{}", "x".repeat(5000));
    let task = direct_task(id, "simulated", &reply_to, streaming_request("simulated"));
    publish(&stack, id, task.to_string().into_bytes()).await;
    assert_refused(&stack.stored(id).await, id, "reply_to");
    still_serving(&stack).await;
    stack.stop().await;
}

#[tokio::test]
async fn deep_nesting_is_refused_at_the_gateway_and_answered_when_published() {
    let stack = Stack::start(1, &[]).await;
    // 126 levels under `x` passes serde_json's own limit (128) at the gateway, but not
    // inside a task, which wraps the request one level deeper.
    for levels in [101, 126, 127, 5000] {
        let r = stack
            .http
            .post(format!("{}/v1/chat/completions", stack.base))
            .header("content-type", "application/json")
            .header("x-switchyard-timeout-ms", "10000")
            .body(deep_chat_body(levels))
            .send()
            .await
            .unwrap();
        expect_400(r, "body").await;
    }
    // The documented limit itself is accepted.
    let r = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .header("content-type", "application/json")
        .body(deep_chat_body(99))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    for levels in [126, 200] {
        let id = TaskId::new();
        let inbox = stack.client.new_inbox();
        let mut task = direct_task(id, "simulated", &inbox, json!({}));
        task["request"] =
            json!({"model": "simulated", "messages": [{"role": "user", "content": "hi"}]});
        let text = task.to_string().replacen(
            r#""request":{"#,
            &format!(
                r#""request":{{"x":{}{},"#,
                "[".repeat(levels),
                "]".repeat(levels)
            ),
            1,
        );
        let result = publish_and_wait(&stack, id, &inbox, text.into_bytes()).await;
        assert_refused(&result, id, "request");
    }
    // Within the limit the nested field goes to the provider untouched.
    let id = TaskId::new();
    let inbox = stack.client.new_inbox();
    let mut request =
        json!({"model": "simulated", "messages": [{"role": "user", "content": "hi"}]});
    request["x"] = nested(50);
    let task = direct_task(id, "simulated", &inbox, request);
    let result = publish_and_wait(&stack, id, &inbox, task.to_string().into_bytes()).await;
    assert_eq!(result["status"], "completed", "{}", result["error"]);
    still_serving(&stack).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_deadline_below_the_minimum_is_refused() {
    let stack = Stack::start(1, &[]).await;
    for short in ["1", "999"] {
        let r = stack
            .chat_with(
                chat_body("simulated", "x"),
                &[("x-switchyard-timeout-ms", short)],
            )
            .await;
        expect_400(r, "x-switchyard-timeout-ms").await;
    }
    let r = stack
        .chat_with(
            chat_body("simulated", "x"),
            &[("x-switchyard-timeout-ms", "1000")],
        )
        .await;
    assert_eq!(r.status(), 200);
    // Nothing was queued for the refused requests, so nothing was dead-lettered.
    let dlq = stack.get_json("/v1/dlq").await;
    assert_eq!(dlq["data"].as_array().unwrap().len(), 0, "{dlq}");
    stack.stop().await;
}
