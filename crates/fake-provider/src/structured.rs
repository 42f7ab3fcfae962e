//! OpenAI's structured outputs, faked: a request whose `response_format` is
//! `{"type": "json_schema", "json_schema": {"schema": …}}` is answered with a JSON document
//! that follows the schema, as a real provider's would, instead of the usual echo. So a
//! workflow's reviewer, which asks for a verdict, gets one it can read (the first value of
//! an enum: `approve`), and the benchmark can run whole workflows against the fake.

use serde_json::Value;

/// The schema a request asks its answer to follow, if it asks for one.
pub(crate) fn schema(body: &Value) -> Option<&Value> {
    let format = &body["response_format"];
    (format["type"] == "json_schema")
        .then(|| &format["json_schema"]["schema"])
        .filter(|schema| schema.is_object())
}

/// The answer text for `schema`, choice `index` (`n` > 1 tells choices apart).
pub(crate) fn answer(schema: &Value, index: usize) -> String {
    shared::schema::example(schema, index, &STYLE).to_string()
}

/// Strings are `fake-<n>` (tokens, so id patterns accept them); arrays get `minItems`.
const STYLE: shared::schema::Style = shared::schema::Style {
    object_items: 0,
    token: |i| format!("fake-{}", i + 1),
    text: |_, i| format!("fake-{}", i + 1),
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert_eq!(answer(&list, 0), json!(["a", "b"]).to_string());
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "object", "properties": {"x": deep}});
        }
        assert!(answer(&deep, 0).contains("null"));
    }
}
