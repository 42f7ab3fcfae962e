//! The one backoff curve, for every retry in Switchyard: full-jitter exponential backoff
//! (a random wait in `[0, min(cap, base · 2^attempt)]`), which spreads retries of many
//! clients instead of letting them arrive in waves.

use std::time::Duration;

/// A random delay in `[0, min(cap, base · 2^attempt)]`.
pub fn full_jitter(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(cap);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::full_jitter;
    use std::time::Duration;

    #[test]
    fn stays_within_the_doubling_ceiling_and_the_cap() {
        let (base, cap) = (Duration::from_millis(10), Duration::from_millis(300));
        for attempt in [0u32, 1, 2, 5, 31, 32, u32::MAX] {
            let ceiling = match attempt {
                0 => 10,
                1 => 20,
                2 => 40,
                _ => 300,
            };
            for _ in 0..200 {
                let d = full_jitter(base, cap, attempt);
                assert!(d <= Duration::from_millis(ceiling), "{attempt}: {d:?}");
            }
        }
    }
}
