//! The one retry/backoff policy: full-jitter exponential backoff, or what the provider asked
//! for with `Retry-After`, bounded by the task's deadline and its remaining deliveries.

use std::time::Duration;

use crate::provider::ProviderError;

/// Backoff before the second delivery; doubles each delivery after.
const BASE_DELAY: Duration = Duration::from_millis(500);
/// Longest wait between deliveries, whatever the provider asks.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// How long to wait before the task is delivered again, or `None` when it must fail now:
/// the failure is not transient, part of the answer already reached the caller, this is
/// the last attempt, or the wait would outlast the deadline.
///
/// The last attempt is delivery `max_deliver - 1`: delivery `max_deliver` is kept in
/// reserve to record a failure if that attempt's worker dies (see `process::handle`).
pub(crate) fn retry_delay(
    err: &ProviderError,
    delivery: i64,
    max_deliver: i64,
    remaining: Duration,
) -> Option<Duration> {
    if !err.class.is_transient() || err.partial || delivery >= last_attempt(max_deliver) {
        return None;
    }
    let delay = match err.retry_after {
        Some(asked) => asked.min(MAX_DELAY),
        None => full_jitter(delivery),
    };
    (delay < remaining).then_some(delay)
}

/// The last delivery on which a provider is called.
pub(crate) fn last_attempt(max_deliver: i64) -> i64 {
    max_deliver.saturating_sub(1).max(1)
}

/// A random delay in `[0, min(MAX_DELAY, BASE_DELAY * 2^(delivery-1))]`.
fn full_jitter(delivery: i64) -> Duration {
    let exponent = u32::try_from(delivery.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    shared::backoff::full_jitter(BASE_DELAY, MAX_DELAY, exponent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::FailureClass;

    fn err(class: FailureClass, retry_after: Option<Duration>) -> ProviderError {
        ProviderError {
            retry_after,
            ..ProviderError::new(class, "x")
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn permanent_failures_are_not_retried() {
        assert_eq!(
            retry_delay(&err(FailureClass::BadRequest, None), 1, 5, LONG),
            None
        );
        assert_eq!(
            retry_delay(&err(FailureClass::Auth, None), 1, 5, LONG),
            None
        );
    }

    #[test]
    fn last_attempt_is_not_retried() {
        let e = err(FailureClass::Upstream5xx, None);
        assert!(retry_delay(&e, 3, 5, LONG).is_some());
        assert_eq!(retry_delay(&e, 4, 5, LONG), None);
        assert_eq!(retry_delay(&e, 5, 5, LONG), None);
    }

    #[test]
    fn partial_answers_are_not_retried() {
        let e = ProviderError {
            partial: true,
            ..err(FailureClass::Network, None)
        };
        assert_eq!(retry_delay(&e, 1, 5, LONG), None);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let asked = Some(Duration::from_secs(2));
        assert_eq!(
            retry_delay(&err(FailureClass::RateLimited, asked), 1, 5, LONG),
            asked
        );
        let huge = Some(Duration::from_secs(10_000));
        assert_eq!(
            retry_delay(&err(FailureClass::RateLimited, huge), 1, 5, LONG),
            Some(MAX_DELAY)
        );
    }

    #[test]
    fn delay_never_outlasts_the_deadline() {
        let asked = Some(Duration::from_secs(2));
        assert_eq!(
            retry_delay(
                &err(FailureClass::RateLimited, asked),
                1,
                5,
                Duration::from_secs(1)
            ),
            None
        );
    }

    #[test]
    fn jitter_stays_within_its_ceiling() {
        for delivery in 1..40 {
            for _ in 0..50 {
                let d = full_jitter(delivery);
                let exp = u32::try_from((delivery - 1).min(16)).unwrap();
                assert!(d <= BASE_DELAY.saturating_mul(2u32.pow(exp)).min(MAX_DELAY));
            }
        }
    }
}
