//! `GET /v1/tasks?status=&limit=`: the newest workflows, newest first, each as a summary
//! (status, goal, team, step counts, usage), read from the `workflows` bucket.
//!
//! What one listing reads, whatever the bucket holds:
//! 1. one headers-only pass over the bucket's latest entries: a key, a sequence and the time
//!    it was last written, no state; the [`MAX_KEYS`] most recently written are kept;
//! 2. states, most recently written first, at most [`MAX_STATES`], and only until no unread
//!    workflow can belong on the page: a workflow was created before it was last written, so
//!    once the page is full and the next entry was last written before the page's oldest
//!    creation (less [`CLOCK_SLACK_MS`]), nothing left can be newer. Without a filter that
//!    is usually `limit` states and a few more (those still changing).
//!
//! Each state read is summarized at once and dropped, so memory holds at most `limit`
//! summaries besides the keys.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use agents::workflow::{Failure, Status, StepStatus, Usage, Workflow};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::kv;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use shared::TaskId;
use tracing::warn;

use crate::error::ApiError;
use crate::state::AppState;

/// Tasks a listing shows unless `limit` says otherwise: a screenful.
pub const DEFAULT_LIMIT: usize = 20;
/// Most tasks one listing shows: each is a state read from the bucket.
pub const MAX_LIMIT: usize = 100;
/// Most recently written entries a listing considers. Keys cost about a hundred bytes each
/// in memory; older workflows than these are not listed (`has_more` says so).
pub const MAX_KEYS: usize = 10_000;
/// Most states one listing reads. A state carries every step's output (tens of KiB), so
/// this bounds a listing's reads (a few MiB); a rare `status` may be missed past it.
pub const MAX_STATES: usize = 500;
/// Allowance for the gateway's clock (which stamps `created_ms`) running ahead of the NATS
/// server's (which stamps when an entry was written) when deciding nothing unread is newer.
const CLOCK_SLACK_MS: u64 = 5_000;
/// States read at once: round trips overlap, and at most this many are read past the end.
const READ_AHEAD: usize = 8;
/// How long the pass over the keys waits for the next one before taking what it has: an
/// entry that expires under it is never delivered, and the pass must not wait for it.
const KEYS_IDLE: Duration = Duration::from_secs(2);
/// Longest goal in a summary, in characters; the whole goal is in `GET /v1/tasks/{id}`.
pub const GOAL_PREVIEW_CHARS: usize = 120;

/// One workflow in a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub id: TaskId,
    pub object: &'static str,
    pub status: Status,
    /// The goal on one line, cut at [`GOAL_PREVIEW_CHARS`] with `…`.
    pub goal: String,
    pub team: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub steps: StepCount,
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepCount {
    /// Steps completed.
    pub done: usize,
    /// Steps the workflow has so far (a plan, synthesis and review add theirs as it goes).
    pub total: usize,
}

impl Summary {
    pub fn of(wf: &Workflow) -> Self {
        Self {
            id: wf.id,
            object: "task",
            status: wf.status,
            goal: preview(&wf.spec.goal),
            team: wf.spec.team.clone(),
            created_ms: wf.created_ms,
            updated_ms: wf.updated_ms,
            steps: StepCount {
                done: wf
                    .steps
                    .iter()
                    .filter(|s| s.status == StepStatus::Completed)
                    .count(),
                total: wf.steps.len(),
            },
            usage: wf.usage,
            error: wf.error.clone(),
        }
    }
}

/// `goal` on one line (runs of whitespace and control characters become one space), cut at
/// [`GOAL_PREVIEW_CHARS`] characters with `…` when longer.
pub fn preview(goal: &str) -> String {
    let words: Vec<&str> = goal
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let line = words.join(" ");
    if line.chars().count() <= GOAL_PREVIEW_CHARS {
        return line;
    }
    let mut cut: String = line.chars().take(GOAL_PREVIEW_CHARS - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// The newest `limit` summaries offered so far, newest first.
#[derive(Debug)]
struct Newest {
    limit: usize,
    page: Vec<Summary>,
    /// More matched than fit.
    overflowed: bool,
}

impl Newest {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            page: Vec::with_capacity(limit + 1),
            overflowed: false,
        }
    }

    /// Newest first by creation; ties by id, so every replica lists the same order.
    fn offer(&mut self, summary: Summary) {
        let key = |s: &Summary| std::cmp::Reverse((s.created_ms, s.id));
        let at = self.page.partition_point(|s| key(s) < key(&summary));
        self.page.insert(at, summary);
        if self.page.len() > self.limit {
            self.page.pop();
            self.overflowed = true;
        }
    }

    /// Whether no workflow last written at `written_ms` (or earlier) can join the page.
    fn settled(&self, written_ms: u64) -> bool {
        self.page.len() == self.limit
            && self
                .page
                .last()
                .is_some_and(|oldest| written_ms.saturating_add(CLOCK_SLACK_MS) < oldest.created_ms)
    }
}

