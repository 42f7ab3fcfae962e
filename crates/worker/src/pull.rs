//! Pulling tasks without hoarding them. Each capability has one semaphore of `concurrency`
//! slots and one fetcher per consumer of its queue (one per priority; an agent's queue has
//! one over all three). A fetcher first takes every free slot and fills them from the
//! consumers in priority order with non-blocking fetches (high, then normal, then low);
//! only when all are empty does it keep one slot and long-poll its own consumer. A
//! long-polled message says how many wait behind it; when none do, the fetcher long-polls
//! again at once (the other consumers have fetchers of their own), instead of asking all
//! three first: three round trips per task saved at moderate load.
//! So a worker never holds more messages than it has free slots, backlogs drain in priority
//! order, and an idle worker still picks up a new task as soon as it is published.
//!
//! High first, yet low never starved: every fourth drain offers its first slot to a lower
//! priority (normal and low in turn), so while high stays saturated, normal and low each
//! still get at least one of every eight drains when they have work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use shared::Priority;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::deps::Deps;
use crate::process::process;

/// How long an idle long-poll waits on the server. Bounds how long draining waits for the
/// last pull to return (a pull is never abandoned, so no message is stranded in it).
const LONG_POLL: Duration = Duration::from_secs(2);
/// Long-poll for workers with fewer slots than priorities: an idle long-poll holds a slot,
/// so the other priorities are only looked at when it ends; keep that wait short.
const SHORT_LONG_POLL: Duration = Duration::from_millis(250);
/// Longest a non-blocking fetch may take, e.g. when the server parks it because the
/// capability is at its `max_ack_pending`.
const FETCH_LIMIT: Duration = Duration::from_secs(5);
/// Most messages taken in one non-blocking fetch.
const MAX_BATCH: usize = 64;
/// Pause after a failed fetch (NATS unreachable, consumer missing) before trying again.
const FETCH_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The consumers of one capability's queue, highest priority first, and how many drains
/// they have had (which decides when a lower priority goes first).
#[derive(Debug)]
pub(crate) struct Queues {
    pub consumers: Vec<Queue>,
    pub drains: AtomicU64,
}

/// One consumer and the priorities it serves.
#[derive(Debug)]
pub(crate) struct Queue {
    pub priorities: &'static str,
    pub consumer: PullConsumer,
}

/// How often a drain offers its first slot to a lower priority.
const PROMOTE_EVERY: u64 = 4;

/// The consumer drain number `n` asks first, if not the highest: every
/// `PROMOTE_EVERY`th drain takes the lower ones in turn.
fn promoted(n: u64, consumers: usize) -> Option<usize> {
    let lower = u64::try_from(consumers.checked_sub(1)?).ok()?;
    if lower == 0 || n % PROMOTE_EVERY != PROMOTE_EVERY - 1 {
        return None;
    }
    usize::try_from(1 + (n / PROMOTE_EVERY) % lower).ok()
}

/// Everything one fetcher shares with its siblings.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    pub queues: Arc<Queues>,
    pub slots: Arc<Semaphore>,
    pub deps: Arc<Deps>,
    pub handlers: TaskTracker,
    pub idle_wait: Duration,
}

/// The idle long-poll for a worker with `concurrency` slots per capability.
pub(crate) fn long_poll_for(concurrency: usize) -> Duration {
    if concurrency >= Priority::ALL.len() {
        LONG_POLL
    } else {
        SHORT_LONG_POLL
    }
}

