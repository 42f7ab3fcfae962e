//! The web tools end to end: each called over NATS through the `switchyard-tools` service
//! against its fake upstream on loopback (a real HTTP server speaking the API's JSON) —
//! success, the upstream failing, bad arguments, timeouts, missing keys — then the SSRF
//! guard refusing every forbidden address a model could hand `http_fetch` (with nothing
//! allowed), a redirect from an allowed server to forbidden ones, and the offline default
//! team whose researcher calls an unconfigured `web_search` and still completes.

use std::time::Duration;

use fake_provider::upstreams::{self, FakeUpstreams};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::{Nats, Stack, config_toml, stack_env, wait_for_tools};
use crate::workflows::{AGENTS_ROUTE, run_task, step};

/// NATS, the fake upstreams and a tools service configured against them.
struct Tools {
    _nats: Nats,
    client: async_nats::Client,
    upstream: FakeUpstreams,
    stop: CancellationToken,
    served: JoinHandle<()>,
}

impl Tools {
    /// `tools_toml` is given the fake upstream's `[tools.*]` (see
    /// [`FakeUpstreams::tools_toml`]) and returns the configuration's tools part.
    async fn start(
        tools_toml: impl FnOnce(&FakeUpstreams) -> String,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_on(FakeUpstreams::start().await.unwrap(), tools_toml, env).await
    }

    async fn start_on(
        upstream: FakeUpstreams,
        tools_toml: impl FnOnce(&FakeUpstreams) -> String,
        env: &[(&str, &str)],
    ) -> Self {
        let nats = Nats::start();
        let toml = config_toml(&nats.url, "http://127.0.0.1:9") + &tools_toml(&upstream);
        let config = std::sync::Arc::new(
            shared::config::Config::load(shared::config::Source::Toml(&toml), &stack_env(env))
                .unwrap(),
        );
        let client = shared::nats::connect(&nats.url, "test").await.unwrap();
        let stop = CancellationToken::new();
        let served = tokio::spawn({
            let (client, stop) = (client.clone(), stop.clone());
            async move { tools::serve(client, config, stop).await.unwrap() }
        });
        wait_for_tools(&client).await;
        Self {
            _nats: nats,
            client,
            upstream,
            stop,
            served,
        }
    }

    /// Every tool against the fake upstreams, with their keys set.
    async fn keyed(extra: &str, env: &[(&str, &str)]) -> Self {
        let mut all = FakeUpstreams::key_env();
        all.extend_from_slice(env);
        let extra = extra.to_owned();
        Self::start(move |u| u.tools_toml() + &extra, &all).await
    }

    /// Calls `tool` with `arguments` over NATS: the result, or the error's class and
    /// message.
    async fn call(&self, tool: &str, arguments: Value) -> Result<Value, (String, String)> {
        let answer = self
            .client
            .request(format!("tools.{tool}"), arguments.to_string().into())
            .await
            .unwrap();
        match answer
            .headers
            .as_ref()
            .and_then(|h| h.get("Switchyard-Tool-Error"))
        {
            Some(class) => {
                let headers = answer.headers.as_ref().unwrap();
                let message = headers.get("Nats-Service-Error").unwrap().to_string();
                Err((class.to_string(), message))
            }
            None => Ok(serde_json::from_slice(&answer.payload).unwrap()),
        }
    }

    /// Calls `tool`, which must fail: the error's class and message.
    async fn error(&self, tool: &str, arguments: Value) -> (String, String) {
        self.call(tool, arguments)
            .await
            .expect_err("the call should have failed")
    }

    async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap();
    }
}

fn no_key_leaks(text: &str) {
    for key in [
        upstreams::STOCK_KEY,
        upstreams::NEWS_KEY,
        upstreams::SEARCH_KEY,
    ] {
        assert!(!text.contains(key), "a key leaked: {text}");
    }
}