/// One entry of the bucket as its last write left it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    key: String,
    /// When the NATS server stored it (its clock), in Unix milliseconds.
    written_ms: u64,
}

/// `GET /v1/tasks`: the newest workflows (`limit`, default 20, at most 100), those with
/// `status` only when given. `has_more` is true when older workflows were left unread or
/// did not fit (with `status`, they may not match it).
pub async fn list(
    State(st): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let (status, limit) = read_query(&pairs)?;
    let (entries, keys_dropped) = latest_entries(&st.workflows).await.map_err(|e| {
        warn!(error = %e, "could not list workflows");
        ApiError::Unavailable
    })?;
    let mut newest = Newest::new(limit);
    let mut left_unread = false;
    let mut read = 0;
    let mut seen = HashSet::new();
    let mut states = futures::stream::iter(entries.into_iter().rev())
        .map(|written| {
            let store = st.workflows.clone();
            async move {
                let state = store.get(&written.key).await;
                (written, state)
            }
        })
        .buffered(READ_AHEAD);
    while let Some((written, state)) = states.next().await {
        if !seen.insert(written.key.clone()) {
            continue;
        }
        if newest.settled(written.written_ms) || read == MAX_STATES {
            left_unread = true;
            break;
        }
        read += 1;
        let bytes = match state {
            Ok(Some(bytes)) => bytes,
            // Expired since the keys were read.
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "could not read a workflow state");
                return Err(ApiError::Unavailable);
            }
        };
        match serde_json::from_slice::<Workflow>(&bytes) {
            Ok(wf) if status.is_none_or(|s| s == wf.status) => newest.offer(Summary::of(&wf)),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, key = %written.key, "undecodable workflow state; not listed")
            }
        }
    }
    let has_more = newest.overflowed || left_unread || keys_dropped;
    Ok(Json(json!({
        "object": "list",
        "data": newest.page,
        "has_more": has_more,
    })))
}

/// `status` and `limit` from the query, each checked; any other parameter is refused.
fn read_query(pairs: &[(String, String)]) -> Result<(Option<Status>, usize), ApiError> {
    let mut status = None;
    let mut limit = None;
    for (name, value) in pairs {
        let slot_taken = match name.as_str() {
            "status" => status.replace(parse_status(value)?).is_some(),
            "limit" => limit.replace(parse_limit(value)?).is_some(),
            _ => {
                return Err(ApiError::invalid(
                    name.clone(),
                    format!("unknown query parameter `{name}`: `status` and `limit` are known"),
                ));
            }
        };
        if slot_taken {
            return Err(ApiError::invalid(
                name.clone(),
                format!("`{name}` is given more than once"),
            ));
        }
    }
    Ok((status, limit.unwrap_or(DEFAULT_LIMIT)))
}

fn parse_status(value: &str) -> Result<Status, ApiError> {
    Status::ALL
        .into_iter()
        .find(|s| s.as_str() == value)
        .ok_or_else(|| {
            let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(
                "status",
                format!("status must be one of {}", known.join(", ")),
            )
        })
}

fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|l| (1..=MAX_LIMIT).contains(l))
        .ok_or_else(|| {
            ApiError::invalid(
                "limit",
                format!("limit must be a number from 1 to {MAX_LIMIT}"),
            )
        })
}

/// The pass over the bucket's keys failed (NATS unreachable, the consumer lost).
#[derive(Debug, thiserror::Error)]
#[error("reading the workflows bucket's keys: {0}")]
struct KeysError(String);

