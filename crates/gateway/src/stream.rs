//! `POST /v1/chat/completions` with `"stream": true`. The gateway subscribes to
//! `stream.<task id>` before publishing, waits for the first event (so a task that fails
//! before its first chunk still gets a proper HTTP error), then relays chunks as SSE and ends
//! with `data: [DONE]`. If a chunk goes missing or a redelivered attempt starts over, the
//! relay stops forwarding chunks and completes the answer from the stored result instead.
//! A failure after the first chunk ends the stream with an error event, never `[DONE]`.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;

use async_nats::{Message, Subscriber};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use shared::names::{
    HEADER_ATTEMPTS, HEADER_DELIVERY, HEADER_EVENT, HEADER_FALLBACK_DEPTH, HEADER_MODEL,
    HEADER_PROVIDER, HEADER_SEQ, HEADER_UPSTREAM_MS, stream_subject,
};
use shared::{StreamEventKind, Task, TaskId, TaskResult, TaskStatus};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::answer::{
    STORED_RESULT_CHECK, answered, decode_result, overhead_ms, resolve, result_response,
    stored_result,
};
use crate::error::{ApiError, error_body};
use crate::headers::Answered;
use crate::state::AppState;
use crate::submit::{Published, publish};

/// What arrived for a streaming task.
enum Incoming {
    Chunk {
        seq: u64,
        delivery: u64,
        payload: Bytes,
        /// Who answers, on the first chunk of an attempt.
        meta: Option<Box<Answered>>,
    },
    Result(Box<TaskResult>),
    Timeout,
    Closed,
}

