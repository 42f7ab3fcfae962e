//! Following `EVENTS` into the index: an ordered consumer on `events.workflow.>` from the
//! sequence after the last one applied (from the start for a new file), batches of what is
//! pending applied in one transaction each, and pruning once a minute besides. The stream is
//! the truth: an index whose stream was recreated (another creation time, or a last sequence
//! beyond the stream's) is emptied and rebuilt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use shared::names::EVENTS_STREAM;
use shared::task::now_ms;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::index::{Event, Index, IndexError, Retention};

/// The events memories come from.
const SUBJECTS: &str = "events.workflow.>";
/// Most events applied in one transaction: large enough for a rebuild to go fast, small
/// enough that a search never waits long for the writer.
const MAX_BATCH: usize = 512;
/// How often the index is pruned even when no event comes (age passes without events).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// First wait after NATS failed us; doubles up to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("the index's lock was poisoned by a panic")]
    Poisoned,
    #[error("a blocking index task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The index, shared by the follower (writes) and nothing else; searches have their own
/// connection.
pub type Writer = Arc<Mutex<Index>>;

/// Runs `f` on the index on a blocking thread of `tracker`.
pub async fn with_index<T: Send + 'static>(
    tracker: &TaskTracker,
    index: &Writer,
    f: impl FnOnce(&mut Index) -> Result<T, IndexError> + Send + 'static,
) -> Result<T, FollowError> {
    let index = index.clone();
    tracker
        .spawn_blocking(move || {
            let mut guard = index.lock().map_err(|_| FollowError::Poisoned)?;
            f(&mut guard).map_err(FollowError::from)
        })
        .await?
}

/// Follows `EVENTS` into `index` until `shutdown`. Returns only on shutdown, or with an
/// error of the index itself (NATS trouble is waited out).
pub async fn follow(
    js: jetstream::Context,
    index: Writer,
    retention: Retention,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), FollowError> {
    let mut attempt = 0u32;
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            outcome = follow_once(&js, &index, retention, &tracker, &shutdown) => outcome,
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(Broken::Index(e)) => return Err(e),
            Err(Broken::Nats(e)) => {
                let delay =
                    shared::backoff::full_jitter(RETRY_BASE, RETRY_CAP, attempt).max(RETRY_BASE);
                warn!(error = %e, retry_in_ms = delay.as_millis(), "cannot follow EVENTS; retrying");
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

enum Broken {
    Nats(String),
    Index(FollowError),
}

impl From<FollowError> for Broken {
    fn from(e: FollowError) -> Self {
        Broken::Index(e)
    }
}

/// One consumer's life, until shutdown stops it (`Ok`) or NATS or the index fails.
async fn follow_once(
    js: &jetstream::Context,
    index: &Writer,
    retention: Retention,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), Broken> {
    let nats = |e: &dyn std::fmt::Display| Broken::Nats(e.to_string());
    let mut stream = js.get_stream(EVENTS_STREAM).await.map_err(|e| nats(&e))?;
    let info = stream.info().await.map_err(|e| nats(&e))?;
    let stream_id = i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(i64::MAX);
    let last_in_stream = info.state.last_sequence;
    let (start, memories) = with_index(tracker, index, move |index| {
        let (known, last) = (index.stream_id()?, index.last_seq()?);
        if known != stream_id || last > last_in_stream {
            if known != 0 || last != 0 {
                info!(
                    last_seq = last,
                    "EVENTS was recreated: rebuilding the memory index"
                );
            }
            index.reset(stream_id)?;
            return Ok((0, 0));
        }
        Ok((last, index.count()?))
    })
    .await?;
    info!(
        from_seq = start + 1,
        memories, "following EVENTS into the memory index"
    );
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: SUBJECTS.to_owned(),
            deliver_policy: if start == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: start + 1,
                }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| nats(&e))?;
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = prune.tick() => {
                let pruned = with_index(tracker, index, move |i| i.prune(retention, now_ms())).await?;
                if pruned > 0 {
                    debug!(pruned, "memories pruned");
                }
                continue;
            }
            next = messages.next() => next,
        };
        let Some(first) = first else {
            return Err(Broken::Nats("the consumer's messages ended".to_owned()));
        };
        let mut batch = Vec::new();
        let mut message = first.map_err(|e| nats(&e))?;
        loop {
            let pending = {
                let info = message.info().map_err(|e| nats(&e))?;
                batch.push(Event {
                    seq: info.stream_sequence,
                    stored_ms: u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                        .unwrap_or(0),
                    payload: message.payload.to_vec(),
                });
                info.pending
            };
            if pending == 0 || batch.len() >= MAX_BATCH {
                break;
            }
            message = match messages.next().await {
                Some(next) => next.map_err(|e| nats(&e))?,
                None => break,
            };
        }
        let count = batch.len();
        let added = with_index(tracker, index, move |i| {
            i.apply(&batch, retention, now_ms())
        })
        .await?;
        debug!(events = count, added, "events applied to the memory index");
    }
}
