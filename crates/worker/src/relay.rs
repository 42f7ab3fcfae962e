//! What a worker sends a task's caller over core NATS besides storing the result: the
//! headers on chunks and results (`docs/protocol.md`, Streaming), and [`ChunkSink`], the
//! one thing the failover loop knows about where a streaming answer's chunks go.
//! [`NatsChunks`] publishes them on `stream.<task id>`; tests collect them.

use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde_json::Value;
use shared::names::{
    HEADER_ATTEMPTS, HEADER_DELIVERY, HEADER_EVENT, HEADER_FALLBACK_DEPTH, HEADER_MODEL,
    HEADER_PROVIDER, HEADER_SEQ, HEADER_UPSTREAM_MS, stream_subject,
};
use shared::{StreamEventKind, TaskId};
use tracing::warn;

/// `Switchyard-Event` and `Switchyard-Delivery`, on every chunk and result.
pub(crate) fn event_headers(kind: StreamEventKind, delivery: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_EVENT, kind.as_str());
    headers.insert(HEADER_DELIVERY, delivery.to_string().as_str());
    headers
}

/// `text` as a NATS header value. async-nats panics on a line break in a value, and a
/// model name can come from a caller (`provider/model`); the task decoder refuses such
/// routes, and this keeps any that slip through (a configured model) from panicking.
fn header_text(text: &str) -> HeaderValue {
    text.parse()
        .unwrap_or_else(|_| text.replace(['\r', '\n'], " ").parse().unwrap_or_default())
}

/// Who answers, sent with the first chunk so the caller can say so before the body starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FirstChunk<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    /// Provider calls made for the task so far, this one included.
    pub attempts: usize,
    /// Targets tried before the one answering.
    pub fallback_depth: u32,
    /// Time spent with providers until this chunk, earlier attempts included.
    pub upstream_ms: u128,
}

/// Where the chunks of a streaming answer go, in order, as they arrive.
pub(crate) trait ChunkSink: Sync {
    /// Relays chunk number `seq` (0, 1, … within one delivery); the first carries `first`.
    /// Chunks are a fast path: a sink that cannot pass one on logs it and carries on.
    fn chunk(
        &self,
        seq: u64,
        chunk: &Value,
        first: Option<&FirstChunk<'_>>,
    ) -> impl Future<Output = ()> + Send;
}

/// Publishes a task's chunks on `stream.<task id>` (core NATS).
#[derive(Debug)]
pub(crate) struct NatsChunks<'a> {
    client: &'a async_nats::Client,
    subject: String,
    delivery: i64,
}

impl<'a> NatsChunks<'a> {
    pub(crate) fn new(client: &'a async_nats::Client, task: TaskId, delivery: i64) -> Self {
        Self {
            client,
            subject: stream_subject(task),
            delivery,
        }
    }
}

impl ChunkSink for NatsChunks<'_> {
    async fn chunk(&self, seq: u64, chunk: &Value, first: Option<&FirstChunk<'_>>) {
        let mut headers = event_headers(StreamEventKind::Chunk, self.delivery);
        headers.insert(HEADER_SEQ, seq.to_string().as_str());
        if let Some(first) = first {
            headers.insert(HEADER_PROVIDER, header_text(first.provider));
            headers.insert(HEADER_MODEL, header_text(first.model));
            headers.insert(HEADER_ATTEMPTS, first.attempts.to_string().as_str());
            headers.insert(
                HEADER_FALLBACK_DEPTH,
                first.fallback_depth.to_string().as_str(),
            );
            headers.insert(HEADER_UPSTREAM_MS, first.upstream_ms.to_string().as_str());
        }
        let payload = Bytes::from(serde_json::to_vec(chunk).unwrap_or_default());
        if let Err(e) = self
            .client
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
        {
            // Chunks are the fast path; the stored result is the durable one.
            warn!(error = %e, "could not publish a stream chunk");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_never_panics_and_keeps_what_it_can() {
        assert_eq!(header_text("gpt-4o").as_str(), "gpt-4o");
        assert_eq!(header_text("a\nb\rc").as_str(), "a b c");
    }
}