#[tokio::test]
async fn weather_geocodes_a_place_then_forecasts_with_units() {
    let tools = Tools::keyed("", &[("SWITCHYARD__TOOLS__WEATHER__TIMEOUT_MS", "500")]).await;
    let result = tools
        .call("weather", json!({"location": "Lisbon", "days": 2}))
        .await
        .unwrap();
    assert_eq!(result["place"]["name"], "Lisbon");
    assert_eq!(result["place"]["country"], "Portugal");
    assert_eq!(result["place"]["timezone"], "Europe/Lisbon");
    assert_eq!(result["current"]["temperature"], 18.0);
    assert_eq!(result["current"]["weather"], "overcast");
    assert_eq!(result["units"]["temperature"], "°C");
    assert_eq!(result["units"]["wind_speed"], "km/h");
    let daily = result["daily"].as_array().unwrap();
    assert_eq!(daily.len(), 2);
    assert_eq!(daily[0]["weather"], "slight rain");
    assert_eq!(daily[0]["precipitation_probability"], 70);
    let requests = tools.upstream.requests();
    assert_eq!(requests[0].path, "/open-meteo/v1/search");
    assert_eq!(requests[0].query["name"], "Lisbon");
    assert_eq!(requests[1].path, "/open-meteo/v1/forecast");
    assert_eq!(requests[1].query["latitude"], "38.71667");
    assert_eq!(requests[1].query["forecast_days"], "2");

    // Coordinates skip geocoding; imperial units are asked for and reported.
    let before = tools.upstream.hits();
    let result = tools
        .call(
            "weather",
            json!({"latitude": 38.7, "longitude": -9.1, "units": "imperial"}),
        )
        .await
        .unwrap();
    assert_eq!(tools.upstream.hits(), before + 1);
    assert_eq!(result["units"]["temperature"], "°F");
    assert_eq!(result["daily"].as_array().unwrap().len(), 3);

    // A place nobody knows, bad arguments, the upstream failing or stalling.
    let (class, message) = tools
        .error("weather", json!({"location": "Atlantis"}))
        .await;
    assert_eq!(class, "invalid_arguments");
    assert!(message.contains("Atlantis"), "{message}");
    let (class, _) = tools.error("weather", json!({"days": 2})).await;
    assert_eq!(class, "invalid_arguments");
    let (class, _) = tools
        .error("weather", json!({"location": "Lisbon", "days": 30}))
        .await;
    assert_eq!(class, "invalid_arguments");
    tools.upstream.fail_next(503);
    let (class, message) = tools.error("weather", json!({"location": "Lisbon"})).await;
    assert_eq!(class, "upstream");
    assert!(
        message.contains("Open-Meteo geocoding answered 503 Service Unavailable"),
        "{message}"
    );
    tools.upstream.stall_next(Duration::from_secs(3));
    let (class, message) = tools.error("weather", json!({"location": "Lisbon"})).await;
    assert_eq!(class, "timeout");
    assert!(message.contains("500 ms"), "{message}");
    tools.stop().await;
}

#[tokio::test]
async fn stock_quote_uses_the_key_from_the_environment_and_never_shows_it() {
    let tools = Tools::keyed("", &[]).await;
    let quote = tools
        .call("stock_quote", json!({"symbol": "ibm"}))
        .await
        .unwrap();
    assert_eq!(quote["symbol"], "IBM");
    assert_eq!(quote["price"], 189.84);
    assert_eq!(quote["change_percent"], -0.2732);
    assert_eq!(quote["as_of"], "2025-05-30");
    assert_eq!(quote["source"], "Alpha Vantage");
    no_key_leaks(&quote.to_string());
    let request = &tools.upstream.requests()[0];
    assert_eq!(request.query["function"], "GLOBAL_QUOTE");
    assert_eq!(request.key.as_deref(), Some(upstreams::STOCK_KEY));

    let (class, message) = tools.error("stock_quote", json!({"symbol": "NOPE"})).await;
    assert_eq!(class, "invalid_arguments");
    assert!(message.contains("NOPE"));
    let (class, _) = tools.error("stock_quote", json!({"ticker": "IBM"})).await;
    assert_eq!(class, "invalid_arguments");
    tools.upstream.fail_next(500);
    let (class, message) = tools.error("stock_quote", json!({"symbol": "IBM"})).await;
    assert_eq!(class, "upstream");
    assert!(message.contains("500"), "{message}");
    // reqwest's errors name the URL, which holds Alpha Vantage's key: not here.
    no_key_leaks(&message);
    tools.stop().await;

    // Finnhub takes the key in a header.
    let tools = Tools::start(
        |u| u.tools_toml_with("finnhub", "gdelt", "searxng"),
        &FakeUpstreams::key_env(),
    )
    .await;
    let quote = tools
        .call("stock_quote", json!({"symbol": "AAPL"}))
        .await
        .unwrap();
    assert_eq!(quote["price"], 201.5);
    assert_eq!(quote["source"], "Finnhub");
    assert_eq!(
        tools.upstream.requests()[0].key.as_deref(),
        Some(upstreams::STOCK_KEY)
    );
    tools.stop().await;
}