impl Fetcher {
    /// Runs until `shutdown`, long-polling consumer `own` when idle; returns once its last
    /// pull has completed.
    pub async fn run(self, own: usize, shutdown: CancellationToken) {
        // Whether the queues may hold a backlog worth draining in priority order. After a
        // long-poll message that says its queue is now empty, the next pull is another
        // long-poll: the other queues have fetchers of their own, and draining would only
        // ask three empty queues (three round trips per task).
        let mut backlog = true;
        while !shutdown.is_cancelled() {
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = shutdown.cancelled() => return,
            };
            let one = if backlog {
                let mut permits = permit;
                let extra = self.slots.available_permits().min(MAX_BATCH - 1);
                if let Some(more) = u32::try_from(extra)
                    .ok()
                    .filter(|n| *n > 0)
                    .and_then(|n| self.slots.clone().try_acquire_many_owned(n).ok())
                {
                    permits.merge(more);
                }
                match self.drain(permits).await {
                    Drained::Dispatched => continue,
                    Drained::Failed => {
                        tokio::time::sleep(FETCH_RETRY_PAUSE).await;
                        continue;
                    }
                    Drained::Empty(mut left) => {
                        let one = left.split(1);
                        drop(left);
                        match one {
                            Some(one) => one,
                            None => continue,
                        }
                    }
                }
            } else {
                permit
            };
            backlog = match self.long_poll(own, one).await {
                Polled::Failed => {
                    tokio::time::sleep(FETCH_RETRY_PAUSE).await;
                    true
                }
                // Nothing came: look at every queue again before the next long-poll.
                Polled::Nothing => true,
                Polled::Got { more_queued } => more_queued,
            };
        }
    }

    /// Fills `permits` from the consumers in priority order without waiting, a lower
    /// priority first for one slot when its turn has come.
    async fn drain(&self, mut permits: OwnedSemaphorePermit) -> Drained {
        let consumers = &self.queues.consumers;
        let n = self.queues.drains.fetch_add(1, Ordering::Relaxed);
        let first = promoted(n, consumers.len());
        let order = first
            .map(|i| (i, 1))
            .into_iter()
            .chain((0..consumers.len()).map(|i| (i, usize::MAX)));
        let mut dispatched = false;
        for (index, most) in order {
            let want = permits.num_permits().min(most);
            if want == 0 {
                if permits.num_permits() == 0 {
                    break;
                }
                continue;
            }
            let Some(Queue {
                priorities,
                consumer,
            }) = consumers.get(index)
            else {
                continue;
            };
            // No `expires`: with it the server waits that long when the queue is empty
            // instead of answering "no messages" at once. Without it, a fetch the server
            // parks (the capability is at max_ack_pending) is bounded here instead; a message
            // that arrives after that is redelivered once ack_wait passes.
            let fetch = async {
                match consumer.fetch().max_messages(want).messages().await {
                    Ok(batch) => self.dispatch_all(batch, &mut permits, |_| {}).await,
                    Err(e) => {
                        warn!(priority = priorities, error = %e, "fetch failed");
                        Pulled::Failed
                    }
                }
            };
            let pulled = tokio::time::timeout(FETCH_LIMIT, fetch)
                .await
                .unwrap_or(Pulled::Failed);
            match pulled {
                Pulled::Failed => return Drained::Failed,
                Pulled::Dispatched => dispatched = true,
                Pulled::Nothing => {}
            }
        }
        if dispatched {
            Drained::Dispatched
        } else {
            Drained::Empty(permits)
        }
    }

    /// Waits up to `idle_wait` for one message on consumer `own`.
    async fn long_poll(&self, own: usize, mut permit: OwnedSemaphorePermit) -> Polled {
        let Some(Queue {
            priorities,
            consumer,
        }) = self.queues.consumers.get(own)
        else {
            return Polled::Nothing;
        };
        let batch = match consumer
            .batch()
            .max_messages(1)
            .expires(self.idle_wait)
            .messages()
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                warn!(priority = priorities, error = %e, "pull failed");
                return Polled::Failed;
            }
        };
        let mut more_queued = false;
        let pulled = self
            .dispatch_all(batch, &mut permit, |msg| {
                // JetStream tells each delivered message how many still wait behind it.
                more_queued |= msg.info().is_ok_and(|i| i.pending > 0);
            })
            .await;
        match pulled {
            Pulled::Dispatched => Polled::Got { more_queued },
            Pulled::Nothing => Polled::Nothing,
            Pulled::Failed => Polled::Failed,
        }
    }

    /// Hands every message of `batch` to a handler with one of `permits`' slots. A pull
    /// that ends with an error status (no responders, leadership change, too many waiting
    /// pulls) is reported as failed, so the caller pauses instead of spinning.
    async fn dispatch_all(
        &self,
        mut batch: async_nats::jetstream::consumer::pull::Batch,
        permits: &mut OwnedSemaphorePermit,
        mut seen: impl FnMut(&async_nats::jetstream::Message),
    ) -> Pulled {
        let mut outcome = Pulled::Nothing;
        while let Some(next) = batch.next().await {
            match next {
                Ok(msg) => {
                    seen(&msg);
                    let Some(slot) = permits.split(1) else {
                        // Cannot happen: a batch never exceeds the slots it asked for. The
                        // message is not acked, so JetStream redelivers it.
                        warn!("received more messages than requested");
                        break;
                    };
                    let deps = self.deps.clone();
                    self.handlers.spawn(async move {
                        process(msg, &deps).await;
                        drop(slot);
                    });
                    outcome = Pulled::Dispatched;
                }
                Err(e) => {
                    warn!(error = %e, "pull ended with an error");
                    if outcome == Pulled::Nothing {
                        outcome = Pulled::Failed;
                    }
                }
            }
        }
        outcome
    }
}

/// What one pull request yielded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pulled {
    Dispatched,
    Nothing,
    Failed,
}

/// What a long-poll yielded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    /// A message went to a handler; `more_queued` if its queue holds more.
    Got {
        more_queued: bool,
    },
    Nothing,
    Failed,
}

enum Drained {
    /// At least one message went to a handler.
    Dispatched,
    /// Every queue was empty; the slots come back.
    Empty(OwnedSemaphorePermit),
    /// A fetch failed.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fourth_drain_serves_a_lower_priority_first_in_turn() {
        let firsts: Vec<_> = (0..16).map(|n| promoted(n, 3)).collect();
        let promoted_to: Vec<_> = firsts.iter().flatten().copied().collect();
        assert_eq!(promoted_to, [1, 2, 1, 2], "{firsts:?}");
        assert_eq!(firsts.iter().filter(|f| f.is_none()).count(), 12);
    }

    #[test]
    fn one_consumer_is_never_promoted() {
        assert!((0..16).all(|n| promoted(n, 1).is_none()));
        assert!((0..16).all(|n| promoted(n, 0).is_none()));
    }
}
