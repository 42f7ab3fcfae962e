//! Shared context: small JSON facts, partial results and decisions that agents and clients
//! share per scope, in the `context` bucket ([`crate::names::CONTEXT_BUCKET`]). Every write is a
//! compare-and-set on the entry's revision, so a writer that read an older revision is
//! refused with the current entry ([`ContextError::Conflict`]) instead of overwriting it
//! silently. The bucket keeps [`HISTORY`] revisions per key, so who changed what and when
//! can be shown.
//!
//! Keys in the bucket are `<scope>.<key>`, both validated tokens ([`crate::names::check_token`]).
//! A scope names what the entries belong to: a workflow (its task id), a session
//! (`session-<id>`) or a team (`team-<name>`). Each entry is an [`Envelope`]: the value,
//! who wrote it and when. [`Context`] is the interface the gateway's `/v1/context` routes
//! and workers' steps use.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{NameError, TaskId, check_token};

/// Revisions kept per key: enough to show the last few writers of a contended key, few
/// enough that a history answer stays small (16 × [`MAX_VALUE_BYTES`] at most).
pub const HISTORY: i64 = 16;
/// Largest value stored, as serialized JSON: context is for facts and decisions, which
/// are small; documents and reports belong in artifacts (by reference), not in a KV entry
/// every prompt may carry.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most keys one scope listing returns: a listing is for people and steps to look at, not
/// a bulk export.
pub const MAX_LISTED_KEYS: usize = 1000;
/// How long a scope listing may take before it is given up (the consumer behind it could
/// otherwise wait for entries that expired before they were delivered).
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// The writer named when nobody says who writes.
pub const DEFAULT_WRITER: &str = "api";
/// Header on a delete marker naming who deleted the entry (a delete has no body to carry it).
const HEADER_WRITER: &str = "Switchyard-Writer";
/// Times an `If-Match: *` write retries when the entry changes between reading its revision
/// and writing at it.
const ANY_REVISION_ROUNDS: usize = 8;

/// What is stored per revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub value: Value,
    /// Who wrote it: an agent's name, or [`DEFAULT_WRITER`].
    pub by: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The task that wrote it, when a workflow step did: a step's write repeated after a
    /// crash finds its own entry and is not taken for another writer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
}

/// The current entry of a key, with its revision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Current {
    pub revision: u64,
    #[serde(flatten)]
    pub envelope: Envelope,
}

/// What a revision in a key's history did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Put,
    Delete,
}

/// One revision of a key's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Revision {
    pub revision: u64,
    pub operation: Operation,
    /// The value written; `null` for a delete.
    pub value: Value,
    /// Who wrote it; `None` when it is not known (a delete made outside this module).
    pub by: Option<String>,
    pub at_ms: u64,
}

/// A key of a scope, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub key: String,
    pub revision: u64,
    pub at_ms: u64,
}

/// The precondition of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Only if the key has no entry (never written, or deleted).
    Absent,
    /// Only if the key's entry is at this revision.
    Revision(u64),
    /// Only if the key has an entry, whatever its revision.
    Present,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("`{which}` {source}")]
    BadName {
        which: &'static str,
        source: NameError,
    },
    #[error(
        "the value is {size} bytes; context values may be at most {MAX_VALUE_BYTES} bytes \
         (large inputs and outputs will go to the artifacts store, issue 12)"
    )]
    TooLarge { size: usize },
    /// The write's precondition does not hold: `current` is the entry as it is now (`None`
    /// when the key has none).
    #[error("the entry is not at the expected revision")]
    Conflict { current: Option<Current> },
    /// `Expect::Present` on a key with no entry.
    #[error("the key has no entry")]
    Absent,
    #[error("the context bucket: {0}")]
    Store(String),
}

/// The shared context bucket.
#[derive(Debug, Clone)]
pub struct Context {
    store: kv::Store,
    js: jetstream::Context,
}

impl Context {
    pub fn new(js: jetstream::Context, store: kv::Store) -> Self {
        Self { store, js }
    }

    /// The current entry of `scope`/`key`, or `None` when it has none (never written, or
    /// deleted).
    pub async fn get(&self, scope: &str, key: &str) -> Result<Option<Current>, ContextError> {
        let subject = entry_key(scope, key)?;
        self.current(&subject).await
    }

    /// Writes `value` as `by` only if the key has no entry; the new revision.
    pub async fn create(
        &self,
        scope: &str,
        key: &str,
        value: &Value,
        by: &str,
    ) -> Result<u64, ContextError> {
        self.put(scope, key, value, by, Expect::Absent).await
    }

    /// Writes `value` as `by` only if the key is at `revision`; the new revision.
    pub async fn put_if(
        &self,
        scope: &str,
        key: &str,
        value: &Value,
        by: &str,
        revision: u64,
    ) -> Result<u64, ContextError> {
        self.put(scope, key, value, by, Expect::Revision(revision))
            .await
    }

