//! The episodic memory's contract: what a search asks (`Query`) and answers (`Hit`s), the
//! subject it is served on (`memory.search`, a NATS micro service that any replica of
//! `switchyard memory` answers), how an error travels, and [`search`], the client the gateway
//! and workers call. The index itself (SQLite, derived from `EVENTS`) is `crates/memory`;
//! `docs/memory-index.md` documents all of it.

use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::{HeaderMap, RequestErrorKind};
use serde::{Deserialize, Serialize};

use crate::names::check_token;

/// The subject of searches.
pub const SEARCH_SUBJECT: &str = "memory.search";
/// The NATS service (`$SRV.INFO.<name>`) that answers searches.
pub const SERVICE_NAME: &str = "switchyard-memory";
/// Queue group of the search endpoint: every `switchyard memory` process shares the load,
/// and any one answers (each holds the whole index).
pub const QUEUE_GROUP: &str = "memory";
/// Header of an error answer naming the query field at fault (beside the service API's own
/// `Nats-Service-Error` and `Nats-Service-Error-Code`).
pub const ERROR_PARAM_HEADER: &str = "Switchyard-Memory-Param";
/// Longest query text, in characters: a step's instruction, not a document.
pub const MAX_QUERY_CHARS: usize = 2_000;
/// Most hits one search returns.
pub const MAX_LIMIT: usize = 50;
/// Characters of a step's output, a review's feedback or a workflow's deliverable that its
/// event carries (and so the index keeps): enough to learn from, bounded so that an event
/// stays far below NATS's max payload whatever a model wrote.
pub const EVENT_TEXT_CHARS: usize = 4_000;
/// Characters of a goal or an instruction an event carries.
pub const EVENT_BRIEF_CHARS: usize = 1_000;

/// What a memory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A finished work or synthesis step: its output.
    StepOutput,
    /// A reviewer's verdict on a deliverable: its feedback.
    Review,
    /// A completed task (workflow): its goal and deliverable.
    Task,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::StepOutput, Kind::Review, Kind::Task];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::StepOutput => "step_output",
            Kind::Review => "review",
            Kind::Task => "task",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A search: the words to look for, optionally narrowed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Free text; its words are matched (any of them, best matches first).
    pub q: String,
    /// Memories of this agent: its own work, and reviews of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The context scope the memory belongs to (a workflow's is its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// At most this many hits (1 to [`MAX_LIMIT`]); the service's configured default when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Query {
    /// A search for `q` with no filter.
    pub fn text(q: impl Into<String>) -> Self {
        Self {
            q: q.into(),
            ..Self::default()
        }
    }

    /// The first problem of the query, naming its field.
    pub fn check(&self) -> Result<(), MemoryError> {
        let invalid = |param: &str, message: String| {
            Err(MemoryError::Invalid {
                param: param.to_owned(),
                message,
            })
        };
        if self.q.chars().count() > MAX_QUERY_CHARS {
            return invalid("q", format!("must be at most {MAX_QUERY_CHARS} characters"));
        }
        if words(&self.q).next().is_none() {
            return invalid("q", "must contain at least one word".to_owned());
        }
        for (param, value) in [
            ("agent", &self.agent),
            ("team", &self.team),
            ("scope", &self.scope),
        ] {
            if let Some(value) = value
                && let Err(e) = check_token(value)
            {
                return invalid(param, format!("`{param}` {e}"));
            }
        }
        if let Some(limit) = self.limit
            && !(1..=MAX_LIMIT).contains(&limit)
        {
            return invalid("limit", format!("must be between 1 and {MAX_LIMIT}"));
        }
        Ok(())
    }
}

/// The words of a query text, as the index matches them: runs of letters and digits.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// One memory found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Stable across rebuilds: `<kind>:<workflow>:<step>` (`task:<workflow>` for a task).
    pub id: String,
    pub kind: Kind,
    /// Who did it: the step's agent, the reviewer, the writer of the deliverable.
    pub agent: Option<String>,
    /// For a review: the agents whose work it judged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub about: Vec<String>,
    /// For a review: whether it approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<bool>,
    pub team: Option<String>,
    pub scope: String,
    pub workflow: Option<String>,
    pub step: Option<String>,
    /// The goal (for a task) or the instruction the work answered.
    pub brief: String,
    /// The output, the feedback, or the deliverable (cut at [`EVENT_TEXT_CHARS`]).
    pub text: String,
    /// Relevance: higher is better (SQLite FTS5's bm25, negated).
    pub score: f64,
    /// When its event was stored in `EVENTS` (Unix ms).
    pub created_ms: u64,
}

