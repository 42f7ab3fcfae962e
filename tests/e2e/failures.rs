//! Provider failures: transient ones are retried through the queue, permanent ones fail fast
//! with their class, deadlines hold, keys never leak, and a caller that leaves loses nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{FAKE_KEY, Fault, Stack, chat_body, eventually, sse_data, task_id};

#[tokio::test]
async fn transient_failure_is_redelivered_and_completes_once() {
    let stack = Stack::start(1, &[]).await;
    // A 503 is retried once in place; the second fails the only target, so the task goes
    // back to the queue and the next delivery answers.
    stack.provider.push_fault(Fault::status(503));
    stack.provider.push_fault(Fault::status(503));
    let response = stack.chat(chat_body("fake", "try again")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-attempts"], "3");
    let task_id = task_id(&response);
    assert_eq!(stack.provider.calls(), 3);
    let stored: Value = stack.task(&task_id).await.json().await.unwrap();
    assert_eq!(stored["status"], "completed");
    assert_eq!(stored["delivery"], 2);
    let classes: Vec<Value> = stored["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["class"].clone())
        .collect();
    assert_eq!(
        classes,
        vec![json!("upstream_5xx"), json!("upstream_5xx"), Value::Null]
    );
    assert_eq!(stored["attempts"][2]["delivery"], 2);
    stack.stop().await;
}

#[tokio::test]
async fn permanent_failure_fails_fast_with_its_class() {
    let stack = Stack::start(1, &[]).await;
    stack.provider.push_fault(Fault::status(400));
    let response = stack.chat(chat_body("fake", "bad")).await;
    assert_eq!(response.status(), 400);
    let task_id = task_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected fault")
    );
    assert_eq!(stack.provider.calls(), 1);
    let stored: Value = stack.task(&task_id).await.json().await.unwrap();
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["error"]["class"], "bad_request");
    assert_eq!(stored["error"]["upstream_status"], 400);

    // Before the first chunk, a streaming request gets the same HTTP error.
    stack.provider.push_fault(Fault::status(400));
    let mut body = chat_body("fake", "bad stream");
    body["stream"] = json!(true);
    let response = stack.chat(body).await;
    assert_eq!(response.status(), 400);
    stack.stop().await;
}

#[tokio::test]
async fn retries_stop_after_max_deliver_with_the_last_class() {
    // Three deliveries: two that call the provider (twice each: one retry in place) and
    // the reserve.
    let stack = Stack::start(1, &[("SWITCHYARD__QUEUE__MAX_DELIVER", "3")]).await;
    for _ in 0..4 {
        stack.provider.push_fault(Fault::status(500));
    }
    let response = stack.chat(chat_body("fake", "doomed")).await;
    assert_eq!(response.status(), 502);
    let task_id = task_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_5xx");
    assert_eq!(stack.provider.calls(), 4);
    let stored: Value = stack.task(&task_id).await.json().await.unwrap();
    assert_eq!(stored["attempts"].as_array().unwrap().len(), 4);
    stack.stop().await;
}

#[tokio::test]
async fn provider_key_never_reaches_the_caller() {
    let stack = Stack::start(1, &[]).await;
    stack.provider.push_fault(Fault::status(401));
    let response = stack.chat(chat_body("fake", "who am i")).await;
    assert_eq!(
        response.status(),
        502,
        "an upstream 401 is not the caller's 401"
    );
    let task_id = task_id(&response);
    let text = response.text().await.unwrap();
    assert!(!text.contains(FAKE_KEY), "{text}");
    assert!(text.contains("*****"), "{text}");
    let stored = stack.task(&task_id).await.text().await.unwrap();
    assert!(!stored.contains(FAKE_KEY), "{stored}");
    assert!(stored.contains("\"auth\""), "{stored}");
    stack.stop().await;
}

#[tokio::test]
async fn deadline_bounds_the_wait_and_the_task() {
    // A deadline below the production minimum, so the test is quick.
    let stack = Stack::start(1, &[("SWITCHYARD__GATEWAY__MIN_TIMEOUT_MS", "1")]).await;
    stack.provider.set_latency(Duration::from_secs(3));
    let response = stack
        .chat_with(
            chat_body("fake", "slow"),
            &[("x-switchyard-timeout-ms", "500")],
        )
        .await;
    assert_eq!(response.status(), 504);
    let task_id = task_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    // The worker gives up at the deadline too and records why.
    let stored: Value = eventually(Duration::from_secs(10), || async {
        let r = stack.task(&task_id).await;
        if r.status() == 200 {
            r.json().await.ok()
        } else {
            None
        }
    })
    .await;
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["error"]["class"], "deadline_exceeded");
    stack.stop().await;
}

