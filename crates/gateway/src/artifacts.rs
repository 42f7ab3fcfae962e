//! `/v1/artifacts`: large inputs and outputs in the artifacts object store
//! ([`shared::artifacts`]). The body of a `PUT` is the artifact's bytes (any content type,
//! kept as sent), streamed into the store in chunks as it arrives, so a 64 MiB upload is never
//! held whole; a `GET` streams them back with their content type, `ETag` (the quoted SHA-256
//! hex) and `x-switchyard-sha256`.
//!
//! | request | answer |
//! |---|---|
//! | `PUT /v1/artifacts/{id}` | 201 (new) or 200 (replaced), the artifact's JSON |
//! | `POST /v1/artifacts` | 201 with an id chosen for it, and `Location` |
//! | `GET /v1/artifacts/{id}` | the bytes; 304 for a matching `If-None-Match` |
//! | `HEAD /v1/artifacts/{id}` | the headers of `GET`, no body |
//! | `GET /v1/artifacts/{id}/meta` | the artifact's JSON |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use shared::artifacts::{
    ArtifactError, ArtifactInfo, DEFAULT_CONTENT_TYPE, check_content_type, check_id,
};
use tokio_util::io::{ReaderStream, StreamReader};
use tracing::{error, warn};

use crate::error::ApiError;
use crate::path::PathParam;
use crate::state::AppState;

/// The header carrying an artifact's SHA-256 (lowercase hex), besides `ETag`.
pub const SHA256_HEADER: &str = "x-switchyard-sha256";

/// `PUT /v1/artifacts/{id}`: stores the body as the artifact, replacing one of that id.
pub async fn put(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
    req: Request,
) -> Result<Response, ApiError> {
    check_id(&id).map_err(refusal)?;
    if shared::artifacts::reserved(&id) {
        return Err(ApiError::invalid(
            "id",
            "ids starting with `step-` or `result-` are Switchyard's own (step outputs, large \
             responses); choose another",
        ));
    }
    let content_type = content_type(req.headers())?;
    let existed = st.artifacts.info(&id).await.map_err(refusal)?.is_some();
    let info = store(&st, &id, &content_type, req.into_body()).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(described(status, &info))
}

