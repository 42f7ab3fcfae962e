//! `web_search`: results (title, URL, snippet) for a query from the configured search API —
//! a SearXNG instance (its JSON output), the Brave Search API or Tavily. There is no default:
//! unconfigured, the tool answers `unavailable` at once, saying what to set (so an offline
//! `switchyard up` loses no time on it).

use serde_json::{Value, json};
use shared::config::{ApiKey, SearchApi, Upstream};
use shared::tools::{ToolError, ToolErrorClass};

use crate::fit;
use crate::news::{query_and_count, shape};
use crate::upstream;

/// Characters of a result's snippet kept.
const SNIPPET_CHARS: usize = 400;

/// The tool.
pub async fn call(
    http: &reqwest::Client,
    config: &Upstream<SearchApi>,
    arguments: &Value,
) -> Result<Value, ToolError> {
    let (query, count) = query_and_count("web_search", arguments, config.max_results)?;
    let (Some(api), Some(base)) = (config.provider, config.base_url()) else {
        return Err(ToolError::new(
            ToolErrorClass::Unavailable,
            "web_search is not configured: set tools.web_search.provider (searxng, brave or tavily) and its base_url or api_key_env",
        ));
    };
    let key = config.key.as_ref();
    if api != SearchApi::Searxng && key.is_none() {
        return Err(upstream::missing_key("web_search", config.key_env()));
    }
    let name = match api {
        SearchApi::Searxng => "SearXNG",
        SearchApi::Brave => "Brave Search",
        SearchApi::Tavily => "Tavily",
    };
    let mut results = upstream::within(config.timeout(), name, async {
        match api {
            SearchApi::Searxng => {
                let mut request = http
                    .get(format!("{base}/search"))
                    .query(&[("q", query.as_str()), ("format", "json")]);
                if let Some(key) = key {
                    request = request.bearer_auth(key.secret.expose());
                }
                searxng(&upstream::json(request, name, key).await?)
            }
            SearchApi::Brave => {
                let request = http
                    .get(format!("{base}/web/search"))
                    .query(&[("q", query.as_str()), ("count", &count.to_string())])
                    .header("Accept", "application/json")
                    .header("X-Subscription-Token", secret(key));
                brave(&upstream::json(request, name, key).await?)
            }
            SearchApi::Tavily => {
                let request = http
                    .post(format!("{base}/search"))
                    .bearer_auth(secret(key))
                    .json(&json!({"query": query, "max_results": count}));
                tavily(&upstream::json(request, name, key).await?)
            }
        }
    })
    .await?;
    results.truncate(count);
    fit::list(
        json!({"query": query, "results": results, "source": name}),
        "results",
    )
}

fn secret(key: Option<&ApiKey>) -> &str {
    key.map_or("", |k| k.secret.expose())
}

fn result(title: Option<&str>, url: Option<&str>, snippet: Option<&str>) -> Option<Value> {
    Some(json!({
        "title": title.unwrap_or_default().trim(),
        "url": url?,
        "snippet": shared::tools::clip(snippet.unwrap_or_default().trim(), SNIPPET_CHARS),
    }))
}

/// Each result with a title and URL, its snippet in field `snippet`.
fn listed(results: &[Value], snippet: &str) -> Vec<Value> {
    results
        .iter()
        .filter_map(|r| result(r["title"].as_str(), r["url"].as_str(), r[snippet].as_str()))
        .collect()
}

/// SearXNG's `{"results": [{"url", "title", "content", "engine", …}]}`.
fn searxng(answer: &Value) -> Result<Vec<Value>, ToolError> {
    let results = answer["results"]
        .as_array()
        .ok_or_else(|| shape("SearXNG", "no `results`"))?;
    Ok(listed(results, "content"))
}

/// Brave's `{"web": {"results": [{"title", "url", "description"}]}}` (no `web` when nothing
/// was found).
fn brave(answer: &Value) -> Result<Vec<Value>, ToolError> {
    let Some(web) = answer.get("web") else {
        return Ok(Vec::new());
    };
    let results = web["results"]
        .as_array()
        .ok_or_else(|| shape("Brave Search", "`web` without `results`"))?;
    Ok(listed(results, "description"))
}

/// Tavily's `{"query", "results": [{"title", "url", "content", "score"}]}`.
fn tavily(answer: &Value) -> Result<Vec<Value>, ToolError> {
    let results = answer["results"]
        .as_array()
        .ok_or_else(|| shape("Tavily", "no `results`"))?;
    Ok(listed(results, "content"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_answer_becomes_title_url_snippet() {
        let searx = json!({"query": "q", "number_of_results": 0, "results": [
            {"url": "https://a.example/", "title": "A", "content": "About A", "engine": "duckduckgo"},
            {"title": "no url"}]});
        assert_eq!(
            searxng(&searx).unwrap(),
            vec![json!({"title": "A", "url": "https://a.example/", "snippet": "About A"})]
        );
        let brave_answer = json!({"type": "search", "web": {"type": "search", "results": [
            {"title": "B", "url": "https://b.example/", "description": "About <strong>B</strong>", "age": "1 day"}]}});
        assert_eq!(
            brave(&brave_answer).unwrap()[0]["url"],
            "https://b.example/"
        );
        assert!(brave(&json!({"type": "search"})).unwrap().is_empty());
        let tavily_answer = json!({"query": "q", "results": [
            {"title": "C", "url": "https://c.example/", "content": "x".repeat(1000), "score": 0.9}]});
        let c = tavily(&tavily_answer).unwrap();
        assert_eq!(
            c[0]["snippet"].as_str().unwrap().chars().count(),
            SNIPPET_CHARS
        );
        assert_eq!(
            searxng(&json!({"error": "x"})).unwrap_err().class,
            ToolErrorClass::Upstream
        );
    }
}