    /// Writes `value` as `by` under `expect`; the new revision. A failed precondition is
    /// [`ContextError::Conflict`] with the current entry, or [`ContextError::Absent`].
    pub async fn put(
        &self,
        scope: &str,
        key: &str,
        value: &Value,
        by: &str,
        expect: Expect,
    ) -> Result<u64, ContextError> {
        self.write(scope, key, value, (by, None), expect).await
    }

    /// [`Context::put`] by `by` for the workflow step whose task is `task` (recorded in the
    /// entry, see [`Envelope::task`]).
    pub async fn put_for_task(
        &self,
        scope: &str,
        key: &str,
        value: &Value,
        (by, task): (&str, TaskId),
        expect: Expect,
    ) -> Result<u64, ContextError> {
        self.write(scope, key, value, (by, Some(task)), expect)
            .await
    }

    async fn write(
        &self,
        scope: &str,
        key: &str,
        value: &Value,
        (by, task): (&str, Option<TaskId>),
        expect: Expect,
    ) -> Result<u64, ContextError> {
        let subject = entry_key(scope, key)?;
        check_name("by", by)?;
        let envelope = Envelope {
            value: value.clone(),
            by: by.to_owned(),
            at_ms: crate::task::now_ms(),
            task,
        };
        let bytes = envelope_bytes(&envelope)?;
        match expect {
            Expect::Absent => match self.store.create(&subject, bytes).await {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(self.conflict(&subject).await)
                }
                Err(e) => Err(ContextError::Store(e.to_string())),
            },
            Expect::Revision(revision) => self.update(&subject, bytes, revision).await,
            Expect::Present => {
                for _ in 0..ANY_REVISION_ROUNDS {
                    let Some(current) = self.current(&subject).await? else {
                        return Err(ContextError::Absent);
                    };
                    match self.update(&subject, bytes.clone(), current.revision).await {
                        Err(ContextError::Conflict { .. }) => continue,
                        done => return done,
                    }
                }
                Err(self.conflict(&subject).await)
            }
        }
    }

    /// Deletes the key's entry as `by` (a delete marker, kept in the history), only at
    /// `revision` when one is given.
    pub async fn delete(
        &self,
        scope: &str,
        key: &str,
        by: &str,
        revision: Option<u64>,
    ) -> Result<(), ContextError> {
        let subject = entry_key(scope, key)?;
        check_name("by", by)?;
        // What `kv::Store::delete_expect_revision` publishes, plus who deleted.
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        headers.insert(HEADER_WRITER, by);
        if let Some(revision) = revision {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
        }
        let published = self
            .js
            .publish_with_headers(
                format!("{}{subject}", self.store.prefix),
                headers,
                Default::default(),
            )
            .await
            .map_err(|e| ContextError::Store(e.to_string()))?
            .await;
        match published {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(self.conflict(&subject).await)
            }
            Err(e) => Err(ContextError::Store(e.to_string())),
        }
    }

    /// The key's kept revisions, oldest first (at most [`HISTORY`]); empty when it has none.
    pub async fn history(&self, scope: &str, key: &str) -> Result<Vec<Revision>, ContextError> {
        let subject = entry_key(scope, key)?;
        let store_error = |e: &dyn std::fmt::Display| ContextError::Store(e.to_string());
        let mut entries = self
            .store
            .history(&subject)
            .await
            .map_err(|e| store_error(&e))?;
        let mut revisions = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| store_error(&e))?;
            let at_ms = created_ms(&entry);
            let revision = match entry.operation {
                kv::Operation::Put => {
                    let envelope = parse_envelope(&entry.value)?;
                    Revision {
                        revision: entry.revision,
                        operation: Operation::Put,
                        value: envelope.value,
                        by: Some(envelope.by),
                        at_ms: envelope.at_ms,
                    }
                }
                kv::Operation::Delete | kv::Operation::Purge => Revision {
                    revision: entry.revision,
                    operation: Operation::Delete,
                    value: Value::Null,
                    by: self.deleted_by(entry.revision).await,
                    at_ms,
                },
            };
            revisions.push(revision);
        }
        Ok(revisions)
    }

    /// The keys of `scope` that have an entry, in key order, at most [`MAX_LISTED_KEYS`];
    /// and whether more were left out.
    pub async fn keys(&self, scope: &str) -> Result<(Vec<Listed>, bool), ContextError> {
        check_name("scope", scope)?;
        tokio::time::timeout(LIST_TIMEOUT, self.list(scope))
            .await
            .map_err(|_| ContextError::Store("listing the scope timed out".to_owned()))?
    }

    async fn list(&self, scope: &str) -> Result<(Vec<Listed>, bool), ContextError> {
        let store_error = |e: &dyn std::fmt::Display| ContextError::Store(e.to_string());
        let prefix = format!("{}{scope}.", self.store.prefix);
        let consumer = self
            .store
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                description: Some("context scope listing".to_owned()),
                filter_subject: format!("{prefix}*"),
                headers_only: true,
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| store_error(&e))?;
        let mut listed = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok((listed, false));
        }
        let mut messages = consumer.messages().await.map_err(|e| store_error(&e))?;
        let mut truncated = false;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| store_error(&e))?;
            let info = message.info().map_err(|e| store_error(&e))?;
            let (revision, pending) = (info.stream_sequence, info.pending);
            let at_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or_default();
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            if !deleted && let Some(key) = message.subject.as_str().strip_prefix(&prefix) {
                if listed.len() == MAX_LISTED_KEYS {
                    truncated = true;
                    break;
                }
                listed.push(Listed {
                    key: key.to_owned(),
                    revision,
                    at_ms,
                });
            }
            if pending == 0 {
                break;
            }
        }
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((listed, truncated))
    }

    async fn current(&self, subject: &str) -> Result<Option<Current>, ContextError> {
        let entry = self
            .store
            .entry(subject)
            .await
            .map_err(|e| ContextError::Store(e.to_string()))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some(Current {
                revision: entry.revision,
                envelope: parse_envelope(&entry.value)?,
            })),
            _ => Ok(None),
        }
    }

    async fn update(
        &self,
        subject: &str,
        bytes: bytes::Bytes,
        revision: u64,
    ) -> Result<u64, ContextError> {
        match self.store.update(subject, bytes, revision).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(self.conflict(subject).await)
            }
            Err(e) => Err(ContextError::Store(e.to_string())),
        }
    }

    /// The conflict answer: the entry as it is now.
    async fn conflict(&self, subject: &str) -> ContextError {
        match self.current(subject).await {
            Ok(current) => ContextError::Conflict { current },
            Err(e) => e,
        }
    }

    /// Who wrote the delete marker at `revision`, from its header.
    async fn deleted_by(&self, revision: u64) -> Option<String> {
        let message = self.store.stream.get_raw_message(revision).await.ok()?;
        let by = message.headers.get(HEADER_WRITER)?.as_str();
        check_token(by).ok().map(|()| by.to_owned())
    }
}

