//! Serving the built-in tools as one NATS micro service: one endpoint per tool, each request
//! handled on its own task (bounded), each answer either the result or a service error with
//! its class. Stops taking requests on shutdown and lets the ones in hand finish.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use shared::config::{Config, ToolsConfig};
use shared::mcp::MCP_PREFIX;
use shared::tools::{
    ASK_AGENT, BUILTIN, ERROR_CLASS_HEADER, MAX_ARGUMENT_BYTES, MAX_ERROR_CHARS, MAX_RESULT_BYTES,
    QUEUE_GROUP, SERVICE_NAME, SUBJECT_PREFIX, ToolError, ToolErrorClass,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::ask::Asker;
use crate::calculator;
use crate::http_fetch::Fetcher;
use crate::run_code::RunCode;
use crate::ssrf::{Lookup, SystemLookup};
use crate::{news, stock_quote, upstream, weather, web_search};

/// Calls one process handles at once: beyond it, requests wait in the subscription (and a
/// caller's timeout passes) instead of piling up tasks.
const MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("starting the tools service: {0}")]
    Start(async_nats::Error),
    #[error("the tools' subscriptions ended")]
    Ended,
}

/// Serves every built-in tool, and the tools of every configured MCP server, on `client`
/// until `shutdown`; calls in hand are finished.
pub async fn serve(
    client: async_nats::Client,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Result<(), ToolsError> {
    let asker = Asker::new(client.clone(), config.clone(), shutdown.child_token());
    let toolbox = Arc::new(Toolbox::new(config.tools.clone()).with_asker(asker));
    if let Err(e) = &toolbox.web {
        warn!(error = %e, "the web tools cannot run");
    }
    for (tool, missing) in unconfigured(&config.tools) {
        info!(tool, missing, "tool not configured: it answers unavailable");
    }
    let names: Vec<&str> = BUILTIN.iter().map(|t| t.name).collect();
    let service = client
        .service_builder()
        .description("Switchyard's built-in tools: one endpoint per tool on tools.<name>")
        .queue_group(QUEUE_GROUP)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(ToolsError::Start)?;
    let group = service.group(SUBJECT_PREFIX);
    let mut endpoints = Vec::new();
    for tool in BUILTIN {
        let metadata = HashMap::from([("description".to_owned(), tool.description.to_owned())]);
        let endpoint = group
            .endpoint_builder()
            .name(tool.name)
            .metadata(metadata)
            .add(tool.name)
            .await
            .map_err(ToolsError::Start)?;
        endpoints.push(endpoint.map(move |request| (tool.name, request)));
    }
    let mut requests = futures::stream::select_all(endpoints);
    info!(service = SERVICE_NAME, tools = ?names, "tools serving");
    let mcp_servers = TaskTracker::new();
    let mcp_stop = shutdown.child_token();
    if !config.mcp.is_empty() {
        let js = async_nats::jetstream::new(client.clone());
        let catalogue = shared::provision::mcp_tools_bucket(&js, config.nats.replicas)
            .await
            .map_err(|e| ToolsError::Start(e.into()))?;
        for (name, server) in &config.mcp {
            let server = crate::mcp::Server {
                name: name.clone(),
                config: server.clone(),
                group: service.group(format!("{SUBJECT_PREFIX}.{MCP_PREFIX}.{name}")),
                catalogue: catalogue.clone(),
                call_timeout: std::time::Duration::from_millis(config.tools.call_timeout_ms),
            };
            mcp_servers.spawn(server.run(mcp_stop.clone()));
        }
    }
    let handlers = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ended = false;
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            next = requests.next() => next,
        };
        let Some((name, request)) = next else {
            warn!("the tools' subscriptions ended");
            ended = true;
            break;
        };
        let toolbox = toolbox.clone();
        handlers.spawn(async move {
            respond(&toolbox, name, &request).await;
            drop(permit);
        });
    }
    // No new requests: another process in the queue group takes them.
    drop(requests);
    handlers.close();
    mcp_stop.cancel();
    mcp_servers.close();
    handlers.wait().await;
    mcp_servers.wait().await;
    if let Err(e) = service.stop().await {
        debug!(error = %e, "stopping the tools service");
    }
    info!("tools stopped");
    if ended {
        Err(ToolsError::Ended)
    } else {
        Ok(())
    }
}

