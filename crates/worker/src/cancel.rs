//! Work whose caller is gone. A gateway whose caller disconnects before the answer (and who
//! named no idempotency key or task id, so could never fetch it) publishes
//! `cancel.<task id>` on core NATS. Every worker remembers such notices for as long as a task
//! can live; a task taken after its notice fails as `cancelled` without calling a provider,
//! and one running when the notice comes has its provider call stopped. Best effort by
//! design: a notice that is missed only means the work runs, as it would have anyway.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use shared::TaskId;
use shared::names::CANCEL_SUBJECTS;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Notices kept at most; past this the oldest are forgotten (a flood of notices must not
/// grow a worker without bound).
const MAX_NOTICES: usize = 100_000;
/// Least time between two sweeps of expired notices.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Cancellations {
    /// How long a notice can matter: the longest deadline a task can have.
    keep: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Notices for tasks not running here, with when they came.
    notices: HashMap<TaskId, Instant>,
    /// Tasks running here, each with the token that stops it.
    running: HashMap<TaskId, CancellationToken>,
    /// When expired notices were last swept out.
    swept: Option<Instant>,
}

impl Cancellations {
    pub(crate) fn new(keep: Duration) -> Self {
        Self {
            keep,
            inner: Mutex::default(),
        }
    }

    /// The caller of `id` is gone: stop it if it runs here, else remember it.
    pub(crate) fn notice(&self, id: TaskId, now: Instant) {
        let mut inner = self.lock();
        if let Some(token) = inner.running.get(&id) {
            token.cancel();
            return;
        }
        if inner.notices.len() >= MAX_NOTICES {
            // Sweep expired notices at most once a second, so a flood costs no more.
            if inner
                .swept
                .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
            {
                let keep = self.keep;
                inner.notices.retain(|_, at| now.duration_since(*at) < keep);
                inner.swept = Some(now);
            }
            if inner.notices.len() >= MAX_NOTICES {
                // Still full of live notices: this one is dropped (its work just runs).
                return;
            }
        }
        inner.notices.insert(id, now);
    }

    /// Registers `id` as running here; `None` when its caller is already gone.
    pub(crate) fn start(&self, id: TaskId) -> Option<Running<'_>> {
        let mut inner = self.lock();
        if inner.notices.remove(&id).is_some() {
            return None;
        }
        let token = CancellationToken::new();
        inner.running.insert(id, token.clone());
        Some(Running {
            cancellations: self,
            id,
            token,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update is one call that leaves both maps consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records every `cancel.<task id>` notice until `stop`.
    pub(crate) async fn listen(&self, client: async_nats::Client, stop: CancellationToken) {
        let mut notices = match client.subscribe(CANCEL_SUBJECTS).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot subscribe to cancel notices; work of callers who left will run");
                return;
            }
        };
        loop {
            let msg = tokio::select! {
                msg = notices.next() => msg,
                () = stop.cancelled() => return,
            };
            let Some(msg) = msg else { return };
            let token = msg.subject.as_str().rsplit('.').next().unwrap_or_default();
            match token.parse::<TaskId>() {
                Ok(id) => {
                    debug!(task_id = %id, "the caller of a task went away");
                    self.notice(id, Instant::now());
                }
                Err(_) => debug!(subject = %msg.subject, "cancel notice without a task id"),
            }
        }
    }
}

/// A task running here; dropping it forgets the task.
#[derive(Debug)]
pub(crate) struct Running<'a> {
    cancellations: &'a Cancellations,
    id: TaskId,
    pub token: CancellationToken,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.cancellations.lock().running.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(60);

    #[test]
    fn a_task_noticed_before_it_starts_does_not_start() {
        let c = Cancellations::new(KEEP);
        let id = TaskId::new();
        c.notice(id, Instant::now());
        assert!(c.start(id).is_none());
        // The notice is used up: a redelivery of a stored result is not refused again.
        assert!(c.start(id).is_some());
    }

    #[test]
    fn a_running_task_is_stopped_and_forgotten_when_done() {
        let c = Cancellations::new(KEEP);
        let id = TaskId::new();
        let running = c.start(id).unwrap();
        let token = running.token.clone();
        c.notice(id, Instant::now());
        assert!(token.is_cancelled());
        drop(running);
        assert!(c.lock().running.is_empty());
        assert!(c.lock().notices.is_empty());
    }

    #[test]
    fn notices_are_bounded() {
        let c = Cancellations::new(KEEP);
        let now = Instant::now();
        for _ in 0..MAX_NOTICES + 10 {
            c.notice(TaskId::new(), now);
        }
        assert!(c.lock().notices.len() <= MAX_NOTICES);
        // Expired ones go first.
        let later = now + KEEP * 2;
        c.notice(TaskId::new(), later);
        assert_eq!(c.lock().notices.len(), 1);
    }
}