#[tokio::test]
async fn a_tool_without_its_key_is_unavailable_and_says_what_to_set() {
    // The keys' variables are not set: the configuration still loads.
    let tools = Tools::start(
        |u| u.tools_toml_with("alpha_vantage", "newsapi", "brave"),
        &[],
    )
    .await;
    let (class, message) = tools.error("stock_quote", json!({"symbol": "IBM"})).await;
    assert_eq!(class, "unavailable");
    assert!(message.contains(upstreams::STOCK_KEY_ENV), "{message}");
    assert!(
        message.contains("tools.stock_quote.api_key_env"),
        "{message}"
    );
    let (class, message) = tools.error("news", json!({"query": "bikes"})).await;
    assert_eq!(class, "unavailable");
    assert!(message.contains(upstreams::NEWS_KEY_ENV), "{message}");
    let (class, _) = tools.error("web_search", json!({"query": "bikes"})).await;
    assert_eq!(class, "unavailable");
    // Nothing was sent upstream without a key.
    assert_eq!(tools.upstream.hits(), 0);
    tools.stop().await;
}

#[tokio::test]
async fn news_lists_recent_articles_from_gdelt_or_newsapi() {
    let tools = Tools::keyed("", &[]).await;
    let news = tools
        .call("news", json!({"query": "e-bikes", "max_results": 5}))
        .await
        .unwrap();
    let articles = news["articles"].as_array().unwrap();
    assert_eq!(articles.len(), 2);
    assert_eq!(articles[0]["title"], "e-bikes rises");
    assert_eq!(articles[0]["url"], "https://news.example/1");
    assert_eq!(articles[0]["source"], "news.example");
    assert_eq!(articles[0]["date"], "2025-05-30T10:15:00Z");
    let request = &tools.upstream.requests()[0];
    assert_eq!(request.query["mode"], "artlist");
    assert_eq!(request.query["maxrecords"], "5");
    assert_eq!(request.query["sort"], "datedesc");
    // GDELT's refusal of a query comes as text with status 200.
    let (class, message) = tools.error("news", json!({"query": "ab"})).await;
    assert_eq!(class, "invalid_arguments");
    assert!(message.contains("too short"), "{message}");
    let (class, _) = tools.error("news", json!({"query": ""})).await;
    assert_eq!(class, "invalid_arguments");
    tools.upstream.fail_next(502);
    let (class, message) = tools.error("news", json!({"query": "e-bikes"})).await;
    assert_eq!(class, "upstream");
    assert!(
        message.contains("GDELT answered 502 Bad Gateway"),
        "{message}"
    );
    tools.stop().await;

    let tools = Tools::start(
        |u| u.tools_toml_with("alpha_vantage", "newsapi", "searxng"),
        &FakeUpstreams::key_env(),
    )
    .await;
    let news = tools
        .call("news", json!({"query": "cycling"}))
        .await
        .unwrap();
    assert_eq!(news["articles"][0]["source"], "Example News");
    assert_eq!(news["articles"][0]["title"], "All about cycling");
    assert_eq!(news["source"], "NewsAPI");
    tools.stop().await;
}

