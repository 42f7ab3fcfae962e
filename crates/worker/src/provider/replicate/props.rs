//! Property tests of the Replicate prediction and stream-event readers: no input panics
//! them, and well-formed predictions and events map to the OpenAI shapes with their text,
//! finish reason and token counts.

use proptest::prelude::*;
use serde_json::json;

use super::super::props::{CASES, event_data, json, tokens};
use super::{Status, Step, completion, prediction_error, status, step};

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec!["output", "logs", "error", "done", ""]).prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_prediction_is_read_or_refused(prediction in json(), max_tokens in proptest::option::of(tokens())) {
        match status(&prediction) {
            Ok(Status::Succeeded) => { let _ = completion(&prediction, "acme/m", max_tokens); }
            Ok(Status::Failed | Status::Canceled) => {
                let err = prediction_error(&prediction, Some("r8_secret"));
                prop_assert!(!err.message.contains("r8_secret"));
            }
            Ok(Status::Running) | Err(_) => {}
        }
    }

    #[test]
    fn any_stream_event_is_read_or_refused(name in event_name(), data in event_data()) {
        match step(&name, &data, Some("r8_secret")) {
            Ok(Step::Output(text)) => prop_assert_eq!(text, data),
            Ok(Step::Skip | Step::Done) => {}
            Err(e) => prop_assert!(!e.message.contains("r8_secret")),
        }
    }

    #[test]
    fn well_formed_predictions_map(
        pieces in proptest::collection::vec(".{0,16}", 0..6),
        input in tokens(), output in tokens(), limit in tokens(),
    ) {
        let prediction = json!({"id": "p1", "status": "succeeded", "output": pieces,
            "metrics": {"input_token_count": input, "output_token_count": output}});
        prop_assert_eq!(status(&prediction).unwrap(), Status::Succeeded);
        let done = completion(&prediction, "acme/m", Some(limit)).unwrap();
        prop_assert_eq!(&done["choices"][0]["message"]["content"], &json!(pieces.concat()));
        let finish = if output >= limit { "length" } else { "stop" };
        prop_assert_eq!(&done["choices"][0]["finish_reason"], finish);
        prop_assert_eq!(&done["usage"]["total_tokens"], &json!(input.saturating_add(output)));
    }

    #[test]
    fn well_formed_events_map(text in ".{1,24}") {
        prop_assert!(matches!(step("output", &text, None), Ok(Step::Output(t)) if t == text));
        prop_assert!(matches!(step("logs", &text, None), Ok(Step::Skip)));
        let empty_object = "{}";
        prop_assert!(matches!(step("done", empty_object, None), Ok(Step::Done)));
        prop_assert!(matches!(step("done", "", None), Ok(Step::Done)));
    }
}
