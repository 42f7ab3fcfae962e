//! `[tools.weather]`, `[tools.stock_quote]`, `[tools.news]`, `[tools.web_search]`,
//! `[tools.http_fetch]` and `[tools.ssrf]`: where the web-facing built-in tools find their
//! upstreams, which environment variable holds each key, their time and size limits, and
//! the networks an operator lets model-given URLs reach. `docs/tools.md` documents them.

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::Problems;
use super::providers::{ApiKey, read_keys};

/// Time one upstream call of a tool may take, answer included: under the tool loop's
/// default `call_timeout_ms` (10 s), so a slow upstream is reported by the tool itself as
/// `timeout` (with what it was waiting for) rather than by the loop.
const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 8_000;
/// Results a list-returning tool asks its upstream for: enough to choose from, few enough
/// that the result stays a small part of the model's context.
const DEFAULT_MAX_RESULTS: usize = 8;
/// Most results a caller may configure: each costs the model tokens on every later round.
const MAX_RESULTS_CAP: usize = 50;
/// Open-Meteo's geocoding API: keyless, free for non-commercial use.
const DEFAULT_GEOCODING_URL: &str = "https://geocoding-api.open-meteo.com/v1/search";
/// Open-Meteo's forecast API: keyless, free for non-commercial use.
const DEFAULT_FORECAST_URL: &str = "https://api.open-meteo.com/v1/forecast";
/// Bytes of a fetched page read at most: a long article's HTML is a few hundred KiB; past
/// this the rest is not read (the connection is dropped) and the text says it was cut.
const DEFAULT_FETCH_MAX_BYTES: usize = 2 << 20;
/// Highest `max_bytes`: the whole body is held in memory while it is converted.
const FETCH_MAX_BYTES_CAP: usize = 32 << 20;
/// Redirects `http_fetch` follows (each hop checked again): what real sites chain
/// (http → https → www → a login wall) with room to spare, and a loop ends quickly.
const DEFAULT_MAX_REDIRECTS: usize = 5;
/// Highest `max_redirects`.
const MAX_REDIRECTS_CAP: usize = 20;

/// Where a tool's upstream lives and which variable holds its key, resolved from a
/// provider's preset and the operator's overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "P: Deserialize<'de>"))]
pub struct Upstream<P> {
    /// Which API to call; `None` only where the tool has no default (`web_search`).
    #[serde(default)]
    pub provider: Option<P>,
    /// The API's base URL; defaults to the provider's public one.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Variable holding the API key (never the key itself); defaults to the provider's.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Time one call may take, reading the answer included.
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// Results asked for (tools that return a list).
    #[serde(default = "default_max_results")]
    pub max_results: usize,
    /// The key, read from the environment at load time; `None` when the variable is unset
    /// (the tool then answers `unavailable`, naming the variable).
    #[serde(skip)]
    pub key: Option<ApiKey>,
}

impl<P> Default for Upstream<P> {
    fn default() -> Self {
        Self {
            provider: None,
            base_url: None,
            api_key_env: None,
            timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
            max_results: DEFAULT_MAX_RESULTS,
            key: None,
        }
    }
}

/// A tool upstream's API: its public base URL and the variable its key is read from.
pub trait UpstreamApi: Copy {
    /// The API's public base URL, if it has one (a self-hosted SearXNG has none).
    fn default_base_url(self) -> Option<&'static str>;
    /// The variable the key is read from unless `api_key_env` says otherwise; `None`:
    /// the API takes no key.
    fn default_key_env(self) -> Option<&'static str>;
    /// The name used in messages and docs.
    fn label(self) -> &'static str;
}

impl<P: UpstreamApi> Upstream<P> {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The configured base URL, else the provider's, without a trailing `/`.
    pub fn base_url(&self) -> Option<&str> {
        self.base_url
            .as_deref()
            .or_else(|| self.provider.and_then(P::default_base_url))
            .map(|u| u.trim_end_matches('/'))
    }

    /// The variable the key is read from, if the API takes one.
    pub fn key_env(&self) -> Option<String> {
        self.api_key_env.clone().or_else(|| {
            self.provider
                .and_then(P::default_key_env)
                .map(str::to_owned)
        })
    }

    fn resolve_key(&mut self, env: &std::collections::HashMap<String, String>) {
        self.key = self
            .key_env()
            .and_then(|var| read_keys(&[var], env).0.into_iter().next());
    }