#[tokio::test]
async fn web_search_asks_searxng_brave_or_tavily() {
    let tools = Tools::keyed("", &[]).await;
    let found = tools
        .call("web_search", json!({"query": "urban cycling"}))
        .await
        .unwrap();
    // SearXNG answers 12; the configured max_results (8) are kept.
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    assert_eq!(
        results[0],
        json!({"title": "urban cycling 1", "url": "https://searx.example/1",
            "snippet": "Result 1 about urban cycling."})
    );
    assert_eq!(tools.upstream.requests()[0].query["format"], "json");
    let (class, _) = tools.error("web_search", json!({"q": "x"})).await;
    assert_eq!(class, "invalid_arguments");
    tools.upstream.fail_next(500);
    let (class, message) = tools.error("web_search", json!({"query": "x y"})).await;
    assert_eq!(class, "upstream");
    assert!(message.contains("SearXNG answered 500"), "{message}");
    tools.stop().await;

    for (api, title) in [("brave", "Brave: e-bikes"), ("tavily", "Tavily: e-bikes")] {
        let tools = Tools::start(
            |u| u.tools_toml_with("alpha_vantage", "gdelt", api),
            &FakeUpstreams::key_env(),
        )
        .await;
        let found = tools
            .call("web_search", json!({"query": "e-bikes"}))
            .await
            .unwrap();
        assert_eq!(found["results"][0]["title"], title, "{api}");
        assert_eq!(
            tools.upstream.requests()[0].key.as_deref(),
            Some(upstreams::SEARCH_KEY)
        );
        no_key_leaks(&found.to_string());
        tools.stop().await;
    }

    // Not configured at all (the default): unavailable at once, saying what to set.
    let tools = Tools::start(|_| String::new(), &[]).await;
    let (class, message) = tools.error("web_search", json!({"query": "x"})).await;
    assert_eq!(class, "unavailable");
    assert!(message.contains("tools.web_search.provider"), "{message}");
    tools.stop().await;
}

/// `http_fetch` may reach the fake upstream on 127.0.0.1 (and nothing else private).
const ALLOW_LOOPBACK: &str = "\n[tools.ssrf]\nallow_networks = [\"127.0.0.1/32\"]\n\n[tools.http_fetch]\nmax_bytes = 65536\ntimeout_ms = 1500\n";

