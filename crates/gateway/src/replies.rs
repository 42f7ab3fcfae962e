//! One subscription per gateway for every synchronous reply. Each waiting request registers
//! its task id and gets a oneshot receiver; the subscription routes
//! `_INBOX.switchyard.<gateway id>.<task id>` to it. Several requests may wait for one task
//! (retries with one idempotency key); each gets the reply. Dropping the [`PendingReply`]
//! (the client went away) forgets that registration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::Message;
use futures::StreamExt;
use shared::TaskId;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Waiters by task id, each with its own ticket so it can leave without removing others.
type Pending = Arc<Mutex<Waiters>>;

#[derive(Debug, Default)]
struct Waiters {
    by_task: HashMap<String, Vec<(u64, oneshot::Sender<Message>)>>,
    next_ticket: u64,
}

#[derive(Debug, Clone)]
pub struct ReplyRouter {
    prefix: String,
    pending: Pending,
    stop: CancellationToken,
}

/// A registered wait for one task's reply.
#[derive(Debug)]
pub struct PendingReply {
    pub subject: String,
    key: String,
    ticket: u64,
    rx: oneshot::Receiver<Message>,
    pending: Pending,
}

impl ReplyRouter {
    /// Subscribes and starts routing on `tracker` until [`ReplyRouter::stop`]. It outlives
    /// the gateway's `shutdown` so that requests in flight during a graceful shutdown still
    /// get their replies. If the subscription ends, `shutdown` is cancelled: a gateway that
    /// cannot receive replies must not keep accepting requests.
    pub async fn start(
        client: &async_nats::Client,
        gateway_id: &str,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, async_nats::SubscribeError> {
        let prefix = format!("{}{gateway_id}.", shared::reply::GATEWAY_REPLY_PREFIX);
        let mut subscription = client.subscribe(format!("{prefix}*")).await?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        let strip = prefix.clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    msg = subscription.next() => {
                        let Some(msg) = msg else { break };
                        let Some(key) = msg.subject.as_str().strip_prefix(&strip) else { continue };
                        let waiters = lock(&routes).by_task.remove(key);
                        match waiters {
                            Some(waiters) => {
                                for (_, tx) in waiters {
                                    let _ = tx.send(msg.clone());
                                }
                            }
                            None => debug!(task_id = key, "reply for a request that is no longer waiting"),
                        }
                    }
                    () = stopped.cancelled() => break,
                }
            }
            // Dropping the senders tells every remaining waiter that no reply will come.
            lock(&routes).by_task.clear();
            if !stopped.is_cancelled() {
                warn!("reply subscription ended; shutting the gateway down");
                shutdown.cancel();
            }
        });
        Ok(Self {
            prefix,
            pending,
            stop,
        })
    }

    /// Stops routing; waiting requests get `None`.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Registers a wait for `task_id`'s reply; the returned subject goes in the task.
    pub fn register(&self, task_id: TaskId) -> PendingReply {
        let key = task_id.to_string();
        let (tx, rx) = oneshot::channel();
        let ticket = {
            let mut waiters = lock(&self.pending);
            let ticket = waiters.next_ticket;
            waiters.next_ticket = ticket.wrapping_add(1);
            waiters
                .by_task
                .entry(key.clone())
                .or_default()
                .push((ticket, tx));
            ticket
        };
        PendingReply {
            subject: format!("{}{key}", self.prefix),
            key,
            ticket,
            rx,
            pending: self.pending.clone(),
        }
    }
}

impl PendingReply {
    /// The reply, or `None` if the router stopped.
    pub async fn recv(&mut self) -> Option<Message> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        let mut waiters = lock(&self.pending);
        if let Some(list) = waiters.by_task.get_mut(&self.key) {
            list.retain(|(ticket, _)| *ticket != self.ticket);
            if list.is_empty() {
                waiters.by_task.remove(&self.key);
            }
        }
    }
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, Waiters> {
    // The map stays consistent even if a holder panicked: every operation is one call.
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}
