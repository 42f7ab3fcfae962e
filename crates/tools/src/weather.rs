//! `weather`: current conditions and a short daily forecast for a place, from Open-Meteo
//! (keyless). A place name is geocoded first (Open-Meteo's geocoding API); coordinates are
//! used as given. Weather codes (WMO) become words; every number comes with its unit.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use shared::config::WeatherConfig;
use shared::tools::{ToolError, ToolErrorClass};

use crate::upstream::{self, invalid};

/// Days of forecast unless asked: today and the next two.
const DEFAULT_DAYS: u8 = 3;
/// Most days asked for: Open-Meteo forecasts 16, a model rarely needs a week.
const MAX_DAYS: u8 = 7;
/// Longest place name taken: real names are far shorter.
const MAX_LOCATION_CHARS: usize = 200;

const CURRENT: &str = "temperature_2m,apparent_temperature,relative_humidity_2m,precipitation,weather_code,wind_speed_10m,wind_direction_10m";
const DAILY: &str = "weather_code,temperature_2m_max,temperature_2m_min,precipitation_sum,precipitation_probability_max,wind_speed_10m_max";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arguments {
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    #[serde(default)]
    days: Option<u8>,
    #[serde(default)]
    units: Option<Units>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Units {
    #[default]
    Metric,
    Imperial,
}

/// Where to forecast, once the arguments are checked.
#[derive(Debug, Clone, PartialEq)]
enum Where {
    Named(String),
    At { latitude: f64, longitude: f64 },
}

fn parse(arguments: &Value) -> Result<(Where, u8, Units), ToolError> {
    let args: Arguments = upstream::arguments("weather", arguments)?;
    let days = args.days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(invalid(format!("`days` must be from 1 to {MAX_DAYS}")));
    }
    let place = match (args.location, args.latitude, args.longitude) {
        (Some(name), None, None) => {
            let name = name.trim().to_owned();
            if name.is_empty() || name.chars().count() > MAX_LOCATION_CHARS {
                return Err(invalid(format!(
                    "`location` must be a place name of 1 to {MAX_LOCATION_CHARS} characters"
                )));
            }
            Where::Named(name)
        }
        (None, Some(latitude), Some(longitude)) => {
            if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
                return Err(invalid(
                    "`latitude` must be from -90 to 90 and `longitude` from -180 to 180",
                ));
            }
            Where::At {
                latitude,
                longitude,
            }
        }
        _ => {
            return Err(invalid(
                "give either `location` (a place name) or both `latitude` and `longitude`",
            ));
        }
    };
    Ok((place, days, args.units.unwrap_or_default()))
}

/// The tool.
pub async fn call(
    http: &reqwest::Client,
    config: &WeatherConfig,
    arguments: &Value,
) -> Result<Value, ToolError> {
    let (place, days, units) = parse(arguments)?;
    upstream::within(config.timeout(), "Open-Meteo", async {
        let place = match place {
            Where::Named(name) => {
                let request = http.get(&config.geocoding_url).query(&[
                    ("name", name.as_str()),
                    ("count", "1"),
                    ("language", "en"),
                    ("format", "json"),
                ]);
                let found = upstream::json(request, "Open-Meteo geocoding", None).await?;
                place_from(&found, &name)?
            }
            Where::At {
                latitude,
                longitude,
            } => json!({"latitude": latitude, "longitude": longitude}),
        };
        let mut query = vec![
            ("latitude", number_text(&place["latitude"])),
            ("longitude", number_text(&place["longitude"])),
            ("current", CURRENT.to_owned()),
            ("daily", DAILY.to_owned()),
            ("timezone", "auto".to_owned()),
            ("forecast_days", days.to_string()),
        ];
        if units == Units::Imperial {
            query.push(("temperature_unit", "fahrenheit".into()));
            query.push(("wind_speed_unit", "mph".into()));
            query.push(("precipitation_unit", "inch".into()));
        }
        let request = http.get(&config.forecast_url).query(&query);
        let forecast = upstream::json(request, "Open-Meteo forecast", None).await?;
        forecast_result(place, &forecast)
    })
    .await
}

fn number_text(value: &Value) -> String {
    value.as_f64().map(|n| n.to_string()).unwrap_or_default()
}