#[tokio::test]
async fn http_fetch_reads_pages_as_text_within_its_limits() {
    let tools = Tools::keyed(ALLOW_LOOPBACK, &[]).await;
    let u = &tools.upstream;
    let page = tools
        .call("http_fetch", json!({"url": u.page("article.html")}))
        .await
        .unwrap();
    assert_eq!(page["title"], "Cycling & safety in Lisbon");
    assert_eq!(page["status"], 200);
    assert_eq!(page["content_type"], "text/html; charset=utf-8");
    assert_eq!(page["final_url"], u.page("article.html"));
    let text = page["text"].as_str().unwrap();
    assert!(
        text.contains("Lisbon added 200 km of protected lanes."),
        "{text}"
    );
    assert!(text.contains("* Fewer crashes"), "{text}");
    assert!(text.contains("https://example.org/report"), "{text}");
    assert!(
        !text.contains("tracking") && !text.contains("color: red"),
        "{text}"
    );
    assert!(page.get("truncated").is_none());

    // Other text passes through; a page without a content type is sniffed.
    let notes = tools
        .call("http_fetch", json!({"url": u.page("notes.txt")}))
        .await
        .unwrap();
    assert_eq!(notes["text"], "Plain notes.\nLine two.\n");
    assert!(notes.get("title").is_none());
    let json_page = tools
        .call("http_fetch", json!({"url": u.page("data.json")}))
        .await
        .unwrap();
    assert_eq!(json_page["text"], r#"{"answer": 42}"#);
    let untyped = tools
        .call("http_fetch", json!({"url": u.page("untyped")}))
        .await
        .unwrap();
    assert_eq!(untyped["title"], "Cycling & safety in Lisbon");

    // A redirect on the allowed server is followed; the final URL says where it ended.
    let to = u.page("notes.txt");
    let redirected = tools
        .call(
            "http_fetch",
            json!({"url": format!("{}?to={to}", u.page("redirect"))}),
        )
        .await
        .unwrap();
    assert_eq!(redirected["final_url"], to);
    assert_eq!(redirected["text"], "Plain notes.\nLine two.\n");

    // Binaries are refused before their body is read.
    let (class, message) = tools
        .error("http_fetch", json!({"url": u.page("logo.png")}))
        .await;
    assert_eq!(class, "invalid_arguments");
    assert!(message.contains("image/png"), "{message}");
    // An endless body is read up to max_bytes and no further.
    let endless = tools
        .call("http_fetch", json!({"url": u.page("endless.txt")}))
        .await
        .unwrap();
    assert_eq!(endless["bytes_read"], 65536);
    assert_eq!(endless["truncated"], true);
    // A long page's text is cut to fit a result, and says so.
    let big = tools
        .call("http_fetch", json!({"url": u.page("big.html")}))
        .await
        .unwrap();
    assert_eq!(big["truncated"], true);
    assert!(big.to_string().len() <= shared::tools::MAX_RESULT_BYTES);
    // A page nested deeper than any real one is refused before it is parsed (the parser's
    // work grows with the square of the depth).
    let (class, message) = tools
        .error("http_fetch", json!({"url": u.page("deep.html")}))
        .await;
    assert_eq!(class, "upstream");
    assert!(
        message.contains("nests elements more than 512 deep"),
        "{message}"
    );
    // Slow pages time out; errors upstream carry the status; redirect loops end.
    let (class, _) = tools
        .error("http_fetch", json!({"url": u.page("slow")}))
        .await;
    assert_eq!(class, "timeout");
    let (class, message) = tools
        .error("http_fetch", json!({"url": u.page("missing")}))
        .await;
    assert_eq!(class, "upstream");
    assert!(message.contains("404 Not Found"), "{message}");
    let (class, message) = tools
        .error("http_fetch", json!({"url": u.page("loop")}))
        .await;
    assert_eq!(class, "upstream");
    assert!(message.contains("redirects more than 5 times"), "{message}");
    // Bad arguments.
    for bad in [json!({}), json!({"url": "not a url"}), json!({"url": 5})] {
        let (class, _) = tools.error("http_fetch", bad).await;
        assert_eq!(class, "invalid_arguments");
    }
    tools.stop().await;
}

#[tokio::test]
async fn the_ssrf_guard_refuses_every_forbidden_address_by_default() {
    // Nothing allowed: the fake upstream on 127.0.0.1 stands in for a service a model
    // should never reach.
    let tools = Tools::keyed("", &[]).await;
    let port = tools.upstream.addr.port();
    for (url, why) in [
        (
            format!("http://127.0.0.1:{port}/pages/notes.txt"),
            "127.0.0.1 is a loopback address",
        ),
        // The URL parser turns decimal, octal and hex hosts into 127.0.0.1 first.
        (
            format!("http://2130706433:{port}/pages/notes.txt"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://0177.0.0.1:{port}/pages/notes.txt"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://0x7f.1:{port}/pages/notes.txt"),
            "127.0.0.1 is a loopback address",
        ),
        (format!("http://[::1]:{port}/"), "::1 is a loopback address"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "::ffff:127.0.0.1 is an IPv4-mapped form of 127.0.0.1, a loopback address",
        ),
        (
            format!("http://[64:ff9b::7f00:1]:{port}/"),
            "64:ff9b::7f00:1 is a NAT64 form of 127.0.0.1, a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "169.254.169.254 is a cloud metadata address",
        ),
        (
            "http://[fd00:ec2::254]/latest/meta-data/".into(),
            "fd00:ec2::254 is a cloud metadata address",
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/".into(),
            "metadata.google.internal is a cloud metadata service",
        ),
        ("http://10.0.0.1/".into(), "10.0.0.1 is a private address"),
        (
            "http://172.16.5.4/".into(),
            "172.16.5.4 is a private address",
        ),
        (
            "http://192.168.1.1/".into(),
            "192.168.1.1 is a private address",
        ),
        (
            "http://100.64.0.1/".into(),
            "100.64.0.1 is a shared (carrier-grade NAT) address",
        ),
        (
            "http://169.254.1.1/".into(),
            "169.254.1.1 is a link-local address",
        ),
        (
            "http://[fe80::1]/".into(),
            "fe80::1 is a link-local address",
        ),
        (
            "http://[fc00::1]/".into(),
            "fc00::1 is a unique-local address",
        ),
        (
            "http://0.0.0.0/".into(),
            "0.0.0.0 is the unspecified address",
        ),
        ("http://[::]/".into(), ":: is the unspecified address"),
        (
            "http://224.0.0.1/".into(),
            "224.0.0.1 is a multicast address",
        ),
        (
            "http://255.255.255.255/".into(),
            "255.255.255.255 is the broadcast address",
        ),
        (
            "http://192.0.2.1/".into(),
            "192.0.2.1 is a documentation address",
        ),
        (
            "http://240.0.0.1/".into(),
            "240.0.0.1 is a reserved address",
        ),
        (
            "file:///etc/passwd".into(),
            "only http and https URLs may be fetched, not file:",
        ),
        (
            "ftp://example.com/".into(),
            "only http and https URLs may be fetched, not ftp:",
        ),
        (
            "http://user:secret@example.com/".into(),
            "URLs with credentials (user:password@) are refused",
        ),
    ] {
        let (class, message) = tools.error("http_fetch", json!({"url": url})).await;
        assert_eq!((class.as_str(), message.as_str()), ("denied", why), "{url}");
    }
    // A name is checked on what it resolves to.
    let (class, message) = tools
        .error(
            "http_fetch",
            json!({"url": format!("http://localhost:{port}/pages/notes.txt")}),
        )
        .await;
    assert_eq!(class, "denied");
    assert!(
        message.starts_with("localhost resolves to") && message.ends_with("a loopback address"),
        "{message}"
    );
    assert_eq!(tools.upstream.hits(), 0, "a refused URL reached the server");
    tools.stop().await;
}

#[tokio::test]
async fn every_redirect_hop_is_checked_again() {
    // The fake upstream on 127.0.0.1 is allowed; a second server on 127.0.0.2 (same port)
    // is not, nor is anything else private.
    let upstream = FakeUpstreams::start().await.unwrap();
    let port = upstream.addr.port();
    let forbidden = FakeUpstreams::bind(format!("127.0.0.2:{port}").parse().unwrap())
        .await
        .unwrap();
    let tools = Tools::start_on(
        upstream,
        |u| u.tools_toml() + ALLOW_LOOPBACK,
        &FakeUpstreams::key_env(),
    )
    .await;
    for (to, why) in [
        (
            "http://169.254.169.254/latest/meta-data/iam/".to_owned(),
            "169.254.169.254 is a cloud metadata address".to_owned(),
        ),
        (
            format!("http://127.0.0.2:{port}/pages/notes.txt"),
            "127.0.0.2 is a loopback address".to_owned(),
        ),
        (
            format!("http://0x7f.0.0.2:{port}/pages/notes.txt"),
            "127.0.0.2 is a loopback address".to_owned(),
        ),
        (
            format!("http://[::1]:{port}/"),
            "::1 is a loopback address".to_owned(),
        ),
        (
            "http://10.1.1.1/".to_owned(),
            "10.1.1.1 is a private address".to_owned(),
        ),
        (
            "gopher://127.0.0.1/".to_owned(),
            "only http and https URLs may be fetched, not gopher:".to_owned(),
        ),
    ] {
        let url = format!("{}?to={to}", tools.upstream.page("redirect"));
        let (class, message) = tools.error("http_fetch", json!({"url": url})).await;
        assert_eq!(
            (class.as_str(), message.as_str()),
            ("denied", why.as_str()),
            "{to}"
        );
    }
    // The allowed server was asked every time; the forbidden one never.
    assert_eq!(tools.upstream.hits(), 6);
    assert_eq!(forbidden.hits(), 0);
    tools.stop().await;
}

#[tokio::test]
async fn offline_the_researcher_calls_web_search_and_the_step_still_completes() {
    // The default configuration: no search API, so `web_search` answers `unavailable` at
    // once; the simulated model reads that and answers; the step completes.
    let mut stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    stack.start_tools().await;
    let task = run_task(
        &stack,
        json!({"goal": "Find sources on urban cycling", "team": "research", "steps": [
            {"id": "sources", "capability": "research", "instruction": "Find sources"}]}),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let sources = step(&task, "sources");
    assert_eq!(sources["agent"], "researcher", "{sources:#}");
    let call = &sources["tool_calls"][0];
    assert_eq!(call["name"], "web_search", "{sources:#}");
    assert_eq!(call["outcome"], "error");
    assert_eq!(call["class"], "unavailable");
    assert!(
        sources["output"]
            .as_str()
            .unwrap()
            .contains("The tool failed (unavailable)"),
        "{sources:#}"
    );
    stack.stop().await;
}
