//! `stock_quote`: the latest quote of a ticker symbol from the configured API — Alpha
//! Vantage's `GLOBAL_QUOTE` (the default) or Finnhub's `/quote` — with the key read from the
//! environment. Without a key the tool answers `unavailable`, naming the variable to set.

use serde::Deserialize;
use serde_json::{Value, json};
use shared::config::{StockApi, Upstream};
use shared::tools::{ToolError, ToolErrorClass};

use crate::upstream::{self, invalid};

/// Longest symbol taken: exchange-qualified symbols (`BRK.B`, `VOD.LON`, `RDS-A`) are short.
const MAX_SYMBOL_CHARS: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arguments {
    symbol: String,
}

fn parse(arguments: &Value) -> Result<String, ToolError> {
    let args: Arguments = upstream::arguments("stock_quote", arguments)?;
    let symbol = args.symbol.trim().to_ascii_uppercase();
    let fine = |c: char| c.is_ascii_alphanumeric() || ".-:^=".contains(c);
    if symbol.is_empty() || symbol.len() > MAX_SYMBOL_CHARS || !symbol.chars().all(fine) {
        return Err(invalid(format!(
            "`symbol` must be a ticker symbol such as AAPL or BRK.B (letters, digits, . - : ^ =; at most {MAX_SYMBOL_CHARS})"
        )));
    }
    Ok(symbol)
}

/// The tool.
pub async fn call(
    http: &reqwest::Client,
    config: &Upstream<StockApi>,
    arguments: &Value,
) -> Result<Value, ToolError> {
    let symbol = parse(arguments)?;
    let Some(key) = config.key.as_ref() else {
        return Err(upstream::missing_key("stock_quote", config.key_env()));
    };
    let (Some(api), Some(base)) = (config.provider, config.base_url()) else {
        return Err(ToolError::new(
            ToolErrorClass::Unavailable,
            "stock_quote is not configured: set tools.stock_quote.provider",
        ));
    };
    upstream::within(config.timeout(), api_name(api), async {
        match api {
            StockApi::AlphaVantage => {
                let request = http.get(format!("{base}/query")).query(&[
                    ("function", "GLOBAL_QUOTE"),
                    ("symbol", symbol.as_str()),
                    ("apikey", key.secret.expose()),
                ]);
                let answer = upstream::json(request, "Alpha Vantage", Some(key)).await?;
                alpha_vantage(&answer, &symbol).map_err(|e| mask(e, key))
            }
            StockApi::Finnhub => {
                let request = http
                    .get(format!("{base}/quote"))
                    .query(&[("symbol", symbol.as_str())])
                    .header("X-Finnhub-Token", key.secret.expose());
                let answer = upstream::json(request, "Finnhub", Some(key)).await?;
                finnhub(&answer, &symbol)
            }
        }
    })
    .await
}

fn mask(mut e: ToolError, key: &shared::config::ApiKey) -> ToolError {
    e.message = upstream::mask(&e.message, Some(key));
    e
}

fn api_name(api: StockApi) -> &'static str {
    match api {
        StockApi::AlphaVantage => "Alpha Vantage",
        StockApi::Finnhub => "Finnhub",
    }
}

/// A number Alpha Vantage sends as text (`"189.8400"`, `"-0.5200"`, `"1.2345%"`).
fn av_number(quote: &Value, field: &str) -> Value {
    quote[field]
        .as_str()
        .and_then(|s| s.trim().trim_end_matches('%').parse::<f64>().ok())
        .map_or(Value::Null, |n| json!(n))
}

/// The result from Alpha Vantage's `{"Global Quote": {"01. symbol": …}}`. Its failures come
/// with status 200: `Error Message` (a bad request), `Note` or `Information` (the rate
/// limit, or a key problem), or an empty quote (an unknown symbol).
fn alpha_vantage(answer: &Value, symbol: &str) -> Result<Value, ToolError> {
    if let Some(message) = answer["Error Message"].as_str() {
        return Err(invalid(format!(
            "Alpha Vantage refused the request for {symbol}: {}",
            shared::tools::clip(message, 160)
        )));
    }
    for field in ["Note", "Information"] {
        if let Some(message) = answer[field].as_str() {
            return Err(ToolError::new(
                ToolErrorClass::Upstream,
                format!("Alpha Vantage: {}", shared::tools::clip(message, 160)),
            ));
        }
    }
    let quote = &answer["Global Quote"];
    if quote.as_object().is_none_or(|q| q.is_empty()) {
        return Err(invalid(format!("no quote for symbol {symbol}")));
    }
    let price = av_number(quote, "05. price");
    if price.is_null() {
        return Err(ToolError::new(
            ToolErrorClass::Upstream,
            "Alpha Vantage answered a quote without a price",
        ));
    }
    Ok(json!({
        "symbol": quote["01. symbol"].as_str().unwrap_or(symbol),
        "price": price,
        "change": av_number(quote, "09. change"),
        "change_percent": av_number(quote, "10. change percent"),
        "open": av_number(quote, "02. open"),
        "high": av_number(quote, "03. high"),
        "low": av_number(quote, "04. low"),
        "previous_close": av_number(quote, "08. previous close"),
        "volume": av_number(quote, "06. volume"),
        "as_of": quote["07. latest trading day"],
        "source": "Alpha Vantage",
    }))
}