/// A search's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Best first; ties broken by the newer memory first, then by id.
    pub hits: Vec<Hit>,
    /// The last `EVENTS` sequence the answering index has applied: how fresh it is.
    pub indexed_seq: u64,
}

/// Why a search failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error("{message}")]
    Invalid { param: String, message: String },
    /// No `switchyard memory` answers.
    #[error("no memory service answers")]
    Unavailable,
    #[error("the memory service did not answer within {0} ms")]
    Timeout(u128),
    /// A fault in the service (its message, safe to log).
    #[error("the memory service failed: {0}")]
    Internal(String),
}

impl MemoryError {
    /// The service API's `Nats-Service-Error-Code` for this error (HTTP-like).
    pub fn code(&self) -> usize {
        match self {
            MemoryError::Invalid { .. } => 400,
            MemoryError::Unavailable => 503,
            MemoryError::Timeout(_) => 504,
            MemoryError::Internal(_) => 500,
        }
    }
}

/// Searches the memory over NATS (`memory.search`), waiting at most `timeout`. The query is
/// checked first, so a bad one never leaves the process.
pub async fn search(
    client: &async_nats::Client,
    query: &Query,
    timeout: Duration,
) -> Result<Answer, MemoryError> {
    query.check()?;
    let payload =
        serde_json::to_vec(query).map_err(|e| MemoryError::Internal(format!("encoding: {e}")))?;
    let request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(timeout));
    let answer = client
        .send_request(SEARCH_SUBJECT, request)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::TimedOut => MemoryError::Timeout(timeout.as_millis()),
            RequestErrorKind::NoResponders => MemoryError::Unavailable,
            RequestErrorKind::InvalidSubject
            | RequestErrorKind::MaxPayloadExceeded
            | RequestErrorKind::Other => MemoryError::Internal(e.to_string()),
        })?;
    if let Some(error) = answer.headers.as_ref().and_then(service_error) {
        return Err(error);
    }
    serde_json::from_slice(&answer.payload)
        .map_err(|e| MemoryError::Internal(format!("the answer does not decode: {e}")))
}

/// The error an answer's headers carry, if it is one.
fn service_error(headers: &HeaderMap) -> Option<MemoryError> {
    let code = headers.get(NATS_SERVICE_ERROR_CODE)?;
    let message = headers
        .get(NATS_SERVICE_ERROR)
        .map_or_else(|| "the search failed".to_owned(), |m| m.as_str().to_owned());
    Some(match code.as_str().parse::<usize>().unwrap_or(500) {
        400 => MemoryError::Invalid {
            param: headers
                .get(ERROR_PARAM_HEADER)
                .map_or_else(|| "q".to_owned(), |p| p.as_str().to_owned()),
            message,
        },
        503 => MemoryError::Unavailable,
        _ => MemoryError::Internal(message),
    })
}

/// The service error headers for `error` (the message one line, as headers need).
pub fn error_headers(error: &MemoryError) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let MemoryError::Invalid { param, .. } = error {
        headers.insert(ERROR_PARAM_HEADER, param.as_str());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked_naming_the_field() {
        let param = |q: Query| match q.check() {
            Err(MemoryError::Invalid { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert!(Query::text("bike lanes").check().is_ok());
        assert_eq!(param(Query::text("")), "q");
        assert_eq!(param(Query::text(" ?! ")), "q");
        assert_eq!(param(Query::text("x".repeat(MAX_QUERY_CHARS + 1))), "q");
        let with = |f: fn(&mut Query)| {
            let mut q = Query::text("bikes");
            f(&mut q);
            q
        };
        assert_eq!(param(with(|q| q.agent = Some("Writer".into()))), "agent");
        assert_eq!(param(with(|q| q.team = Some("a.b".into()))), "team");
        assert_eq!(param(with(|q| q.scope = Some(String::new()))), "scope");
        assert_eq!(param(with(|q| q.limit = Some(0))), "limit");
        assert_eq!(param(with(|q| q.limit = Some(MAX_LIMIT + 1))), "limit");
        assert!(with(|q| q.limit = Some(MAX_LIMIT)).check().is_ok());
    }

    #[test]
    fn kinds_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(Kind::parse("chat"), None);
    }

    #[test]
    fn words_are_runs_of_letters_and_digits() {
        let w: Vec<&str> = words("Add the \"maintenance\" costs, e-bikes 2024!").collect();
        assert_eq!(
            w,
            ["Add", "the", "maintenance", "costs", "e", "bikes", "2024"]
        );
    }
}
