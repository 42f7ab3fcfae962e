//! Fake upstreams of the built-in web tools: one real HTTP server on loopback that speaks
//! each tool API's JSON — Open-Meteo (geocoding, forecast), Alpha Vantage, Finnhub, GDELT,
//! NewsAPI, SearXNG, Brave Search, Tavily — under its own path prefix, plus web pages for
//! `http_fetch` (HTML, text, a binary, an endless body, a slow page, redirects). It checks
//! the keys the APIs take, records every request, and fails or stalls on command.
//! [`FakeUpstreams::tools_toml`] is the `[tools.*]` configuration that points every tool at
//! it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The variable and value of the stock API's key in [`FakeUpstreams::tools_toml`].
pub const STOCK_KEY_ENV: &str = "FAKE_STOCK_KEY";
pub const STOCK_KEY: &str = "stock-key-0123456789";
/// The variable and value of the news API's key (NewsAPI).
pub const NEWS_KEY_ENV: &str = "FAKE_NEWS_KEY";
pub const NEWS_KEY: &str = "news-key-0123456789";
/// The variable and value of the search API's key (Brave, Tavily).
pub const SEARCH_KEY_ENV: &str = "FAKE_SEARCH_KEY";
pub const SEARCH_KEY: &str = "search-key-0123456789";

/// One request as a fake upstream received it.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    /// The key it carried, in whichever header or parameter its API uses.
    pub key: Option<String>,
    pub body: Value,
}

/// A fault replacing the next answer.
#[derive(Debug, Clone)]
enum Fault {
    Status(u16),
    Stall(Duration),
}

#[derive(Debug, Default)]
struct UpState {
    faults: Mutex<VecDeque<Fault>>,
    requests: Mutex<Vec<UpstreamRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake upstream; it stops when dropped.
#[derive(Debug)]
pub struct FakeUpstreams {
    pub addr: SocketAddr,
    state: Arc<UpState>,
    _server: tokio::task::JoinSet<()>,
}

impl FakeUpstreams {
    /// Starts one on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Starts one on `addr` (any loopback address: 127.0.0.2 is another host to a test).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let state = Arc::new(UpState::default());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut server = tokio::task::JoinSet::new();
        server.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            state,
            _server: server,
        })
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A page of this server, e.g. `page("article.html")`.
    pub fn page(&self, name: &str) -> String {
        format!("{}/pages/{name}", self.base_url())
    }

    /// `[tools.*]` sections pointing every web tool here: the stock API `api`
    /// (`alpha_vantage` or `finnhub`), the news API `news` (`gdelt` or `newsapi`), the
    /// search API `search` (`searxng`, `brave` or `tavily`); keys in the variables above.
    pub fn tools_toml_with(&self, api: &str, news: &str, search: &str) -> String {
        let base = self.base_url();
        let stock_base = match api {
            "finnhub" => format!("{base}/finnhub/api/v1"),
            _ => format!("{base}/alphavantage"),
        };
        let news_base = match news {
            "newsapi" => format!("{base}/newsapi"),
            _ => format!("{base}/gdelt/api/v2/doc/doc"),
        };
        let search_base = match search {
            "brave" => format!("{base}/brave/res/v1"),
            "tavily" => format!("{base}/tavily"),
            _ => format!("{base}/searxng"),
        };
        format!(
            r#"
[tools.weather]
geocoding_url = "{base}/open-meteo/v1/search"
forecast_url = "{base}/open-meteo/v1/forecast"

[tools.stock_quote]
provider = "{api}"
base_url = "{stock_base}"
api_key_env = "{STOCK_KEY_ENV}"

[tools.news]
provider = "{news}"
base_url = "{news_base}"
api_key_env = "{NEWS_KEY_ENV}"

[tools.web_search]
provider = "{search}"
base_url = "{search_base}"
api_key_env = "{SEARCH_KEY_ENV}"
"#
        )
    }

    /// [`Self::tools_toml_with`] Alpha Vantage, GDELT and SearXNG.
    pub fn tools_toml(&self) -> String {
        self.tools_toml_with("alpha_vantage", "gdelt", "searxng")
    }

    /// The environment that holds the keys [`Self::tools_toml`] names.
    pub fn key_env() -> Vec<(&'static str, &'static str)> {
        vec![
            (STOCK_KEY_ENV, STOCK_KEY),
            (NEWS_KEY_ENV, NEWS_KEY),
            (SEARCH_KEY_ENV, SEARCH_KEY),
        ]
    }

    /// The next request answers `status` with an error body instead.
    pub fn fail_next(&self, status: u16) {
        lock(&self.state.faults).push_back(Fault::Status(status));
    }

    /// The next request waits this long before it is answered.
    pub fn stall_next(&self, delay: Duration) {
        lock(&self.state.faults).push_back(Fault::Stall(delay));
    }

    pub fn requests(&self) -> Vec<UpstreamRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn hits(&self) -> usize {
        lock(&self.state.requests).len()
    }
}

