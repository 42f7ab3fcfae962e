//! One caller must not harm another (issue 9, "Hostile input"): a direct publisher cannot
//! write into another task's result or read it through its own `reply_to`; a model the
//! provider refuses does not take the key away from everyone; direct addressing cannot grow
//! the shared health bucket; the DLQ is bounded and read page by page; and a key with stray
//! whitespace is trimmed and scrubbed wherever a provider's words travel.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use shared::dlq::{self, DeadLetter};
use shared::task::{TaskError, now_ms};
use shared::{FailureClass, Task, TaskId};

use crate::harness::{FakeProvider, Fault, Format, Stack, chat_body, eventually, task_id};

fn task(id: TaskId, route: &str, reply_to: &str) -> Value {
    json!({
        "id": id,
        "capability": "chat",
        "priority": "normal",
        "route": route,
        "request": {"model": route, "messages": [{"role": "user", "content": "hi"}]},
        "deadline_ms": now_ms() + 30_000,
        "reply_to": reply_to,
        "created_ms": now_ms(),
    })
}

/// Publishes `task` on `tasks.chat.normal`, with `Nats-Msg-Id` when `dedupe` (without it,
/// JetStream stores a second publish of the same id as a new message).
async fn publish(stack: &Stack, task: &Value, dedupe: bool) {
    let mut headers = HeaderMap::new();
    if dedupe {
        headers.insert("Nats-Msg-Id", task["id"].as_str().unwrap());
    }
    jetstream::new(stack.client.clone())
        .publish_with_headers("tasks.chat.normal", headers, Bytes::from(task.to_string()))
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn reply_to_cannot_reach_another_tasks_result() {
    let stack = Stack::start(1, &[]).await;
    // The victim: an ordinary caller through the gateway.
    let response = stack.chat(chat_body("fake", "my secret plans")).await;
    assert_eq!(response.status(), 200);
    let victim = task_id(&response);
    let results = stack.results_bucket().await;
    let before = results.entry(&victim).await.unwrap().unwrap();

    // A `$` subject (here the victim's key in the results bucket) and Switchyard's own
    // subjects are refused as `reply_to`, naming the field, and nothing is written there.
    for (i, reply_to) in [
        format!("$KV.results.{victim}"),
        "tasks.chat.low".to_owned(),
        "events.task.completed".to_owned(),
        "dlq.chat".to_owned(),
        format!("stream.{victim}"),
    ]
    .iter()
    .enumerate()
    {
        let id = TaskId::new();
        publish(&stack, &task(id, "fake", reply_to), true).await;
        let result = stack.stored(&id.to_string()).await;
        assert_eq!(result["status"], "failed", "{reply_to}: {result}");
        assert_eq!(result["error"]["class"], "bad_request", "{reply_to}");
        let message = result["error"]["message"].as_str().unwrap();
        assert!(message.contains("`reply_to`"), "{reply_to}: {message}");
        stack.queue_drains().await;
        let after = results.entry(&victim).await.unwrap().unwrap();
        assert_eq!(after.revision, before.revision, "attempt {i}: {reply_to}");
    }
    assert_eq!(stack.provider.calls(), 1, "refused tasks never run");

    // A streaming task may name its own stream subject.
    let own = TaskId::new();
    let mut streaming = task(own, "fake", &format!("stream.{own}"));
    streaming["request"]["stream"] = json!(true);
    let mut own_stream = stack
        .client
        .subscribe(format!("stream.{own}"))
        .await
        .unwrap();
    publish(&stack, &streaming, true).await;
    assert_eq!(stack.stored(&own.to_string()).await["status"], "completed");
    assert!(own_stream.next().await.is_some());

    // Re-publishing the victim's id with one's own reply_to gets nothing back.
    let thief = stack.client.new_inbox();
    let mut stolen = stack.client.subscribe(thief.clone()).await.unwrap();
    let victim_id: TaskId = victim.parse().unwrap();
    publish(&stack, &task(victim_id, "fake", &thief), false).await;
    stack.queue_drains().await;
    stack.client.flush().await.unwrap();
    assert!(
        stolen.next().now_or_never().is_none(),
        "the victim's result went to another reply subject"
    );
    let after = results.entry(&victim).await.unwrap().unwrap();
    assert_eq!(after.revision, before.revision);

    // The original publisher asking again on its own reply subject still gets its result.
    let id = TaskId::new();
    let inbox = stack.client.new_inbox();
    let mut mine = stack.client.subscribe(inbox.clone()).await.unwrap();
    publish(&stack, &task(id, "fake", &inbox), true).await;
    let first = tokio::time::timeout(Duration::from_secs(20), mine.next())
        .await
        .unwrap()
        .unwrap();
    publish(&stack, &task(id, "fake", &inbox), false).await;
    let again = tokio::time::timeout(Duration::from_secs(20), mine.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload, again.payload);
    stack.stop().await;
}

#[tokio::test]
async fn a_model_refusal_does_not_disable_the_key() {
    let extra = "\n[routes.locked]\nprovider = \"fake\"\nmodel = \"locked-model\"\n";
    let stack = Stack::start_with(1, &[], extra).await;
    stack
        .provider
        .push_fault_for("locked-model", Fault::NoModelAccess);
    let response = stack.chat(chat_body("locked", "let me in")).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_unavailable", "{body}");
    // Everyone else keeps the key.
    let (_, fake) = stack.target_health("fake").await;
    assert_eq!(fake["keys"][0]["state"], "active", "{fake}");
    let response = stack.chat(chat_body("fake", "still here")).await;
    assert_eq!(response.status(), 200);
    stack.stop().await;
}

/// Counts the message look-ups (`STREAM.MSG.GET`, `DIRECT.GET`) made on the `providers`
/// bucket while `work` runs.
async fn health_lookups<F: Future<Output = Value>>(stack: &Stack, work: F) -> (usize, Value) {
    let watcher = shared::nats::connect(&stack.nats.url, "watcher")
        .await
        .unwrap();
    let mut gets = watcher
        .subscribe("$JS.API.STREAM.MSG.GET.KV_providers")
        .await
        .unwrap();
    let mut direct = watcher
        .subscribe("$JS.API.DIRECT.GET.KV_providers.>")
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let out = work.await;
    // The gateway's requests went out before its answer; a round trip to the server
    // makes sure every copy reached this connection.
    stack.client.flush().await.unwrap();
    watcher.flush().await.unwrap();
    let mut count = 0;
    while gets.next().now_or_never().flatten().is_some() {
        count += 1;
    }
    while direct.next().now_or_never().flatten().is_some() {
        count += 1;
    }
    (count, out)
}

#[tokio::test]
async fn direct_addressing_is_limited_to_configured_models() {
    let extra = "\n[providers.fake2]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\ndirect_models = [\"extra-model\"]\n";
    let stack = Stack::start_with(1, &[], extra).await;
    // A model no route names and the provider does not list: not addressable.
    let response = stack.chat(chat_body("fake/made-up-1", "x")).await;
    assert_eq!(response.status(), 404);
    let response = stack.chat(chat_body("fake2/made-up-2", "x")).await;
    assert_eq!(response.status(), 404);
    // Published directly, it is refused without a provider call or a health record.
    let id = TaskId::new();
    publish(&stack, &task(id, "fake/made-up-3", "_INBOX.x"), true).await;
    let result = stack.stored(&id.to_string()).await;
    assert_eq!(result["error"]["class"], "bad_request", "{result}");
    assert_eq!(stack.provider.calls(), 0);
    // The models of routes, and those a provider lists, are.
    assert_eq!(
        stack
            .chat(chat_body("fake/fake-model", "direct"))
            .await
            .status(),
        200
    );
    let response = stack
        .http
        .get(format!("{}/v1/models/fake2/extra-model", stack.base));
    assert_eq!(response.send().await.unwrap().status(), 200);
    let response = stack
        .http
        .get(format!("{}/v1/models/fake/made-up-1", stack.base));
    assert_eq!(response.send().await.unwrap().status(), 404);
    stack.stop().await;
}

#[tokio::test]
async fn provider_health_is_read_in_one_pass() {
    // No workers: the only reader of the bucket is the gateway answering `/v1/providers`.
    let stack = Stack::start(0, &[]).await;
    let providers = jetstream::new(stack.client.clone())
        .get_key_value("providers")
        .await
        .unwrap();
    for i in 0..40 {
        let record = json!({"provider": "fake", "model": format!("m{i}"), "state": "closed",
            "consecutive_failures": 0, "window_start_ms": 0, "window_calls": 0,
            "window_failures": 0, "open_until_ms": 0, "cooldown_until_ms": 0,
            "updated_ms": now_ms()});
        providers
            .put(format!("target.fake.m{i}"), record.to_string().into())
            .await
            .unwrap();
    }
    let breaker = json!({"provider": "fake", "model": "fake-model", "state": "open",
        "consecutive_failures": 9, "window_start_ms": 0, "window_calls": 0,
        "window_failures": 0, "open_until_ms": now_ms() + 600_000, "cooldown_until_ms": 0,
        "updated_ms": now_ms()});
    providers
        .put("target.fake.fake-model", breaker.to_string().into())
        .await
        .unwrap();
    let (lookups, report) = health_lookups(&stack, stack.get_json("/v1/providers")).await;
    let fake = report["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["model"] == "fake-model")
        .unwrap();
    assert_eq!(fake["state"], "open", "{report}");
    assert_eq!(fake["consecutive_failures"], 9);
    assert_eq!(lookups, 0, "one look-up per record");
    stack.stop().await;
}

fn letter(capability: &str) -> DeadLetter {
    let now = now_ms();
    DeadLetter {
        task: Task {
            id: TaskId::new(),
            capability: capability.parse().unwrap(),
            priority: shared::Priority::Normal,
            route: "fake".to_owned(),
            request: json!({"model": "fake", "messages": []})
                .as_object()
                .unwrap()
                .clone(),
            deadline_ms: now + 30_000,
            reply_to: None,
            created_ms: now,
            replay_of: None,
            step: None,
            asked_by: Vec::new(),
            session: None,
        },
        error: TaskError {
            class: FailureClass::DeadlineExceeded,
            message: "the deadline passed".to_owned(),
            upstream_status: None,
        },
        attempts: Vec::new(),
        worker: "test".to_owned(),
        dead_lettered_ms: now,
    }
}

#[tokio::test]
async fn the_dlq_is_bounded_paged_and_looked_up_directly() {
    let stack = Stack::start_with(
        1,
        &[("SWITCHYARD__DLQ__MAX_MSGS", "4")],
        "\n[capabilities.coder]\n",
    )
    .await;
    let js = jetstream::new(stack.client.clone());
    let mut ids = Vec::new();
    for i in 0..6 {
        let l = letter(if i % 2 == 0 { "chat" } else { "coder" });
        ids.push(l.task.id.to_string());
        dlq::publish(&js, &l).await.unwrap();
    }
    // Bounded: the oldest letters make room for new ones.
    let mut stream = js.get_stream("DLQ").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 4);
    let kept = &ids[2..];

    // Paged: `limit` and an `after` cursor, `has_more` and the next cursor.
    let mut seen = Vec::new();
    let mut path = "/v1/dlq?limit=3".to_owned();
    loop {
        let page = stack.get_json(&path).await;
        assert_eq!(page["object"], "list", "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 3, "{page}");
        seen.extend(
            data.iter()
                .map(|l| l["task"]["id"].as_str().unwrap().to_owned()),
        );
        if page["has_more"] == json!(false) {
            break;
        }
        assert_eq!(page["has_more"], true, "{page}");
        path = format!("/v1/dlq?limit=3&after={}", page["last_id"]);
    }
    assert_eq!(seen, kept);
    let chat = stack.get_json("/v1/dlq?capability=chat&limit=1").await;
    assert_eq!(chat["data"][0]["task"]["id"], ids[2].as_str(), "{chat}");
    assert_eq!(chat["has_more"], true);
    let tail = stack
        .get_json(&format!(
            "/v1/dlq?capability=chat&after={}",
            chat["last_id"]
        ))
        .await;
    assert_eq!(tail["data"].as_array().unwrap().len(), 1, "{tail}");
    assert_eq!(tail["data"][0]["task"]["id"], ids[4].as_str());
    let too_many = stack
        .http
        .get(format!("{}/v1/dlq?limit=100000", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 400);

    // Looked up directly: each letter is the last message on its own subject.
    let target = &ids[3];
    let direct = stream
        .get_last_raw_message_by_subject(&format!("dlq.coder.{target}"))
        .await
        .unwrap();
    let found: DeadLetter = serde_json::from_slice(&direct.payload).unwrap();
    assert_eq!(found.task.id.to_string(), *target);
    let replay = stack
        .http
        .post(format!("{}/v1/dlq/{target}/replay", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let left = stack.get_json("/v1/dlq").await;
    assert_eq!(left["data"].as_array().unwrap().len(), 3, "{left}");
    stack.stop().await;
}

#[tokio::test]
async fn a_key_with_whitespace_is_trimmed_and_never_echoed() {
    const PADDED: &str = "sk-padded-0123456789abcdefXYZ";
    let echo = FakeProvider::start(Format::OpenAi).await.unwrap();
    let extra = format!(
        "\n[providers.padded]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"PADDED_KEY\"\n\
         [routes.padded]\nprovider = \"padded\"\nmodel = \"m\"\n",
        echo.base_url()
    );
    let key = format!("  {PADDED}\t\n");
    let stack = Stack::start_with(
        1,
        &[
            ("PADDED_KEY", key.as_str()),
            ("SWITCHYARD__QUEUE__MAX_DELIVER", "2"),
        ],
        &extra,
    )
    .await;
    // The provider refuses the key and echoes it (trimmed, as providers read it).
    echo.push_fault(Fault::status(401));
    let response = stack.chat(chat_body("padded", "who am i")).await;
    assert_eq!(response.status(), 502);
    let id = task_id(&response);
    let body = response.text().await.unwrap();
    assert!(body.contains("\"auth\""), "{body}");
    let sent = echo.requests()[0].key.clone().unwrap();
    assert_eq!(sent, PADDED, "the key is sent trimmed");

    let stored = stack.task(&id).await.text().await.unwrap();
    let letters = eventually(Duration::from_secs(10), || async {
        let list = stack.get_json("/v1/dlq").await;
        (!list["data"].as_array()?.is_empty()).then_some(list)
    })
    .await;
    let providers = stack.get_json("/v1/providers").await;
    for (place, text) in [
        ("502 body", body),
        ("stored result", stored),
        ("dlq", letters.to_string()),
        ("providers", providers.to_string()),
    ] {
        assert!(!text.contains(PADDED), "{place}: {text}");
        assert!(!text.contains("sk-padded"), "{place}: {text}");
    }
    assert!(providers.to_string().contains("*****"), "{providers}");
    stack.stop().await;
}
