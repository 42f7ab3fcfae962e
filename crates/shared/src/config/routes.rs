//! Routes: a model alias callers put in `model` (`fast`, `smart`, any name) with its
//! targets (provider + model + optional key pool), the strategy that orders them, and the
//! routes to fall back to on context-length and content-filter refusals. A `model` of the
//! form `provider/model` addresses one target directly, without a route.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::prices::Price;
use super::providers::{Adapter, ApiKey, ProviderConfig, read_keys};
use super::{Problems, default_capability};
use crate::Capability;
use crate::tokens::{Encoding, Window};

/// Longest chain of fallback routes followed for one task; guards against cycles.
pub const MAX_FALLBACK_HOPS: usize = 4;
/// The simulated provider's window: a modern model's, so `switchyard up` budgets like one.
pub const SIMULATED_WINDOW: u32 = 128_000;
/// The smallest window configurable: room for a system prompt, an instruction and an answer.
pub const MIN_WINDOW: u32 = 256;

/// How a route orders its targets for each task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The configured order: the first is preferred, the rest are fallbacks.
    #[default]
    Priority,
    /// A random order drawn by `weight`: traffic splits across targets.
    Weighted,
    /// Lowest recent latency first (an exponentially weighted moving average).
    Latency,
    /// Cheapest first, by the configured price per million tokens.
    Cost,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default = "default_capability")]
    pub capability: String,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// Shorthand for a route with one target: its provider…
    #[serde(default)]
    pub provider: Option<String>,
    /// …and its model.
    #[serde(default)]
    pub model: Option<String>,
    /// Route to try when a target says the prompt exceeds its context window.
    #[serde(default)]
    pub context_length_fallback: Option<String>,
    /// Route to try when a target refuses the content.
    #[serde(default)]
    pub content_filter_fallback: Option<String>,
    /// Context window (tokens) of every target that gives none itself.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// Tokens kept back for the answer, for every target that gives none itself.
    #[serde(default)]
    pub output_reserve: Option<u32>,
}

impl RouteConfig {
    /// The smallest window among the targets, with that target's output reserve and
    /// encoding: what a prompt must fit when failover may send it to any of them.
    pub fn smallest_window(&self) -> Option<Window> {
        self.targets
            .iter()
            .map(TargetConfig::budget)
            .min_by_key(|w| w.tokens)
    }

    /// The largest window among the targets: a prompt that does not fit it fits none.
    pub fn largest_window(&self) -> Option<u32> {
        self.targets.iter().map(TargetConfig::window).max()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Provider name, a key of `[providers]`.
    pub provider: String,
    /// Model name sent to the provider.
    pub model: String,
    /// Share of traffic under the `weighted` strategy.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// This target's own key pool (variable names); empty means the provider's pool.
    #[serde(default)]
    pub api_key_envs: Vec<String>,
    /// USD per million prompt tokens: this model's price, as `[prices]` would set it.
    #[serde(default)]
    pub input_cost_per_mtok: Option<f64>,
    /// USD per million completion tokens: this model's price, as `[prices]` would set it.
    #[serde(default)]
    pub output_cost_per_mtok: Option<f64>,
    /// The key pool, read from the environment at load time (the provider's when empty).
    #[serde(skip)]
    pub keys: Vec<ApiKey>,
    /// The model's price, from the target or `[prices]`, resolved at load time.
    #[serde(skip)]
    pub price: Option<Price>,
    /// The model's context window in tokens, prompt and answer together; defaults to the
    /// route's, else the model family's (`shared::tokens::default_window`), else 128000 on
    /// the simulated provider.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// Tokens kept back for the answer when a prompt is budgeted, and assumed for a chat
    /// request without `max_tokens`; defaults to the route's, else 4096 (at most a quarter
    /// of the window).
    #[serde(default)]
    pub output_reserve: Option<u32>,
}

impl TargetConfig {
    /// A target with the provider's defaults: how `provider/model` is addressed directly.
    pub fn direct(provider: &str, model: &str, config: &ProviderConfig) -> Self {
        Self {
            provider: provider.to_owned(),
            model: model.to_owned(),
            weight: default_weight(),
            api_key_envs: Vec::new(),
            input_cost_per_mtok: None,
            output_cost_per_mtok: None,
            keys: config.keys.clone(),
            price: None,
            context_window: (config.kind.adapter() == Adapter::Simulated)
                .then_some(SIMULATED_WINDOW),
            output_reserve: None,
        }
    }

