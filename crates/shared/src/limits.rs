//! Limits on what callers send, shared by the gateway (which refuses a request breaking one
//! with a 400 naming the field) and the worker's task decoder (which answers a directly
//! published task breaking one as `bad_request`), so both agree. Each is a named constant
//! with its reason; `docs/configuration.md` (Limits) lists them.

/// Deepest nesting of arrays and objects in a request body. serde_json refuses documents
/// nested 128 levels or deeper, and a task wraps the request one level deeper than the caller sent it: a
/// bound well under that leaves room for the wrapping (and for any later envelope), and no
/// real chat request comes near it (tool schemas nest a dozen levels).
pub const MAX_JSON_DEPTH: usize = 100;

/// Deepest nesting of a published task: the request's limit plus the task object around it.
pub const MAX_TASK_DEPTH: usize = MAX_JSON_DEPTH + 1;

/// Longest route (`model` of a request, `route` of a task), in bytes. The route is shown in
/// NATS headers of streamed answers and in provider-health keys, and nats-server drops a
/// connection whose protocol line passes 4 KiB; real model ids are well under 200.
pub const MAX_ROUTE_LEN: usize = 256;

/// Longest `reply_to` subject, in bytes. The worker publishes the result there, and
/// nats-server drops a connection whose protocol line (subject included) passes 4 KiB; the
/// inboxes clients make are under 100.
pub const MAX_SUBJECT_LEN: usize = 256;

/// Why a route was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ROUTE_LEN} bytes")]
    TooLong,
    #[error("must not contain control characters (such as line breaks)")]
    ControlCharacter,
}

/// Checks a route name against what may travel in a NATS header or key.
pub fn check_route(route: &str) -> Result<(), RouteError> {
    if route.trim().is_empty() {
        return Err(RouteError::Empty);
    }
    if route.len() > MAX_ROUTE_LEN {
        return Err(RouteError::TooLong);
    }
    if route.chars().any(char::is_control) {
        return Err(RouteError::ControlCharacter);
    }
    Ok(())
}

/// How deeply the arrays and objects of JSON `text` nest (0 for a scalar). A byte scan, not
/// a parse, so it has no recursion limit of its own: it tells a too-deep document from a
/// broken one before a parser gives up on it. For text that is not JSON the answer is
/// merely some number; it never panics.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                (false, _) => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth = depth.saturating_add(1);
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        for (text, depth) in [
            ("1", 0),
            ("[]", 1),
            ("{\"a\": [1, {\"b\": []}]}", 4),
            ("{\"a\": \"[[[[\"}", 1),
            ("{\"a\": \"\\\"[[[[\"}", 1),
            ("[[]][[[]]]", 3),
            ("]]]][", 1),
        ] {
            assert_eq!(json_depth(text.as_bytes()), depth, "{text}");
        }
    }

    /// The limits sit where the comments say: serde_json parses the gateway's deepest body
    /// and the task around it, and refuses what the limits were chosen to stay under.
    #[test]
    fn serde_json_parses_the_deepest_task_allowed() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let task = format!("{{\"request\": {{\"x\": {}}}}}", nested(MAX_JSON_DEPTH - 1));
        assert_eq!(json_depth(task.as_bytes()), MAX_TASK_DEPTH);
        assert!(serde_json::from_str::<serde_json::Value>(&task).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(127)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(128)).is_err());
    }

    #[test]
    fn routes_that_cannot_travel_in_headers_are_refused() {
        assert_eq!(check_route("fast"), Ok(()));
        assert_eq!(
            check_route("openrouter/meta-llama/llama-3.1-8b:free"),
            Ok(())
        );
        assert_eq!(check_route(""), Err(RouteError::Empty));
        assert_eq!(check_route(" "), Err(RouteError::Empty));
        assert_eq!(check_route("a\nb"), Err(RouteError::ControlCharacter));
        assert_eq!(check_route("a\rb"), Err(RouteError::ControlCharacter));
        assert_eq!(check_route("a\u{0}b"), Err(RouteError::ControlCharacter));
        assert_eq!(check_route(&"x".repeat(257)), Err(RouteError::TooLong));
        assert_eq!(check_route(&"x".repeat(256)), Ok(()));
    }
}
