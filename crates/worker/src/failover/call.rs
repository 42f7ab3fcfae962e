//! One call to one target with its timeouts: the per-attempt timeout within the task's
//! deadline, and for streaming calls the first-token and idle timeouts, with each chunk
//! handed to the [`ChunkSink`] as it arrives. A failure after a chunk reached the caller
//! is partial: the classifier then fails fast instead of starting the answer over.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use shared::FailureClass;
use shared::config::{ApiKey, TargetConfig};

use super::{Failover, Tally};
use crate::assemble::Assembler;
use crate::deps::Runtime;
use crate::provider::{Call, ProviderError};
use crate::relay::{ChunkSink, FirstChunk};

/// What the first chunk will say about who answers, fixed when the call starts.
struct Answering<'a> {
    provider: &'a str,
    model: &'a str,
    attempts: usize,
    fallback_depth: u32,
    /// Time earlier attempts spent with providers.
    upstream_before_ms: u64,
}

impl<H, S: ChunkSink> Failover<'_, H, S> {
    /// Calls `target` once with `key`; streaming calls forward chunks as they come. Also
    /// returns, for a stream that reached the caller, the time to its first output.
    pub(super) async fn attempt(
        &self,
        target: &TargetConfig,
        runtime: &Runtime,
        key: Option<&ApiKey>,
        tally: &Tally,
    ) -> (Result<Value, ProviderError>, Option<Duration>) {
        let call = Call {
            model: &target.model,
            request: &self.task.request,
            key: key.map(|k| &k.secret),
        };
        let answering = Answering {
            provider: &target.provider,
            model: &target.model,
            attempts: self.prior.len() + tally.attempts.len() + 1,
            fallback_depth: tally.targets_tried.saturating_sub(1),
            upstream_before_ms: self
                .prior
                .iter()
                .chain(&tally.attempts)
                .map(|a| a.duration_ms)
                .sum(),
        };
        let budget = self.task.remaining().min(runtime.timeout);
        // Set once a chunk reached the caller (to the time it took): from then on a timeout
        // is partial, no failover.
        let published = OnceLock::new();
        let work = async {
            if self.task.is_streaming() {
                self.stream_to_caller(runtime, call, &answering, &published)
                    .await
            } else {
                runtime.provider.complete(call).await
            }
        };
        let timed_out = |class, message: String| ProviderError {
            partial: published.get().is_some(),
            ..ProviderError::new(class, message)
        };
        let outcome = match tokio::time::timeout(budget, work).await {
            Ok(outcome) => outcome,
            Err(_) if self.task.remaining().is_zero() => Err(timed_out(
                FailureClass::DeadlineExceeded,
                "the task's deadline passed while the provider was answering".to_owned(),
            )),
            Err(_) => Err(timed_out(
                FailureClass::Timeout,
                format!("provider did not answer within {} ms", budget.as_millis()),
            )),
        };
        (outcome, published.get().copied())
    }

    /// Hands each chunk to the sink as it arrives and returns the assembled completion.
    /// The first chunk must come within the first-token timeout and each next one within
    /// the idle timeout; a failure after the first chunk is partial (no failover).
    /// `published` is set to the time the first chunk reached the caller.
    async fn stream_to_caller(
        &self,
        runtime: &Runtime,
        call: Call<'_>,
        answering: &Answering<'_>,
        published: &OnceLock<Duration>,
    ) -> Result<Value, ProviderError> {
        let clock = Instant::now();
        let opened =
            tokio::time::timeout(runtime.first_token_timeout, runtime.provider.stream(call));
        let mut chunks = match opened.await {
            Ok(opened) => opened?,
            Err(_) => return Err(stall(runtime.first_token_timeout, "first token", false)),
        };
        let mut assembler = Assembler::default();
        let mut seq: u64 = 0;
        // Chunks without output (a role, empty text) are held back until output starts:
        // until then nothing the caller would notice was sent, so failing over is clean.
        let mut held: Vec<Value> = Vec::new();
        loop {
            let (limit, what) = if seq == 0 {
                (
                    runtime.first_token_timeout.saturating_sub(clock.elapsed()),
                    "first token",
                )
            } else {
                (runtime.idle_timeout, "next chunk")
            };
            let chunk = match tokio::time::timeout(limit, chunks.next()).await {
                Err(_) => return Err(stall(limit, what, seq > 0)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(ProviderError {
                        partial: seq > 0,
                        ..e
                    });
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            assembler.push(&chunk);
            if seq == 0 && !carries_output(&chunk) {
                held.push(chunk);
                continue;
            }
            if seq == 0 {
                // The first chunk with output: the time the caller waited for it.
                let _ = published.set(clock.elapsed());
            }
            for chunk in held.drain(..).chain(std::iter::once(chunk)) {
                self.relay(seq, &chunk, answering, &clock).await;
                seq += 1;
            }
        }
        // A stream that ended without output still sends what it had.
        let _ = published.set(clock.elapsed());
        for chunk in held {
            self.relay(seq, &chunk, answering, &clock).await;
            seq += 1;
        }
        Ok(assembler.finish())
    }

    /// Hands chunk `seq` to the sink; the first says who answers.
    async fn relay(&self, seq: u64, chunk: &Value, answering: &Answering<'_>, clock: &Instant) {
        let first = (seq == 0).then(|| FirstChunk {
            provider: answering.provider,
            model: answering.model,
            attempts: answering.attempts,
            fallback_depth: answering.fallback_depth,
            upstream_ms: u128::from(answering.upstream_before_ms) + clock.elapsed().as_millis(),
        });
        self.chunks.chunk(seq, chunk, first.as_ref()).await;
    }
}

/// Whether an answer is a content-filter refusal (`finish_reason: content_filter`).
pub(super) fn is_refusal(answer: &Value) -> bool {
    answer["choices"][0]["finish_reason"] == "content_filter"
}

/// Whether a chunk carries something the caller sees: text (or reasoning, or a refusal), a
/// tool call or a finish reason.
fn carries_output(chunk: &Value) -> bool {
    chunk["choices"].as_array().into_iter().flatten().any(|c| {
        let delta = &c["delta"];
        ["content", "reasoning_content", "reasoning", "refusal"]
            .iter()
            .any(|field| delta[*field].as_str().is_some_and(|t| !t.is_empty()))
            || delta.get("tool_calls").is_some_and(|t| !t.is_null())
            || !c["finish_reason"].is_null()
    })
}

fn stall(limit: Duration, what: &str, partial: bool) -> ProviderError {
    ProviderError {
        partial,
        ..ProviderError::new(
            FailureClass::Timeout,
            format!("provider sent no {what} within {} ms", limit.as_millis()),
        )
    }
}