    /// The context window: configured, else the model family's.
    pub fn window(&self) -> u32 {
        self.context_window
            .unwrap_or_else(|| crate::tokens::default_window(&self.model))
    }

    /// Tokens kept back for the answer: configured, else the default for the window.
    pub fn reserve(&self) -> u32 {
        self.output_reserve
            .unwrap_or_else(|| crate::tokens::default_output_reserve(self.window()))
    }

    /// The window, reserve and encoding a prompt for this target is budgeted with.
    pub fn budget(&self) -> Window {
        Window {
            tokens: self.window(),
            reserve: self.reserve(),
            encoding: Encoding::of(&self.model),
        }
    }

    /// The price the target itself sets, when it sets one (an unset half is 0).
    pub fn own_price(&self) -> Option<Price> {
        (self.input_cost_per_mtok.is_some() || self.output_cost_per_mtok.is_some()).then(|| Price {
            input_per_mtok: self.input_cost_per_mtok.unwrap_or(0.0),
            output_per_mtok: self.output_cost_per_mtok.unwrap_or(0.0),
        })
    }

    /// Price of a typical call (one input and one output token) for ordering by cost; a
    /// model without a price counts as free.
    pub fn unit_cost(&self) -> f64 {
        self.price
            .or_else(|| self.own_price())
            .map_or(0.0, |p| p.unit())
    }
}

/// Splits `provider/model` when it may be addressed directly: `provider` is configured and
/// `model` is one of its `direct_models` or the model of one of its targets in `routes`.
/// The model may contain `/` itself (`openrouter/meta-llama/llama-3.1-8b-instruct`). Any
/// other model is refused rather than called: each addressable model may get a record in the
/// shared health bucket, and callers must not be able to grow it without bound.
pub fn split_direct<'a>(
    name: &'a str,
    providers: &BTreeMap<String, ProviderConfig>,
    routes: &BTreeMap<String, RouteConfig>,
) -> Option<(&'a str, &'a str)> {
    let (provider, model) = name.split_once('/')?;
    let config = providers.get(provider)?;
    let listed = config.direct_models.iter().any(|m| m == model);
    let routed = || {
        routes
            .values()
            .flat_map(|r| &r.targets)
            .any(|t| t.provider == provider && t.model == model)
    };
    (!model.trim().is_empty() && (listed || routed())).then_some((provider, model))
}

/// Turns the one-target shorthand into `targets` and reads every target's key pool.
/// Returns the variables that were not set, by the key they were configured under.
pub(crate) fn resolve_route(
    name: &str,
    route: &mut RouteConfig,
    providers: &BTreeMap<String, ProviderConfig>,
    env: &HashMap<String, String>,
) -> Vec<(String, String)> {
    if route.targets.is_empty()
        && let (Some(provider), Some(model)) = (route.provider.clone(), route.model.clone())
    {
        route.targets.push(TargetConfig {
            provider,
            model,
            weight: default_weight(),
            api_key_envs: Vec::new(),
            input_cost_per_mtok: None,
            output_cost_per_mtok: None,
            keys: Vec::new(),
            price: None,
            context_window: None,
            output_reserve: None,
        });
    }
    let mut missing = Vec::new();
    for (i, target) in route.targets.iter_mut().enumerate() {
        let simulated = providers
            .get(&target.provider)
            .is_some_and(|p| p.kind.adapter() == Adapter::Simulated);
        target.context_window = target
            .context_window
            .or(route.context_window)
            .or(simulated.then_some(SIMULATED_WINDOW));
        target.output_reserve = target.output_reserve.or(route.output_reserve);
        if target.api_key_envs.is_empty() {
            target.keys = providers
                .get(&target.provider)
                .map(|p| p.keys.clone())
                .unwrap_or_default();
        } else {
            let (keys, unset) = read_keys(&target.api_key_envs, env);
            target.keys = keys;
            missing.extend(
                unset
                    .into_iter()
                    .map(|var| (format!("routes.{name}.targets[{i}].api_key_envs"), var)),
            );
        }
    }
    missing
}