/// The first place of a geocoding answer, or `invalid_arguments` when there is none.
fn place_from(found: &Value, name: &str) -> Result<Value, ToolError> {
    let Some(first) = found["results"].as_array().and_then(|r| r.first()) else {
        return Err(invalid(format!(
            "no place called {name:?} was found; try a city name, or give latitude and longitude"
        )));
    };
    let (Some(latitude), Some(longitude)) =
        (first["latitude"].as_f64(), first["longitude"].as_f64())
    else {
        return Err(shape("a place without coordinates"));
    };
    let mut place = Map::new();
    for (ours, theirs) in [
        ("name", "name"),
        ("region", "admin1"),
        ("country", "country"),
    ] {
        if let Some(text) = first[theirs].as_str() {
            place.insert(ours.into(), json!(text));
        }
    }
    place.insert("latitude".into(), json!(latitude));
    place.insert("longitude".into(), json!(longitude));
    Ok(Value::Object(place))
}

/// The result from a forecast answer: the place, the current conditions, one entry a day,
/// and the units.
fn forecast_result(mut place: Value, forecast: &Value) -> Result<Value, ToolError> {
    let current = forecast["current"]
        .as_object()
        .ok_or_else(|| shape("no `current` conditions"))?;
    let daily = forecast["daily"]
        .as_object()
        .ok_or_else(|| shape("no `daily` forecast"))?;
    if let Some(timezone) = forecast["timezone"].as_str() {
        place["timezone"] = json!(timezone);
    }
    let now = json!({
        "time": current.get("time"),
        "weather": describe(current.get("weather_code")),
        "temperature": current.get("temperature_2m"),
        "feels_like": current.get("apparent_temperature"),
        "humidity": current.get("relative_humidity_2m"),
        "precipitation": current.get("precipitation"),
        "wind_speed": current.get("wind_speed_10m"),
        "wind_direction": current.get("wind_direction_10m"),
    });
    let dates = daily
        .get("time")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("a daily forecast without dates"))?;
    let series = |field: &str, i: usize| daily.get(field).and_then(|s| s.get(i)).cloned();
    let days: Vec<Value> = dates
        .iter()
        .enumerate()
        .map(|(i, date)| {
            json!({
                "date": date,
                "weather": describe(series("weather_code", i).as_ref()),
                "temperature_max": series("temperature_2m_max", i),
                "temperature_min": series("temperature_2m_min", i),
                "precipitation": series("precipitation_sum", i),
                "precipitation_probability": series("precipitation_probability_max", i),
                "wind_speed_max": series("wind_speed_10m_max", i),
            })
        })
        .collect();
    let unit = |field: &str, fallback: &str| {
        forecast["current_units"][field]
            .as_str()
            .unwrap_or(fallback)
            .to_owned()
    };
    Ok(json!({
        "place": place,
        "current": now,
        "daily": days,
        "units": {
            "temperature": unit("temperature_2m", "°C"),
            "wind_speed": unit("wind_speed_10m", "km/h"),
            "wind_direction": "°",
            "precipitation": unit("precipitation", "mm"),
            "humidity": "%",
            "precipitation_probability": "%",
        },
        "source": "Open-Meteo",
    }))
}

fn shape(what: &str) -> ToolError {
    ToolError::new(
        ToolErrorClass::Upstream,
        format!("Open-Meteo answered {what}"),
    )
}