/// Streams `task`'s answer. With its `stored` result (a retry of a finished named task), that
/// is the answer, as one chunk, and nothing is queued; a task still queued or running (a
/// duplicate publish) is joined mid-way and completed from its result.
pub async fn respond(
    st: AppState,
    mut task: Task,
    started: Instant,
    stored: Option<Bytes>,
) -> Result<Response, ApiError> {
    let subject = stream_subject(task.id);
    let sub = st.client.subscribe(subject.clone()).await.map_err(|e| {
        warn!(error = %e, "could not subscribe to a stream subject");
        ApiError::Unavailable
    })?;
    task.reply_to = Some(subject);
    let stored = match stored {
        Some(stored) => Some(stored),
        None => match publish(&st, &task).await? {
            Published::New => None,
            // Queued before: it may have finished already.
            Published::Duplicate => stored_result(&st, task.id).await?,
        },
    };
    let deadline = Instant::now() + task.remaining();
    let mut relay = Relay {
        st,
        sub,
        task_id: task.id,
        deadline,
        delivery: None,
        next_seq: 0,
        gap: false,
        sent: BTreeMap::new(),
        finished: false,
        queued: VecDeque::new(),
    };
    let mut answered_by = Answered::default();
    let first = match stored {
        Some(bytes) => Incoming::Result(Box::new(decode_result(&bytes)?)),
        None => relay.next_incoming().await?,
    };
    match first {
        Incoming::Result(result) => {
            // Whole answer before any chunk (e.g. a redelivery found it stored): one chunk.
            let result = resolve(&relay.st, *result).await?;
            if result.status == TaskStatus::Failed {
                return result_response(result, Some(started));
            }
            answered_by = answered(&result, Some(started));
            relay.finish_with(result);
        }
        Incoming::Timeout => {
            return Err(ApiError::DeadlineExceeded {
                task_id: task.id.to_string(),
            });
        }
        Incoming::Closed => return Err(ApiError::Unavailable),
        Incoming::Chunk {
            seq,
            delivery,
            payload,
            meta,
        } => {
            if let Some(mut meta) = meta {
                // The worker sent its provider time to the first chunk as the overhead slot.
                meta.overhead_ms = meta
                    .overhead_ms
                    .map(|upstream| overhead_ms(started, upstream));
                answered_by = *meta;
            }
            relay.accept(Incoming::Chunk {
                seq,
                delivery,
                payload,
                meta: None,
            });
        }
    }
    let events = futures::stream::unfold(relay, |mut relay| async move {
        let event = relay.next_event().await?;
        Some((Ok::<_, Infallible>(event), relay))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    answered_by.apply(&mut response);
    Ok(response)
}

struct Relay {
    st: AppState,
    sub: Subscriber,
    task_id: TaskId,
    deadline: Instant,
    /// Delivery whose chunks are being relayed; chunks of any other are ignored.
    delivery: Option<u64>,
    next_seq: u64,
    /// A chunk went missing or another delivery started over: stop relaying chunks.
    gap: bool,
    /// Text sent so far per choice `index` (`n` > 1 streams interleave the choices'
    /// chunks), to complete each from the stored result after a gap.
    sent: BTreeMap<u64, String>,
    finished: bool,
    queued: VecDeque<Event>,
}

impl Relay {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            match self.next_incoming().await {
                Ok(Incoming::Result(result)) => match resolve(&self.st, *result).await {
                    Ok(result) => self.finish_with(result),
                    Err(e) => self.fail(&e),
                },
                Ok(Incoming::Timeout) => self.fail(&ApiError::DeadlineExceeded {
                    task_id: self.task_id.to_string(),
                }),
                Ok(Incoming::Closed) | Err(_) => self.fail(&ApiError::Unavailable),
                Ok(chunk) => self.accept(chunk),
            }
        }
    }

    /// Reads the next message, looking for a stored result whenever none came for a while.
    async fn next_incoming(&mut self) -> Result<Incoming, ApiError> {
        loop {
            let wait = self.deadline.min(Instant::now() + STORED_RESULT_CHECK);
            let msg = match tokio::time::timeout_at(wait, self.sub.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(Incoming::Closed),
                Err(_) => {
                    // The result message may have been lost; the stored result is not.
                    if let Some(stored) = stored_result(&self.st, self.task_id).await.ok().flatten()
                    {
                        return Ok(Incoming::Result(Box::new(decode_result(&stored)?)));
                    }
                    if Instant::now() >= self.deadline {
                        return Ok(Incoming::Timeout);
                    }
                    continue;
                }
            };
            if let Some(incoming) = decode(&msg)? {
                return Ok(incoming);
            }
        }
    }

    /// Relays a chunk if it is the next one of the delivery being followed.
    fn accept(&mut self, chunk: Incoming) {
        let Incoming::Chunk {
            seq,
            delivery,
            payload,
            ..
        } = chunk
        else {
            return;
        };
        if self.gap {
            return;
        }
        let in_order = *self.delivery.get_or_insert(delivery) == delivery && seq == self.next_seq;
        let decoded = std::str::from_utf8(&payload)
            .ok()
            .zip(serde_json::from_slice::<Value>(&payload).ok());
        let (true, Some((text, value))) = (in_order, decoded) else {
            debug!(task_id = %self.task_id, seq, delivery, "gap in stream; will complete from the stored result");
            self.gap = true;
            return;
        };
        for choice in value["choices"].as_array().into_iter().flatten() {
            if let Some(content) = choice["delta"]["content"].as_str() {
                let index = choice["index"].as_u64().unwrap_or(0);
                self.sent.entry(index).or_default().push_str(content);
            }
        }
        self.next_seq += 1;
        self.queued.push_back(Event::default().data(text));
    }

    /// Ends the stream with whatever of `result` the client has not seen, then `[DONE]`.
    fn finish_with(&mut self, result: TaskResult) {
        self.finished = true;
        let response = match (result.status, result.response, result.error) {
            (TaskStatus::Completed, Some(response), _) => response,
            (_, _, Some(error)) => return self.fail(&ApiError::TaskFailed(error)),
            _ => return self.fail(&ApiError::Internal),
        };
        let Some(rest) = unsent(&response, &self.sent) else {
            // A retried attempt answered differently from the one already relayed.
            warn!(task_id = %self.task_id, "relayed text diverged from the stored result");
            return self.fail(&ApiError::StreamDiverged {
                task_id: self.task_id.to_string(),
            });
        };
        let relayed_all = !self.gap && self.next_seq > 0 && rest.values().all(|r| r.is_empty());
        if !relayed_all {
            let nothing_relayed = self.next_seq == 0 && self.sent.values().all(String::is_empty);
            let chunk = closing_chunk(&response, &rest, nothing_relayed);
            self.queued
                .push_back(Event::default().data(chunk.to_string()));
        }
        self.queued.push_back(Event::default().data("[DONE]"));
    }

    fn fail(&mut self, error: &ApiError) {
        self.finished = true;
        self.queued
            .push_back(Event::default().data(error_body(error).to_string()));
    }
}

/// Decodes a message on the stream subject; `None` for one that is not Switchyard's.
fn decode(msg: &Message) -> Result<Option<Incoming>, ApiError> {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let kind = header(HEADER_EVENT)
        .as_deref()
        .and_then(StreamEventKind::parse);
    let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
    Ok(match kind {
        Some(StreamEventKind::Result) => {
            Some(Incoming::Result(Box::new(decode_result(&msg.payload)?)))
        }
        Some(StreamEventKind::Chunk) => match (number(HEADER_SEQ), number(HEADER_DELIVERY)) {
            (Some(seq), Some(delivery)) => Some(Incoming::Chunk {
                seq,
                delivery,
                payload: msg.payload.clone(),
                meta: header(HEADER_PROVIDER).map(|provider| {
                    Box::new(Answered {
                        provider: Some(provider),
                        model: header(HEADER_MODEL),
                        attempts: number(HEADER_ATTEMPTS).and_then(|a| usize::try_from(a).ok()),
                        fallback_depth: number(HEADER_FALLBACK_DEPTH)
                            .and_then(|d| u32::try_from(d).ok()),
                        overhead_ms: number(HEADER_UPSTREAM_MS),
                    })
                }),
            }),
            _ => None,
        },
        None => None,
    })
}

