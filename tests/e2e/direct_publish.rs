//! Clients that publish tasks straight to NATS and get something wrong: every such task is
//! answered (failed, `bad_request`, naming the field) or refused at publish, never left
//! waiting; and the JetStream error a full queue answers with, as `docs/protocol.md` says.

use std::error::Error as _;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use shared::TaskId;
use shared::task::now_ms;

use crate::harness::{Stack, assert_refused, eventually};

fn task(id: TaskId, capability: &str, priority: &str, reply_to: &str) -> Value {
    json!({
        "id": id,
        "capability": capability,
        "priority": priority,
        "route": "fake",
        "request": {"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
        "deadline_ms": now_ms() + 30_000,
        "reply_to": reply_to,
        "created_ms": now_ms(),
    })
}

/// Publishes `payload` on `subject` with `Nats-Msg-Id: id`, waiting for the ack.
async fn publish(stack: &Stack, subject: &str, id: TaskId, payload: Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    jetstream::new(stack.client.clone())
        .publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Publishes `task` and returns the result sent to its `reply_to`.
async fn publish_and_wait(stack: &Stack, subject: &str, task: &Value) -> Value {
    let inbox = task["reply_to"].as_str().unwrap().to_owned();
    let mut replies = stack.client.subscribe(inbox).await.unwrap();
    let id: TaskId = task["id"].as_str().unwrap().parse().unwrap();
    publish(stack, subject, id, task.to_string().into()).await;
    let reply = tokio::time::timeout(Duration::from_secs(20), replies.next())
        .await
        .expect("a refused task is answered on its reply_to")
        .unwrap();
    let event = reply.headers.as_ref().unwrap().get("Switchyard-Event");
    assert_eq!(event.map(|e| e.as_str()), Some("result"));
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test]
async fn task_missing_a_required_field_is_answered_as_bad_request() {
    let stack = Stack::start(1, &[]).await;
    let id = TaskId::new();
    let mut task = task(id, "chat", "normal", &stack.client.new_inbox());
    task.as_object_mut().unwrap().remove("route");

    let result = publish_and_wait(&stack, "tasks.chat.normal", &task).await;
    assert_refused(&result, id, "route");
    assert_eq!(stack.stored(id).await, result, "stored under the task id");
    let events = eventually(Duration::from_secs(20), || async {
        let events = stack.task_events().await;
        events.get(&id.to_string()).copied()
    })
    .await;
    assert_eq!(events, 1);
    stack.queue_drains().await;
    assert_eq!(stack.provider.calls(), 0);
    stack.stop().await;
}

#[tokio::test]
async fn undecodable_task_is_stored_under_its_message_id() {
    let stack = Stack::start(1, &[]).await;
    let id = TaskId::new();
    publish(
        &stack,
        "tasks.chat.normal",
        id,
        Bytes::from_static(b"{\"id\": "),
    )
    .await;

    let result = stack.stored(id).await;
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["class"], "bad_request");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{result}"
    );
    stack.queue_drains().await;
    stack.stop().await;
}

#[tokio::test]
async fn task_whose_fields_disagree_with_its_subject_is_refused() {
    let stack = Stack::start_with(1, &[], "\n[capabilities.coder]\n").await;

    let id = TaskId::new();
    let low = task(id, "chat", "low", &stack.client.new_inbox());
    let result = publish_and_wait(&stack, "tasks.chat.high", &low).await;
    assert_refused(&result, id, "priority");

    let id = TaskId::new();
    let coder = task(id, "coder", "normal", &stack.client.new_inbox());
    let result = publish_and_wait(&stack, "tasks.chat.normal", &coder).await;
    assert_refused(&result, id, "capability");

    assert_eq!(stack.provider.calls(), 0, "a refused task never runs");
    stack.queue_drains().await;
    stack.stop().await;
}

#[tokio::test]
async fn publish_to_a_queue_nobody_serves_fails_at_once() {
    let stack = Stack::start(0, &[]).await;
    let js = jetstream::new(stack.client.clone());
    for subject in ["tasks.nosuch.normal", "tasks.chat.urgent", "tasks.chat"] {
        let refused = js
            .publish(subject, Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .await
            .unwrap_err();
        assert_eq!(
            refused.kind(),
            PublishErrorKind::StreamNotFound,
            "{subject}"
        );
    }
    let id = TaskId::new();
    let accepted = task(id, "chat", "low", &stack.client.new_inbox());
    publish(&stack, "tasks.chat.low", id, accepted.to_string().into()).await;
    stack.stop().await;
}

/// The status, JetStream error code and description under a refused publish.
fn jetstream_error(e: &async_nats::jetstream::context::PublishError) -> (usize, u64, String) {
    let source = e.source().unwrap();
    let api = source
        .downcast_ref::<async_nats::jetstream::Error>()
        .unwrap();
    (api.code(), api.error_code().0, api.to_string())
}

#[tokio::test]
async fn full_queue_refuses_a_publish_with_code_10077() {
    for (overrides, words) in [
        (
            [("SWITCHYARD__QUEUE__MAX_MSGS", "1")],
            "maximum messages exceeded",
        ),
        (
            [("SWITCHYARD__QUEUE__MAX_BYTES", "600")],
            "maximum bytes exceeded",
        ),
    ] {
        let stack = Stack::start(0, &overrides).await;
        let js = jetstream::new(stack.client.clone());
        let id = TaskId::new();
        let first = task(id, "chat", "normal", "_INBOX.x");
        publish(&stack, "tasks.chat.normal", id, first.to_string().into()).await;
        let second = task(TaskId::new(), "chat", "normal", "_INBOX.x");
        let refused = js
            .publish("tasks.chat.normal", second.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), PublishErrorKind::Other);
        let (status, code, description) = jetstream_error(&refused);
        assert_eq!((status, code), (503, 10077), "{description}");
        assert!(description.contains(words), "{description}");
        stack.stop().await;
    }
}
