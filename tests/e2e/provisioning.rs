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
        let mut streams = Vec::new();
        for name in ["TASKS", "EVENTS", "KV_results", "THREADS"] {
            let mut info = js
                .get_stream(name)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .clone();
            // Server-added metadata is a map: its Debug order varies, its content does not.
            info.config.metadata.clear();
            streams.push((info.created, info.config));
        }
        let consumers: Vec<_> = js
            .get_stream("TASKS")
            .await
            .unwrap()
            .consumers()
            .try_collect()
            .await
            .unwrap();
        let mut consumers: Vec<_> = consumers
            .into_iter()
            .map(|c| {
                let mut filters = c.config.filter_subjects;
                filters.extend(
                    (!c.config.filter_subject.is_empty()).then_some(c.config.filter_subject),
                );
                (c.name, c.created, filters, c.config.max_ack_pending)
            })
            .collect();
        consumers.sort();
        (streams, consumers)
    };

    provision(&js, &config).await.unwrap();
    let first = snapshot().await;
    provision(&js, &config).await.unwrap();
    let second = snapshot().await;
    assert_eq!(format!("{first:?}"), format!("{second:?}"));

    let (streams, consumers) = first;
    let tasks_config = &streams[0].1;
    assert_eq!(tasks_config.max_messages, 1234);
    assert_eq!(
        tasks_config.retention,
        jetstream::stream::RetentionPolicy::WorkQueue
    );
    assert_eq!(tasks_config.discard, jetstream::stream::DiscardPolicy::New);
    // Threads are bounded per thread, as configured.
    let threads_config = &streams[3].1;
    assert_eq!(
        threads_config.max_messages_per_subject,
        config.threads.max_msgs_per_thread
    );
    assert_eq!(
        threads_config.retention,
        jetstream::stream::RetentionPolicy::Limits
    );
    let mut filters: Vec<String> = consumers.iter().flat_map(|c| c.2.clone()).collect();
    filters.sort();
    assert_eq!(filters, queues(&["chat"]));
    // An agent's queue holds at most its concurrency in flight, across every worker and
    // priority.
    let planner = consumers
        .iter()
        .find(|c| c.2.contains(&"tasks.agent-planner.normal".to_owned()))
        .unwrap();
    assert_eq!(planner.2.len(), 3);
    assert_eq!(
        planner.3,
        i64::from(config.catalog.agents["planner"].max_concurrency)
    );
}

#[tokio::test]
async fn processes_starting_together_all_provision() {
    let nats = Nats::start();
    let config = Config::load(
        Source::Toml(&config_toml(&nats.url, "http://127.0.0.1:9")),
        &stack_env(&[]),
    )
    .unwrap();
    let mut contexts = Vec::new();
    for _ in 0..6 {
        let client = shared::nats::connect(&nats.url, "test").await.unwrap();
        contexts.push(jetstream::new(client));
    }
    let rounds = contexts.iter().map(|js| {
        let config = config.clone();
        let js = js.clone();
        tokio::spawn(async move { provision(&js, &config).await.map(|_| ()) })
    });
    for outcome in futures::future::join_all(rounds).await {
        outcome.unwrap().unwrap();
    }
    assert_eq!(task_subjects(&contexts[0]).await, queues(&["chat"]));
}

/// The subjects the `TASKS` stream captures.
async fn task_subjects(js: &jetstream::Context) -> Vec<String> {
    let mut tasks = js.get_stream("TASKS").await.unwrap();
    tasks.info().await.unwrap().config.subjects.clone()
}

/// The queue subjects of `capabilities` and of every shipped agent (`agent-<name>`).
fn queues(capabilities: &[&str]) -> Vec<String> {
    let agents = shared::agents::Catalog::shipped().unwrap().agents;
    let mut subjects: Vec<String> = capabilities
        .iter()
        .map(|c| (*c).to_owned())
        .chain(agents.keys().map(|a| format!("agent-{a}")))
        .chain(std::iter::once("workflow".to_owned()))
        .flat_map(|c| ["high", "low", "normal"].map(|p| format!("tasks.{c}.{p}")))
        .collect();
    subjects.sort();
    subjects
}

