//! Property tests of the OpenAI-compatible answer and stream readers: no input panics them,
//! and well-formed answers and chunk streams come through unchanged.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::http::Translate;
use super::super::props::{CASES, event_data, json};
use super::{Chunks, completion};

fn chunks() -> Chunks {
    Chunks {
        secret: Some("sk-secret".to_owned()),
        finished: false,
        done: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_answer_is_read_or_refused(answer in json()) {
        let has_choices = answer.get("choices").is_some_and(Value::is_array);
        prop_assert_eq!(completion(answer).is_ok(), has_choices);
    }

    #[test]
    fn any_event_sequence_ends_cleanly(events in proptest::collection::vec(event_data(), 0..12)) {
        let mut reader = chunks();
        for data in &events {
            if reader.event(data).is_err() || reader.done() {
                return Ok(());
            }
        }
        let _ = reader.end();
    }

    #[test]
    fn well_formed_chunks_come_through(texts in proptest::collection::vec(".{0,16}", 0..8)) {
        let mut reader = chunks();
        let mut out = Vec::new();
        let mut sent = Vec::new();
        for text in &texts {
            let chunk = json!({"object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
            out.extend(reader.event(&chunk.to_string()).unwrap());
            sent.push(chunk);
        }
        let last = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        out.extend(reader.event(&last.to_string()).unwrap());
        sent.push(last);
        prop_assert!(reader.event("[DONE]").unwrap().is_empty());
        prop_assert!(reader.done());
        prop_assert_eq!(out, sent);
    }
}
