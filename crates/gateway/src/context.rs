//! `/v1/context/{scope}/{key}`: shared context over HTTP ([`shared::context`]). The body of
//! a `GET` and a `PUT` is the JSON value itself; its revision travels in `ETag` (quoted,
//! RFC 9110) and a write names the revision it read in `If-Match`, so a writer that read an
//! older revision gets 409 with the current entry instead of overwriting it.
//!
//! | request | precondition | success | precondition fails |
//! |---|---|---|---|
//! | `PUT` without `If-Match` | the key has no entry | 201 | 409 + current |
//! | `PUT` `If-Match: "<rev>"` | the entry is at `rev` | 200 | 409 + current |
//! | `PUT` `If-Match: *` | the key has an entry | 200 | 412 |
//! | `DELETE` without `If-Match` | the key has an entry | 204 | 404 |
//! | `DELETE` `If-Match: "<rev>"` | the entry is at `rev` | 204 | 409 + current |

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shared::context::{ContextError, Current, DEFAULT_WRITER, Expect, check_name};
use shared::limits::{MAX_JSON_DEPTH, json_depth};
use tracing::warn;

use crate::body;
use crate::error::{ApiError, error_body};
use crate::headers;
use crate::path::PathParam;
use crate::state::AppState;

/// `GET /v1/context/{scope}/{key}`: the value, its revision in `ETag`, its writer in
/// `x-switchyard-writer`.
pub async fn get(
    State(st): State<AppState>,
    PathParam((scope, key)): PathParam<(String, String)>,
) -> Result<Response, ApiError> {
    let current = st
        .context
        .get(&scope, &key)
        .await
        .map_err(refusal)?
        .ok_or_else(|| absent(&scope, &key))?;
    let mut response = Json(&current.envelope.value).into_response();
    set_etag(&mut response, current.revision);
    if let Ok(by) = HeaderValue::from_str(&current.envelope.by) {
        response.headers_mut().insert(headers::WRITER, by);
    }
    Ok(response)
}

/// `PUT /v1/context/{scope}/{key}`: writes the body (any JSON value) under the `If-Match`
/// precondition (see the module's table).
pub async fn put(
    State(st): State<AppState>,
    PathParam((scope, key)): PathParam<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let request_headers = req.headers().clone();
    let expect = if_match(&request_headers)?.unwrap_or(Expect::Absent);
    let by = writer(&request_headers)?;
    // Names first: a bad path is the caller's first problem, whatever the body.
    shared::context::entry_key(&scope, &key).map_err(refusal)?;
    let value = json_value(&body::read(req, &st).await?)?;
    let revision = match st.context.put(&scope, &key, &value, &by, expect).await {
        Ok(revision) => revision,
        Err(e) => return Ok(failed(e)),
    };
    let status = if expect == Expect::Absent {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "object": "context.entry",
        "scope": scope,
        "key": key,
        "revision": revision,
        "by": by,
    });
    let mut response = (status, Json(body)).into_response();
    set_etag(&mut response, revision);
    Ok(response)
}

/// `DELETE /v1/context/{scope}/{key}`: 204; with `If-Match: "<rev>"` only at that revision.
pub async fn delete(
    State(st): State<AppState>,
    PathParam((scope, key)): PathParam<(String, String)>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let by = writer(&request_headers)?;
    let revision = match if_match(&request_headers)? {
        Some(Expect::Revision(revision)) => revision,
        // Deleting an entry that is there, at whichever revision it is: read it, then
        // delete at that revision, so a concurrent write is a 409, not lost unseen.
        None | Some(Expect::Present) => {
            st.context
                .get(&scope, &key)
                .await
                .map_err(refusal)?
                .ok_or_else(|| absent(&scope, &key))?
                .revision
        }
        Some(Expect::Absent) => {
            return Err(ApiError::invalid("if-match", "If-Match names no revision"));
        }
    };
    match st.context.delete(&scope, &key, &by, Some(revision)).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Ok(failed(e)),
    }
}

/// `GET /v1/context/{scope}/{key}/history`: the kept revisions, oldest first.
pub async fn history(
    State(st): State<AppState>,
    PathParam((scope, key)): PathParam<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let revisions = st.context.history(&scope, &key).await.map_err(refusal)?;
    if revisions.is_empty() {
        return Err(absent(&scope, &key));
    }
    Ok(Json(json!({
        "object": "list",
        "scope": scope,
        "key": key,
        "data": revisions,
    })))
}

/// `GET /v1/context/{scope}`: the scope's keys that have an entry, in key order.
pub async fn list(
    State(st): State<AppState>,
    PathParam(scope): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let (keys, truncated) = st.context.keys(&scope).await.map_err(refusal)?;
    Ok(Json(json!({
        "object": "list",
        "scope": scope,
        "data": keys,
        "truncated": truncated,
    })))
}

