//! Calling a tool's upstream API (Open-Meteo, a stock or news API, a search API): one HTTP
//! client, one deadline around a tool's whole call, answers read with a size cap, and every
//! failure turned into a classed [`ToolError`] that carries the upstream's status but never a
//! key (reqwest's errors are stripped of their URL, which may hold one, and any key text an
//! upstream echoes is masked).

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use serde_json::Value;
use shared::config::ApiKey;
use shared::tools::{ToolError, ToolErrorClass};

/// Largest upstream answer read: a page of results is tens of KiB; a larger answer is a
/// misbehaving upstream, not something to hold in memory.
const MAX_UPSTREAM_BYTES: usize = 4 << 20;
/// Characters of an upstream's own error message kept in ours.
const UPSTREAM_MESSAGE_CHARS: usize = 160;
/// Redirects an upstream API may send us through, on its own host.
const MAX_UPSTREAM_REDIRECTS: usize = 3;

/// The client for operator-configured upstreams. (URLs that come from a model use
/// `http_fetch`'s guarded client instead.)
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("switchyard-tools/", env!("CARGO_PKG_VERSION")))
        // Keys travel in headers reqwest does not strip on a redirect (`X-Api-Key`, …): a
        // redirect to another host is not followed (the tool reports the 3xx).
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_host = attempt
                .previous()
                .first()
                .is_some_and(|first| first.host_str() == attempt.url().host_str());
            if attempt.previous().len() > MAX_UPSTREAM_REDIRECTS {
                attempt.error("too many redirects")
            } else if same_host {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .build()
}

/// Runs `work` (a tool's calls to `what`) within `limit`: past it the call fails `timeout`.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = Result<T, ToolError>>,
) -> Result<T, ToolError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(ToolError::new(
            ToolErrorClass::Timeout,
            format!("{what} did not answer within {} ms", limit.as_millis()),
        ))
    })
}

