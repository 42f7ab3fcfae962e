//! OpenAI's structured outputs, faked: a request whose `response_format` is
//! `{"type": "json_schema", "json_schema": {"schema": …}}` is answered with a JSON document
//! that follows the schema, as a real provider's would, instead of the usual echo. So a
//! workflow's reviewer, which asks for a verdict, gets one it can read (the first value of
//! an enum: `approve`), and the benchmark can run whole workflows against the fake.

use serde_json::{Value, json};

/// The schema a request asks its answer to follow, if it asks for one.
pub(crate) fn schema(body: &Value) -> Option<&Value> {
    let format = &body["response_format"];
    (format["type"] == "json_schema")
        .then(|| &format["json_schema"]["schema"])
        .filter(|schema| schema.is_object())
}

/// The answer text for `schema`, choice `index` (`n` > 1 tells choices apart).
pub(crate) fn answer(schema: &Value, index: usize) -> String {
    instance(schema, index, 0).to_string()
}

/// Deepest nesting followed; below it a value is `null` (a schema that refers to itself
/// without end would otherwise never finish).
const MAX_DEPTH: usize = 16;
/// Most items an array gets, whatever its `minItems` says.
const MAX_ITEMS: usize = 16;

/// A value that follows `schema`, for the subset structured outputs use: an enum gives its
/// value at `index` (the first for the first choice), an object every property listed, an
/// array `minItems` items, a string `fake-<index + 1>` (a token, so id patterns accept it),
/// a number its maximum (else its minimum, else 1), a boolean `true`.
fn instance(schema: &Value, index: usize, depth: usize) -> Value {
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
                        .map(|(name, sub)| (name.clone(), instance(sub, index, depth + 1)))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        "array" => {
            let items = schema["minItems"]
                .as_u64()
                .map_or(0, |m| usize::try_from(m).unwrap_or(0))
                .min(MAX_ITEMS);
            Value::Array(
                (0..items)
                    .map(|i| instance(&schema["items"], i, depth + 1))
                    .collect(),
            )
        }
        "string" => json!(format!("fake-{}", index + 1)),
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

    #[test]
    fn a_verdict_schema_gets_an_approval() {
        let body = json!({"response_format": {"type": "json_schema", "json_schema": {
            "name": "switchyard_review",
            "schema": {
                "type": "object",
                "required": ["verdict", "score", "feedback"],
                "properties": {
                    "verdict": {"type": "string", "enum": ["approve", "revise"]},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "feedback": {"type": "string"}
                }
            }
        }}});
        let text = answer(schema(&body).unwrap(), 0);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"verdict": "approve", "score": 1, "feedback": "fake-1"})
        );
    }

    #[test]
    fn other_formats_and_odd_values_ask_for_nothing() {
        for body in [
            json!({}),
            json!({"response_format": {"type": "json_object"}}),
            json!({"response_format": "x"}),
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}),
        ] {
            assert!(schema(&body).is_none(), "{body}");
        }
    }

    #[test]
    fn arrays_get_their_minimum_and_nesting_is_bounded() {
        let list = json!({"type": "array", "minItems": 2, "items": {"type": "string", "enum": ["a", "b", "c"]}});
        assert_eq!(instance(&list, 0, 0), json!(["a", "b"]));
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "object", "properties": {"x": deep}});
        }
        assert!(answer(&deep, 0).contains("null"));
    }
}