/// Words for a WMO weather code (as Open-Meteo documents them).
fn describe(code: Option<&Value>) -> Value {
    let Some(code) = code.and_then(Value::as_u64) else {
        return Value::Null;
    };
    let words = match code {
        0 => "clear sky",
        1 => "mainly clear",
        2 => "partly cloudy",
        3 => "overcast",
        45 => "fog",
        48 => "depositing rime fog",
        51 => "light drizzle",
        53 => "moderate drizzle",
        55 => "dense drizzle",
        56 => "light freezing drizzle",
        57 => "dense freezing drizzle",
        61 => "slight rain",
        63 => "moderate rain",
        65 => "heavy rain",
        66 => "light freezing rain",
        67 => "heavy freezing rain",
        71 => "slight snowfall",
        73 => "moderate snowfall",
        75 => "heavy snowfall",
        77 => "snow grains",
        80 => "slight rain showers",
        81 => "moderate rain showers",
        82 => "violent rain showers",
        85 => "slight snow showers",
        86 => "heavy snow showers",
        95 => "thunderstorm",
        96 => "thunderstorm with slight hail",
        99 => "thunderstorm with heavy hail",
        other => return json!(format!("weather code {other}")),
    };
    json!(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_name_a_place_or_give_coordinates() {
        let (place, days, units) = parse(&json!({"location": " Lisbon "})).unwrap();
        assert_eq!(place, Where::Named("Lisbon".into()));
        assert_eq!((days, units), (3, Units::Metric));
        let (place, days, units) =
            parse(&json!({"latitude": 38.7, "longitude": -9.1, "days": 7, "units": "imperial"}))
                .unwrap();
        assert_eq!(
            place,
            Where::At {
                latitude: 38.7,
                longitude: -9.1
            }
        );
        assert_eq!((days, units), (7, Units::Imperial));
        for bad in [
            json!({}),
            json!({"location": ""}),
            json!({"latitude": 1.0}),
            json!({"location": "x", "latitude": 1.0, "longitude": 2.0}),
            json!({"latitude": 91.0, "longitude": 0.0}),
            json!({"location": "x", "days": 0}),
            json!({"location": "x", "days": 8}),
            json!({"location": "x", "units": "kelvin"}),
            json!({"location": 5}),
            json!({"location": "x", "when": "now"}),
        ] {
            let e = parse(&bad).unwrap_err();
            assert_eq!(e.class, ToolErrorClass::InvalidArguments, "{bad}");
        }
    }

    #[test]
    fn a_geocoding_answer_gives_the_first_place_or_none() {
        let found = json!({"results": [{"name": "Lisbon", "latitude": 38.71667, "longitude": -9.13333,
            "country": "Portugal", "admin1": "Lisbon", "timezone": "Europe/Lisbon", "id": 2267057}]});
        assert_eq!(
            place_from(&found, "Lisbon").unwrap(),
            json!({"name": "Lisbon", "region": "Lisbon", "country": "Portugal",
                "latitude": 38.71667, "longitude": -9.13333})
        );
        let e = place_from(&json!({"generationtime_ms": 0.5}), "Atlantis").unwrap_err();
        assert_eq!(e.class, ToolErrorClass::InvalidArguments);
        assert!(e.message.contains("Atlantis"));
    }

    #[test]
    fn a_forecast_answer_becomes_conditions_days_and_units() {
        let forecast = json!({
            "latitude": 38.7, "longitude": -9.1, "timezone": "Europe/Lisbon",
            "current_units": {"temperature_2m": "°F", "wind_speed_10m": "mp/h", "precipitation": "inch"},
            "current": {"time": "2025-06-01T12:00", "temperature_2m": 71.2, "apparent_temperature": 70.0,
                "relative_humidity_2m": 60, "precipitation": 0.0, "weather_code": 2,
                "wind_speed_10m": 9.3, "wind_direction_10m": 300},
            "daily": {"time": ["2025-06-01", "2025-06-02"], "weather_code": [2, 61],
                "temperature_2m_max": [75.0, 68.1], "temperature_2m_min": [60.2, 58.0],
                "precipitation_sum": [0.0, 0.2], "precipitation_probability_max": [5, 80],
                "wind_speed_10m_max": [12.0, 15.5]}
        });
        let result = forecast_result(json!({"name": "Lisbon"}), &forecast).unwrap();
        assert_eq!(result["place"]["timezone"], "Europe/Lisbon");
        assert_eq!(result["current"]["weather"], "partly cloudy");
        assert_eq!(result["current"]["temperature"], 71.2);
        assert_eq!(result["daily"][1]["weather"], "slight rain");
        assert_eq!(result["daily"][1]["precipitation_probability"], 80);
        assert_eq!(result["units"]["temperature"], "°F");
        assert_eq!(result["units"]["wind_speed"], "mp/h");
        let e = forecast_result(json!({}), &json!({"daily": {}})).unwrap_err();
        assert_eq!(e.class, ToolErrorClass::Upstream);
        assert_eq!(describe(Some(&json!(42))), json!("weather code 42"));
    }
}
