//! Priorities on a worker's pulls: high is served first, and low still progresses while
//! high stays saturated.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use serde_json::json;
use shared::TaskId;
use shared::task::now_ms;

use crate::harness::{Stack, eventually};

/// Publishes a chat task on `tasks.chat.<priority>`; returns its id.
async fn publish(js: &jetstream::Context, priority: &str) -> TaskId {
    let id = TaskId::new();
    let task = json!({
        "id": id,
        "capability": "chat",
        "priority": priority,
        "route": "fake",
        "request": {"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
        "deadline_ms": now_ms() + 120_000,
        "created_ms": now_ms(),
    });
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    js.publish_with_headers(
        format!("tasks.chat.{priority}"),
        headers,
        task.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn low_priority_progresses_while_high_stays_saturated() {
    const HIGH: usize = 300;
    let mut stack = Stack::start(0, &[("SWITCHYARD__WORKER__CONCURRENCY", "2")]).await;
    stack.provider.set_latency(Duration::from_millis(10));
    let js = jetstream::new(stack.client.clone());
    // The low tasks wait at the front of the stream, the high ones behind them: stream
    // order alone would serve low first, priority order alone would never reach it.
    let mut low = Vec::new();
    for _ in 0..3 {
        low.push(publish(&js, "low").await);
    }
    for _ in 0..HIGH {
        publish(&js, "high").await;
    }
    stack.start_worker().await;

    let results = stack.results_bucket().await;
    for id in &low {
        eventually(Duration::from_secs(60), || async {
            results.get(id.to_string()).await.unwrap()
        })
        .await;
    }
    let high = js
        .get_stream(shared::names::TASKS_STREAM)
        .await
        .unwrap()
        .consumer_info("tasks-chat-high")
        .await
        .unwrap()
        .clone();
    let left = high.num_pending + u64::try_from(high.num_ack_pending).unwrap();
    let served = HIGH as u64 - left;
    assert!(
        left > 0,
        "low finished only once high had no backlog left: starved"
    );
    assert!(
        served > low.len() as u64,
        "high was served first: {served} high tasks done when the {} low ones were",
        low.len()
    );
    for id in &low {
        assert_eq!(stack.stored(id).await["status"], "completed");
    }
    stack.stop().await;
}