async fn handle(
    State(state): State<Arc<UpState>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches("Bearer ").to_owned())
    };
    let key = query
        .get("apikey")
        .cloned()
        .or_else(|| header("x-finnhub-token"))
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-subscription-token"))
        .or_else(|| header("authorization"));
    lock(&state.requests).push(UpstreamRequest {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        key: key.clone(),
        body: body.clone(),
    });
    let fault = lock(&state.faults).pop_front();
    match fault {
        Some(Fault::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (
                status,
                axum::Json(json!({"error": {"message": "injected fault"}})),
            )
                .into_response();
        }
        Some(Fault::Stall(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let q = |name: &str| query.get(name).map_or("", String::as_str);
    let json_ok = |value: Value| axum::Json(value).into_response();
    match path.as_str() {
        "/open-meteo/v1/search" => json_ok(geocoding(q("name"))),
        "/open-meteo/v1/forecast" => json_ok(forecast(&query)),
        "/alphavantage/query" => json_ok(alpha_vantage(q("symbol"), key.as_deref())),
        "/finnhub/api/v1/quote" => finnhub(q("symbol"), key.as_deref()),
        "/gdelt/api/v2/doc/doc" => gdelt(q("query"), q("format")),
        "/newsapi/v2/everything" => newsapi(q("q"), key.as_deref()),
        "/searxng/search" => searxng(q("q"), q("format")),
        "/brave/res/v1/web/search" => keyed(SEARCH_KEY, key.as_deref(), || {
            json!({"type": "search", "web": {"type": "search", "results": [
                {"title": format!("Brave: {}", q("q")), "url": "https://brave.example/1", "description": "A result from Brave."},
                {"title": "Second", "url": "https://brave.example/2", "description": "Another."}]}})
        }),
        "/tavily/search" => keyed(SEARCH_KEY, key.as_deref(), || {
            json!({"query": body["query"], "results": [
                {"title": format!("Tavily: {}", body["query"].as_str().unwrap_or_default()), "url": "https://tavily.example/1", "content": "A result from Tavily.", "score": 0.9}]})
        }),
        p if p.starts_with("/pages/") => page(&p["/pages/".len()..], &query).await,
        _ => (StatusCode::NOT_FOUND, "no such fake upstream").into_response(),
    }
}

fn keyed(expected: &str, got: Option<&str>, answer: impl FnOnce() -> Value) -> Response {
    if got == Some(expected) {
        axum::Json(answer()).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "invalid or missing API key"})),
        )
            .into_response()
    }
}

fn geocoding(name: &str) -> Value {
    if name.eq_ignore_ascii_case("lisbon") {
        json!({"results": [{"id": 2267057, "name": "Lisbon", "latitude": 38.71667, "longitude": -9.13333,
            "elevation": 45.0, "country_code": "PT", "timezone": "Europe/Lisbon", "country": "Portugal",
            "admin1": "Lisbon"}], "generationtime_ms": 0.4})
    } else {
        json!({"generationtime_ms": 0.3})
    }
}

fn forecast(query: &HashMap<String, String>) -> Value {
    let days: usize = query
        .get("forecast_days")
        .and_then(|d| d.parse().ok())
        .unwrap_or(7);
    let imperial = query.get("temperature_unit").map(String::as_str) == Some("fahrenheit");
    let (t, unit, wind) = if imperial {
        (64.4, "°F", "mp/h")
    } else {
        (18.0, "°C", "km/h")
    };
    let dates: Vec<String> = (0..days).map(|d| format!("2025-06-{:02}", d + 1)).collect();
    json!({
        "latitude": query.get("latitude").and_then(|l| l.parse::<f64>().ok()),
        "longitude": query.get("longitude").and_then(|l| l.parse::<f64>().ok()),
        "timezone": "Europe/Lisbon",
        "current_units": {"time": "iso8601", "temperature_2m": unit, "apparent_temperature": unit,
            "relative_humidity_2m": "%", "precipitation": "mm", "weather_code": "wmo code",
            "wind_speed_10m": wind, "wind_direction_10m": "°"},
        "current": {"time": "2025-06-01T12:00", "interval": 900, "temperature_2m": t,
            "apparent_temperature": t - 1.0, "relative_humidity_2m": 65, "precipitation": 0.0,
            "weather_code": 3, "wind_speed_10m": 14.2, "wind_direction_10m": 310},
        "daily": {
            "time": dates,
            "weather_code": vec![61; days],
            "temperature_2m_max": vec![t + 4.0; days],
            "temperature_2m_min": vec![t - 4.0; days],
            "precipitation_sum": vec![1.5; days],
            "precipitation_probability_max": vec![70; days],
            "wind_speed_10m_max": vec![20.0; days],
        }
    })
}

