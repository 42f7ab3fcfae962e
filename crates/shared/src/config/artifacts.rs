//! `[artifacts]`: the object store of large inputs and outputs (`crate::artifacts`): how big
//! one artifact may be, how much the store holds, how long it keeps them, and above what
//! size a step's output is stored there by reference instead of inline.

use serde::Deserialize;

use super::Problems;

/// 64 MiB: a long report, a code base's worth of files or a PDF; more is a file server's job.
const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// 1 GiB in all: JetStream reserves it on disk when the store is created, like the streams.
const DEFAULT_STORE_MAX_BYTES: i64 = 1 << 30;
/// A week: longer than the results and workflows that refer to an artifact (a day), and the
/// bound on chunks an interrupted upload leaves behind.
const DEFAULT_MAX_AGE_SECS: u64 = 7 * 86_400;
/// 32 KiB: twice what a prompt takes of one input, so ordinary step outputs stay inline and a
/// workflow's state (every step's output) stays far below NATS's message size.
const DEFAULT_INLINE_MAX_BYTES: usize = 32 << 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// Largest artifact accepted, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Most bytes the store holds in all (new artifacts are refused when it is full).
    #[serde(default = "default_store_max_bytes")]
    pub store_max_bytes: i64,
    /// How long an artifact is kept.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// A step output (or workflow output) longer than this many bytes is stored as an
    /// artifact; the workflow keeps a preview and the reference.
    #[serde(default = "default_inline_max_bytes")]
    pub inline_max_bytes: usize,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            store_max_bytes: DEFAULT_STORE_MAX_BYTES,
            max_age_secs: DEFAULT_MAX_AGE_SECS,
            inline_max_bytes: DEFAULT_INLINE_MAX_BYTES,
        }
    }
}

impl ArtifactsConfig {
    pub(crate) fn validate(&self, p: &mut Problems) {
        if self.max_bytes == 0 {
            p.add("artifacts.max_bytes", "must be greater than 0");
        }
        if self.store_max_bytes <= 0 {
            p.add("artifacts.store_max_bytes", "must be greater than 0");
        } else if u64::try_from(self.store_max_bytes).is_ok_and(|store| store < self.max_bytes) {
            p.add(
                "artifacts.store_max_bytes",
                "must be at least artifacts.max_bytes (one artifact must fit)",
            );
        }
        if self.max_age_secs == 0 {
            p.add("artifacts.max_age_secs", "must be greater than 0");
        }
        if self.inline_max_bytes == 0 {
            p.add("artifacts.inline_max_bytes", "must be greater than 0");
        } else if u64::try_from(self.inline_max_bytes).is_ok_and(|inline| inline > self.max_bytes) {
            p.add(
                "artifacts.inline_max_bytes",
                "must not exceed artifacts.max_bytes",
            );
        }
    }
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}
fn default_store_max_bytes() -> i64 {
    DEFAULT_STORE_MAX_BYTES
}
fn default_max_age_secs() -> u64 {
    DEFAULT_MAX_AGE_SECS
}
fn default_inline_max_bytes() -> usize {
    DEFAULT_INLINE_MAX_BYTES
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{Config, DEFAULT_TOML, Source};

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match Config::load(Source::Toml(DEFAULT_TOML), &env) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.into_iter().map(|p| p.key).collect(),
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_bounds_are_named() {
        assert!(problems(&[]).is_empty());
        let cfg = Config::load(Source::Toml(DEFAULT_TOML), &HashMap::new()).unwrap();
        assert!(cfg.artifacts.inline_max_bytes as u64 <= cfg.artifacts.max_bytes);
        assert_eq!(
            problems(&[
                ("SWITCHYARD__ARTIFACTS__MAX_BYTES", "1000"),
                ("SWITCHYARD__ARTIFACTS__STORE_MAX_BYTES", "999"),
                ("SWITCHYARD__ARTIFACTS__INLINE_MAX_BYTES", "1001"),
                ("SWITCHYARD__ARTIFACTS__MAX_AGE_SECS", "0"),
            ]),
            [
                "artifacts.store_max_bytes",
                "artifacts.max_age_secs",
                "artifacts.inline_max_bytes"
            ]
        );
        assert_eq!(
            problems(&[
                ("SWITCHYARD__ARTIFACTS__MAX_BYTES", "0"),
                ("SWITCHYARD__ARTIFACTS__INLINE_MAX_BYTES", "0"),
            ]),
            ["artifacts.max_bytes", "artifacts.inline_max_bytes"]
        );
    }
}