    fn validate(&self, p: &mut Problems, key: &str) {
        if let Some(url) = self.base_url() {
            check_url(p, &format!("{key}.base_url"), url);
        } else if let Some(provider) = self.provider {
            p.add(
                &format!("{key}.base_url"),
                format!("is required for {}", provider.label()),
            );
        }
        if let Some(var) = &self.api_key_env
            && var.trim().is_empty()
        {
            p.add(&format!("{key}.api_key_env"), "must not be empty");
        }
        if self.timeout_ms == 0 {
            p.add(&format!("{key}.timeout_ms"), "must be greater than 0");
        }
        if !(1..=MAX_RESULTS_CAP).contains(&self.max_results) {
            p.add(
                &format!("{key}.max_results"),
                format!("must be from 1 to {MAX_RESULTS_CAP}"),
            );
        }
    }
}

/// `stock_quote`'s API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockApi {
    /// Alpha Vantage's `GLOBAL_QUOTE`.
    AlphaVantage,
    /// Finnhub's `/quote`.
    Finnhub,
}

impl UpstreamApi for StockApi {
    fn default_base_url(self) -> Option<&'static str> {
        Some(match self {
            StockApi::AlphaVantage => "https://www.alphavantage.co",
            StockApi::Finnhub => "https://finnhub.io/api/v1",
        })
    }
    fn default_key_env(self) -> Option<&'static str> {
        Some(match self {
            StockApi::AlphaVantage => "ALPHA_VANTAGE_API_KEY",
            StockApi::Finnhub => "FINNHUB_API_KEY",
        })
    }
    fn label(self) -> &'static str {
        match self {
            StockApi::AlphaVantage => "alpha_vantage",
            StockApi::Finnhub => "finnhub",
        }
    }
}

/// `news`'s API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NewsApi {
    /// The GDELT DOC 2.0 API: keyless.
    Gdelt,
    /// NewsAPI.org's `/v2/everything`.
    Newsapi,
}

impl UpstreamApi for NewsApi {
    fn default_base_url(self) -> Option<&'static str> {
        Some(match self {
            NewsApi::Gdelt => "https://api.gdeltproject.org/api/v2/doc/doc",
            NewsApi::Newsapi => "https://newsapi.org",
        })
    }
    fn default_key_env(self) -> Option<&'static str> {
        match self {
            NewsApi::Gdelt => None,
            NewsApi::Newsapi => Some("NEWSAPI_API_KEY"),
        }
    }
    fn label(self) -> &'static str {
        match self {
            NewsApi::Gdelt => "gdelt",
            NewsApi::Newsapi => "newsapi",
        }
    }
}

/// `web_search`'s API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchApi {
    /// A SearXNG instance (`base_url` required, JSON output enabled on it).
    Searxng,
    /// The Brave Search API.
    Brave,
    /// Tavily's search API.
    Tavily,
}

impl UpstreamApi for SearchApi {
    fn default_base_url(self) -> Option<&'static str> {
        match self {
            SearchApi::Searxng => None,
            SearchApi::Brave => Some("https://api.search.brave.com/res/v1"),
            SearchApi::Tavily => Some("https://api.tavily.com"),
        }
    }
    fn default_key_env(self) -> Option<&'static str> {
        match self {
            SearchApi::Searxng => None,
            SearchApi::Brave => Some("BRAVE_SEARCH_API_KEY"),
            SearchApi::Tavily => Some("TAVILY_API_KEY"),
        }
    }
    fn label(self) -> &'static str {
        match self {
            SearchApi::Searxng => "searxng",
            SearchApi::Brave => "brave",
            SearchApi::Tavily => "tavily",
        }
    }
}

/// `[tools.weather]`: Open-Meteo, keyless.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeatherConfig {
    #[serde(default = "default_geocoding_url")]
    pub geocoding_url: String,
    #[serde(default = "default_forecast_url")]
    pub forecast_url: String,
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for WeatherConfig {
    fn default() -> Self {
        Self {
            geocoding_url: default_geocoding_url(),
            forecast_url: default_forecast_url(),
            timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
        }
    }
}

impl WeatherConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `[tools.http_fetch]`: the limits of one fetch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFetchConfig {
    /// Time the whole fetch may take, every redirect and the body included.
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// Bytes of the body read at most (streamed; the rest is never read).
    #[serde(default = "default_fetch_max_bytes")]
    pub max_bytes: usize,
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
}

impl Default for HttpFetchConfig {
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
            max_bytes: DEFAULT_FETCH_MAX_BYTES,
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }
}

