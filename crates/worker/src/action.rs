//! The failover classifier: one pure function from a failed attempt to what happens next.
//! `docs/failover.md` is this function as a table; keep the two the same.

use std::time::Duration;

use shared::FailureClass;

use crate::provider::ProviderError;

/// Longest `Retry-After` waited out in place before retrying the same target; anything
/// longer fails over instead (and the task comes back to this target later).
const MAX_IN_PLACE_WAIT: Duration = Duration::from_secs(1);
/// Same-target retries for a flaky answer (5xx, malformed body) before failing over.
pub(crate) const SAME_TARGET_RETRIES: u32 = 1;
/// Ceiling of the full-jitter pause before a same-target retry.
const RETRY_SAME_CEILING: Duration = Duration::from_millis(250);

/// Which fallback chain a refusal switches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    ContextLength,
    ContentFilter,
}

/// What the failover loop does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Call the same target with the same key again after this pause.
    RetrySame(Duration),
    /// Call the same target with the next key of its pool.
    RotateKey,
    /// Move to the next target.
    FailOver,
    /// Move to the route's fallback chain for this refusal (fail fast if it has none).
    Fallback(Chain),
    /// Stop: another target would fail the same way (the request is the problem, the
    /// answer already started streaming, or the task's time is up).
    FailFast,
}

/// `retries` is how many times this target was already retried for this attempt's cause;
/// `other_key` whether the target has another usable key.
pub(crate) fn decide(err: &ProviderError, retries: u32, other_key: bool) -> Action {
    if err.partial {
        return Action::FailFast;
    }
    match err.class {
        FailureClass::RateLimited | FailureClass::Auth if other_key => Action::RotateKey,
        FailureClass::RateLimited | FailureClass::Auth => Action::FailOver,
        FailureClass::Upstream5xx | FailureClass::InvalidResponse
            if retries < SAME_TARGET_RETRIES =>
        {
            match err.retry_after {
                Some(wait) if wait > MAX_IN_PLACE_WAIT => Action::FailOver,
                Some(wait) => Action::RetrySame(wait),
                None => Action::RetrySame(jitter(RETRY_SAME_CEILING)),
            }
        }
        // Another target (another model) may serve the request; the key is not to blame,
        // and the pool's other keys are expected to reach the same models.
        FailureClass::Upstream5xx
        | FailureClass::InvalidResponse
        | FailureClass::Timeout
        | FailureClass::Network
        | FailureClass::ModelUnavailable
        | FailureClass::Internal => Action::FailOver,
        FailureClass::ContextLength => Action::Fallback(Chain::ContextLength),
        FailureClass::ContentFilter => Action::Fallback(Chain::ContentFilter),
        // The tool loop's own bound: no provider call fails this way, and none would help.
        FailureClass::BadRequest
        | FailureClass::Cancelled
        | FailureClass::DeadlineExceeded
        | FailureClass::ToolLimit => Action::FailFast,
    }
}

/// What the failure says about the target's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing: the target works (it judged the request) or the cause was ours.
    None,
    /// Counts toward the target's circuit breaker.
    Unwell,
    /// Rate-limited: the key (or a keyless target) cools down.
    CoolDown,
    /// The key was refused: out of rotation.
    DisableKey,
}

pub(crate) fn effect(err: &ProviderError) -> Effect {
    match err.class {
        FailureClass::Upstream5xx
        | FailureClass::InvalidResponse
        | FailureClass::Timeout
        | FailureClass::Network => Effect::Unwell,
        FailureClass::RateLimited => Effect::CoolDown,
        FailureClass::Auth => Effect::DisableKey,
        // A refused model says nothing about the key or the target's health: the caller
        // picked the model, and must not take the key away from everyone else.
        FailureClass::BadRequest
        | FailureClass::ModelUnavailable
        | FailureClass::ContextLength
        | FailureClass::ContentFilter
        | FailureClass::Cancelled
        | FailureClass::DeadlineExceeded
        | FailureClass::Internal
        | FailureClass::ToolLimit => Effect::None,
    }
}

fn jitter(ceiling: Duration) -> Duration {
    shared::backoff::full_jitter(ceiling, ceiling, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(class: FailureClass) -> ProviderError {
        ProviderError::new(class, "x")
    }

    #[test]
    fn every_class_has_one_action() {
        use FailureClass::*;
        let cases = [
            (RateLimited, false, Action::FailOver),
            (RateLimited, true, Action::RotateKey),
            (Auth, false, Action::FailOver),
            (Auth, true, Action::RotateKey),
            (Timeout, false, Action::FailOver),
            (Network, false, Action::FailOver),
            (Internal, false, Action::FailOver),
            (ModelUnavailable, false, Action::FailOver),
            (ModelUnavailable, true, Action::FailOver),
            (ContextLength, false, Action::Fallback(Chain::ContextLength)),
            (ContentFilter, false, Action::Fallback(Chain::ContentFilter)),
            (BadRequest, true, Action::FailFast),
            (Cancelled, false, Action::FailFast),
            (DeadlineExceeded, false, Action::FailFast),
            (ToolLimit, false, Action::FailFast),
        ];
        for (class, other_key, expected) in cases {
            assert_eq!(decide(&err(class), 0, other_key), expected, "{class:?}");
        }
    }

    #[test]
    fn flaky_answers_are_retried_once_in_place() {
        for class in [FailureClass::Upstream5xx, FailureClass::InvalidResponse] {
            assert!(
                matches!(decide(&err(class), 0, false), Action::RetrySame(d) if d <= RETRY_SAME_CEILING)
            );
            assert_eq!(decide(&err(class), 1, false), Action::FailOver);
        }
        let long_wait = ProviderError {
            retry_after: Some(Duration::from_secs(30)),
            ..err(FailureClass::Upstream5xx)
        };
        assert_eq!(decide(&long_wait, 0, false), Action::FailOver);
        let short_wait = ProviderError {
            retry_after: Some(Duration::from_millis(300)),
            ..err(FailureClass::Upstream5xx)
        };
        assert_eq!(
            decide(&short_wait, 0, false),
            Action::RetrySame(Duration::from_millis(300))
        );
    }

    #[test]
    fn nothing_is_retried_once_the_answer_started() {
        let cut = ProviderError {
            partial: true,
            ..err(FailureClass::Network)
        };
        assert_eq!(decide(&cut, 0, true), Action::FailFast);
    }

    #[test]
    fn effects_on_health() {
        assert_eq!(effect(&err(FailureClass::Upstream5xx)), Effect::Unwell);
        assert_eq!(effect(&err(FailureClass::Timeout)), Effect::Unwell);
        assert_eq!(effect(&err(FailureClass::RateLimited)), Effect::CoolDown);
        assert_eq!(effect(&err(FailureClass::Auth)), Effect::DisableKey);
        assert_eq!(effect(&err(FailureClass::ModelUnavailable)), Effect::None);
        assert_eq!(effect(&err(FailureClass::BadRequest)), Effect::None);
        assert_eq!(effect(&err(FailureClass::ContextLength)), Effect::None);
    }
}
