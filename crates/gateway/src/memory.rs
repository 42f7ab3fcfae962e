//! `GET /v1/memory/search?q=&agent=&team=&scope=&kind=&limit=`: a search of the episodic
//! memory, asked of the `memory.search` service over NATS (any replica answers). Each
//! parameter is checked here, so bad input is a 400 naming it and never leaves the gateway.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query as QueryParams, State};
use serde_json::{Value, json};
use shared::memory::{Kind, MemoryError, Query};
use tracing::warn;

use crate::error::ApiError;
use crate::state::AppState;

/// How long a search may take: the index answers in milliseconds, so a longer wait is a
/// replica in trouble, and the caller had better hear 503 than hang.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /v1/memory/search`: `{"object": "list", "data": [hits], "indexed_seq"}`, best first.
pub async fn search(
    State(st): State<AppState>,
    params: Result<QueryParams<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let QueryParams(pairs) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let query = read_query(&pairs)?;
    let answer = shared::memory::search(&st.client, &query, SEARCH_TIMEOUT)
        .await
        .map_err(|e| match e {
            MemoryError::Invalid { param, message } => ApiError::invalid(param, message),
            MemoryError::Unavailable | MemoryError::Timeout(_) => ApiError::MemoryUnavailable,
            MemoryError::Internal(message) => {
                warn!(error = %message, "the memory service failed a search");
                ApiError::MemoryUnavailable
            }
        })?;
    Ok(Json(json!({
        "object": "list",
        "data": answer.hits,
        "indexed_seq": answer.indexed_seq,
    })))
}

/// The search the parameters ask for: each at most once, none unknown, each valid.
fn read_query(pairs: &[(String, String)]) -> Result<Query, ApiError> {
    let mut query = Query::default();
    let mut q = None;
    for (name, value) in pairs {
        let twice = || ApiError::invalid(name.as_str(), format!("`{name}` is given twice"));
        let set = |slot: &mut Option<String>| match slot {
            Some(_) => Err(twice()),
            None => {
                *slot = Some(value.clone());
                Ok(())
            }
        };
        match name.as_str() {
            "q" => set(&mut q)?,
            "agent" => set(&mut query.agent)?,
            "team" => set(&mut query.team)?,
            "scope" => set(&mut query.scope)?,
            "kind" => {
                if query.kind.is_some() {
                    return Err(twice());
                }
                let kinds = Kind::ALL.map(Kind::as_str).join(", ");
                query.kind = Some(Kind::parse(value).ok_or_else(|| {
                    ApiError::invalid("kind", format!("`kind` must be one of {kinds}"))
                })?);
            }
            "limit" => {
                if query.limit.is_some() {
                    return Err(twice());
                }
                let limit = value
                    .parse()
                    .map_err(|_| ApiError::invalid("limit", "`limit` must be a whole number"))?;
                query.limit = Some(limit);
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!("unknown parameter `{other}` (q, agent, team, scope, kind, limit)"),
                ));
            }
        }
    }
    query.q =
        q.ok_or_else(|| ApiError::invalid("q", "`q` is required: the words to search for"))?;
    query.check().map_err(|e| match e {
        MemoryError::Invalid { param, message } => ApiError::invalid(param, message),
        other => ApiError::invalid("q", other.to_string()),
    })?;
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn param(list: &[(&str, &str)]) -> String {
        match read_query(&pairs(list)) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parameters_are_read_and_each_problem_is_named() {
        let query = read_query(&pairs(&[
            ("q", "maintenance costs"),
            ("agent", "writer"),
            ("kind", "review"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(query.q, "maintenance costs");
        assert_eq!(query.agent.as_deref(), Some("writer"));
        assert_eq!(query.kind, Some(Kind::Review));
        assert_eq!(query.limit, Some(5));
        assert_eq!(param(&[]), "q");
        assert_eq!(param(&[("q", "")]), "q");
        assert_eq!(param(&[("q", "a"), ("q", "b")]), "q");
        assert_eq!(param(&[("q", "a"), ("agent", "No Such")]), "agent");
        assert_eq!(param(&[("q", "a"), ("scope", "a.b")]), "scope");
        assert_eq!(param(&[("q", "a"), ("kind", "chat")]), "kind");
        assert_eq!(param(&[("q", "a"), ("limit", "0")]), "limit");
        assert_eq!(param(&[("q", "a"), ("limit", "many")]), "limit");
        assert_eq!(param(&[("q", "a"), ("colour", "red")]), "colour");
    }
}
