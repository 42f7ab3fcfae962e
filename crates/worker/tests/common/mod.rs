//! What the adapter tests share: a fake of one wire format and the adapter pointed at it.
#![allow(dead_code, reason = "each test file uses its own part of this module")]

use fake_provider::{FakeProvider, Format};
use futures::StreamExt;
use serde_json::{Value, json};
use shared::config::ProviderConfig;
use switchyard_worker::provider::{Call, Provider, ProviderError, http_client};

/// The adapter of `kind` (a provider preset) at `base_url`.
pub fn provider(kind: &str, base_url: &str) -> Provider {
    let config: ProviderConfig =
        serde_json::from_value(json!({"kind": kind, "base_url": base_url})).unwrap();
    Provider::new(&http_client().unwrap(), &config)
}

/// A fake of `format` and the adapter of `kind` pointed at it.
pub async fn setup(format: Format, kind: &str) -> (FakeProvider, Provider) {
    let fake = FakeProvider::start(format).await.unwrap();
    let provider = provider(kind, &fake.base_url());
    (fake, provider)
}

/// Every item of a streamed answer.
pub async fn stream_all(provider: &Provider, call: Call<'_>) -> Vec<Result<Value, ProviderError>> {
    provider.stream(call).await.unwrap().collect().await
}