/// `POST /v1/artifacts`: stores the body under a new id (a time-ordered UUID).
pub async fn create(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let content_type = content_type(req.headers())?;
    let id = uuid::Uuid::now_v7().to_string();
    let info = store(&st, &id, &content_type, req.into_body()).await?;
    let mut response = described(StatusCode::CREATED, &info);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/artifacts/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/artifacts/{id}`: the bytes, streamed from the store. The store's reader checks
/// them against the SHA-256 as it reaches the end, and a mismatch cuts the response off
/// (a client that checks `x-switchyard-sha256` or the length sees it).
pub async fn get(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (info, object) = st
        .artifacts
        .open(&id)
        .await
        .map_err(refusal)?
        .ok_or_else(|| absent(&id))?;
    if not_modified(&headers, &info) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        set_headers(&mut response, &info);
        response.headers_mut().remove(header::CONTENT_LENGTH);
        return Ok(response);
    }
    let mut response = Body::from_stream(ReaderStream::new(object)).into_response();
    set_headers(&mut response, &info);
    Ok(response)
}

/// `HEAD /v1/artifacts/{id}`: the headers `GET` would send, from the metadata alone.
pub async fn head(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let info = info_of(&st, &id).await?;
    let mut response = StatusCode::OK.into_response();
    set_headers(&mut response, &info);
    Ok(response)
}

/// `GET /v1/artifacts/{id}/meta`: the artifact's JSON (size, SHA-256, content type, age).
pub async fn meta(
    State(st): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let info = info_of(&st, &id).await?;
    Ok(described(StatusCode::OK, &info))
}

/// The metadata of artifact `id`: 404 when there is none.
async fn info_of(st: &AppState, id: &str) -> Result<ArtifactInfo, ApiError> {
    st.artifacts
        .info(id)
        .await
        .map_err(refusal)?
        .ok_or_else(|| absent(id))
}

/// The artifact as the API shows it.
pub fn view(info: &ArtifactInfo) -> Value {
    let r = &info.reference;
    json!({
        "id": r.id,
        "object": "artifact",
        "bytes": r.bytes,
        "sha256": r.sha256,
        "content_type": r.content_type,
        "created": info.created_ms / 1000,
    })
}

/// Streams `body` into the store as artifact `id`. A client that pauses longer than
/// `gateway.body_read_timeout_ms` between two pieces of its body is cut off (408).
async fn store(
    st: &AppState,
    id: &str,
    content_type: &str,
    body: Body,
) -> Result<ArtifactInfo, ApiError> {
    let limit_ms = st.config.gateway.body_read_timeout_ms;
    let idle = Duration::from_millis(limit_ms);
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    let chunks = futures::stream::unfold(Some(body.into_data_stream()), move |data| {
        let flag = flag.clone();
        async move {
            let mut data = data?;
            match tokio::time::timeout(idle, data.next()).await {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(data))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, Ordering::Relaxed);
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the request body stalled",
                        )),
                        None,
                    ))
                }
            }
        }
    });
    let mut reader = StreamReader::new(Box::pin(chunks));
    match st.artifacts.put(id, content_type, &mut reader).await {
        Ok(info) => Ok(info),
        Err(ArtifactError::Read(_)) if stalled.load(Ordering::Relaxed) => {
            Err(ApiError::BodyTimeout { limit_ms })
        }
        Err(e) => Err(refusal(e)),
    }
}

/// The request's `Content-Type`, checked; `application/octet-stream` when it has none.
fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    };
    let text = value
        .to_str()
        .map_err(|_| refusal(ArtifactError::BadContentType))?;
    check_content_type(text).map_err(refusal)?;
    Ok(text.to_owned())
}

fn described(status: StatusCode, info: &ArtifactInfo) -> Response {
    let mut response = (status, Json(view(info))).into_response();
    if let Ok(etag) = HeaderValue::from_str(&etag(info)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

fn set_headers(response: &mut Response, info: &ArtifactInfo) {
    let r = &info.reference;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&r.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.bytes));
    if let Ok(v) = HeaderValue::from_str(&etag(info)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&r.sha256) {
        headers.insert(SHA256_HEADER, v);
    }
}

/// The strong entity tag: the SHA-256 hex, quoted (RFC 9110).
fn etag(info: &ArtifactInfo) -> String {
    format!("\"{}\"", info.reference.sha256)
}

/// Whether `If-None-Match` names the artifact's current tag (or is `*`).
fn not_modified(headers: &HeaderMap, info: &ArtifactInfo) -> bool {
    let tag = etag(info);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
}

fn absent(id: &str) -> ApiError {
    ApiError::NotFound(format!("no artifact `{id}`"))
}

/// The API error for a refused or failed artifact operation.
fn refusal(e: ArtifactError) -> ApiError {
    match e {
        ArtifactError::BadId(_) => ApiError::invalid("id", e.to_string()),
        ArtifactError::BadContentType => ApiError::invalid("content-type", e.to_string()),
        ArtifactError::TooLarge { limit } => ApiError::BodyTooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        },
        ArtifactError::Read(_) => ApiError::invalid("body", e.to_string()),
        ArtifactError::Corrupt(_) => {
            error!(error = %e, "an artifact does not match its digest");
            ApiError::Internal
        }
        ArtifactError::Store(_) => {
            warn!(error = %e, "the artifacts store failed");
            ApiError::ArtifactsUnavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::artifacts::ArtifactRef;

    fn info() -> ArtifactInfo {
        ArtifactInfo {
            reference: ArtifactRef {
                id: "a".into(),
                bytes: 3,
                sha256: "ab12".into(),
                content_type: "text/plain".into(),
            },
            created_ms: 5_000,
        }
    }

    #[test]
    fn if_none_match_compares_the_quoted_digest() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            not_modified(&h, &info())
        };
        assert!(with("\"ab12\""));
        assert!(with("\"x\", W/\"ab12\""));
        assert!(with("*"));
        assert!(!with("\"ab13\""));
        assert!(!with("ab12"));
        assert!(!not_modified(&HeaderMap::new(), &info()));
    }

    #[test]
    fn the_view_names_size_digest_type_and_age() {
        let v = view(&info());
        assert_eq!(v["object"], "artifact");
        assert_eq!(v["bytes"], 3);
        assert_eq!(v["sha256"], "ab12");
        assert_eq!(v["content_type"], "text/plain");
        assert_eq!(v["created"], 5);
    }
}