/// An upstream's answer: its status and body (at most [`MAX_UPSTREAM_BYTES`]).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends `request` to `what` and reads the answer, whatever its status.
pub async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
    key: Option<&ApiKey>,
) -> Result<Answer, ToolError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_error(&e, what, key))?;
    let status = response.status();
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(&e, what, key))?
    {
        if body.len() + chunk.len() > MAX_UPSTREAM_BYTES {
            return Err(ToolError::new(
                ToolErrorClass::Upstream,
                format!("{what} answered more than {MAX_UPSTREAM_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    // Masked before anything reads it, so no clipping of an error message can cut a key
    // in two and leave a part of it unmasked.
    let body = match key {
        Some(key) if !key.secret.expose().is_empty() => {
            let text = String::from_utf8_lossy(&body);
            if text.contains(key.secret.expose()) {
                Bytes::from(mask(&text, Some(key)))
            } else {
                body.freeze()
            }
        }
        _ => body.freeze(),
    };
    Ok(Answer { status, body })
}

/// Sends `request` and parses a successful answer's JSON; any other status is `upstream`
/// (with the status and the upstream's own message).
pub async fn json(
    request: reqwest::RequestBuilder,
    what: &str,
    key: Option<&ApiKey>,
) -> Result<Value, ToolError> {
    let answer = send(request, what, key).await?;
    if !answer.status.is_success() {
        return Err(status_error(&answer, what, key));
    }
    parse_json(&answer.body, what)
}

pub fn parse_json(body: &[u8], what: &str) -> Result<Value, ToolError> {
    serde_json::from_slice(body).map_err(|e| {
        ToolError::new(
            ToolErrorClass::Upstream,
            format!("{what} answered something that is not JSON ({e})"),
        )
    })
}

/// `upstream`: `what` answered `status`, with its own message when it gave one.
pub fn status_error(answer: &Answer, what: &str, key: Option<&ApiKey>) -> ToolError {
    let status = answer.status;
    let mut message = format!("{what} answered {status}");
    if let Some(said) = upstream_message(&answer.body) {
        message.push_str(": ");
        message.push_str(&said);
    }
    ToolError::new(ToolErrorClass::Upstream, mask(&message, key))
}

/// The message in an upstream's error body: a JSON `message`, `error`, `reason`,
/// `detail` or `Error Message` field, else the start of its text.
fn upstream_message(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let said = match serde_json::from_str::<Value>(&text) {
        Ok(value) => [
            "message",
            "error",
            "reason",
            "detail",
            "Error Message",
            "Information",
            "Note",
        ]
        .iter()
        .find_map(|field| match &value[*field] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        })?,
        Err(_) => text.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    let said = said.trim();
    (!said.is_empty()).then(|| shared::tools::clip(said, UPSTREAM_MESSAGE_CHARS))
}

/// A failure to reach `what` or to read its answer: `timeout` or `upstream`, with the
/// error's causes but not its URL.
fn transport_error(error: &reqwest::Error, what: &str, key: Option<&ApiKey>) -> ToolError {
    let class = if error.is_timeout() {
        ToolErrorClass::Timeout
    } else {
        ToolErrorClass::Upstream
    };
    let message = format!("could not reach {what}: {}", causes(error));
    ToolError::new(class, mask(&message, key))
}

/// An error and its sources, one after the other, without reqwest's URL.
pub fn causes(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    let top = error.to_string();
    // reqwest's own text ends with "for url (…)"; keep what precedes it.
    parts.push(match top.find(" for url (") {
        Some(at) => top[..at].to_owned(),
        None => top,
    });
    while let Some(e) = next {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// `text` with the key, if it appears, replaced by `*****`.
pub fn mask(text: &str, key: Option<&ApiKey>) -> String {
    match key {
        Some(key) if !key.secret.expose().is_empty() => text.replace(key.secret.expose(), "*****"),
        _ => text.to_owned(),
    }
}

/// `unavailable`: `tool` needs a key and its variable is not set.
pub fn missing_key(tool: &str, var: Option<String>) -> ToolError {
    let message = match var {
        Some(var) => format!(
            "{tool} is not configured: its API key variable {var} (tools.{tool}.api_key_env) is not set"
        ),
        None => format!("{tool} is not configured: set tools.{tool}.api_key_env"),
    };
    ToolError::new(ToolErrorClass::Unavailable, message)
}

/// `invalid_arguments` with `message`.
pub fn invalid(message: impl Into<String>) -> ToolError {
    ToolError::new(ToolErrorClass::InvalidArguments, message)
}

/// A tool's arguments as its typed struct: a missing, unknown or mistyped field is
/// `invalid_arguments` naming it.
pub fn arguments<T: serde::de::DeserializeOwned>(
    tool: &str,
    arguments: &Value,
) -> Result<T, ToolError> {
    T::deserialize(arguments).map_err(|e| invalid(format!("{tool}: {e}")))
}

#[cfg(test)]
mod tests {
    use shared::config::Secret;

    use super::*;

    #[test]
    fn upstream_messages_are_found_clipped_and_masked() {
        let key = ApiKey {
            label: "K".into(),
            secret: Secret::new("sekrit-123".into()),
        };
        let answer = Answer {
            status: StatusCode::UNAUTHORIZED,
            body: Bytes::from_static(
                br#"{"status":"error","message":"Your API key sekrit-123 is invalid"}"#,
            ),
        };
        let e = status_error(&answer, "NewsAPI", Some(&key));
        assert_eq!(e.class, ToolErrorClass::Upstream);
        assert_eq!(
            e.message,
            "NewsAPI answered 401 Unauthorized: Your API key ***** is invalid"
        );
        let text = Answer {
            status: StatusCode::BAD_GATEWAY,
            body: Bytes::from(format!(
                "<html>\n  bad   gateway {}</html>",
                "x".repeat(500)
            )),
        };
        let e = status_error(&text, "GDELT", None);
        assert!(
            e.message
                .starts_with("GDELT answered 502 Bad Gateway: <html> bad gateway x")
        );
        assert!(e.message.chars().count() < 220, "{}", e.message);
        let empty = Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: Bytes::new(),
        };
        assert_eq!(
            status_error(&empty, "X", None).message,
            "X answered 500 Internal Server Error"
        );
    }

    #[test]
    fn a_missing_key_names_its_variable_and_setting() {
        let e = missing_key("stock_quote", Some("ALPHA_VANTAGE_API_KEY".into()));
        assert_eq!(e.class, ToolErrorClass::Unavailable);
        assert!(e.message.contains("ALPHA_VANTAGE_API_KEY"));
        assert!(e.message.contains("tools.stock_quote.api_key_env"));
    }
}