impl KeysError {
    fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// The bucket's latest entries, oldest written first, at most [`MAX_KEYS`] (the most
/// recently written), and whether older ones were left out. Headers only: no state is read.
async fn latest_entries(store: &kv::Store) -> Result<(VecDeque<Written>, bool), KeysError> {
    let consumer = store
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}>", store.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(KeysError::new)?;
    let mut entries = VecDeque::new();
    let mut dropped = false;
    if consumer.cached_info().num_pending == 0 {
        return Ok((entries, dropped));
    }
    let mut messages = consumer.messages().await.map_err(KeysError::new)?;
    while let Ok(Some(message)) = tokio::time::timeout(KEYS_IDLE, messages.next()).await {
        let message = message.map_err(KeysError::new)?;
        let info = message.info().map_err(KeysError::new)?;
        let pending = info.pending;
        let written_ms =
            u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let operation = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .map(|v| v.as_str().to_owned());
        // A deleted or purged key leaves a marker as its last entry: nothing to list.
        let live = operation.is_none_or(|op| op == "PUT");
        if let (true, Some(key)) = (live, message.subject.strip_prefix(store.prefix.as_str())) {
            entries.push_back(Written {
                key: key.to_owned(),
                written_ms,
            });
            if entries.len() > MAX_KEYS {
                entries.pop_front();
                dropped = true;
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok((entries, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(created_ms: u64) -> Summary {
        Summary {
            id: TaskId::new(),
            object: "task",
            status: Status::Completed,
            goal: String::new(),
            team: None,
            created_ms,
            updated_ms: created_ms,
            steps: StepCount { done: 0, total: 0 },
            usage: Usage::default(),
            error: None,
        }
    }

    #[test]
    fn the_page_keeps_the_newest_by_creation_whatever_the_order_offered() {
        let mut newest = Newest::new(3);
        for created in [50_000, 10_000, 90_000, 70_000, 30_000] {
            newest.offer(summary(created));
        }
        let order: Vec<u64> = newest.page.iter().map(|s| s.created_ms).collect();
        assert_eq!(order, [90_000, 70_000, 50_000]);
        assert!(newest.overflowed);
        let mut roomy = Newest::new(10);
        roomy.offer(summary(1));
        assert!(!roomy.overflowed);
    }

    #[test]
    fn reading_stops_once_nothing_older_written_can_be_newer_created() {
        let mut newest = Newest::new(2);
        newest.offer(summary(100_000));
        // Not full: anything may still join.
        assert!(!newest.settled(0));
        newest.offer(summary(60_000));
        // Written at 60 s or later: it may have been created after the page's oldest.
        assert!(!newest.settled(60_000));
        // Within the clock slack: still read.
        assert!(!newest.settled(60_000 - CLOCK_SLACK_MS));
        // Written before the oldest on the page was created (with slack): settled.
        assert!(newest.settled(60_000 - CLOCK_SLACK_MS - 1));
    }

    #[test]
    fn goals_are_previewed_on_one_line_and_cut_by_characters() {
        assert_eq!(preview("  Plan\na\t\ttrip\u{1b}[2J "), "Plan a trip [2J");
        let long = "é".repeat(GOAL_PREVIEW_CHARS + 5);
        let cut = preview(&long);
        assert_eq!(cut.chars().count(), GOAL_PREVIEW_CHARS);
        assert!(cut.ends_with('…'));
        let exact = "x".repeat(GOAL_PREVIEW_CHARS);
        assert_eq!(preview(&exact), exact);
    }

    #[test]
    fn the_query_is_checked_naming_the_parameter() {
        let q = |pairs: &[(&str, &str)]| {
            read_query(
                &pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(q(&[]).unwrap(), (None, DEFAULT_LIMIT));
        assert_eq!(
            q(&[("status", "awaiting_approval"), ("limit", "100")]).unwrap(),
            (Some(Status::AwaitingApproval), 100)
        );
        let param = |pairs: &[(&str, &str)]| match q(pairs).unwrap_err() {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(&[("status", "done")]), "status");
        assert_eq!(param(&[("status", "Completed")]), "status");
        assert_eq!(param(&[("limit", "0")]), "limit");
        assert_eq!(param(&[("limit", "101")]), "limit");
        assert_eq!(param(&[("limit", "ten")]), "limit");
        assert_eq!(param(&[("limit", "1"), ("limit", "2")]), "limit");
        assert_eq!(param(&[("after", "x")]), "after");
    }
}
