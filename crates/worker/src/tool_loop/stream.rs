//! A streamed answer through the tool loop: every round is streamed, and its chunks reach
//! the caller as one stream, numbered on from round to round. Text is relayed as it comes;
//! what would end the answer or ask for tools (a chunk with `tool_calls` or a
//! `finish_reason`, and everything after it in that round) is held until the round ends.
//! A round that runs built-in tools drops what it held (the caller never sees those calls),
//! the last round relays it. So the caller reads the text of every round, then the last
//! round's ending; the stored answer's content is that same text (earlier rounds' text
//! first), so the stream and the result agree.

use std::sync::Mutex;

use serde_json::Value;

use crate::relay::{ChunkSink, FirstChunk};

/// What a tool loop tells whoever relays its rounds.
pub(crate) trait Rounds: Sync {
    /// The round that just ended was the `last` (its answer is the task's, with `usage` the
    /// loop's totals) or ran tools. Returns the text relayed in earlier rounds, which the
    /// last answer starts with.
    fn end_round(&self, last: bool, usage: &Value) -> impl Future<Output = String> + Send;

    /// Whether anything reached the caller yet.
    fn relayed(&self) -> bool;
}

/// Not streamed: nothing to relay.
impl Rounds for () {
    async fn end_round(&self, _last: bool, _usage: &Value) -> String {
        String::new()
    }

    fn relayed(&self) -> bool {
        false
    }
}

/// Who answers, kept from the chunk that said so until the first chunk relayed.
#[derive(Debug, Clone)]
struct First {
    provider: String,
    model: String,
    attempts: usize,
    fallback_depth: u32,
    upstream_ms: u128,
}

#[derive(Debug, Default)]
struct State {
    /// The caller's sequence number of the next chunk.
    next_seq: u64,
    first: Option<First>,
    /// This round's chunks not relayed yet.
    held: Vec<Value>,
    /// A held chunk ends the round or calls tools: hold everything after it too.
    blocked: bool,
    /// Text relayed in this round and in earlier ones.
    round_text: String,
    earlier_text: String,
}

/// Relays the rounds of one task's loop to `inner` as one stream.
#[derive(Debug)]
pub(crate) struct LoopStream<'a, S> {
    inner: &'a S,
    state: Mutex<State>,
}

impl<'a, S: ChunkSink> LoopStream<'a, S> {
    pub(crate) fn new(inner: &'a S) -> Self {
        Self {
            inner,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Relays `chunks` in order, numbered on from the last one relayed.
    async fn relay(&self, chunks: Vec<Value>) {
        for chunk in chunks {
            let (seq, first) = {
                let mut state = self.state();
                let seq = state.next_seq;
                state.next_seq += 1;
                (seq, if seq == 0 { state.first.clone() } else { None })
            };
            let first = first.as_ref().map(|f| FirstChunk {
                provider: &f.provider,
                model: &f.model,
                attempts: f.attempts,
                fallback_depth: f.fallback_depth,
                upstream_ms: f.upstream_ms,
            });
            self.inner.chunk(seq, &chunk, first.as_ref()).await;
        }
    }
}

impl<S: ChunkSink> ChunkSink for LoopStream<'_, S> {
    async fn chunk(&self, _seq: u64, chunk: &Value, first: Option<&FirstChunk<'_>>) {
        let out = {
            let mut state = self.state();
            if let Some(f) = first {
                state.first = Some(First {
                    provider: f.provider.to_owned(),
                    model: f.model.to_owned(),
                    attempts: f.attempts,
                    fallback_depth: f.fallback_depth,
                    upstream_ms: f.upstream_ms,
                });
            }
            if state.blocked || ends_or_calls(chunk) {
                state.blocked = true;
                state.held.push(chunk.clone());
                Vec::new()
            } else {
                let text = text_of(chunk);
                state.round_text.push_str(&text);
                let mut out = std::mem::take(&mut state.held);
                out.push(chunk.clone());
                out
            }
        };
        self.relay(out).await;
    }
}

impl<S: ChunkSink> Rounds for LoopStream<'_, S> {
    async fn end_round(&self, last: bool, usage: &Value) -> String {
        let (out, earlier) = {
            let mut state = self.state();
            let mut held = std::mem::take(&mut state.held);
            state.blocked = false;
            let round = std::mem::take(&mut state.round_text);
            if last {
                // A usage chunk tells what the whole loop used, as the stored answer does.
                for chunk in &mut held {
                    if let Some(u) = chunk.get_mut("usage").filter(|u| u.is_object()) {
                        *u = usage.clone();
                    }
                }
                (held, state.earlier_text.clone())
            } else {
                state.earlier_text.push_str(&round);
                (Vec::new(), String::new())
            }
        };
        self.relay(out).await;
        earlier
    }

