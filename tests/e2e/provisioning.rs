//! Provisioning is idempotent: running it again changes nothing.

use async_nats::jetstream;
use futures::TryStreamExt;
use shared::config::{Config, Source};
use shared::provision::provision;

use crate::harness::{Nats, config_toml, stack_env};

#[tokio::test]
async fn provisioning_twice_changes_nothing() {
    let nats = Nats::start();
    let config = Config::load(
        Source::Toml(&config_toml(&nats.url, "http://127.0.0.1:9")),
        &stack_env(&[("SWITCHYARD__QUEUE__MAX_MSGS", "1234")]),
    )
    .unwrap();
    let client = shared::nats::connect(&nats.url, "test").await.unwrap();
    let js = jetstream::new(client);

    let snapshot = || async {
        let mut tasks = js.get_stream("TASKS").await.unwrap();
        let mut info = tasks.info().await.unwrap().clone();
        // Server-added metadata is a map: its Debug order varies, its content does not.
        info.config.metadata.clear();
        let consumers: Vec<_> = tasks.consumers().try_collect().await.unwrap();
        let mut consumers: Vec<_> = consumers
            .into_iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.created,
                    c.config.filter_subject.clone(),
                    c.config.max_ack_pending,
                )
            })
            .collect();
        consumers.sort();
        let mut events = js
            .get_stream("EVENTS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        let mut results = js
            .get_stream("KV_results")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        events.config.metadata.clear();
        results.config.metadata.clear();
        (
            info.created,
            info.config,
            consumers,
            events.created,
            events.config,
            results.created,
            results.config,
        )
    };

    provision(&js, &config).await.unwrap();
    let first = snapshot().await;
    provision(&js, &config).await.unwrap();
    let second = snapshot().await;
    assert_eq!(format!("{first:?}"), format!("{second:?}"));

    let (_, tasks_config, consumers, ..) = first;
    assert_eq!(tasks_config.max_messages, 1234);
    assert_eq!(
        tasks_config.retention,
        jetstream::stream::RetentionPolicy::WorkQueue
    );
    assert_eq!(tasks_config.discard, jetstream::stream::DiscardPolicy::New);
    let filters: Vec<&str> = consumers.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(
        filters,
        ["tasks.chat.high", "tasks.chat.low", "tasks.chat.normal"]
    );
}
