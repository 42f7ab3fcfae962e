//! `switchyard context get|put|delete|history|list`: shared context from the terminal,
//! through the gateway's `/v1/context` API (see docs/context.md). A write states the
//! revision it read with `--if-match`; a stale one is refused with the current entry.

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The gateway's context API at `base` (`http://host:port`).
#[derive(Debug)]
pub struct ContextApi {
    base: String,
    http: reqwest::Client,
}

impl ContextApi {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `/v1/context/<segments…>`, each one path segment whatever it holds (the gateway
    /// refuses what is not a token, naming it).
    fn url(&self, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/context", self.base))
            .with_context(|| format!("{} is not a URL", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot take a path", self.base))?
            .extend(segments);
        Ok(url)
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        if_match: Option<&str>,
        writer: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
        let mut request = self.http.request(method, self.url(segments)?);
        if let Some(tag) = if_match {
            request = request.header("if-match", entity_tag(tag));
        }
        if let Some(writer) = writer {
            request = request.header("x-switchyard-writer", writer);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching the gateway at {}", self.base))?;
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response
            .text()
            .await
            .context("reading the gateway's answer")?;
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).context("the gateway's answer is not JSON")?
        };
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            match body.get("current") {
                Some(current) => bail!(
                    "the gateway answered {status}: {message}\ncurrent: {}",
                    serde_json::to_string_pretty(current)?
                ),
                None => bail!("the gateway answered {status}: {message}"),
            }
        }
        Ok((status, headers, body))
    }

    /// The entry: `{"revision", "by", "value"}`.
    pub async fn get(&self, scope: &str, key: &str) -> anyhow::Result<Value> {
        let (_, headers, value) = self
            .call(Method::GET, &[scope, key], None, None, None)
            .await?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let revision = header("etag")
            .and_then(|tag| tag.trim_matches('"').parse::<u64>().ok())
            .context("the gateway's answer has no revision (ETag)")?;
        Ok(json!({
            "revision": revision,
            "by": header("x-switchyard-writer"),
            "value": value,
        }))
    }

    /// Writes `value`: only if absent without `if_match`, else at that revision (or `*`).
    pub async fn put(
        &self,
        scope: &str,
        key: &str,
        value: &Value,
        if_match: Option<&str>,
        writer: Option<&str>,
    ) -> anyhow::Result<Value> {
        let (_, _, answer) = self
            .call(Method::PUT, &[scope, key], if_match, writer, Some(value))
            .await?;
        Ok(answer)
    }

    pub async fn delete(
        &self,
        scope: &str,
        key: &str,
        if_match: Option<&str>,
        writer: Option<&str>,
    ) -> anyhow::Result<()> {
        self.call(Method::DELETE, &[scope, key], if_match, writer, None)
            .await?;
        Ok(())
    }

    pub async fn history(&self, scope: &str, key: &str) -> anyhow::Result<Value> {
        let (_, _, answer) = self
            .call(Method::GET, &[scope, key, "history"], None, None, None)
            .await?;
        Ok(answer)
    }

    pub async fn list(&self, scope: &str) -> anyhow::Result<Value> {
        let (_, _, answer) = self.call(Method::GET, &[scope], None, None, None).await?;
        Ok(answer)
    }
}

/// `*` as it is, a revision quoted as an entity tag.
fn entity_tag(given: &str) -> String {
    let given = given.trim();
    if given == "*" || given.starts_with('"') {
        given.to_owned()
    } else {
        format!("\"{given}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_become_quoted_entity_tags() {
        assert_eq!(entity_tag("42"), "\"42\"");
        assert_eq!(entity_tag("\"42\""), "\"42\"");
        assert_eq!(entity_tag("*"), "*");
    }
}