#[tokio::test]
async fn queue_subjects_are_added_and_never_taken_away() {
    let nats = Nats::start();
    let load = |extra: &str| {
        Config::load(
            Source::Toml(&(config_toml(&nats.url, "http://127.0.0.1:9") + extra)),
            &stack_env(&[]),
        )
        .unwrap()
    };
    let client = shared::nats::connect(&nats.url, "test").await.unwrap();
    let js = jetstream::new(client);
    // A stream made by an earlier version, capturing every task subject.
    js.create_stream(jetstream::stream::Config {
        name: "TASKS".to_owned(),
        subjects: vec!["tasks.>".to_owned()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();

    provision(&js, &load("")).await.unwrap();
    assert_eq!(task_subjects(&js).await, queues(&["chat"]));
    provision(&js, &load("\n[capabilities.coder]\n"))
        .await
        .unwrap();
    assert_eq!(task_subjects(&js).await, queues(&["chat", "coder"]));
    // A process still on the older configuration does not take the new queue away.
    provision(&js, &load("")).await.unwrap();
    assert_eq!(task_subjects(&js).await, queues(&["chat", "coder"]));
}

#[tokio::test]
async fn an_agent_queue_has_one_consumer_capped_at_its_concurrency() {
    let nats = Nats::start();
    let toml = config_toml(&nats.url, "http://127.0.0.1:9")
        + "\n[agents.writer]\nrole = \"Writer\"\ncapabilities = [\"writing\"]\nroute = \"fake\"\nmax_concurrency = 3\nsystem_prompt = \"Write.\"\n";
    let config = Config::load(Source::Toml(&toml), &stack_env(&[])).unwrap();
    let client = shared::nats::connect(&nats.url, "test").await.unwrap();
    let js = jetstream::new(client);
    provision(&js, &config).await.unwrap();
    let tasks = js.get_stream("TASKS").await.unwrap();
    let info = tasks
        .consumer_info("tasks-agent-writer")
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.max_ack_pending, 3,
        "the cap holds across priorities"
    );
    assert_eq!(
        info.config.filter_subjects,
        [
            "tasks.agent-writer.high",
            "tasks.agent-writer.normal",
            "tasks.agent-writer.low"
        ]
    );

    // An earlier version's consumer per priority is replaced on the next provisioning.
    tasks.delete_consumer("tasks-agent-writer").await.unwrap();
    tasks
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("tasks-agent-writer-high".into()),
            filter_subject: "tasks.agent-writer.high".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    provision(&js, &config).await.unwrap();
    let names: Vec<String> = tasks.consumer_names().try_collect().await.unwrap();
    assert!(
        names.contains(&"tasks-agent-writer".to_owned()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("tasks-agent-writer-")),
        "{names:?}"
    );
}

/// A server with less JetStream storage than the queue reserves refuses the stream; the
/// error names the setting that asked for it instead of only echoing the server's code.
#[tokio::test]
async fn a_server_short_of_storage_is_told_which_setting_reserves_it() {
    let nats = Nats::start_with(|store| {
        format!(
            "listen: \"127.0.0.1:-1\"\njetstream {{\n  store_dir: {store:?}\n  max_file_store: 64MB\n}}\n"
        )
    });
    let config = Config::load(
        Source::Toml(&config_toml(&nats.url, "http://127.0.0.1:9")),
        &stack_env(&[]),
    )
    .unwrap();
    let js = jetstream::new(shared::nats::connect(&nats.url, "test").await.unwrap());
    let error = provision(&js, &config).await.unwrap_err().to_string();
    assert!(
        error.contains("stream TASKS") && error.contains("queue.max_bytes = 1073741824"),
        "{error}"
    );
    assert!(error.contains("max_file_store"), "{error}");
}

/// `nats.url` may list several servers (as a cluster's clients do): with the first one
/// down, a process connects to another and provisions there.
#[tokio::test]
async fn a_list_of_servers_with_one_down_still_connects_and_provisions() {
    let nats = Nats::start();
    let dead = fake_provider::refused_url()
        .unwrap()
        .replace("http://", "nats://");
    let url = format!("{dead},{}", nats.url);
    let config = Config::load(
        Source::Toml(&config_toml(&url, "http://127.0.0.1:9")),
        &stack_env(&[]),
    )
    .unwrap();
    let client = shared::nats::connect(&config.nats.url, "test")
        .await
        .unwrap();
    let js = jetstream::new(client);
    provision(&js, &config).await.unwrap();
    assert!(js.get_stream("TASKS").await.is_ok());
}