    fn relayed(&self) -> bool {
        self.state().next_seq > 0
    }
}

/// Whether a chunk ends its answer or asks for tools.
fn ends_or_calls(chunk: &Value) -> bool {
    chunk["choices"].as_array().into_iter().flatten().any(|c| {
        c["delta"].get("tool_calls").is_some_and(|t| !t.is_null()) || !c["finish_reason"].is_null()
    }) || chunk.get("usage").is_some_and(|u| !u.is_null())
}

/// The first choice's text in a chunk.
fn text_of(chunk: &Value) -> String {
    chunk["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["index"].as_u64().unwrap_or(0) == 0)
        .filter_map(|c| c["delta"]["content"].as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Collects what reaches the caller.
    #[derive(Default)]
    struct Collected(Mutex<Vec<(u64, Value, bool)>>);

    impl ChunkSink for Collected {
        async fn chunk(&self, seq: u64, chunk: &Value, first: Option<&FirstChunk<'_>>) {
            self.0
                .lock()
                .unwrap()
                .push((seq, chunk.clone(), first.is_some()));
        }
    }

    fn text(t: &str) -> Value {
        json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
    }

    fn call() -> Value {
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "calculator", "arguments": ""}}]}, "finish_reason": null}]})
    }

    fn finish(reason: &str) -> Value {
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    }

    fn first() -> FirstChunk<'static> {
        FirstChunk {
            provider: "p",
            model: "m",
            attempts: 1,
            fallback_depth: 0,
            upstream_ms: 5,
        }
    }

    #[tokio::test]
    async fn text_flows_tool_rounds_are_dropped_and_numbering_goes_on() {
        let sink = Collected::default();
        let stream = LoopStream::new(&sink);
        // Round 1: some text, then a call of a built-in tool.
        stream
            .chunk(0, &text("Let me check. "), Some(&first()))
            .await;
        stream.chunk(1, &call(), None).await;
        stream.chunk(2, &text("(after the call)"), None).await;
        stream.chunk(3, &finish("tool_calls"), None).await;
        assert!(stream.relayed());
        assert_eq!(stream.end_round(false, &Value::Null).await, "");
        // Round 2: the answer.
        stream.chunk(0, &text("It is 42."), Some(&first())).await;
        stream.chunk(1, &finish("stop"), None).await;
        let last_usage = json!({"choices": [], "usage": {"total_tokens": 7}});
        stream.chunk(2, &last_usage, None).await;
        let totals = json!({"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24});
        assert_eq!(stream.end_round(true, &totals).await, "Let me check. ");

        let seen = sink.0.lock().unwrap().clone();
        let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        // The usage the caller reads is the whole loop's.
        assert_eq!(seen[3].1["usage"], totals);
        assert!(seen[0].2 && !seen[1].2, "only the first says who answers");
        assert_eq!(seen[0].1, text("Let me check. "));
        assert_eq!(seen[1].1, text("It is 42."));
        assert_eq!(seen[2].1, finish("stop"));
        assert!(
            !seen[..3]
                .iter()
                .any(|s| ends_or_calls(&s.1) && s.1 != finish("stop"))
        );
    }

    #[tokio::test]
    async fn the_last_round_relays_what_it_held_in_order() {
        let sink = Collected::default();
        let stream = LoopStream::new(&sink);
        // A call of the client's own tool ends the loop: its deltas reach the caller.
        stream.chunk(0, &call(), Some(&first())).await;
        stream.chunk(1, &finish("tool_calls"), None).await;
        assert!(sink.0.lock().unwrap().is_empty());
        assert!(!stream.relayed());
        stream.end_round(true, &Value::Null).await;
        let seen = sink.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, call());
        assert!(seen[0].2);
    }
}