impl HttpFetchConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `[tools.ssrf]`: what a URL a model gives may reach beyond the public internet. Nothing
/// by default: loopback, private, link-local, metadata and reserved addresses are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsrfConfig {
    /// Networks (`10.1.2.0/24`, `127.0.0.1/32`, `fd00::/8`) allowed although refused by
    /// default.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Host names (exact, case-insensitive) whose addresses are allowed whatever they are.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

impl SsrfConfig {
    /// The allowed networks; the ones that do not parse are left out (and reported by
    /// validation).
    pub fn networks(&self) -> Vec<IpNet> {
        self.allow_networks
            .iter()
            .filter_map(|n| parse_network(n))
            .collect()
    }

    fn validate(&self, p: &mut Problems) {
        for (i, network) in self.allow_networks.iter().enumerate() {
            if parse_network(network).is_none() {
                p.add(
                    &format!("tools.ssrf.allow_networks[{i}]"),
                    format!(
                        "`{network}` is not a network (e.g. 10.0.0.0/8, 127.0.0.1/32, fd00::/8)"
                    ),
                );
            }
        }
        for (i, host) in self.allow_hosts.iter().enumerate() {
            if host.trim().is_empty() || host.contains(['/', ':', ' ', '@']) {
                p.add(
                    &format!("tools.ssrf.allow_hosts[{i}]"),
                    "must be a host name (no scheme, port or path)",
                );
            }
        }
    }
}

/// A network as CIDR, or one address (a /32 or /128).
fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

impl super::ToolsConfig {
    /// Reads each web tool's key from `env` (the variable its `api_key_env` or provider
    /// names): an unset variable is no configuration problem, the tool answers
    /// `unavailable` naming it.
    pub(crate) fn resolve_keys(&mut self, env: &std::collections::HashMap<String, String>) {
        // A section written without `provider` keeps the tool's default API.
        self.stock_quote
            .provider
            .get_or_insert(StockApi::AlphaVantage);
        self.news.provider.get_or_insert(NewsApi::Gdelt);
        self.stock_quote.resolve_key(env);
        self.news.resolve_key(env);
        self.web_search.resolve_key(env);
    }

    pub(crate) fn validate_web_tools(&self, p: &mut Problems) {
        check_url(
            p,
            "tools.weather.geocoding_url",
            &self.weather.geocoding_url,
        );
        check_url(p, "tools.weather.forecast_url", &self.weather.forecast_url);
        if self.weather.timeout_ms == 0 {
            p.add("tools.weather.timeout_ms", "must be greater than 0");
        }
        self.stock_quote.validate(p, "tools.stock_quote");
        self.news.validate(p, "tools.news");
        self.web_search.validate(p, "tools.web_search");
        let fetch = &self.http_fetch;
        if fetch.timeout_ms == 0 {
            p.add("tools.http_fetch.timeout_ms", "must be greater than 0");
        }
        if !(1..=FETCH_MAX_BYTES_CAP).contains(&fetch.max_bytes) {
            p.add(
                "tools.http_fetch.max_bytes",
                format!("must be from 1 to {FETCH_MAX_BYTES_CAP}"),
            );
        }
        if fetch.max_redirects > MAX_REDIRECTS_CAP {
            p.add(
                "tools.http_fetch.max_redirects",
                format!("must be at most {MAX_REDIRECTS_CAP}"),
            );
        }
        self.ssrf.validate(p);
    }
}

fn check_url(p: &mut Problems, key: &str, url: &str) {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        p.add(key, "must start with http:// or https://");
    }
}