/// The precondition `If-Match` states: `*`, or one strong entity tag (`"<revision>"`, the
/// quotes optional). `None` without the header.
fn if_match(request_headers: &HeaderMap) -> Result<Option<Expect>, ApiError> {
    let Some(value) = request_headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid(
            "if-match",
            "If-Match must be * or one revision as an entity tag, such as \"42\"",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(Some(Expect::Present));
    }
    let tag = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let revision: u64 = tag.parse().map_err(|_| bad())?;
    if revision == 0 {
        return Err(bad());
    }
    Ok(Some(Expect::Revision(revision)))
}

/// Who writes: `x-switchyard-writer`, a name token, or `api`.
fn writer(request_headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = request_headers.get(headers::WRITER) else {
        return Ok(DEFAULT_WRITER.to_owned());
    };
    let name = value.to_str().map_err(|_| {
        ApiError::invalid(headers::WRITER, "x-switchyard-writer must be visible ASCII")
    })?;
    check_name("by", name).map_err(refusal)?;
    Ok(name.to_owned())
}

/// A context value: any JSON, its depth checked before it is parsed.
fn json_value(bytes: &[u8]) -> Result<Value, ApiError> {
    if json_depth(bytes) > MAX_JSON_DEPTH {
        return Err(ApiError::invalid(
            "body",
            format!(
                "the value must not nest arrays and objects deeper than {MAX_JSON_DEPTH} levels"
            ),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// The answer to a refused write: 409 with the current entry, or the error's own.
fn failed(error: ContextError) -> Response {
    match error {
        ContextError::Conflict { current } => conflict(current.as_ref()),
        other => refusal(other).into_response(),
    }
}

/// 409 whose body carries, beside the error, the entry as it is now (`null` when the key has
/// none) and whose `ETag` is its revision.
fn conflict(current: Option<&Current>) -> Response {
    let message = match current {
        Some(c) => format!(
            "the entry is at revision {}, not the one this write expected; read it, then \
             write again with If-Match: \"{}\"",
            c.revision, c.revision
        ),
        None => "the key has no entry now; create it with a PUT without If-Match".to_owned(),
    };
    let mut body = error_body(&ApiError::Conflict {
        code: "revision_mismatch",
        message,
    });
    body["current"] = json!(current);
    let mut response = (StatusCode::CONFLICT, Json(body)).into_response();
    if let Some(c) = current {
        set_etag(&mut response, c.revision);
    }
    response
}

fn refusal(error: ContextError) -> ApiError {
    match error {
        ContextError::BadName { which, .. } => {
            let param = if which == "by" {
                headers::WRITER
            } else {
                which
            };
            ApiError::invalid(param, error.to_string())
        }
        ContextError::TooLarge { .. } => ApiError::ValueTooLarge(error.to_string()),
        ContextError::Absent => ApiError::PreconditionFailed(
            "If-Match: * needs an entry, and the key has none".to_owned(),
        ),
        ContextError::Conflict { .. } => ApiError::Conflict {
            code: "revision_mismatch",
            message: error.to_string(),
        },
        ContextError::Store(e) => {
            warn!(error = %e, "the context bucket failed a request");
            ApiError::StoreUnavailable
        }
    }
}

fn absent(scope: &str, key: &str) -> ApiError {
    ApiError::NotFound(format!("no context entry `{key}` in scope `{scope}`"))
}

fn set_etag(response: &mut Response, revision: u64) {
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        response.headers_mut().insert(header::ETAG, tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_if_match(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            if_match(&with_if_match("*")).unwrap(),
            Some(Expect::Present)
        );
        assert_eq!(
            if_match(&with_if_match("\"42\"")).unwrap(),
            Some(Expect::Revision(42))
        );
        assert_eq!(
            if_match(&with_if_match("7")).unwrap(),
            Some(Expect::Revision(7))
        );
        for bad in ["W/\"42\"", "\"a\"", "\"1\", \"2\"", "\"0\"", "", "-3"] {
            assert!(
                matches!(
                    if_match(&with_if_match(bad)),
                    Err(ApiError::InvalidRequest { ref param, .. }) if param == "if-match"
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn writers_are_tokens() {
        assert_eq!(writer(&HeaderMap::new()).unwrap(), "api");
        let mut h = HeaderMap::new();
        h.insert(headers::WRITER, HeaderValue::from_static("researcher"));
        assert_eq!(writer(&h).unwrap(), "researcher");
        h.insert(headers::WRITER, HeaderValue::from_static("a.b"));
        assert!(matches!(
            writer(&h),
            Err(ApiError::InvalidRequest { ref param, .. }) if param == headers::WRITER
        ));
    }
}