async fn respond(toolbox: &Toolbox, name: &str, request: &service::Request) {
    let outcome = toolbox
        .answer(
            name,
            &request.message.payload,
            request.message.headers.as_ref(),
        )
        .await;
    reply(request, name, outcome).await;
}

/// Answers a call: the result, or an error with its class in the headers.
pub(crate) async fn reply(
    request: &service::Request,
    name: &str,
    outcome: Result<Bytes, ToolError>,
) {
    let sent = match outcome {
        Ok(bytes) => request.respond(Ok(bytes)).await,
        Err(e) => {
            debug!(tool = name, class = e.class.as_str(), "tool call failed");
            let mut headers = HeaderMap::new();
            headers.insert(ERROR_CLASS_HEADER, e.class.as_str());
            let error = service::error::Error {
                status: header_safe(&e.message),
                code: e.class.code(),
            };
            request.respond_with_headers(Err(error), headers).await
        }
    };
    if let Err(e) = sent {
        debug!(tool = name, error = %e, "could not answer a tool call (the caller may be gone)");
    }
}

/// Every built-in tool with what it needs to run: `[tools]` (upstreams, limits) and the
/// HTTP clients of the tools that go on the web.
#[derive(Debug)]
pub struct Toolbox {
    config: ToolsConfig,
    /// Puts `ask_agent` questions on the task path; without NATS (unit tests) there is none.
    asker: Option<Asker>,
    run_code: RunCode,
    /// The web tools' clients, or why they could not be built (then those tools answer
    /// `internal`).
    web: Result<Web, String>,
}

#[derive(Debug)]
struct Web {
    /// For the operator's upstreams (weather, quotes, news, search).
    upstream: reqwest::Client,
    /// For URLs a model gives, behind the SSRF guard.
    fetcher: Fetcher,
}

impl Toolbox {
    pub fn new(config: ToolsConfig) -> Self {
        Self::with_lookup(config, Arc::new(SystemLookup))
    }

    /// A toolbox whose guarded fetches resolve names with `lookup` (tests script it).
    pub fn with_lookup(config: ToolsConfig, lookup: Arc<dyn Lookup>) -> Self {
        let web = upstream::client()
            .and_then(|upstream| {
                let fetcher = Fetcher::new(&config.http_fetch, &config.ssrf, lookup)?;
                Ok(Web { upstream, fetcher })
            })
            .map_err(|e| format!("building the HTTP clients: {e}"));
        Self {
            run_code: RunCode::new(config.run_code.clone()),
            config,
            web,
            asker: None,
        }
    }

    /// The toolbox with `ask_agent` served by `asker`.
    pub fn with_asker(self, asker: Asker) -> Self {
        Self {
            asker: Some(asker),
            ..self
        }
    }

    /// The answer of tool `name` to `payload` (the call's arguments; `headers` say who
    /// calls, for tools that care): the result's JSON bytes, or the error.
    pub async fn answer(
        &self,
        name: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
    ) -> Result<Bytes, ToolError> {
        let arguments = arguments(payload)?;
        let config = &self.config;
        let result = match name {
            "calculator" => calculator::call(&arguments)?,
            ASK_AGENT => match &self.asker {
                Some(asker) => asker.call(&arguments, headers).await?,
                None => {
                    return Err(ToolError::new(
                        ToolErrorClass::Unavailable,
                        "asking agents needs NATS",
                    ));
                }
            },
            "run_code" => self.run_code.call(&arguments).await?,
            "weather" => weather::call(&self.web()?.upstream, &config.weather, &arguments).await?,
            "stock_quote" => {
                stock_quote::call(&self.web()?.upstream, &config.stock_quote, &arguments).await?
            }
            "news" => news::call(&self.web()?.upstream, &config.news, &arguments).await?,
            "web_search" => {
                web_search::call(&self.web()?.upstream, &config.web_search, &arguments).await?
            }
            "http_fetch" => self.web()?.fetcher.call(&arguments).await?,
            other => {
                return Err(ToolError::new(
                    ToolErrorClass::Denied,
                    format!("no built-in tool `{other}`"),
                ));
            }
        };
        encode(&result)
    }

