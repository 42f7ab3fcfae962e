//! `switchyard memory`: follows `EVENTS` into this replica's SQLite index and answers
//! `memory.search` (a NATS micro service in queue group `memory`, so any replica answers)
//! from it. Stops taking requests on shutdown and lets the ones in hand finish.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_nats::service::{self, ServiceExt};
use futures::StreamExt;
use shared::config::Config;
use shared::memory::{
    MemoryError, QUEUE_GROUP, Query, SEARCH_SUBJECT, SERVICE_NAME, error_headers,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::follow::{self, FollowError};
use crate::index::{Index, IndexError, Retention};

/// Searches one process answers at once: beyond it, requests wait in the subscription (and
/// a caller's timeout passes) instead of piling up threads.
const MAX_IN_FLIGHT: usize = 32;
/// Largest search request: a query is a few fields.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the memory index at {path}: {source}")]
    Open { path: PathBuf, source: IndexError },
    #[error("starting the memory service: {0}")]
    Start(async_nats::Error),
    #[error("the memory service's subscription ended")]
    Ended,
    #[error("following EVENTS: {0}")]
    Follow(#[from] FollowError),
}

/// Indexes `EVENTS` into the SQLite file at `path` and serves searches on `client` until
/// `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    config: Arc<Config>,
    path: PathBuf,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let opened = open(&path).map_err(|source| ServeError::Open {
        path: path.clone(),
        source,
    })?;
    let (writer, reader) = (
        Arc::new(Mutex::new(opened.0)),
        Arc::new(Mutex::new(opened.1)),
    );
    let retention = Retention {
        max_age_ms: config.memory.retention_ms(),
        max_entries: config.memory.max_entries,
    };
    let service = client
        .service_builder()
        .description("Switchyard's episodic memory: full-text search over past work and reviews")
        .queue_group(QUEUE_GROUP)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(ServeError::Start)?;
    let mut requests = service
        .endpoint(SEARCH_SUBJECT)
        .await
        .map_err(ServeError::Start)?;
    info!(service = SERVICE_NAME, subject = SEARCH_SUBJECT, path = %path.display(), "memory serving");
    let tasks = TaskTracker::new();
    let stop_following = shutdown.child_token();
    let mut following = tasks.spawn(follow::follow(
        async_nats::jetstream::new(client.clone()),
        writer,
        retention,
        tasks.clone(),
        stop_following.clone(),
    ));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let default_limit = config.memory.limit;
    let outcome = loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        let request = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            followed = &mut following => break match followed {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Follow(e)),
                Err(e) => Err(ServeError::Follow(FollowError::Join(e))),
            },
            next = requests.next() => next,
        };
        let Some(request) = request else {
            warn!("the memory service's subscription ended");
            break Err(ServeError::Ended);
        };
        let (reader, tracker) = (reader.clone(), tasks.clone());
        tasks.spawn(async move {
            let answer = answer(&tracker, reader, &request.message.payload, default_limit).await;
            respond(&request, answer).await;
            drop(permit);
        });
    };
    // No new requests: another process in the queue group takes them.
    drop(requests);
    stop_following.cancel();
    tasks.close();
    tasks.wait().await;
    if let Err(e) = service.stop().await {
        debug!(error = %e, "stopping the memory service");
    }
    info!("memory stopped");
    outcome
}

/// The writer and a reader of the index at `path` (its directory created if need be).
fn open(path: &Path) -> Result<(Index, Index), IndexError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        warn!(error = %e, dir = %dir.display(), "could not create the memory index's directory");
    }
    let writer = Index::open(path)?;
    let reader = Index::reader(path)?;
    Ok((writer, reader))
}

/// The answer to one search request: the hits as JSON, or the error.
async fn answer(
    tracker: &TaskTracker,
    reader: Arc<Mutex<Index>>,
    payload: &[u8],
    default_limit: usize,
) -> Result<Vec<u8>, MemoryError> {
    let query = parse(payload)?;
    let limit = query.limit.unwrap_or(default_limit);
    let found = tracker
        .spawn_blocking(move || {
            let mut index = reader
                .lock()
                .map_err(|_| "the index's lock was poisoned".to_owned())?;
            index.search(&query, limit).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let answer = found.map_err(|e| {
        warn!(error = %e, "a memory search failed");
        MemoryError::Internal("the search failed".to_owned())
    })?;
    serde_json::to_vec(&answer).map_err(|e| MemoryError::Internal(e.to_string()))
}

/// A search request: a [`Query`] as JSON, checked.
fn parse(payload: &[u8]) -> Result<Query, MemoryError> {
    let invalid = |message: String| MemoryError::Invalid {
        param: "body".to_owned(),
        message,
    };
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(invalid(format!(
            "a search is at most {MAX_REQUEST_BYTES} bytes"
        )));
    }
    let query: Query = serde_json::from_slice(payload).map_err(|e| {
        invalid(format!(
            "not a search (JSON {{q, agent?, team?, scope?, kind?, limit?}}): {e}"
        ))
    })?;
    query.check()?;
    Ok(query)
}

async fn respond(request: &service::Request, answer: Result<Vec<u8>, MemoryError>) {
    let sent = match answer {
        Ok(bytes) => request.respond(Ok(bytes.into())).await,
        Err(e) => {
            let error = service::error::Error {
                status: one_line(&e.to_string()),
                code: e.code(),
            };
            request
                .respond_with_headers(Err(error), error_headers(&e))
                .await
        }
    };
    if let Err(e) = sent {
        debug!(error = %e, "could not answer a search (the caller may be gone)");
    }
}

/// A message fit for a header value: one line, printable, bounded.
fn one_line(message: &str) -> String {
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    shared::tools::clip(&line, shared::tools::MAX_ERROR_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_and_checked() {
        let param = |body: &[u8]| match parse(body) {
            Err(MemoryError::Invalid { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parse(br#"{"q": "bikes", "kind": "review"}"#).unwrap().q,
            "bikes"
        );
        assert_eq!(param(b"{not json"), "body");
        assert_eq!(param(br#"{"q": "bikes", "colour": "red"}"#), "body");
        assert_eq!(param(br#"{"q": "bikes", "agent": "A B"}"#), "agent");
        assert_eq!(param(&vec![b' '; MAX_REQUEST_BYTES + 1]), "body");
    }
}