/// `<scope>.<key>`, both checked.
pub fn entry_key(scope: &str, key: &str) -> Result<String, ContextError> {
    check_name("scope", scope)?;
    check_name("key", key)?;
    Ok(format!("{scope}.{key}"))
}

/// Checks one name (`scope`, `key`, `by`), saying which it was when it is bad.
pub fn check_name(which: &'static str, name: &str) -> Result<(), ContextError> {
    check_token(name).map_err(|source| ContextError::BadName { which, source })
}

/// Checks that `value` fits the size limit; its serialized size.
pub fn check_size(value: &Value) -> Result<usize, ContextError> {
    let size = serde_json::to_vec(value)
        .map_err(|e| ContextError::Store(e.to_string()))?
        .len();
    if size > MAX_VALUE_BYTES {
        return Err(ContextError::TooLarge { size });
    }
    Ok(size)
}

fn envelope_bytes(envelope: &Envelope) -> Result<bytes::Bytes, ContextError> {
    check_size(&envelope.value)?;
    serde_json::to_vec(envelope)
        .map(Into::into)
        .map_err(|e| ContextError::Store(e.to_string()))
}

fn parse_envelope(bytes: &[u8]) -> Result<Envelope, ContextError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ContextError::Store(format!("an entry is not a context envelope: {e}")))
}

fn created_ms(entry: &kv::Entry) -> u64 {
    u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_are_checked_tokens() {
        assert_eq!(
            entry_key("team-research", "plan").unwrap(),
            "team-research.plan"
        );
        for (scope, key, which) in [
            ("a.b", "k", "scope"),
            ("", "k", "scope"),
            ("s", "k*", "key"),
            ("s", ">", "key"),
            ("s", "K", "key"),
            ("s", "k k", "key"),
        ] {
            match entry_key(scope, key) {
                Err(ContextError::BadName { which: got, .. }) => assert_eq!(got, which),
                other => panic!("{scope:?}/{key:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn values_over_the_limit_are_refused() {
        let fits = Value::String("x".repeat(MAX_VALUE_BYTES - 2));
        assert_eq!(check_size(&fits).unwrap(), MAX_VALUE_BYTES);
        let over = Value::String("x".repeat(MAX_VALUE_BYTES - 1));
        assert!(matches!(
            check_size(&over),
            Err(ContextError::TooLarge { size }) if size == MAX_VALUE_BYTES + 1
        ));
    }
}
