//! Property tests of the Anthropic Messages answer and event readers: no input panics them,
//! and well-formed answers and event streams map to the OpenAI shapes with their text,
//! finish reason and token counts.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::http::Translate;
use super::super::props::{CASES, event_data, json, tokens};
use super::{Events, Translator, completion};

fn events() -> Events {
    Events {
        translator: Translator::new("claude-x", false),
        secret: Some("sk-ant-secret".to_owned()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_answer_is_read_or_refused(answer in json(), json_tool in any::<bool>()) {
        let _ = completion(&answer, "claude-x", json_tool);
    }

    #[test]
    fn any_event_sequence_ends_cleanly(data in proptest::collection::vec(event_data(), 0..12)) {
        let mut reader = events();
        for d in &data {
            if reader.event(d).is_err() || reader.done() {
                return Ok(());
            }
        }
        prop_assert!(reader.end().is_err(), "a stream without message_stop is cut");
    }

    #[test]
    fn well_formed_answers_map(
        texts in proptest::collection::vec(".{0,16}", 0..6),
        input in tokens(), cached in tokens(), output in tokens(),
    ) {
        let blocks: Vec<Value> = texts.iter().map(|t| json!({"type": "text", "text": t})).collect();
        let answer = json!({"id": "msg_1", "model": "claude-x-1", "content": blocks,
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": input, "cache_read_input_tokens": cached, "output_tokens": output}});
        let done = completion(&answer, "claude-x", false).unwrap();
        prop_assert_eq!(&done["choices"][0]["message"]["content"], &json!(texts.concat()));
        prop_assert_eq!(&done["choices"][0]["finish_reason"], "length");
        prop_assert_eq!(&done["usage"]["prompt_tokens"], &json!(input.saturating_add(cached)));
        prop_assert_eq!(&done["usage"]["completion_tokens"], &json!(output));
    }

    #[test]
    fn well_formed_streams_map(
        texts in proptest::collection::vec(".{0,16}", 0..6),
        input in tokens(), output in tokens(),
    ) {
        let mut reader = events();
        let mut stream = vec![
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": input, "cache_creation_input_tokens": input}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ];
        stream.extend(texts.iter().map(|t| {
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
        }));
        stream.push(json!({"type": "content_block_stop", "index": 0}));
        stream.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}}));
        stream.push(json!({"type": "message_stop"}));
        let mut chunks = Vec::new();
        for event in &stream {
            chunks.extend(reader.event(&event.to_string()).unwrap());
        }
        prop_assert!(reader.done());
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        prop_assert_eq!(text, texts.concat());
        let last = chunks.last().unwrap();
        prop_assert_eq!(&last["choices"][0]["finish_reason"], "stop");
        prop_assert_eq!(&last["usage"]["prompt_tokens"], &json!(input.saturating_add(input)));
        prop_assert_eq!(&last["usage"]["completion_tokens"], &json!(output));
    }
}