/// What the client has not seen of each choice of `response`, by choice index, given the
/// text `sent` of each; `None` if something sent is not the start of the stored answer (a
/// retried attempt answered differently).
fn unsent<'a>(response: &'a Value, sent: &BTreeMap<u64, String>) -> Option<BTreeMap<u64, &'a str>> {
    let mut rest = BTreeMap::new();
    for choice in response["choices"].as_array().into_iter().flatten() {
        let index = choice["index"].as_u64().unwrap_or(0);
        let full = choice["message"]["content"].as_str().unwrap_or_default();
        let seen = sent.get(&index).map_or("", String::as_str);
        rest.insert(index, full.strip_prefix(seen)?);
    }
    // Text sent for a choice the stored answer does not have diverged too.
    let unknown = sent
        .iter()
        .any(|(index, text)| !text.is_empty() && !rest.contains_key(index));
    (!unknown).then_some(rest)
}

/// One `chat.completion.chunk` carrying, for every choice, its `rest` and finish reason;
/// with `whole`, every choice's full message instead (nothing was relayed before).
fn closing_chunk(response: &Value, rest: &BTreeMap<u64, &str>, whole: bool) -> Value {
    let choices: Vec<Value> = response["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let delta = if whole {
                c["message"].clone()
            } else {
                let index = c["index"].as_u64().unwrap_or(0);
                json!({"content": rest.get(&index).copied().unwrap_or_default()})
            };
            json!({"index": c["index"], "delta": delta, "finish_reason": c["finish_reason"]})
        })
        .collect();
    let mut chunk = json!({
        "id": response["id"],
        "object": "chat.completion.chunk",
        "created": response["created"],
        "model": response["model"],
        "choices": choices,
    });
    if let Some(usage) = response.get("usage") {
        chunk["usage"] = usage.clone();
    }
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Value {
        json!({
            "id": "c", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}],
            "usage": {"total_tokens": 3}
        })
    }

    fn two_choices() -> Value {
        json!({
            "id": "c", "created": 1, "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "length"}
            ]
        })
    }

    fn sent(pairs: &[(u64, &str)]) -> BTreeMap<u64, String> {
        pairs.iter().map(|(i, t)| (*i, (*t).to_owned())).collect()
    }

    #[test]
    fn unsent_text_is_counted_per_choice() {
        let response = two_choices();
        let rest = unsent(&response, &sent(&[(0, "Hello "), (1, "Hi")])).unwrap();
        assert_eq!(rest, BTreeMap::from([(0, "world"), (1, " there")]));
        let rest = unsent(&response, &sent(&[(1, "Hi there")])).unwrap();
        assert_eq!(rest, BTreeMap::from([(0, "Hello world"), (1, "")]));
    }

    #[test]
    fn text_sent_for_another_answer_diverges() {
        let response = two_choices();
        // Choice 1's text is not a start of choice 0's, and the other way round.
        assert!(unsent(&response, &sent(&[(0, "Hi")])).is_none());
        assert!(unsent(&response, &sent(&[(1, "Hello")])).is_none());
        assert!(unsent(&response, &sent(&[(2, "extra")])).is_none());
        assert!(unsent(&response, &sent(&[(2, "")])).is_some());
    }

    #[test]
    fn closing_chunk_carries_every_choices_rest() {
        let rest = BTreeMap::from([(0, "world"), (1, "")]);
        let chunk = closing_chunk(&two_choices(), &rest, false);
        assert_eq!(chunk["choices"][0]["delta"], json!({"content": "world"}));
        assert_eq!(chunk["choices"][1]["index"], 1);
        assert_eq!(chunk["choices"][1]["delta"], json!({"content": ""}));
        assert_eq!(chunk["choices"][1]["finish_reason"], "length");
    }

    #[test]
    fn closing_chunk_carries_only_the_rest() {
        let chunk = closing_chunk(&completion(), &BTreeMap::from([(0, "world")]), false);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["choices"][0]["delta"]["content"], "world");
        assert_eq!(chunk["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunk["usage"]["total_tokens"], 3);
    }

    #[test]
    fn closing_chunk_whole_carries_the_message() {
        let chunk = closing_chunk(&completion(), &BTreeMap::new(), true);
        assert_eq!(chunk["choices"][0]["delta"]["content"], "Hello world");
        assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant");
    }
}
