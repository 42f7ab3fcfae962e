//! Exactly once from the caller's side: a publish NATS did not confirm is sent again with the
//! same id rather than refused, retries carrying one `Idempotency-Key` (or one caller-chosen
//! task id) become one task with one answer, and a caller can find that answer later.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Fault, Stack, chat_body, eventually, task_id};

/// JetStream's publish ack times out after 5 s: an outage longer than that is one where the
/// gateway used to answer 503 for tasks that then ran anyway.
const OUTAGE: Duration = Duration::from_secs(6);

#[tokio::test]
async fn a_task_published_while_nats_restarts_is_answered_once_not_refused() {
    let mut stack = Stack::start(1, &[]).await;
    // The worker is up and pulling before NATS goes away.
    assert_eq!(stack.chat(chat_body("fake", "before")).await.status(), 200);
    stack.nats.stop();
    let request = stack.send("through an outage");
    tokio::time::sleep(OUTAGE).await;
    stack.nats.start_again();
    let response = request.await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let id = task_id(&response);
    assert_eq!(stack.provider.calls(), 2);
    assert_eq!(stack.wait_result(&id).await["status"], "completed");
    stack.stop().await;
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_first_answer() {
    let stack = Stack::start(1, &[]).await;
    let key = [("idempotency-key", "order-42-summary")];
    let first = stack.chat_with(chat_body("fake", "once"), &key).await;
    assert_eq!(first.status(), 200);
    let first_id = task_id(&first);
    let first: Value = first.json().await.unwrap();
    let retry = stack.chat_with(chat_body("fake", "once"), &key).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(task_id(&retry), first_id);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["id"], first["id"]);
    assert_eq!(stack.provider.calls(), 1);
    // Another key is another task.
    let other = stack
        .chat_with(
            chat_body("fake", "once"),
            &[("idempotency-key", "order-43")],
        )
        .await;
    assert_ne!(task_id(&other), first_id);
    assert_eq!(stack.provider.calls(), 2);
    stack.stop().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_share_one_task() {
    let stack = Stack::start(1, &[]).await;
    // The first call is slow, so the retry arrives while the task runs.
    stack
        .provider
        .push_fault(Fault::StallBeforeFirstByte(Duration::from_millis(1500)));
    let key = [("idempotency-key", "in-flight")];
    let (a, b) = tokio::join!(stack.chat_with(chat_body("fake", "slow"), &key), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.chat_with(chat_body("fake", "slow"), &key).await
    });
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    assert_eq!(task_id(&a), task_id(&b));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["id"], b["id"]);
    assert_eq!(stack.provider.calls(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn a_caller_chosen_task_id_names_the_task_and_finds_its_result() {
    let stack = Stack::start(1, &[]).await;
    let id = "0190a5c4-1f2e-7d3c-9b8a-0123456789ab";
    let response = stack
        .chat_with(chat_body("fake", "mine"), &[("x-switchyard-task-id", id)])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(task_id(&response), id);
    let stored = stack.wait_result(id).await;
    assert_eq!(stored["status"], "completed");
    // Sent again (a client that lost the first answer): the same result, no second call.
    let again = stack
        .chat_with(chat_body("fake", "mine"), &[("x-switchyard-task-id", id)])
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(stack.provider.calls(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn malformed_idempotency_headers_are_refused_by_name() {
    let stack = Stack::start(0, &[]).await;
    let long = "k".repeat(256);
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("idempotency-key", &long)], "idempotency-key"),
        (
            &[("x-switchyard-task-id", "not-a-uuid")],
            "x-switchyard-task-id",
        ),
        (
            &[
                ("idempotency-key", "k"),
                (
                    "x-switchyard-task-id",
                    "0190a5c4-1f2e-7d3c-9b8a-0123456789ab",
                ),
            ],
            "idempotency-key",
        ),
    ];
    for (headers, param) in cases {
        let response = stack.chat_with(chat_body("fake", "x"), headers).await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_task_event_that_cannot_be_stored_at_first_is_recorded_by_a_later_delivery() {
    let stack = Stack::start(1, &[]).await;
    let js = async_nats::jetstream::new(stack.client.clone());
    // EVENTS gone (as while JetStream restarts): the event cannot be stored for now.
    js.delete_stream(shared::names::EVENTS_STREAM)
        .await
        .unwrap();
    let response = stack.chat(chat_body("fake", "evented")).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    shared::provision::provision(&js, &stack.config)
        .await
        .unwrap();
    let events = eventually(Duration::from_secs(20), || async {
        let events = stack.task_events().await;
        events.contains_key(&id).then_some(events)
    })
    .await;
    assert_eq!(events[&id], 1);
    assert_eq!(stack.provider.calls(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn an_sdk_retrying_a_failed_request_gets_the_same_failure_without_new_calls() {
    let stack = Stack::start(1, &[]).await;
    // Every key refused: a 502 the official SDKs retry twice.
    stack.provider.set_outage(Some(Fault::status(401)));
    let key = [("idempotency-key", "refused-everywhere")];
    let first = stack.chat_with(chat_body("fake", "no luck"), &key).await;
    assert_eq!(first.status(), 502);
    let calls = stack.provider.calls();
    let first: Value = first.json().await.unwrap();
    for _ in 0..2 {
        let retry = stack.chat_with(chat_body("fake", "no luck"), &key).await;
        assert_eq!(retry.status(), 502);
        let retry: Value = retry.json().await.unwrap();
        assert_eq!(retry["error"]["code"], first["error"]["code"]);
    }
    assert_eq!(stack.provider.calls(), calls);
    stack.stop().await;
}

#[tokio::test]
async fn a_streamed_retry_of_a_finished_task_streams_its_stored_answer() {
    let stack = Stack::start(1, &[]).await;
    let key = [("idempotency-key", "stream-me-once")];
    let mut body = chat_body("fake", "stream once");
    body["stream"] = serde_json::json!(true);
    let first = stack.chat_with(body.clone(), &key).await;
    assert_eq!(first.status(), 200);
    let id = task_id(&first);
    let first_text = first.text().await.unwrap();
    assert!(
        first_text.trim_end().ends_with("data: [DONE]"),
        "{first_text}"
    );
    let retry = stack.chat_with(body, &key).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(task_id(&retry), id);
    let events = crate::harness::sse_data(&retry.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let stored = stack.wait_result(&id).await;
    assert_eq!(
        text,
        stored["response"]["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    assert_eq!(stack.provider.calls(), 1);
    stack.stop().await;
}
