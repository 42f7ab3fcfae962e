//! `[memory]`: where a `switchyard memory` replica keeps its SQLite index, how long memories
//! are kept and how many, and how many hits a search gives by default.

use std::path::PathBuf;

use serde::Deserialize;

use super::Problems;
use crate::memory::MAX_LIMIT;

/// A week: what `EVENTS` keeps by default (`events.max_age_secs`), so that an index rebuilt
/// from the stream holds what the one it replaces held.
const DEFAULT_RETENTION_DAYS: u64 = 7;
/// 100,000 memories of at most a few KiB each: a few hundred MiB at worst, and searches stay
/// in milliseconds.
const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// Hits a search gives when it does not say: enough to choose from, few enough for a prompt.
const DEFAULT_LIMIT: usize = 10;
/// The index file when `path` is not set: in the working directory (`switchyard up` puts it
/// in its data directory instead).
pub const DEFAULT_MEMORY_FILE: &str = "memory.db";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The SQLite file of this replica's index (each replica its own; it is rebuilt from
    /// `EVENTS` when missing). Unset: [`DEFAULT_MEMORY_FILE`].
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Memories older than this are pruned (and not indexed when a rebuild meets them).
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Most memories kept; beyond it the oldest go first.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Hits a search gives unless it asks for another number.
    #[serde(default = "default_limit")]
    pub limit: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            path: None,
            retention_days: DEFAULT_RETENTION_DAYS,
            max_entries: DEFAULT_MAX_ENTRIES,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl MemoryConfig {
    /// The index file: `path`, else [`DEFAULT_MEMORY_FILE`] in `dir`.
    pub fn file_in(&self, dir: &std::path::Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| dir.join(DEFAULT_MEMORY_FILE))
    }

    /// The retention in milliseconds.
    pub fn retention_ms(&self) -> u64 {
        self.retention_days.saturating_mul(86_400_000)
    }

    pub(crate) fn validate(&self, p: &mut Problems, events_max_age_secs: u64) {
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            p.add(
                "memory.path",
                "must not be empty (leave it out for the default)",
            );
        }
        if self.retention_days == 0 {
            p.add("memory.retention_days", "must be at least 1");
        } else if events_max_age_secs > 0
            && self.retention_days.saturating_mul(86_400) > events_max_age_secs
        {
            p.add(
                "memory.retention_days",
                format!(
                    "must not exceed what EVENTS keeps (events.max_age_secs = {events_max_age_secs}): \
                     an index rebuilt from the stream could not hold older memories"
                ),
            );
        }
        if self.max_entries == 0 {
            p.add("memory.max_entries", "must be at least 1");
        }
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            p.add("memory.limit", format!("must be between 1 and {MAX_LIMIT}"));
        }
    }
}

fn default_retention_days() -> u64 {
    DEFAULT_RETENTION_DAYS
}
fn default_max_entries() -> u64 {
    DEFAULT_MAX_ENTRIES
}
fn default_limit() -> usize {
    DEFAULT_LIMIT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(config: &MemoryConfig, events_max_age_secs: u64) -> Vec<String> {
        let mut p = Problems::default();
        config.validate(&mut p, events_max_age_secs);
        p.0.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(problems(&MemoryConfig::default(), 7 * 86_400).is_empty());
        let bad = MemoryConfig {
            path: Some(PathBuf::new()),
            retention_days: 0,
            max_entries: 0,
            limit: MAX_LIMIT + 1,
        };
        assert_eq!(
            problems(&bad, 7 * 86_400),
            [
                "memory.path",
                "memory.retention_days",
                "memory.max_entries",
                "memory.limit"
            ]
        );
        // Longer than the stream keeps: a rebuild could not answer the same.
        let long = MemoryConfig {
            retention_days: 8,
            ..MemoryConfig::default()
        };
        assert_eq!(problems(&long, 7 * 86_400), ["memory.retention_days"]);
    }
}
