//! `news`: recent articles about a query — title, URL, source and date — from the configured
//! API: the GDELT DOC 2.0 API (keyless, the default) or NewsAPI.org (key from the
//! environment). Newest first; the list is trimmed to fit a result.

use serde::Deserialize;
use serde_json::{Value, json};
use shared::config::{NewsApi, Upstream};
use shared::tools::{ToolError, ToolErrorClass};

use crate::fit;
use crate::upstream::{self, invalid};

/// Longest query taken: a search phrase, not a document.
pub(crate) const MAX_QUERY_CHARS: usize = 400;
/// Characters of an article's description kept.
const SUMMARY_CHARS: usize = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arguments {
    query: String,
    #[serde(default)]
    max_results: Option<usize>,
}

/// The query and how many results to ask for: `max_results` if given, at most the
/// configured number.
pub(crate) fn query_and_count(
    tool: &str,
    arguments: &Value,
    configured: usize,
) -> Result<(String, usize), ToolError> {
    let args: Arguments = upstream::arguments(tool, arguments)?;
    let query = args.query.split_whitespace().collect::<Vec<_>>().join(" ");
    if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
        return Err(invalid(format!(
            "`query` must be 1 to {MAX_QUERY_CHARS} characters"
        )));
    }
    // More than configured is not an error: a model asks for "many", the operator's
    // bound decides how many.
    let count = match args.max_results {
        None => configured,
        Some(0) => return Err(invalid("`max_results` must be at least 1")),
        Some(n) => n.min(configured),
    };
    Ok((query, count))
}

/// The tool.
pub async fn call(
    http: &reqwest::Client,
    config: &Upstream<NewsApi>,
    arguments: &Value,
) -> Result<Value, ToolError> {
    let (query, count) = query_and_count("news", arguments, config.max_results)?;
    let (Some(api), Some(base)) = (config.provider, config.base_url()) else {
        return Err(ToolError::new(
            ToolErrorClass::Unavailable,
            "news is not configured: set tools.news.provider",
        ));
    };
    let articles = match api {
        NewsApi::Gdelt => {
            upstream::within(config.timeout(), "GDELT", async {
                let request = http.get(base).query(&[
                    ("query", query.as_str()),
                    ("mode", "artlist"),
                    ("format", "json"),
                    ("sort", "datedesc"),
                    ("maxrecords", &count.to_string()),
                ]);
                let answer = upstream::send(request, "GDELT", None).await?;
                if !answer.status.is_success() {
                    return Err(upstream::status_error(&answer, "GDELT", None));
                }
                gdelt(&answer.body)
            })
            .await?
        }
        NewsApi::Newsapi => {
            let Some(key) = config.key.as_ref() else {
                return Err(upstream::missing_key("news", config.key_env()));
            };
            upstream::within(config.timeout(), "NewsAPI", async {
                let request = http
                    .get(format!("{base}/v2/everything"))
                    .query(&[
                        ("q", query.as_str()),
                        ("sortBy", "publishedAt"),
                        ("pageSize", &count.to_string()),
                    ])
                    .header("X-Api-Key", key.secret.expose());
                newsapi(&upstream::json(request, "NewsAPI", Some(key)).await?)
            })
            .await?
        }
    };
    let mut articles = articles;
    articles.truncate(count);
    let source = match api {
        NewsApi::Gdelt => "GDELT",
        NewsApi::Newsapi => "NewsAPI",
    };
    fit::list(
        json!({"query": query, "articles": articles, "source": source}),
        "articles",
    )
}

/// Articles from GDELT's `{"articles": [{"url", "title", "seendate", "domain", …}]}` (`{}`
/// when none). GDELT answers a query it cannot run with a line of text and status 200.
fn gdelt(body: &[u8]) -> Result<Vec<Value>, ToolError> {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(invalid(format!(
            "GDELT refused the query: {}",
            shared::tools::clip(&text, 200)
        )));
    };
    let Some(articles) = answer.get("articles") else {
        return Ok(Vec::new());
    };
    let articles = articles
        .as_array()
        .ok_or_else(|| shape("GDELT", "`articles` that is not a list"))?;
    Ok(articles
        .iter()
        .filter_map(|a| {
            Some(json!({
                "title": a["title"].as_str()?.trim(),
                "url": a["url"].as_str()?,
                "source": a["domain"],
                "date": a["seendate"].as_str().map(gdelt_date),
                "language": a["language"],
            }))
        })
        .collect())
}

