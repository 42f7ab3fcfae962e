//! Property tests of the Gemini answer and fragment readers: no input panics them, and
//! well-formed answers and fragment streams map to the OpenAI shapes with their text,
//! finish reason and token counts.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::http::Translate;
use super::super::props::{CASES, event_data, json, tokens};
use super::{Events, Fragments, completion, gemini_error};

fn events() -> Events {
    Events {
        fragments: Fragments::new("gemini-x", "t".to_owned()),
        secret: Some("gm-secret".to_owned()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_answer_is_read_or_refused(answer in json()) {
        let _ = completion(&answer, "gemini-x", "t");
    }

    #[test]
    fn any_error_body_is_classified(status in any::<u16>(), body in event_data()) {
        let err = gemini_error(status, &body, Some("gm-secret"));
        prop_assert!(!err.message.contains("gm-secret"));
    }

    #[test]
    fn any_fragment_sequence_ends_cleanly(data in proptest::collection::vec(event_data(), 0..12)) {
        let mut reader = events();
        for d in &data {
            if reader.event(d).is_err() {
                return Ok(());
            }
        }
        let _ = reader.end();
    }

    #[test]
    fn well_formed_answers_map(
        texts in proptest::collection::vec(".{0,16}", 0..6),
        prompt in tokens(), tool_prompt in tokens(), answer_tokens in tokens(), thoughts in tokens(),
    ) {
        let parts: Vec<Value> = texts.iter().map(|t| json!({"text": t})).collect();
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": prompt, "toolUsePromptTokenCount": tool_prompt,
                "candidatesTokenCount": answer_tokens, "thoughtsTokenCount": thoughts},
        });
        let done = completion(&answer, "gemini-x", "t").unwrap();
        prop_assert_eq!(&done["choices"][0]["message"]["content"], &json!(texts.concat()));
        prop_assert_eq!(&done["choices"][0]["finish_reason"], "stop");
        prop_assert_eq!(&done["usage"]["prompt_tokens"], &json!(prompt.saturating_add(tool_prompt)));
        prop_assert_eq!(&done["usage"]["completion_tokens"], &json!(answer_tokens.saturating_add(thoughts)));
    }

    #[test]
    fn well_formed_fragments_map(texts in proptest::collection::vec(".{1,16}", 0..6)) {
        let mut reader = events();
        let mut chunks = Vec::new();
        for text in &texts {
            let fragment = json!({"candidates": [{"content": {"parts": [{"text": text}]}}]});
            chunks.extend(reader.event(&fragment.to_string()).unwrap());
        }
        let last = json!({"candidates": [{"content": {"parts": []}, "finishReason": "MAX_TOKENS"}]});
        chunks.extend(reader.event(&last.to_string()).unwrap());
        chunks.extend(reader.end().unwrap());
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        prop_assert_eq!(text, texts.concat());
        prop_assert_eq!(&chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    }
}
