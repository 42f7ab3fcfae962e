//! Telling workers that a caller went away. An anonymous synchronous request (no
//! idempotency key, no task id of its own) whose client disconnects before the answer can
//! never collect it, so its work is wasted: the handler's drop publishes
//! `cancel.<task id>`, and workers drop the task or stop its provider call (worker
//! `cancel.rs`). Named requests are left to run: their caller can come back for the answer.

use shared::TaskId;
use shared::names::cancel_subject;
use tracing::debug;

use crate::state::AppState;

/// Armed while a caller waits; dropped armed, it sends the cancel notice.
#[derive(Debug)]
pub struct CallerGone {
    st: AppState,
    task_id: TaskId,
    armed: bool,
}

impl CallerGone {
    /// A guard for `task_id`, armed only when nobody else could collect the answer.
    pub fn new(st: &AppState, task_id: TaskId, anonymous: bool) -> Self {
        Self {
            st: st.clone(),
            task_id,
            armed: anonymous,
        }
    }

    /// The caller got its answer.
    pub fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for CallerGone {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = self.st.client.clone();
        let task_id = self.task_id;
        // Drop cannot wait; the tracker lets shutdown wait for the notice instead.
        self.st.background.spawn(async move {
            if let Err(e) = client
                .publish(cancel_subject(task_id), bytes::Bytes::new())
                .await
            {
                debug!(error = %e, %task_id, "could not send a cancel notice");
            }
        });
    }
}