fn default_upstream_timeout_ms() -> u64 {
    DEFAULT_UPSTREAM_TIMEOUT_MS
}
fn default_max_results() -> usize {
    DEFAULT_MAX_RESULTS
}
fn default_geocoding_url() -> String {
    DEFAULT_GEOCODING_URL.to_owned()
}
fn default_forecast_url() -> String {
    DEFAULT_FORECAST_URL.to_owned()
}
fn default_fetch_max_bytes() -> usize {
    DEFAULT_FETCH_MAX_BYTES
}
fn default_max_redirects() -> usize {
    DEFAULT_MAX_REDIRECTS
}
pub(crate) fn default_stock_upstream() -> Upstream<StockApi> {
    Upstream {
        provider: Some(StockApi::AlphaVantage),
        ..Upstream::default()
    }
}
pub(crate) fn default_news_upstream() -> Upstream<NewsApi> {
    Upstream {
        provider: Some(NewsApi::Gdelt),
        ..Upstream::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{Config, DEFAULT_TOML, Source};
    use super::*;

    fn load(extra: &str, env: &[(&str, &str)]) -> Result<Config, super::super::ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(Source::Toml(&format!("{DEFAULT_TOML}\n{extra}")), &env)
    }

    #[test]
    fn defaults_are_keyless_public_apis_and_no_search() {
        let tools = load("", &[]).unwrap().tools;
        assert_eq!(tools.weather.geocoding_url, DEFAULT_GEOCODING_URL);
        assert_eq!(tools.stock_quote.provider, Some(StockApi::AlphaVantage));
        assert_eq!(
            tools.stock_quote.base_url(),
            Some("https://www.alphavantage.co")
        );
        assert_eq!(
            tools.stock_quote.key_env().as_deref(),
            Some("ALPHA_VANTAGE_API_KEY")
        );
        // No key in the environment: no problem, no key; the tool says what is missing.
        assert!(tools.stock_quote.key.is_none());
        assert_eq!(tools.news.provider, Some(NewsApi::Gdelt));
        assert_eq!(tools.news.key_env(), None);
        assert_eq!(tools.web_search.provider, None);
        assert_eq!(tools.web_search.base_url(), None);
        assert!(tools.ssrf.networks().is_empty());
        assert_eq!(tools.http_fetch.max_redirects, DEFAULT_MAX_REDIRECTS);
    }

    #[test]
    fn keys_come_from_the_variables_named() {
        let tools = load(
            "[tools.stock_quote]\nprovider = \"finnhub\"\n[tools.web_search]\nprovider = \"brave\"\napi_key_env = \"MY_BRAVE\"\n",
            &[("FINNHUB_API_KEY", " fh-key \n"), ("MY_BRAVE", "brave-key")],
        )
        .unwrap()
        .tools;
        let stock = tools.stock_quote.key.as_ref().unwrap();
        assert_eq!(stock.label, "FINNHUB_API_KEY");
        assert_eq!(stock.secret.expose(), "fh-key");
        assert_eq!(
            format!("{:?}", tools.stock_quote).matches("fh-key").count(),
            0
        );
        assert_eq!(
            tools.web_search.key.as_ref().unwrap().secret.expose(),
            "brave-key"
        );
        assert_eq!(
            tools.web_search.base_url(),
            Some("https://api.search.brave.com/res/v1")
        );
        // A section without `provider` keeps the tool's default API.
        let tools = load("[tools.news]\nmax_results = 3\n", &[]).unwrap().tools;
        assert_eq!(tools.news.provider, Some(NewsApi::Gdelt));
        assert_eq!(tools.news.max_results, 3);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let err = load(
            r#"
[tools.weather]
forecast_url = "ftp://example.com"
timeout_ms = 0

[tools.stock_quote]
base_url = "example.com"
api_key_env = " "

[tools.news]
max_results = 0

[tools.web_search]
provider = "searxng"

[tools.http_fetch]
max_bytes = 0
max_redirects = 21
timeout_ms = 0

[tools.ssrf]
allow_networks = ["10.0.0.0/8", "10.0.0.0/33", "nonsense"]
allow_hosts = ["ok.example", "http://bad.example/"]
"#,
            &[],
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tools.weather.forecast_url",
                "tools.weather.timeout_ms",
                "tools.stock_quote.base_url",
                "tools.stock_quote.api_key_env",
                "tools.news.max_results",
                "tools.web_search.base_url",
                "tools.http_fetch.timeout_ms",
                "tools.http_fetch.max_bytes",
                "tools.http_fetch.max_redirects",
                "tools.ssrf.allow_networks[1]",
                "tools.ssrf.allow_networks[2]",
                "tools.ssrf.allow_hosts[1]",
            ],
            "{err}"
        );
        assert!(err.to_string().contains("is required for searxng"), "{err}");
        // Unknown keys are refused.
        assert!(load("[tools.weather]\nkey = \"x\"\n", &[]).is_err());
    }

    #[test]
    fn allowed_networks_take_addresses_and_come_from_the_environment() {
        let tools = load(
            "",
            &[(
                "SWITCHYARD__TOOLS__SSRF__ALLOW_NETWORKS",
                "127.0.0.1,fd00::/8",
            )],
        )
        .unwrap()
        .tools;
        let networks: Vec<String> = tools
            .ssrf
            .networks()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(networks, ["127.0.0.1/32", "fd00::/8"]);
    }
}