    fn web(&self) -> Result<&Web, ToolError> {
        self.web
            .as_ref()
            .map_err(|e| ToolError::new(ToolErrorClass::Internal, e.clone()))
    }
}

/// The web tools that will answer `unavailable`, and what they miss (a setting, or the
/// variable of a key; never a key).
fn unconfigured(config: &ToolsConfig) -> Vec<(&'static str, String)> {
    let unset = |var: Option<String>| format!("{} is not set", var.unwrap_or_default());
    let mut out = Vec::new();
    if config.stock_quote.key.is_none() {
        out.push(("stock_quote", unset(config.stock_quote.key_env())));
    }
    if config.news.key.is_none() && config.news.key_env().is_some() {
        out.push(("news", unset(config.news.key_env())));
    }
    if config.web_search.provider.is_none() {
        out.push(("web_search", "tools.web_search.provider".to_owned()));
    } else if config.web_search.key.is_none() && config.web_search.key_env().is_some() {
        out.push(("web_search", unset(config.web_search.key_env())));
    }
    out
}

/// A result's JSON bytes, refused (`too_large`) beyond [`MAX_RESULT_BYTES`].
pub(crate) fn encode(result: &Value) -> Result<Bytes, ToolError> {
    let bytes = serde_json::to_vec(result)
        .map_err(|e| ToolError::new(ToolErrorClass::Internal, e.to_string()))?;
    if bytes.len() > MAX_RESULT_BYTES {
        return Err(ToolError::new(
            ToolErrorClass::TooLarge,
            format!("the result is larger than {MAX_RESULT_BYTES} bytes"),
        ));
    }
    Ok(bytes.into())
}

/// A call's arguments: a JSON value at most [`MAX_ARGUMENT_BYTES`] long (an empty body is
/// `{}`).
pub(crate) fn arguments(payload: &[u8]) -> Result<Value, ToolError> {
    if payload.len() > MAX_ARGUMENT_BYTES {
        return Err(ToolError::new(
            ToolErrorClass::InvalidArguments,
            format!("arguments are larger than {MAX_ARGUMENT_BYTES} bytes"),
        ));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_slice(payload).map_err(|e| {
        ToolError::new(
            ToolErrorClass::InvalidArguments,
            format!("arguments are not JSON: {e}"),
        )
    })
}

/// A message fit for a header value: one line, printable, bounded.
fn header_safe(message: &str) -> String {
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    shared::tools::clip(&line, MAX_ERROR_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_results_and_classed_errors() {
        let toolbox = Toolbox::new(ToolsConfig::default());
        let answer = |name: &'static str, payload: Vec<u8>| {
            let toolbox = &toolbox;
            async move { toolbox.answer(name, &payload, None).await }
        };
        let out = answer("calculator", br#"{"expression": "2 + 2"}"#.to_vec())
            .await
            .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["result"], 4);
        let e = answer("calculator", b"{not json".to_vec())
            .await
            .unwrap_err();
        assert_eq!(e.class, ToolErrorClass::InvalidArguments);
        let e = answer("calculator", vec![b' '; MAX_ARGUMENT_BYTES + 1])
            .await
            .unwrap_err();
        assert_eq!(e.class, ToolErrorClass::InvalidArguments);
        let e = answer("calculator", Vec::new()).await.unwrap_err();
        assert!(e.message.contains("missing field"), "{}", e.message);
        let e = answer("shell", b"{}".to_vec()).await.unwrap_err();
        assert_eq!(e.class, ToolErrorClass::Denied);
    }

    #[test]
    fn unconfigured_tools_are_named_with_what_they_miss() {
        let missing = unconfigured(&ToolsConfig::default());
        assert_eq!(
            missing,
            [
                ("stock_quote", "ALPHA_VANTAGE_API_KEY is not set".to_owned()),
                ("web_search", "tools.web_search.provider".to_owned()),
            ]
        );
    }

    #[test]
    fn header_values_are_one_bounded_line() {
        let safe = header_safe(&format!("a\r\nb{}", "x".repeat(1000)));
        assert!(!safe.contains('\n') && !safe.contains('\r'));
        assert!(safe.chars().count() <= MAX_ERROR_CHARS);
    }
}
