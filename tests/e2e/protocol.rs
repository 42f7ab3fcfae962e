//! The wire protocol as `docs/protocol.md` states it, spoken by hand over NATS: a client that
//! publishes tasks directly, and a hand-written worker whose chunks arrive with a gap.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use shared::task::now_ms;
use shared::{Task, TaskId};

use crate::harness::{Stack, chat_body, sse_data};

#[tokio::test]
async fn task_published_directly_is_answered_once() {
    let stack = Stack::start(1, &[]).await;
    let js = jetstream::new(stack.client.clone());
    let id = TaskId::new();
    let inbox = stack.client.new_inbox();
    let mut replies = stack.client.subscribe(inbox.clone()).await.unwrap();
    let task = json!({
        "id": id,
        "capability": "chat",
        "priority": "high",
        "route": "fake",
        "request": {"model": "fake", "messages": [{"role": "user", "content": "from another language"}]},
        "deadline_ms": now_ms() + 30_000,
        "reply_to": inbox,
        "created_ms": now_ms(),
    });
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    let payload = Bytes::from(task.to_string());
    let first = js
        .publish_with_headers("tasks.chat.high", headers.clone(), payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!first.duplicate);
    // A retried publish with the same id is recognised and not queued again.
    let again = js
        .publish_with_headers("tasks.chat.high", headers, payload)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(again.duplicate);

    let reply = tokio::time::timeout(Duration::from_secs(20), replies.next())
        .await
        .unwrap()
        .unwrap();
    let event = reply
        .headers
        .as_ref()
        .unwrap()
        .get("Switchyard-Event")
        .unwrap();
    assert_eq!(event.as_str(), "result");
    let result: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(result["id"], id.to_string());
    assert_eq!(result["status"], "completed");
    let stored = stack
        .results_bucket()
        .await
        .get(id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&stored).unwrap(), result);
    assert_eq!(stack.provider.calls(), 1);
    stack.stop().await;
}

/// Takes the next `chat` task at normal priority the way a worker does.
async fn take_task(stack: &Stack) -> (jetstream::Message, Task) {
    let consumer: PullConsumer = jetstream::new(stack.client.clone())
        .get_stream("TASKS")
        .await
        .unwrap()
        .get_consumer("tasks-chat-normal")
        .await
        .unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(20))
        .messages()
        .await
        .unwrap();
    let msg = batch.next().await.unwrap().unwrap();
    let task = serde_json::from_slice(&msg.payload).unwrap();
    (msg, task)
}

/// Publishes one chunk of choice 0 the way a worker does.
async fn chunk(client: &async_nats::Client, task: &Task, seq: u64, text: &str) {
    choice_chunk(client, task, seq, 0, text).await;
}

/// Publishes one chunk of choice `index` the way a worker does.
async fn choice_chunk(client: &async_nats::Client, task: &Task, seq: u64, index: u64, text: &str) {
    let mut headers = HeaderMap::new();
    headers.insert("Switchyard-Event", "chunk");
    headers.insert("Switchyard-Seq", seq.to_string().as_str());
    headers.insert("Switchyard-Delivery", "1");
    let body = json!({
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "hand",
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": null}]
    });
    client
        .publish_with_headers(
            format!("stream.{}", task.id),
            headers,
            body.to_string().into(),
        )
        .await
        .unwrap();
}

/// Finishes `task` as a worker would: stores `result`, sends it to the reply subject, acks;
/// then returns the `data:` payloads of the streamed answer `pending` received.
async fn finish_by_hand(
    stack: &Stack,
    msg: &jetstream::Message,
    task: &Task,
    result: &Value,
    pending: tokio::task::JoinHandle<String>,
) -> Vec<String> {
    let stored = Bytes::from(result.to_string());
    stack
        .results_bucket()
        .await
        .create(task.id.to_string(), stored.clone())
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Switchyard-Event", "result");
    headers.insert("Switchyard-Delivery", "1");
    stack
        .client
        .publish_with_headers(task.reply_to.clone().unwrap(), headers, stored)
        .await
        .unwrap();
    msg.ack().await.unwrap();
    sse_data(
        &tokio::time::timeout(Duration::from_secs(20), pending)
            .await
            .unwrap()
            .unwrap(),
    )
}

