//! Operator commands: `switchyard providers` (shared provider health, and `reset` to forget
//! a refused key or an open breaker) and `switchyard dlq list|replay` (the dead-letter
//! queue). They print JSON, the same the gateway's `/v1/providers` and `/v1/dlq` return.

use std::io::Write;

use anyhow::Context;
use serde_json::{Value, json};
use shared::config::Config;
use shared::health::{Snapshot, key_key, target_key};
use shared::names::PROVIDERS_BUCKET;
use shared::task::now_ms;
use shared::{Capability, TaskId, dlq};

use crate::serve;

/// Prints every configured target's health as all workers currently see it.
pub async fn providers(config: &Config) -> anyhow::Result<()> {
    let store = providers_bucket(config).await?;
    let snapshot = Snapshot::read(&store)
        .await
        .map_err(|e| anyhow::anyhow!("reading provider health: {e}"))?;
    print_json(&snapshot.report(config, now_ms()))
}

/// Deletes the health record of a key (`key`) or a target (`model`) of `provider`; the
/// workers' watches drop it, so the key or target is used again at once.
pub async fn reset(
    config: &Config,
    provider: &str,
    key: Option<&str>,
    model: Option<&str>,
) -> anyhow::Result<()> {
    if !config.providers.contains_key(provider) {
        anyhow::bail!("{provider:?} is not a configured provider");
    }
    let record = match (key, model) {
        (Some(label), _) => key_key(provider, label),
        (None, Some(model)) => target_key(provider, model),
        (None, None) => anyhow::bail!("give --key or --model"),
    };
    let store = providers_bucket(config).await?;
    store
        .delete(&record)
        .await
        .with_context(|| format!("deleting {record}"))?;
    print_json(&json!({"reset": record}))
}

async fn providers_bucket(config: &Config) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let client = serve::connect(config, "cli").await?;
    let js = async_nats::jetstream::new(client);
    js.get_key_value(PROVIDERS_BUCKET)
        .await
        .context("opening the providers bucket (run `switchyard provision` first?)")
}

/// Prints one page of dead letters, oldest first, after the cursor `after` (the `last_id`
/// of the previous page), as `GET /v1/dlq` does.
pub async fn dlq_list(
    config: &Config,
    capability: Option<&str>,
    after: u64,
    limit: usize,
) -> anyhow::Result<()> {
    let capability = capability
        .map(|c| c.parse::<Capability>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("capability name {e}"))?;
    let client = serve::connect(config, "cli").await?;
    let js = async_nats::jetstream::new(client);
    let page = dlq::list(&js, capability.as_ref(), after, limit).await?;
    print_json(&serde_json::to_value(page)?)
}

/// Replays dead letters by task id; prints the new task ids.
pub async fn dlq_replay(config: &Config, task_ids: &[TaskId]) -> anyhow::Result<()> {
    let client = serve::connect(config, "cli").await?;
    let js = async_nats::jetstream::new(client);
    let mut replayed = Vec::new();
    for id in task_ids {
        let new_id = dlq::replay(&js, *id).await?;
        replayed.push(json!({"task_id": new_id, "replay_of": id, "status": "queued"}));
    }
    print_json(&json!({"object": "list", "data": replayed}))
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}
