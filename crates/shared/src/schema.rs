//! A JSON document that follows a JSON schema, for the subset structured outputs use
//! (objects, arrays, enums, strings, numbers, booleans): how the `simulated` provider and
//! the tests' fake provider answer a `response_format` that asks for one, as a real
//! provider would.

use serde_json::{Value, json};

/// Deepest nesting followed; below it a value is `null` (a schema that refers to itself
/// without end would otherwise never finish).
const MAX_DEPTH: usize = 16;
/// Most items an array gets, whatever its `minItems` says.
const MAX_ITEMS: usize = 16;

/// How the made-up values look.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Items an array of objects gets at least (so a plan can have parallel steps).
    pub object_items: usize,
    /// A string that must match a pattern, item `index`: a token.
    pub token: fn(usize) -> String,
    /// Any other string: the property it is (if any), item `index`.
    pub text: fn(Option<&str>, usize) -> String,
}

/// The schema a request asks its answer to follow, if it asks for one.
pub fn requested(body: &serde_json::Map<String, Value>) -> Option<&Value> {
    body.get("response_format")
        .filter(|format| format["type"] == "json_schema")
        .map(|format| &format["json_schema"]["schema"])
        .filter(|schema| schema.is_object())
}

/// A document that follows `schema`, `index` telling choices and items apart: an enum gives
/// its value at `index` (the first for the first), an object every property listed, an
/// array `minItems` items (at least `style.object_items` of objects, at most `maxItems`),
/// a number its maximum (else its minimum, else 1), a boolean `true`.
pub fn example(schema: &Value, index: usize, style: &Style) -> Value {
    instance(schema, None, index, style, 0)
}

fn instance(
    schema: &Value,
    property: Option<&str>,
    index: usize,
    style: &Style,
    depth: usize,
) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(options) = schema["enum"].as_array().filter(|o| !o.is_empty()) {
        return options[index % options.len()].clone();
    }
    match schema["type"].as_str().unwrap_or("object") {
        "object" => Value::Object(
            schema["properties"]
                .as_object()
                .map(|props| {
                    props
                        .iter()
                        .map(|(name, sub)| {
                            (
                                name.clone(),
                                instance(sub, Some(name), index, style, depth + 1),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        "array" => {
            let count = |key: &str, default: usize| {
                schema[key]
                    .as_u64()
                    .map_or(default, |m| usize::try_from(m).unwrap_or(default))
            };
            let items = &schema["items"];
            let least = if items["type"] == "object" {
                count("minItems", 0).max(style.object_items)
            } else {
                count("minItems", 0)
            };
            let wanted = least.min(count("maxItems", MAX_ITEMS)).min(MAX_ITEMS);
            Value::Array(
                (0..wanted)
                    .map(|i| instance(items, None, i, style, depth + 1))
                    .collect(),
            )
        }
        "string" if schema.get("pattern").is_some() => json!((style.token)(index)),
        "string" => json!((style.text)(property, index)),
        "number" | "integer" => schema
            .get("maximum")
            .or_else(|| schema.get("minimum"))
            .cloned()
            .unwrap_or(json!(1)),
        "boolean" => json!(true),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STYLE: Style = Style {
        object_items: 3,
        token: |i| format!("t{}", i + 1),
        text: |property, i| format!("{} {}", property.unwrap_or("text"), i + 1),
    };

    #[test]
    fn a_document_follows_the_schema() {
        let schema = json!({"type": "object", "properties": {
            "verdict": {"type": "string", "enum": ["approve", "revise"]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "feedback": {"type": "string"},
            "steps": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {
                "id": {"type": "string", "pattern": "^[a-z0-9]+$"},
                "tags": {"type": "array", "minItems": 1, "items": {"type": "string"}}
            }}}
        }});
        assert_eq!(
            example(&schema, 0, &STYLE),
            json!({
                "verdict": "approve",
                "score": 1,
                "feedback": "feedback 1",
                "steps": [
                    {"id": "t1", "tags": ["text 1"]},
                    {"id": "t2", "tags": ["text 1"]}
                ]
            })
        );
    }

    #[test]
    fn a_schema_without_end_stops_at_the_depth_limit() {
        let mut schema = json!({"type": "string"});
        for _ in 0..40 {
            schema = json!({"type": "object", "properties": {"next": schema}});
        }
        let mut value = example(&schema, 0, &STYLE);
        let mut depth = 0;
        while let Some(next) = value.get("next") {
            value = next.clone();
            depth += 1;
        }
        // Objects down to depth MAX_DEPTH, then null.
        assert_eq!(depth, MAX_DEPTH + 1);
        assert_eq!(value, Value::Null);
    }
}
