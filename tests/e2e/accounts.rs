//! `nats/accounts.conf` as shipped: a gateway, a worker and the tools service connected as
//! their own users, with only the permissions that file grants, still serve JSON and streamed
//! completions, a completion that calls a built-in tool under a quota, a workflow, shared
//! context written by both, the workflow's thread posted to by both, the workflow's memories
//! indexed by the memory service (its own user) and searched by the gateway's and the
//! worker's, and artifacts stored by both.

use std::sync::Arc;

use serde_json::{Value, json};
use shared::config::{Config, Source};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    FakeProvider, Format, Nats, chat_body, config_toml, content, sse_data, stack_env, task_id,
};

const GATEWAY_PASSWORD: &str = "gateway-test-password";
const WORKER_PASSWORD: &str = "worker-test-password";
const TOOLS_PASSWORD: &str = "tools-test-password";
const MEMORY_PASSWORD: &str = "memory-test-password";
/// The calculator for chat requests, under a quota; agents on the simulated provider.
const EXTRA: &str = r#"
[tools]
chat_allowed = ["calculator"]

[tools.quotas.calculator]
window_secs = 60
calls = 100

[routes.agents]
provider = "simulated"
model = "simulated-1"
"#;

#[tokio::test]
async fn per_role_users_can_do_their_jobs() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/nats/accounts.conf"))
            .unwrap();
    let nats = Nats::start_with(|store| {
        shipped
            .replace("listen: 0.0.0.0:4222", "listen: \"127.0.0.1:-1\"")
            .replace("http: 0.0.0.0:8222", "")
            .replace(
                "store_dir: /data/jetstream",
                // As in every test server: see `harness::nats_conf`.
                &format!("store_dir: {store:?}\n  max_file_store: 16GB"),
            )
            .replace("$GATEWAY_PASSWORD", &format!("{GATEWAY_PASSWORD:?}"))
            .replace("$WORKER_PASSWORD", &format!("{WORKER_PASSWORD:?}"))
            .replace("$TOOLS_PASSWORD", &format!("{TOOLS_PASSWORD:?}"))
            .replace("$MEMORY_PASSWORD", &format!("{MEMORY_PASSWORD:?}"))
    });
    let provider = FakeProvider::start(Format::OpenAi).await.unwrap();
    let as_user = |user: &str, password: &str| {
        let url = nats
            .url
            .replacen("nats://", &format!("nats://{user}:{password}@"), 1);
        Arc::new(
            Config::load(
                Source::Toml(&(config_toml(&url, &provider.base_url()) + EXTRA)),
                &stack_env(&[]),
            )
            .unwrap(),
        )
    };
    let gateway_config = as_user("gateway", GATEWAY_PASSWORD);
    let worker_config = as_user("worker", WORKER_PASSWORD);
    let tools_config = as_user("tools", TOOLS_PASSWORD);
    let memory_config = as_user("memory", MEMORY_PASSWORD);

    let shutdown = CancellationToken::new();
    let tools_client = shared::nats::connect(&tools_config.nats.url, "tools")
        .await
        .unwrap();
    let worker_probe = shared::nats::connect(&worker_config.nats.url, "probe")
        .await
        .unwrap();
    let tools = tokio::spawn(tools::serve(tools_client, tools_config, shutdown.clone()));
    let memory_dir = tempfile::TempDir::new().unwrap();
    let memory_client = shared::nats::connect(&memory_config.nats.url, "memory")
        .await
        .unwrap();
    let memory = tokio::spawn(memory::serve(
        memory_client,
        memory_config,
        memory_dir.path().join("memory.db"),
        shutdown.clone(),
    ));
    let worker_client = shared::nats::connect(&worker_config.nats.url, "worker")
        .await
        .unwrap();
    let worker = tokio::spawn(worker::run(
        worker_config,
        worker_client,
        "worker-acl".into(),
        shutdown.clone(),
    ));
    let gateway_client = shared::nats::connect(&gateway_config.nats.url, "gateway")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let gateway = tokio::spawn(gateway::run(
        gateway_config,
        gateway_client,
        listener,
        shutdown.clone(),
        || (),
    ));

    let http = reqwest::Client::new();
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("fake", "with permissions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let task_id = task_id(&response);
    let completion: Value = response.json().await.unwrap();
    assert!(content(&completion).contains("with permissions"));
    let stored = http
        .get(format!("{base}/v1/tasks/{task_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);

    let mut body = chat_body("fake", "streamed with permissions");
    body["stream"] = json!(true);
    let streamed = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let data = sse_data(&streamed.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));

    // A built-in tool, under a quota: the worker calls tools.calculator and counts the call
    // in the tool_quotas bucket; the tools user serves it.
    // (No role may ping $SRV: wait until the worker's user gets an answer from the tool.)
    crate::harness::eventually(std::time::Duration::from_secs(20), || async {
        let request = async_nats::Request::new()
            .payload(r#"{"expression": "1 + 1"}"#.into())
            .timeout(Some(std::time::Duration::from_millis(500)));
        worker_probe
            .send_request("tools.calculator", request)
            .await
            .ok()
            .filter(|m| m.headers.is_none())
    })
    .await;
    provider.push_tool_calls("TOOL-ACL", &[("calculator", r#"{"expression": "6 * 7"}"#)]);
    provider.push_reply("TOOL-ACL", "42.");
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"model": "fake", "messages": [{"role": "user", "content": "TOOL-ACL"}],
            "tools": [{"type": "builtin", "name": "calculator"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let tool_task = crate::harness::task_id(&response);
    let stored: Value = get_json(&http, format!("{base}/v1/tasks/{tool_task}")).await;
    assert_eq!(stored["tool_calls"][0]["outcome"], "ok", "{stored:#}");

    // A workflow: the gateway stores its state, the worker dispatches steps onto agent
    // queues and records agents' performance.
    let accepted: Value = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"goal": "Say hello", "team": "research"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let task = crate::harness::eventually(std::time::Duration::from_secs(60), || async {
        let task: Value = http
            .get(format!("{base}/v1/tasks/{id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        matches!(task["status"].as_str(), Some("completed" | "failed")).then_some(task)
    })
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");

    // Shared context: the gateway's user writes, lists and deletes over HTTP; the worker's
    // user writes through the steps' interface.
    let put = http
        .put(format!("{base}/v1/context/{id}/plan"))
        .json(&json!({"draft": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let revision: u64 = put.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let js = async_nats::jetstream::new(worker_probe.clone());
    let steps = shared::context::Context::new(
        js.clone(),
        js.get_key_value(shared::names::CONTEXT_BUCKET)
            .await
            .unwrap(),
    );
    let next = steps
        .put_if(&id, "plan", &json!({"draft": 2}), "researcher", revision)
        .await
        .unwrap();
    let listed: Value = get_json(&http, format!("{base}/v1/context/{id}")).await;
    assert_eq!(listed["data"][0]["revision"], next, "{listed}");
    let deleted = http
        .delete(format!("{base}/v1/context/{id}/plan"))
        .header("if-match", format!("\"{next}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let history: Value = get_json(&http, format!("{base}/v1/context/{id}/plan/history")).await;
    assert_eq!(history["data"][1]["by"], "researcher", "{history}");
    assert_eq!(history["data"][2]["operation"], "delete", "{history}");

    // Memory: the memory user follows EVENTS; the gateway's user searches over HTTP, the
    // worker's over NATS.
    let found = crate::harness::eventually(std::time::Duration::from_secs(20), || async {
        let found: Value = get_json(
            &http,
            format!("{base}/v1/memory/search?q=hello&kind=task&scope={id}"),
        )
        .await;
        (found["data"].as_array()?.len() == 1).then_some(found)
    })
    .await;
    assert_eq!(found["data"][0]["id"], format!("task:{id}"), "{found}");
    let mut query = shared::memory::Query::text("hello");
    query.scope = Some(id.clone());
    let answer = shared::memory::search(&worker_probe, &query, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!answer.hits.is_empty());
    // Threads: the worker's user posted the steps' insights to the workflow's thread; the
    // gateway's user posts a client's message and lists them all.
    let thread = task["thread"].as_str().unwrap().to_owned();
    let posted = http
        .post(format!("{base}/v1/threads/{thread}/messages"))
        .json(&json!({"content": "thanks"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let listed: Value = get_json(&http, format!("{base}/v1/threads/{thread}/messages")).await;
    let messages = listed["data"].as_array().unwrap();
    assert!(
        messages.iter().any(|m| m["author"]["kind"] == "agent"),
        "{listed:#}"
    );
    assert_eq!(messages.last().unwrap()["content"], "thanks", "{listed:#}");

    // Artifacts: the gateway's user stores and serves one over HTTP (in chunks); the
    // worker's user stores a step's output.
    let bytes: Vec<u8> = (0..300_000_u32).map(|i| (i % 251) as u8).collect();
    let stored = http
        .put(format!("{base}/v1/artifacts/report"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let fetched = http
        .get(format!("{base}/v1/artifacts/report"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(fetched[..] == bytes[..]);
    let artifacts = shared::artifacts::Artifacts::new(
        js.get_object_store(shared::names::ARTIFACTS_STORE)
            .await
            .unwrap(),
        1 << 20,
    );
    artifacts
        .put_bytes("step-output", "text/plain", b"a long output")
        .await
        .unwrap();
    let (_, read) = artifacts.get("step-output").await.unwrap().unwrap();
    assert_eq!(read, b"a long output");

    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    shutdown.cancel();
    gateway.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
    tools.await.unwrap().unwrap();
    memory.await.unwrap().unwrap();
}

/// `GET url`, its JSON body.
async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}