/// GDELT's `20250530T101500Z` as RFC 3339 (`2025-05-30T10:15:00Z`); anything else as given.
fn gdelt_date(seen: &str) -> String {
    let b = seen.as_bytes();
    if b.len() == 16 && b[8] == b'T' && b[15] == b'Z' && seen.is_ascii() {
        format!(
            "{}-{}-{}T{}:{}:{}Z",
            &seen[0..4],
            &seen[4..6],
            &seen[6..8],
            &seen[9..11],
            &seen[11..13],
            &seen[13..15]
        )
    } else {
        seen.to_owned()
    }
}

/// Articles from NewsAPI's `{"status": "ok", "articles": [{"source": {"name"}, "title",
/// "url", "publishedAt", "description"}]}`.
fn newsapi(answer: &Value) -> Result<Vec<Value>, ToolError> {
    if answer["status"] == "error" {
        return Err(ToolError::new(
            ToolErrorClass::Upstream,
            format!(
                "NewsAPI: {}",
                shared::tools::clip(answer["message"].as_str().unwrap_or("error"), 160)
            ),
        ));
    }
    let articles = answer["articles"]
        .as_array()
        .ok_or_else(|| shape("NewsAPI", "no `articles`"))?;
    Ok(articles
        .iter()
        .filter_map(|a| {
            Some(json!({
                "title": a["title"].as_str()?.trim(),
                "url": a["url"].as_str()?,
                "source": a["source"]["name"],
                "date": a["publishedAt"],
                "summary": a["description"].as_str().map(|d| shared::tools::clip(d.trim(), SUMMARY_CHARS)),
            }))
        })
        .collect())
}

pub(crate) fn shape(api: &str, what: &str) -> ToolError {
    ToolError::new(ToolErrorClass::Upstream, format!("{api} answered {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked_and_counts_bounded() {
        assert_eq!(
            query_and_count("news", &json!({"query": "  e-bikes \n Europe "}), 8).unwrap(),
            ("e-bikes Europe".to_owned(), 8)
        );
        assert_eq!(
            query_and_count("news", &json!({"query": "x", "max_results": 3}), 8).unwrap(),
            ("x".to_owned(), 3)
        );
        assert_eq!(
            query_and_count("news", &json!({"query": "x", "max_results": 50}), 8).unwrap(),
            ("x".to_owned(), 8)
        );
        for bad in [
            json!({}),
            json!({"query": "  "}),
            json!({"query": "x".repeat(401)}),
            json!({"query": "x", "max_results": 0}),
            json!({"query": "x", "max_results": -1}),
            json!({"query": "x", "page": 2}),
        ] {
            assert_eq!(
                query_and_count("news", &bad, 8).unwrap_err().class,
                ToolErrorClass::InvalidArguments,
                "{bad}"
            );
        }
    }

    #[test]
    fn gdelt_articles_dates_and_refusals() {
        let body = json!({"articles": [
            {"url": "https://example.com/a", "url_mobile": "", "title": " E-bike sales rise ",
             "seendate": "20250530T101500Z", "socialimage": "", "domain": "example.com",
             "language": "English", "sourcecountry": "United States"},
            {"title": "no url"}
        ]});
        let articles = gdelt(body.to_string().as_bytes()).unwrap();
        assert_eq!(articles.len(), 1);
        assert_eq!(articles[0]["title"], "E-bike sales rise");
        assert_eq!(articles[0]["date"], "2025-05-30T10:15:00Z");
        assert_eq!(articles[0]["source"], "example.com");
        assert!(gdelt(b"{}").unwrap().is_empty());
        let e = gdelt(b"Your search contained a phrase that was too short.").unwrap_err();
        assert_eq!(e.class, ToolErrorClass::InvalidArguments);
        assert!(e.message.contains("too short"));
        assert_eq!(gdelt_date("yesterday"), "yesterday");
    }

    #[test]
    fn newsapi_articles_and_errors() {
        let answer = json!({"status": "ok", "totalResults": 1, "articles": [{
            "source": {"id": null, "name": "BBC News"}, "author": "A", "title": "Cycling boom",
            "description": "More people cycle.", "url": "https://bbc.example/1",
            "publishedAt": "2025-05-30T08:00:00Z", "content": "…"}]});
        let articles = newsapi(&answer).unwrap();
        assert_eq!(articles[0]["source"], "BBC News");
        assert_eq!(articles[0]["date"], "2025-05-30T08:00:00Z");
        assert_eq!(articles[0]["summary"], "More people cycle.");
        let e = newsapi(
            &json!({"status": "error", "code": "rateLimited", "message": "Too many requests"}),
        )
        .unwrap_err();
        assert_eq!(e.class, ToolErrorClass::Upstream);
    }
}