/// The result from Finnhub's `{"c": current, "d": change, "dp": percent, "h", "l", "o",
/// "pc": previous close, "t": unix time}`. An unknown symbol is all zeros.
fn finnhub(answer: &Value, symbol: &str) -> Result<Value, ToolError> {
    if let Some(message) = answer["error"].as_str() {
        return Err(ToolError::new(
            ToolErrorClass::Upstream,
            format!("Finnhub: {}", shared::tools::clip(message, 160)),
        ));
    }
    let Some(price) = answer["c"].as_f64() else {
        return Err(ToolError::new(
            ToolErrorClass::Upstream,
            "Finnhub answered a quote without a price",
        ));
    };
    if price == 0.0 && answer["t"].as_u64().unwrap_or(0) == 0 {
        return Err(invalid(format!("no quote for symbol {symbol}")));
    }
    Ok(json!({
        "symbol": symbol,
        "price": price,
        "change": answer["d"],
        "change_percent": answer["dp"],
        "open": answer["o"],
        "high": answer["h"],
        "low": answer["l"],
        "previous_close": answer["pc"],
        "as_of_unix": answer["t"],
        "source": "Finnhub",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_checked_and_upper_cased() {
        assert_eq!(parse(&json!({"symbol": " brk.b "})).unwrap(), "BRK.B");
        for bad in [
            json!({}),
            json!({"symbol": ""}),
            json!({"symbol": "AAPL; DROP"}),
            json!({"symbol": "A".repeat(21)}),
            json!({"symbol": 7}),
            json!({"symbol": "AAPL", "exchange": "NASDAQ"}),
        ] {
            assert_eq!(
                parse(&bad).unwrap_err().class,
                ToolErrorClass::InvalidArguments,
                "{bad}"
            );
        }
    }

    #[test]
    fn alpha_vantage_quotes_and_their_failures() {
        let answer = json!({"Global Quote": {"01. symbol": "IBM", "02. open": "189.0000",
            "03. high": "190.5000", "04. low": "188.1000", "05. price": "189.8400",
            "06. volume": "3254120", "07. latest trading day": "2025-05-30",
            "08. previous close": "190.3600", "09. change": "-0.5200", "10. change percent": "-0.2732%"}});
        let quote = alpha_vantage(&answer, "IBM").unwrap();
        assert_eq!(quote["price"], 189.84);
        assert_eq!(quote["change_percent"], -0.2732);
        assert_eq!(quote["volume"], 3_254_120.0);
        assert_eq!(quote["as_of"], "2025-05-30");
        let unknown = alpha_vantage(&json!({"Global Quote": {}}), "NOPE").unwrap_err();
        assert_eq!(unknown.class, ToolErrorClass::InvalidArguments);
        let limited =
            alpha_vantage(&json!({"Note": "Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day."}), "IBM")
                .unwrap_err();
        assert_eq!(limited.class, ToolErrorClass::Upstream);
        assert!(limited.message.contains("rate limit"));
        let bad = alpha_vantage(&json!({"Error Message": "Invalid API call."}), "IBM").unwrap_err();
        assert_eq!(bad.class, ToolErrorClass::InvalidArguments);
    }

    #[test]
    fn finnhub_quotes_and_unknown_symbols() {
        let answer = json!({"c": 261.74, "d": -1.2, "dp": -0.4564, "h": 263.31, "l": 260.68,
            "o": 261.07, "pc": 262.94, "t": 1_748_620_800});
        let quote = finnhub(&answer, "AAPL").unwrap();
        assert_eq!(quote["price"], 261.74);
        assert_eq!(quote["previous_close"], 262.94);
        let unknown = finnhub(
            &json!({"c": 0, "d": null, "dp": null, "h": 0, "l": 0, "o": 0, "pc": 0, "t": 0}),
            "NOPE",
        )
        .unwrap_err();
        assert_eq!(unknown.class, ToolErrorClass::InvalidArguments);
    }
}
