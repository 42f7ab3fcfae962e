//! Making a result fit [`MAX_RESULT_BYTES`] by trimming it rather than failing: a list
//! loses its last items, a text its end, and the result says `"truncated": true`. Only
//! what cannot be trimmed (a result with nothing left to cut) is `too_large`.

use serde_json::Value;
use shared::tools::{MAX_RESULT_BYTES, ToolError, ToolErrorClass};

/// Bytes left free below [`MAX_RESULT_BYTES`] for the `truncated` flag and rounding.
const MARGIN: usize = 64;

fn size(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// `result` with items dropped from the end of its array `field` until it fits.
pub fn list(mut result: Value, field: &str) -> Result<Value, ToolError> {
    let budget = MAX_RESULT_BYTES - MARGIN;
    let mut truncated = false;
    while size(&result) > budget {
        match result.get_mut(field).and_then(Value::as_array_mut) {
            Some(items) if !items.is_empty() => {
                items.pop();
                truncated = true;
            }
            _ => return Err(too_large()),
        }
    }
    if truncated {
        result["truncated"] = Value::Bool(true);
    }
    Ok(result)
}

/// `result` with its string `field` cut (on a character boundary, marked with `…`) until it
/// fits.
pub fn text(mut result: Value, field: &str) -> Result<Value, ToolError> {
    let budget = MAX_RESULT_BYTES - MARGIN;
    let mut truncated = false;
    loop {
        let total = size(&result);
        if total <= budget {
            break;
        }
        let Some(Value::String(text)) = result.get_mut(field) else {
            return Err(too_large());
        };
        if text.is_empty() {
            return Err(too_large());
        }
        // Escapes make the JSON longer than the text; cut by what is over, at least a
        // little each time, so the loop ends.
        // Keep the share of the text that fits, a little less each round.
        #[expect(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "an estimate of bytes to keep, below text.len()"
        )]
        let share = (text.len() as f64 * budget as f64 / total as f64) as usize;
        let keep = share.min(text.len().saturating_sub(16));
        let mut cut = keep;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        // `…` is three bytes: count it in the next round.
        text.push('…');
        truncated = true;
        if cut == 0 {
            text.clear();
        }
    }
    if truncated {
        result["truncated"] = Value::Bool(true);
    }
    Ok(result)
}

fn too_large() -> ToolError {
    ToolError::new(
        ToolErrorClass::TooLarge,
        format!("the result is larger than {MAX_RESULT_BYTES} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_lose_their_last_items_to_fit() {
        let items: Vec<Value> = (0..1000)
            .map(|i| json!({"title": format!("item {i}"), "snippet": "x".repeat(200)}))
            .collect();
        let fitted = list(json!({"query": "q", "results": items}), "results").unwrap();
        assert!(size(&fitted) <= MAX_RESULT_BYTES);
        assert_eq!(fitted["truncated"], true);
        let kept = fitted["results"].as_array().unwrap();
        assert!(kept.len() > 100 && kept.len() < 1000);
        assert_eq!(kept[0]["title"], "item 0");
        let small = list(json!({"results": [1, 2]}), "results").unwrap();
        assert!(small.get("truncated").is_none());
    }

    #[test]
    fn texts_are_cut_on_character_boundaries_to_fit() {
        // Quotes and newlines double in JSON; multi-byte characters must not be split.
        let text_in = "é\"\n".repeat(40_000);
        let fitted = text(json!({"title": "t", "text": text_in}), "text").unwrap();
        assert!(size(&fitted) <= MAX_RESULT_BYTES);
        assert_eq!(fitted["truncated"], true);
        let kept = fitted["text"].as_str().unwrap();
        assert!(kept.ends_with('…'));
        assert!(kept.len() > 20_000);
        let short = text(json!({"text": "short"}), "text").unwrap();
        assert_eq!(short, json!({"text": "short"}));
    }

    #[test]
    fn what_cannot_be_cut_is_too_large() {
        let e = list(
            json!({"other": "x".repeat(70_000), "results": []}),
            "results",
        )
        .unwrap_err();
        assert_eq!(e.class, ToolErrorClass::TooLarge);
    }
}