#[tokio::test]
async fn stream_with_a_missing_chunk_is_completed_from_the_stored_result() {
    let stack = Stack::start(0, &[]).await;
    let mut body = chat_body("fake", "gap please");
    body["stream"] = json!(true);
    let request = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .json(&body);
    let pending = tokio::spawn(async move { request.send().await.unwrap().text().await.unwrap() });

    // A hand-written worker: take the task, lose chunk 1, store and send the result.
    let (msg, task) = take_task(&stack).await;
    chunk(&stack.client, &task, 0, "Hello ").await;
    chunk(&stack.client, &task, 2, "new ").await; // seq 1 ("brave ") never arrives
    let result = json!({
        "id": task.id, "status": "completed", "worker": "hand", "delivery": 1, "finished_ms": now_ms(),
        "response": {
            "id": "c", "object": "chat.completion", "created": 1, "model": "hand",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello brave new world"}, "finish_reason": "stop"}]
        }
    });
    let data = finish_by_hand(&stack, &msg, &task, &result, pending).await;
    let chunks = crate::harness::chunks_before_done(&data);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello brave new world");
    assert_eq!(
        chunks.len(),
        2,
        "the chunk after the gap is dropped: {data:?}"
    );
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], "stop");
    stack.stop().await;
}

#[tokio::test]
async fn stream_of_several_choices_with_a_gap_completes_each_choice() {
    let stack = Stack::start(0, &[]).await;
    let mut body = chat_body("fake", "two answers, one gap");
    body["stream"] = json!(true);
    body["n"] = json!(2);
    let request = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .json(&body);
    let pending = tokio::spawn(async move { request.send().await.unwrap().text().await.unwrap() });

    // Choices interleaved; seq 2 (choice 0's "brave ") never arrives.
    let (msg, task) = take_task(&stack).await;
    choice_chunk(&stack.client, &task, 0, 0, "Hello ").await;
    choice_chunk(&stack.client, &task, 1, 1, "Hi ").await;
    choice_chunk(&stack.client, &task, 3, 1, "there").await;
    let result = json!({
        "id": task.id, "status": "completed", "worker": "hand", "delivery": 1, "finished_ms": now_ms(),
        "response": {
            "id": "c", "object": "chat.completion", "created": 1, "model": "hand",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello brave world"}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}
            ]
        }
    });
    let data = finish_by_hand(&stack, &msg, &task, &result, pending).await;
    let chunks = crate::harness::chunks_before_done(&data);
    assert_eq!(chunks.len(), 3, "two relayed, one closing: {data:?}");
    let mut texts = [String::new(), String::new()];
    for choice in chunks.iter().flat_map(|c| c["choices"].as_array().unwrap()) {
        let index = usize::try_from(choice["index"].as_u64().unwrap()).unwrap();
        texts[index] += choice["delta"]["content"].as_str().unwrap_or_default();
    }
    assert_eq!(texts, ["Hello brave world", "Hi there"]);
    let closing = &chunks[2]["choices"];
    assert_eq!(closing[0]["finish_reason"], "stop");
    assert_eq!(closing[1]["finish_reason"], "stop");
    stack.stop().await;
}

#[tokio::test]
async fn redelivered_task_with_a_stored_result_is_not_run_again() {
    let mut stack = Stack::start(0, &[]).await;
    let request = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .json(&chat_body("fake", "already done"));
    let pending = tokio::spawn(async move { request.send().await.unwrap() });

    // A worker that stored the result and emitted its event, then died before acking.
    let js = jetstream::new(stack.client.clone());
    let (msg, task) = take_task(&stack).await;
    let result = json!({
        "id": task.id, "status": "completed", "worker": "hand", "delivery": 1, "finished_ms": now_ms(),
        "response": {
            "id": "c", "object": "chat.completion", "created": 1, "model": "hand",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "stored earlier"}, "finish_reason": "stop"}]
        }
    });
    stack
        .results_bucket()
        .await
        .create(task.id.to_string(), result.to_string().into())
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", task.id.to_string().as_str());
    js.publish_with_headers("events.task.completed", headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    drop(msg); // never acked: redelivered after ack_wait

    stack.start_worker().await;
    let response = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "stored earlier"
    );
    assert_eq!(
        stack.provider.calls(),
        0,
        "the stored result is re-sent, not recomputed"
    );
    let mut events = js.get_stream("EVENTS").await.unwrap();
    assert_eq!(
        events.info().await.unwrap().state.messages,
        1,
        "the second event for the task is de-duplicated"
    );
    stack.stop().await;
}