/// A client that gives up after 200 ms.
fn impatient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// The stored result of the one task in the results bucket other than `except`.
async fn the_other_result(stack: &Stack, except: Option<&str>) -> Value {
    let results = stack.results_bucket().await;
    let key = eventually(Duration::from_secs(20), || {
        let results = results.clone();
        async move {
            use futures::StreamExt;
            let keys: Vec<String> = results
                .keys()
                .await
                .ok()?
                .filter_map(|k| async { k.ok() })
                .collect()
                .await;
            keys.into_iter().find(|k| Some(k.as_str()) != except)
        }
    })
    .await;
    stack.task(&key).await.json().await.unwrap()
}

#[tokio::test]
async fn a_caller_that_named_its_task_and_disconnects_loses_nothing() {
    let stack = Stack::start(1, &[]).await;
    stack.provider.set_latency(Duration::from_millis(800));
    let err = impatient()
        .post(format!("{}/v1/chat/completions", stack.base))
        .header("idempotency-key", "coming-back-for-it")
        .json(&chat_body("fake", "I will not wait"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    // The task still completes and its result is stored, for the caller to collect.
    let stored = the_other_result(&stack, None).await;
    assert_eq!(stored["status"], "completed");
    // The gateway keeps serving.
    stack.provider.set_latency(Duration::ZERO);
    assert_eq!(stack.chat(chat_body("fake", "next")).await.status(), 200);
    stack.stop().await;
}

#[tokio::test]
async fn an_anonymous_caller_that_leaves_has_its_provider_call_stopped() {
    let stack = Stack::start(1, &[]).await;
    stack.provider.set_latency(Duration::from_secs(5));
    let err = impatient()
        .post(format!("{}/v1/chat/completions", stack.base))
        .json(&chat_body("fake", "nobody will read this"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    // It could never collect the answer: the call is stopped and the task says why.
    let stored = the_other_result(&stack, None).await;
    assert_eq!(stored["status"], "failed", "{stored}");
    assert_eq!(stored["error"]["class"], "cancelled", "{stored}");
    stack.stop().await;
}

#[tokio::test]
async fn queued_work_of_an_anonymous_caller_that_left_never_reaches_a_provider() {
    let stack = Stack::start(1, &[("SWITCHYARD__WORKER__CONCURRENCY", "1")]).await;
    stack.provider.set_latency(Duration::from_millis(1500));
    // The only slot is busy with a patient caller's task...
    let patient = stack.send("I wait");
    eventually(Duration::from_secs(10), || async {
        (stack.provider.calls() == 1).then_some(())
    })
    .await;
    // ...while an impatient one queues behind it and leaves.
    let err = impatient()
        .post(format!("{}/v1/chat/completions", stack.base))
        .json(&chat_body("fake", "I leave"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let patient = patient.await.unwrap();
    assert_eq!(patient.status(), 200);
    let patient_id = task_id(&patient);
    let stored = the_other_result(&stack, Some(&patient_id)).await;
    assert_eq!(stored["error"]["class"], "cancelled", "{stored}");
    assert_eq!(stack.provider.calls(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn stream_failure_after_first_chunk_is_an_error_event_not_done() {
    // `slow-stream` sends a chunk every 100 ms; the deadline passes mid-stream (a deadline
    // below the production minimum, so the test is quick).
    let stack = Stack::start(1, &[("SWITCHYARD__GATEWAY__MIN_TIMEOUT_MS", "1")]).await;
    let mut body = chat_body("slow-stream", &"word ".repeat(40));
    body["stream"] = json!(true);
    let response = stack
        .chat_with(body, &[("x-switchyard-timeout-ms", "600")])
        .await;
    assert_eq!(response.status(), 200, "the stream had started");
    let data = sse_data(&response.text().await.unwrap());
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "deadline_exceeded", "{last}");
    let chunks = data
        .iter()
        .filter(|d| d.contains("chat.completion.chunk"))
        .count();
    assert!(chunks >= 1, "{data:?}");
    stack.stop().await;
}

#[tokio::test]
async fn stream_cut_by_the_provider_fails_instead_of_completing() {
    let stack = Stack::start(1, &[]).await;
    stack.provider.push_fault(Fault::CutStream);
    let mut body = chat_body("fake", "cut me off");
    body["stream"] = json!(true);
    let response = stack.chat(body).await;
    assert_eq!(response.status(), 200, "the stream had started");
    let task_id = task_id(&response);
    let data = sse_data(&response.text().await.unwrap());
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "network", "{last}");
    // Output had reached the caller, so the task is not retried with a second beginning.
    assert_eq!(stack.provider.calls(), 1);
    let stored: Value = stack.task(&task_id).await.json().await.unwrap();
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["error"]["class"], "network");
    stack.stop().await;
}