fn alpha_vantage(symbol: &str, key: Option<&str>) -> Value {
    if key != Some(STOCK_KEY) {
        return json!({"Information": "The API key provided is invalid."});
    }
    if symbol != "IBM" {
        return json!({"Global Quote": {}});
    }
    json!({"Global Quote": {"01. symbol": "IBM", "02. open": "189.0000", "03. high": "190.5000",
        "04. low": "188.1000", "05. price": "189.8400", "06. volume": "3254120",
        "07. latest trading day": "2025-05-30", "08. previous close": "190.3600",
        "09. change": "-0.5200", "10. change percent": "-0.2732%"}})
}

fn finnhub(symbol: &str, key: Option<&str>) -> Response {
    keyed(STOCK_KEY, key, || {
        if symbol == "AAPL" {
            json!({"c": 201.5, "d": 1.25, "dp": 0.624, "h": 202.0, "l": 199.0, "o": 200.0, "pc": 200.25, "t": 1_748_620_800})
        } else {
            json!({"c": 0, "d": null, "dp": null, "h": 0, "l": 0, "o": 0, "pc": 0, "t": 0})
        }
    })
}

fn gdelt(query: &str, format: &str) -> Response {
    if query.trim().len() < 3 {
        // GDELT refuses a query it cannot run with a line of text and status 200.
        return "Your search contained a phrase that was too short.".into_response();
    }
    if format != "json" {
        return "<html>not json</html>".into_response();
    }
    axum::Json(json!({"articles": [
        {"url": "https://news.example/1", "url_mobile": "", "title": format!("{query} rises"),
         "seendate": "20250530T101500Z", "socialimage": "", "domain": "news.example",
         "language": "English", "sourcecountry": "Portugal"},
        {"url": "https://news.example/2", "url_mobile": "", "title": format!("{query} falls"),
         "seendate": "20250529T090000Z", "socialimage": "", "domain": "other.example",
         "language": "English", "sourcecountry": "Spain"}
    ]}))
    .into_response()
}

fn newsapi(query: &str, key: Option<&str>) -> Response {
    if key != Some(NEWS_KEY) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"status": "error", "code": "apiKeyInvalid",
                "message": "Your API key is invalid or incorrect."})),
        )
            .into_response();
    }
    axum::Json(json!({"status": "ok", "totalResults": 1, "articles": [
        {"source": {"id": null, "name": "Example News"}, "author": "A. Writer",
         "title": format!("All about {query}"), "description": "What happened.",
         "url": "https://newsapi.example/1", "urlToImage": null,
         "publishedAt": "2025-05-30T08:00:00Z", "content": "…"}]}))
    .into_response()
}

fn searxng(query: &str, format: &str) -> Response {
    if format != "json" {
        // What an instance without JSON output enabled answers.
        return (StatusCode::FORBIDDEN, "403 Forbidden").into_response();
    }
    let results: Vec<Value> = (1..=12)
        .map(|i| {
            json!({"url": format!("https://searx.example/{i}"), "title": format!("{query} {i}"),
            "content": format!("Result {i} about {query}."), "engine": "duckduckgo", "score": 1.0})
        })
        .collect();
    axum::Json(json!({"query": query, "number_of_results": 12, "results": results})).into_response()
}

const ARTICLE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Cycling &amp; safety in Lisbon</title>
<style>body { color: red }</style><script>var tracking = 1;</script></head>
<body><h1>Bike lanes</h1><p>Lisbon added <b>200 km</b> of protected lanes.</p>
<ul><li>Fewer crashes</li><li>More riders</li></ul>
<a href="https://example.org/report">The full report</a></body></html>"#;

async fn page(name: &str, query: &HashMap<String, String>) -> Response {
    let typed = |ct: &'static str, body: Body| ([(header::CONTENT_TYPE, ct)], body).into_response();
    match name {
        "article.html" => typed("text/html; charset=utf-8", Body::from(ARTICLE)),
        "notes.txt" => typed("text/plain", Body::from("Plain notes.\nLine two.\n")),
        "data.json" => typed("application/json", Body::from(r#"{"answer": 42}"#)),
        "untyped" => Body::from(ARTICLE).into_response(),
        "logo.png" => typed(
            "image/png",
            Body::from(&b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..]),
        ),
        "endless.txt" => {
            // Never ends: a reader that does not stop at its cap waits forever.
            let chunk = Bytes::from(vec![b'a'; 16 * 1024]);
            let stream =
                futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            typed("text/plain", Body::from_stream(stream))
        }
        "big.html" => {
            let para = "<p>".to_owned() + &"word ".repeat(200) + "</p>\n";
            typed(
                "text/html",
                Body::from(format!(
                    "<html><head><title>Big</title></head><body>{}</body></html>",
                    para.repeat(200)
                )),
            )
        }
        "deep.html" => typed("text/html", Body::from("<div>".repeat(5000) + "deep")),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            typed("text/plain", Body::from("too late"))
        }
        "missing" => (StatusCode::NOT_FOUND, "not here").into_response(),
        "redirect" => {
            let to = query.get("to").cloned().unwrap_or_default();
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        "loop" => (StatusCode::FOUND, [(header::LOCATION, "/pages/loop")]).into_response(),
        _ => (StatusCode::NOT_FOUND, "no such page").into_response(),
    }
}
