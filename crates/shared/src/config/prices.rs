//! What models cost: USD per million input (prompt) and output (completion) tokens, keyed
//! `provider/model` as a caller addresses one model (`[prices."openai/gpt-4o-mini"]`). A
//! workflow's step costs its tokens at the price of the model that answered it, which is what
//! makes `budget.max_cost_usd` bite; a `cost` route orders its targets by the same prices.
//! No prices ship: they change, and a made-up number would be worse than none. A model
//! without a price costs 0 and its usage says `cost_known: false`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Problems;
use super::providers::ProviderConfig;
use super::routes::RouteConfig;

/// Prices are quoted per this many tokens.
pub const TOKENS_PER_PRICE_UNIT: f64 = 1_000_000.0;

/// One model's price.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million prompt tokens.
    pub input_per_mtok: f64,
    /// USD per million completion tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// What a call that used these tokens cost, in USD.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        // u64 → f64 rounds only above 2^53 tokens, far beyond any bill.
        let (input, output) = (prompt_tokens as f64, completion_tokens as f64);
        (input * self.input_per_mtok + output * self.output_per_mtok) / TOKENS_PER_PRICE_UNIT
    }

    /// Price of a typical call (one input and one output token), for ordering by cost.
    pub fn unit(&self) -> f64 {
        self.input_per_mtok + self.output_per_mtok
    }
}

/// The key a model's price is listed under.
pub fn price_key(provider: &str, model: &str) -> String {
    format!("{provider}/{model}")
}

/// The price of `provider`/`model`: its `[prices]` entry, else the price a route target
/// for it sets (`input_cost_per_mtok`, `output_cost_per_mtok`). `validate_prices` makes
/// sure the two never disagree, so the first found is the one.
pub(crate) fn lookup(
    prices: &BTreeMap<String, Price>,
    routes: &BTreeMap<String, RouteConfig>,
    provider: &str,
    model: &str,
) -> Option<Price> {
    prices
        .get(&price_key(provider, model))
        .copied()
        .or_else(|| {
            routes
                .values()
                .flat_map(|r| &r.targets)
                .filter(|t| t.provider == provider && t.model == model)
                .find_map(super::TargetConfig::own_price)
        })
}

/// Every problem with `[prices]`: keys that are not `provider/model` of a configured
/// provider, prices that are not a number of 0 or more, and route targets whose own price
/// for a model differs from its `[prices]` entry or from another target's.
pub(crate) fn validate_prices(
    p: &mut Problems,
    prices: &BTreeMap<String, Price>,
    routes: &BTreeMap<String, RouteConfig>,
    providers: &BTreeMap<String, ProviderConfig>,
) {
    for (key, price) in prices {
        let field = format!("prices.{key:?}");
        match key.split_once('/') {
            Some((provider, model)) if !model.trim().is_empty() => {
                if !providers.contains_key(provider) {
                    p.add(&field, format!("{provider:?} is not a configured provider"));
                }
            }
            _ => p.add(&field, "must be named provider/model"),
        }
        for (name, value) in [
            ("input_per_mtok", price.input_per_mtok),
            ("output_per_mtok", price.output_per_mtok),
        ] {
            if !value.is_finite() || value < 0.0 {
                p.add(&format!("{field}.{name}"), "must be a price of 0 or more");
            }
        }
    }
    // The first price seen for each model, and where it was set.
    let mut seen: BTreeMap<String, (Price, String)> = prices
        .iter()
        .map(|(k, price)| (k.clone(), (*price, format!("prices.{k:?}"))))
        .collect();
    for (name, route) in routes {
        for (i, target) in route.targets.iter().enumerate() {
            let Some(price) = target.own_price() else {
                continue;
            };
            let here = format!("routes.{name}.targets[{i}]");
            let key = price_key(&target.provider, &target.model);
            match seen.get(&key) {
                Some((first, there)) if *first != price => p.add(
                    &here,
                    format!(
                        "its price for {key} differs from the one at {there}; a model has one price"
                    ),
                ),
                Some(_) => {}
                None => {
                    seen.insert(key, (price, here));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_costs_its_tokens_at_the_price_per_million() {
        let price = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
        };
        // 2,000 prompt tokens at $3/M and 500 completion tokens at $15/M.
        assert!((price.cost(2_000, 500) - (0.006 + 0.0075)).abs() < 1e-12);
        assert_eq!(price.cost(0, 0), 0.0);
        assert!((price.cost(1_000_000, 0) - 3.0).abs() < 1e-12);
        assert!((price.cost(0, 1_000_000) - 15.0).abs() < 1e-12);
        let free = Price {
            input_per_mtok: 0.0,
            output_per_mtok: 0.0,
        };
        assert_eq!(free.cost(123_456, 7_890), 0.0);
        assert_eq!(price.unit(), 18.0);
    }
}