pub(crate) fn validate_route(
    p: &mut Problems,
    name: &str,
    route: &RouteConfig,
    routes: &BTreeMap<String, RouteConfig>,
    providers: &BTreeMap<String, ProviderConfig>,
) {
    let key = format!("routes.{name}");
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.add(&key, "route names must be non-empty without whitespace");
    }
    if name.contains('/') {
        p.add(
            &key,
            "route names must not contain '/', which addresses provider/model directly",
        );
    }
    if let Err(e) = route.capability.parse::<Capability>() {
        p.add(
            &format!("{key}.capability"),
            format!("{:?} {e}", route.capability),
        );
    }
    let shorthand = route.provider.is_some() || route.model.is_some();
    if shorthand && route.targets.len() > 1 {
        p.add(&key, "give either provider and model, or targets, not both");
    }
    if shorthand && (route.provider.is_none() || route.model.is_none()) {
        p.add(&key, "provider and model go together");
    }
    if route.targets.is_empty() && !shorthand {
        p.add(&format!("{key}.targets"), "at least one target is needed");
    }
    for (i, target) in route.targets.iter().enumerate() {
        let tkey = if shorthand {
            key.clone()
        } else {
            format!("{key}.targets[{i}]")
        };
        if !providers.contains_key(&target.provider) {
            p.add(
                &format!("{tkey}.provider"),
                format!("{:?} is not a configured provider", target.provider),
            );
        }
        if target.model.trim().is_empty() {
            p.add(&format!("{tkey}.model"), "must not be empty");
        }
        if target.weight == 0 && route.strategy == Strategy::Weighted {
            p.add(&format!("{tkey}.weight"), "must be greater than 0");
        }
        if target.window() < MIN_WINDOW {
            p.add(
                &format!("{tkey}.context_window"),
                format!("must be at least {MIN_WINDOW} tokens"),
            );
        } else if target.reserve() >= target.window() / 2 {
            p.add(
                &format!("{tkey}.output_reserve"),
                format!(
                    "must be less than half the context window ({} tokens)",
                    target.window()
                ),
            );
        }
        for (field, cost) in [
            ("input_cost_per_mtok", target.input_cost_per_mtok),
            ("output_cost_per_mtok", target.output_cost_per_mtok),
        ] {
            if cost.is_some_and(|c| !c.is_finite() || c < 0.0) {
                p.add(&format!("{tkey}.{field}"), "must be a price of 0 or more");
            }
        }
    }
    for (field, fallback) in [
        ("context_length_fallback", &route.context_length_fallback),
        ("content_filter_fallback", &route.content_filter_fallback),
    ] {
        match fallback {
            Some(f) if f == name => p.add(&format!("{key}.{field}"), "must name another route"),
            Some(f) if !routes.contains_key(f) => p.add(
                &format!("{key}.{field}"),
                format!("{f:?} is not a configured route"),
            ),
            Some(f) if routes[f].capability != route.capability => p.add(
                &format!("{key}.{field}"),
                format!("{f:?} serves another capability"),
            ),
            _ => {}
        }
    }
}

fn default_weight() -> u32 {
    1
}
