//! `nats/accounts.conf` as shipped: a gateway and a worker connected as their own users, with
//! only the permissions that file grants, still serve JSON and streamed completions.

use std::sync::Arc;

use serde_json::{Value, json};
use shared::config::{Config, Source};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    FakeProvider, Format, Nats, chat_body, config_toml, content, sse_data, stack_env, task_id,
};

const GATEWAY_PASSWORD: &str = "gateway-test-password";
const WORKER_PASSWORD: &str = "worker-test-password";

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
    });
    let provider = FakeProvider::start(Format::OpenAi).await.unwrap();
    let as_user = |user: &str, password: &str| {
        let url = nats
            .url
            .replacen("nats://", &format!("nats://{user}:{password}@"), 1);
        Arc::new(
            Config::load(
                Source::Toml(&config_toml(&url, &provider.base_url())),
                &stack_env(&[]),
            )
            .unwrap(),
        )
    };
    let gateway_config = as_user("gateway", GATEWAY_PASSWORD);
    let worker_config = as_user("worker", WORKER_PASSWORD);

    let shutdown = CancellationToken::new();
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

    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    shutdown.cancel();
    gateway.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
}
